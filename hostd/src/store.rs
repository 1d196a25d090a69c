//! The host's own records in SQLite: which apps it holds, every version attempt, and when
//! temporary apps expire.
//!
//! Only this module touches the host's database.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
pub use steady_proto::wire::{HostApp as AppRow, VersionInfo as VersionRow};

/// Errors of the host store.
#[derive(Debug, thiserror::Error)]
#[error("host database: {0}")]
pub struct StoreError(#[from] rusqlite::Error);

/// One version of an app, enough to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Numeric id of the app on this host; short, so it fits in socket paths.
    pub app_id: i64,
    pub version: u64,
    /// Bundle address (hex SHA-256).
    pub bundle: String,
}

/// How a version attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Started and passed its check; it becomes the current version.
    Ready,
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
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS versions (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    bundle TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('starting', 'ready', 'failed')),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (app_id, version)
);
CREATE TABLE IF NOT EXISTS schedules (
    app TEXT NOT NULL,
    expression TEXT NOT NULL,
    last_tick_ms INTEGER NOT NULL,
    PRIMARY KEY (app, expression)
);
";

/// One cron schedule of an app and the last tick that was run (or skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub app: String,
    pub expression: String,
    pub last_tick_ms: u64,
}

impl Store {
    /// Opens (creating) the database at `path`. Attempts left `starting` by a crash are failed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(SCHEMA)?;
        connection.execute("UPDATE versions SET status = 'failed' WHERE status = 'starting'", [])?;
        Ok(Self { connection })
    }

    /// Records a new version attempt of `name` with `bundle`; creates the app on first deploy
    /// and sets when it expires (`None`: permanent). Returns the app id and the new version
    /// number (one above every earlier attempt).
    pub fn begin_version(
        &mut self,
        name: &str,
        bundle: &str,
        now_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<(i64, u64), StoreError> {
        let tx = self.connection.transaction()?;
        tx.execute("INSERT OR IGNORE INTO apps (name, created_at_ms) VALUES (?1, ?2)", params![name, now_ms as i64])?;
        let app_id: i64 = tx.query_row("SELECT id FROM apps WHERE name = ?1", [name], |r| r.get(0))?;
        tx.execute(
            "UPDATE apps SET expires_at_ms = ?2 WHERE id = ?1",
            params![app_id, expires_at_ms.map(|v| v as i64)],
        )?;
        let last: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM versions WHERE app_id = ?1", [app_id], |r| r.get(0))?;
        let version = last.unwrap_or(0) as u64 + 1;
        tx.execute(
            "INSERT INTO versions (app_id, version, bundle, status, created_at_ms)
             VALUES (?1, ?2, ?3, 'starting', ?4)",
            params![app_id, version as i64, bundle, now_ms as i64],
        )?;
        tx.commit()?;
        Ok((app_id, version))
    }

    /// Records `name` as serving `version` (bundle `bundle`), as the cluster knows it: how a
    /// host that lacks the app (a new disk, a new owner, a move) takes it over. A no-op if the
    /// app is already here, or while a deploy of it is under way here.
    ///
    /// What failed deploys left of the app (a row with no current version: none of it ever
    /// served here) gives way. Otherwise a deploy that lost a race with a move — begun here just
    /// as the app left, refused by the slicer — would keep the app from ever coming back.
    pub fn adopt(
        &mut self,
        name: &str,
        version: u64,
        bundle: &str,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        assert!(version > 0);
        let tx = self.connection.transaction()?;
        let leftover = "SELECT id FROM apps WHERE name = ?1 AND current_version IS NULL
             AND NOT EXISTS (SELECT 1 FROM versions WHERE app_id = apps.id AND status = 'starting')";
        tx.execute(&format!("DELETE FROM versions WHERE app_id IN ({leftover})"), [name])?;
        tx.execute(&format!("DELETE FROM apps WHERE id IN ({leftover})"), [name])?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO apps (name, current_version, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, version as i64, now_ms as i64, expires_at_ms.map(|v| v as i64)],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        let app_id: i64 = tx.query_row("SELECT id FROM apps WHERE name = ?1", [name], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO versions (app_id, version, bundle, status, created_at_ms) VALUES (?1, ?2, ?3, 'ready', ?4)",
            params![app_id, version as i64, bundle, now_ms as i64],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Records how a version attempt ended; a ready version becomes the app's current one.
    pub fn finish_version(&mut self, app_id: i64, version: u64, outcome: Outcome) -> Result<(), StoreError> {
        let tx = self.connection.transaction()?;
        let status = match outcome {
            Outcome::Ready => "ready",
            Outcome::Failed => "failed",
        };
        tx.execute(
            "UPDATE versions SET status = ?3 WHERE app_id = ?1 AND version = ?2",
            params![app_id, version as i64, status],
        )?;
        if outcome == Outcome::Ready {
            tx.execute("UPDATE apps SET current_version = ?2 WHERE id = ?1", params![app_id, version as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The serving version of `name`, if the app exists and has one.
    pub fn current(&self, name: &str) -> Result<Option<Current>, StoreError> {
        self.version_where("v.version = a.current_version", params![name])
    }

    /// A ready version of `name`: `version`, or the newest ready one below the current.
    pub fn rollback_target(&self, name: &str, version: Option<u64>) -> Result<Option<Current>, StoreError> {
        match version {
            Some(v) => self.version_where("v.version = ?2 AND v.status = 'ready'", params![name, v as i64]),
            None => self.version_where(
                "v.version < a.current_version AND v.status = 'ready' ORDER BY v.version DESC LIMIT 1",
                params![name],
            ),
        }
    }

    /// One version of the app named by `?1` matching `condition`.
    fn version_where(&self, condition: &str, values: &[&dyn rusqlite::ToSql]) -> Result<Option<Current>, StoreError> {
        let sql = format!(
            "SELECT a.id, v.version, v.bundle FROM apps a JOIN versions v ON v.app_id = a.id
             WHERE a.name = ?1 AND {condition}"
        );
        // Every woken request asks for its app's current version: a cached statement skips
        // SQLite's parse and plan, which cost more than the proxying itself (docs/notes.md).
        let row = self
            .connection
            .prepare_cached(&sql)?
            .query_row(values, |r| {
                Ok(Current { app_id: r.get(0)?, version: r.get::<_, i64>(1)? as u64, bundle: r.get(2)? })
            })
            .optional()?;
        Ok(row)
    }

    /// Every version attempt of `name`, newest first (empty if the app is unknown).
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRow>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT v.version, v.bundle, v.status, v.created_at_ms, v.version = a.current_version
             FROM apps a JOIN versions v ON v.app_id = a.id WHERE a.name = ?1 ORDER BY v.version DESC",
        )?;
        let rows = statement.query_map([name], |r| {
            Ok(VersionRow {
                version: r.get::<_, i64>(0)? as u64,
                bundle: r.get(1)?,
                status: r.get(2)?,
                created_at_ms: r.get::<_, i64>(3)? as u64,
                current: r.get::<_, Option<bool>>(4)?.unwrap_or(false),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every app with a serving version, by name.
    pub fn list(&self) -> Result<Vec<AppRow>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT a.name, a.current_version, v.bundle, v.created_at_ms, a.expires_at_ms FROM apps a
             JOIN versions v ON v.app_id = a.id AND v.version = a.current_version ORDER BY a.name",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(AppRow {
                name: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                bundle: r.get(2)?,
                deployed_at_ms: r.get::<_, i64>(3)? as u64,
                expires_at_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the temporary app `name` expires; `None` for a permanent or unknown app.
    pub fn expires_at(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let expires: Option<Option<i64>> = self
            .connection
            .query_row("SELECT expires_at_ms FROM apps WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        Ok(expires.flatten().map(|v| v as u64))
    }

    /// Names of temporary apps whose time is up at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut statement =
            self.connection.prepare("SELECT name FROM apps WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1")?;
        let rows = statement.query_map([now_ms as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Makes `expressions` the schedules of `app`. Kept schedules keep their last tick (so a
    /// deploy never runs a tick twice); new ones start from `now_ms`.
    pub fn set_schedules(&mut self, app: &str, expressions: &[String], now_ms: u64) -> Result<(), StoreError> {
        let tx = self.connection.transaction()?;
        let existing: Vec<String> = {
            let mut statement = tx.prepare("SELECT expression FROM schedules WHERE app = ?1")?;
            let rows = statement.query_map([app], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for gone in existing.iter().filter(|e| !expressions.contains(e)) {
            tx.execute("DELETE FROM schedules WHERE app = ?1 AND expression = ?2", params![app, gone])?;
        }
        for new in expressions.iter().filter(|e| !existing.contains(e)) {
            tx.execute(
                "INSERT INTO schedules (app, expression, last_tick_ms) VALUES (?1, ?2, ?3)",
                params![app, new, now_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every schedule of every app.
    pub fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        let mut statement = self.connection.prepare("SELECT app, expression, last_tick_ms FROM schedules")?;
        let rows = statement.query_map([], |r| {
            Ok(ScheduleRow { app: r.get(0)?, expression: r.get(1)?, last_tick_ms: r.get::<_, i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that the tick at `tick_ms` of `app`'s `expression` was taken.
    pub fn mark_tick(&mut self, app: &str, expression: &str, tick_ms: u64) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE schedules SET last_tick_ms = ?3 WHERE app = ?1 AND expression = ?2 AND last_tick_ms < ?3",
            params![app, expression, tick_ms as i64],
        )?;
        Ok(())
    }

    /// Forgets `name` and all its versions. Returns whether it existed.
    pub fn delete(&mut self, name: &str) -> Result<bool, StoreError> {
        let tx = self.connection.transaction()?;
        tx.execute("DELETE FROM schedules WHERE app = ?1", [name])?;
        tx.execute("DELETE FROM versions WHERE app_id = (SELECT id FROM apps WHERE name = ?1)", [name])?;
        let deleted = tx.execute("DELETE FROM apps WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(deleted > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("h.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn an_arriving_app_takes_the_place_of_what_failed_deploys_left_but_not_of_a_deploy_under_way() {
        let (_dir, mut store) = store();
        let (id, v1) = store.begin_version("a", "b1", 1, None).unwrap();
        assert!(!store.adopt("a", 8, "b8", None, 2).unwrap(), "a deploy of it is under way");
        store.finish_version(id, v1, Outcome::Failed).unwrap();
        assert!(store.adopt("a", 8, "b8", None, 3).unwrap(), "a failed deploy's leftovers give way");
        let current = store.current("a").unwrap().expect("the adopted version serves");
        assert_eq!((current.version, current.bundle.as_str()), (8, "b8"));
        assert!(!store.adopt("a", 9, "b9", None, 4).unwrap(), "an app that serves here stays as it is");
        let (_, next) = store.begin_version("a", "b10", 5, None).unwrap();
        assert_eq!(next, 9, "the next deploy follows the adopted version");
    }

    #[test]
    fn a_failed_version_never_becomes_current() {
        let (_dir, mut store) = store();
        assert_eq!(store.current("a").unwrap(), None);
        let (id, v1) = store.begin_version("a", "b1", 1, None).unwrap();
        assert_eq!(store.current("a").unwrap(), None, "starting is not serving");
        store.finish_version(id, v1, Outcome::Ready).unwrap();
        let (_, v2) = store.begin_version("a", "b2", 2, None).unwrap();
        store.finish_version(id, v2, Outcome::Failed).unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(store.current("a").unwrap(), Some(Current { app_id: id, version: 1, bundle: "b1".into() }));
        let (_, v3) = store.begin_version("a", "b3", 3, None).unwrap();
        assert_eq!(v3, 3, "numbers are never reused");
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn rollback_targets_only_ready_versions() {
        let (_dir, mut store) = store();
        for (bundle, outcome) in [("b1", Outcome::Ready), ("b2", Outcome::Failed), ("b3", Outcome::Ready)] {
            let (id, v) = store.begin_version("a", bundle, 1, None).unwrap();
            store.finish_version(id, v, outcome).unwrap();
        }
        assert_eq!(store.current("a").unwrap().unwrap().version, 3);
        assert_eq!(store.rollback_target("a", None).unwrap().unwrap().version, 1, "skips the failed v2");
        assert_eq!(store.rollback_target("a", Some(2)).unwrap(), None, "a failed version is no target");
        assert_eq!(store.rollback_target("a", Some(3)).unwrap().unwrap().bundle, "b3");
        let versions = store.versions("a").unwrap();
        assert_eq!(
            versions.iter().map(|v| (v.version, v.current)).collect::<Vec<_>>(),
            [(3, true), (2, false), (1, false)]
        );
    }

    #[test]
    fn temporary_apps_expire_and_deletion_forgets_everything() {
        let (_dir, mut store) = store();
        let (id, v) = store.begin_version("tmp", "b", 1, Some(100)).unwrap();
        store.finish_version(id, v, Outcome::Ready).unwrap();
        let (id, v) = store.begin_version("keep", "b", 1, None).unwrap();
        store.finish_version(id, v, Outcome::Ready).unwrap();
        assert!(store.expired(99).unwrap().is_empty());
        assert_eq!(store.expired(100).unwrap(), ["tmp"]);
        assert!(store.delete("tmp").unwrap());
        assert!(!store.delete("tmp").unwrap());
        assert!(store.versions("tmp").unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn attempts_interrupted_by_a_crash_are_failed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = Store::open(&path).unwrap();
        store.begin_version("a", "b", 1, None).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.versions("a").unwrap()[0].status, "failed");
    }

    #[test]
    fn schedules_keep_their_last_tick_across_redeploys() {
        let (_dir, mut store) = store();
        let exprs = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        store.set_schedules("a", &exprs(&["* * * * *", "0 * * * *"]), 100).unwrap();
        store.mark_tick("a", "* * * * *", 500).unwrap();
        store.mark_tick("a", "* * * * *", 400).unwrap();
        store.set_schedules("a", &exprs(&["* * * * *", "*/5 * * * *"]), 900).unwrap();
        let mut rows = store.schedules().unwrap();
        rows.sort_by(|x, y| x.expression.cmp(&y.expression));
        let ticks: Vec<(&str, u64)> = rows.iter().map(|r| (r.expression.as_str(), r.last_tick_ms)).collect();
        assert_eq!(ticks, [("* * * * *", 500), ("*/5 * * * *", 900)], "kept, never moved back, new from now");
        store.delete("a").unwrap();
        assert!(store.schedules().unwrap().is_empty());
    }
}
