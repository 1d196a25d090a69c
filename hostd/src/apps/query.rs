//! `steady db`: one SQL statement against an app's database, wherever its data is right now.
//!
//! An app's databases are the SQLite files directly in its data directory, which lives at
//! `apps/<name>/data` while the app sleeps and inside its sandbox while a process runs. A read
//! of a sleeping app holds the app's slot, so no start moves the data during the query; a read
//! of a running app holds a request's lease, so it does not sleep under the query. A write
//! wakes the app first: Litestream watches a database only while its app runs, so a write is
//! replicated like the app's own, and it is synced to the replica before the answer.

use std::path::{Path, PathBuf};

use steady_proto::wire::{DbAnswer, DbQuery};

use super::{Apps, Lease};
use crate::db::{self, QueryError};

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no app named {0:?} on this host")]
    Unknown(String),
    #[error("{app} has no SQLite database in its data directory yet")]
    NoDatabase { app: String },
    #[error("{app} has several databases ({}); choose one with --database", .databases.join(", "))]
    Ambiguous { app: String, databases: Vec<String> },
    #[error("{app} has no database {database:?} (it has: {})", .databases.join(", "))]
    NoSuchDatabase { app: String, database: String, databases: Vec<String> },
    #[error("a write needs the app running, and it could not start: {0}")]
    NotRunning(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    Host(String),
}

impl Apps {
    /// Runs `query` on one of `name`'s databases.
    #[tracing::instrument(skip_all, fields(app = %name))]
    pub async fn db_query(&self, name: &str, query: DbQuery) -> Result<DbAnswer, DbError> {
        let host = |e: &dyn std::fmt::Display| DbError::Host(e.to_string());
        let slot = self.existing_slot(name).map_err(|e| host(&e))?.ok_or_else(|| DbError::Unknown(name.into()))?;
        if query.write {
            let lease = self.wake(name).await.map_err(|e| DbError::NotRunning(e.to_string()))?;
            let data_dir = {
                let serving = slot.serving.lock().await;
                serving.as_ref().filter(|p| p.socket == lease.socket && p.is_alive()).map(|p| p.data_dir())
            };
            let data_dir = data_dir.ok_or_else(|| DbError::Host("the app's process ended under the query".into()))?;
            let answer = self.query_in(name, &data_dir, query).await?;
            if answer.changes > 0 {
                // Errors are in the app's log; the write is in the database either way.
                let _ = self.replicator.sync_now(name).await;
            }
            drop(lease);
            return Ok(answer);
        }
        let serving = slot.serving.lock().await;
        if let Some(process) = serving.as_ref().filter(|p| p.is_alive()) {
            self.enter(&slot).map_err(|e| host(&e))?;
            let lease = Lease { socket: process.socket.clone(), slot: slot.clone() };
            let data_dir = process.data_dir();
            drop(serving);
            let answer = self.query_in(name, &data_dir, query).await;
            drop(lease);
            return answer;
        }
        // Asleep: `serving` stays held, so the data directory stays where it is.
        self.ensure_data(&slot).await.map_err(|e| host(&e))?;
        self.query_in(name, &self.app_dir(name).join("data"), query).await
    }

    async fn query_in(&self, name: &str, data_dir: &Path, query: DbQuery) -> Result<DbAnswer, DbError> {
        let databases = if data_dir.is_dir() {
            crate::replica::databases_in(data_dir).map_err(|e| DbError::Host(e.to_string()))?
        } else {
            Vec::new()
        };
        let database = choose(name, query.database.as_deref(), databases)?;
        let path: PathBuf = data_dir.join(&database);
        let DbQuery { sql, write, .. } = query;
        tracing::info!(app = %name, database, write, "db query");
        let answer = tokio::task::spawn_blocking(move || db::run(&path, &database, &sql, write))
            .await
            .map_err(|e| DbError::Host(e.to_string()))??;
        Ok(answer)
    }
}

/// The database a query goes to: the one asked for, else the only one, else `<app>.db`.
fn choose(app: &str, asked: Option<&str>, databases: Vec<String>) -> Result<String, DbError> {
    if let Some(asked) = asked {
        if databases.iter().any(|d| d == asked) {
            return Ok(asked.to_owned());
        }
        return Err(DbError::NoSuchDatabase { app: app.into(), database: asked.into(), databases });
    }
    match databases.as_slice() {
        [] => Err(DbError::NoDatabase { app: app.into() }),
        [only] => Ok(only.clone()),
        _ => {
            let named = format!("{app}.db");
            if databases.contains(&named) {
                Ok(named)
            } else {
                Err(DbError::Ambiguous { app: app.into(), databases })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choosing_a_database() {
        let dbs = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(choose("a", None, dbs(&["x.db"])).unwrap(), "x.db");
        assert_eq!(choose("a", None, dbs(&["a.db", "b.db"])).unwrap(), "a.db");
        assert!(matches!(choose("a", None, dbs(&["b.db", "c.db"])), Err(DbError::Ambiguous { .. })));
        assert!(matches!(choose("a", None, dbs(&[])), Err(DbError::NoDatabase { .. })));
        assert_eq!(choose("a", Some("c.db"), dbs(&["b.db", "c.db"])).unwrap(), "c.db");
        let missing = choose("a", Some("../x.db"), dbs(&["b.db"]));
        assert!(matches!(missing, Err(DbError::NoSuchDatabase { .. })));
    }
}
