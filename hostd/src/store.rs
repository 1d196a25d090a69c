//! The host's own records in SQLite: which apps it holds and every version deployed.
//!
//! Only this module touches the host's database.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

/// Errors of the host store.
#[derive(Debug, thiserror::Error)]
#[error("host database: {0}")]
pub struct StoreError(#[from] rusqlite::Error);

/// The version of an app that serves traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Numeric id of the app on this host; short, so it fits in socket paths.
    pub app_id: i64,
    pub version: u64,
    /// Bundle address (hex SHA-256).
    pub bundle: String,
}

/// One app as this host lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppRow {
    pub name: String,
    pub version: u64,
    pub bundle: String,
    pub deployed_at_ms: u64,
}

/// How a version attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Started, took over traffic.
    Serving,
    /// Did not start; the previous version kept serving.
    Failed,
}

/// The host database.
pub struct Store {
    connection: Connection,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS apps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    current_version INTEGER,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    app_id INTEGER NOT NULL REFERENCES apps(id),
    version INTEGER NOT NULL,
    bundle TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('starting', 'serving', 'failed')),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (app_id, version)
);
";

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self { connection })
    }

    /// Records a new version attempt of `name` with `bundle`; creates the app on first deploy.
    /// Returns the app id and the new version number (one above every earlier attempt).
    pub fn begin_version(
        &mut self,
        name: &str,
        bundle: &str,
        now_ms: u64,
    ) -> Result<(i64, u64), StoreError> {
        let tx = self.connection.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO apps (name, created_at_ms) VALUES (?1, ?2)",
            params![name, now_ms as i64],
        )?;
        let app_id: i64 =
            tx.query_row("SELECT id FROM apps WHERE name = ?1", [name], |r| r.get(0))?;
        let last: Option<i64> = tx.query_row(
            "SELECT MAX(version) FROM versions WHERE app_id = ?1",
            [app_id],
            |r| r.get(0),
        )?;
        let version = last.unwrap_or(0) as u64 + 1;
        tx.execute(
            "INSERT INTO versions (app_id, version, bundle, status, created_at_ms) VALUES (?1, ?2, ?3, 'starting', ?4)",
            params![app_id, version as i64, bundle, now_ms as i64],
        )?;
        tx.commit()?;
        Ok((app_id, version))
    }

    /// Records how a version attempt ended; a serving version becomes the app's current one.
    pub fn finish_version(
        &mut self,
        app_id: i64,
        version: u64,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let tx = self.connection.transaction()?;
        let status = match outcome {
            Outcome::Serving => "serving",
            Outcome::Failed => "failed",
        };
        tx.execute(
            "UPDATE versions SET status = ?3 WHERE app_id = ?1 AND version = ?2",
            params![app_id, version as i64, status],
        )?;
        if outcome == Outcome::Serving {
            tx.execute(
                "UPDATE apps SET current_version = ?2 WHERE id = ?1",
                params![app_id, version as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The serving version of `name`, if the app exists and has one.
    pub fn current(&self, name: &str) -> Result<Option<Current>, StoreError> {
        let current = self
            .connection
            .query_row(
                "SELECT a.id, a.current_version, v.bundle FROM apps a
                 JOIN versions v ON v.app_id = a.id AND v.version = a.current_version WHERE a.name = ?1",
                [name],
                |r| Ok(Current { app_id: r.get(0)?, version: r.get::<_, i64>(1)? as u64, bundle: r.get(2)? }),
            )
            .optional()?;
        Ok(current)
    }

    /// Every app with a serving version, by name.
    pub fn list(&self) -> Result<Vec<AppRow>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT a.name, a.current_version, v.bundle, v.created_at_ms FROM apps a
             JOIN versions v ON v.app_id = a.id AND v.version = a.current_version ORDER BY a.name",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(AppRow {
                name: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                bundle: r.get(2)?,
                deployed_at_ms: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_version_never_becomes_current() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("h.db")).unwrap();
        assert_eq!(store.current("a").unwrap(), None);
        let (id, v1) = store.begin_version("a", "b1", 1).unwrap();
        assert_eq!(store.current("a").unwrap(), None, "starting is not serving");
        store.finish_version(id, v1, Outcome::Serving).unwrap();
        let (_, v2) = store.begin_version("a", "b2", 2).unwrap();
        store.finish_version(id, v2, Outcome::Failed).unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(
            store.current("a").unwrap(),
            Some(Current {
                app_id: id,
                version: 1,
                bundle: "b1".into()
            })
        );
        let (_, v3) = store.begin_version("a", "b3", 3).unwrap();
        assert_eq!(v3, 3, "numbers are never reused");
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
