//! The slicer's durable state in SQLite: hosts, slice owners, apps and the table version.
//!
//! Only this module touches the slicer's database. Every change that alters the routing
//! table bumps the version in the same transaction, so a table read back after a crash is
//! exactly a table that was served.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use steady_proto::slice::{slice_of, SLICE_COUNT};
use steady_proto::wire::{AppDeployed, AppEntry, HostEntry, RoutingTable, UNASSIGNED};

use crate::planner;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("slicer database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("host {0:?} is not registered")]
    UnknownHost(String),
    #[error("app {app:?} belongs to slice {slice}, owned by {owner:?}, not by {host:?}")]
    NotOwner { app: String, slice: u32, owner: Option<String>, host: String },
    #[error("app {app:?} is moving to host {to:?}; try again in a few seconds")]
    Moving { app: String, to: String },
    #[error("host {0:?} is the last host that takes apps; start another host before draining it")]
    LastHost(String),
    #[error("the move of {0:?} no longer matches the table (its holder or target changed)")]
    StaleMove(String),
}

/// How many table versions the history keeps.
const HISTORY_KEPT: i64 = 10_000;

/// The slicer's database. Not thread-safe by itself; the API wraps it in a mutex.
pub struct Store {
    connection: Connection,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY,
    ingress_addr TEXT NOT NULL,
    api_addr TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    draining INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS slices (slice INTEGER PRIMARY KEY, host_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    bundle TEXT,
    expires_at_ms INTEGER,
    moving_to TEXT
);
CREATE TABLE IF NOT EXISTS history (version INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, reason TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('table_version', 0);
";

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(SCHEMA)?;
        connection.execute_batch(crate::identity::SCHEMA)?;
        migrate(&connection)?;
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        crate::identity::claim_unclaimed(&connection, now_ms as u64)?;
        Ok(Self { connection })
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// Adds a host, or updates the addresses of a known one (hosts keep their id across
    /// restarts but may come back on new ports). A new host triggers a rebalance.
    pub fn register_host(&mut self, host: &HostEntry, now_ms: u64) -> Result<u64, StoreError> {
        let tx = self.connection.transaction()?;
        let known: Option<(String, String)> = tx
            .query_row("SELECT ingress_addr, api_addr FROM hosts WHERE id = ?1", [&host.id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let unchanged = known.as_ref().is_some_and(|(i, a)| *i == host.ingress_addr && *a == host.api_addr);
        if unchanged {
            return table_version(&tx);
        }
        tx.execute(
            "INSERT INTO hosts (id, ingress_addr, api_addr, registered_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET ingress_addr = excluded.ingress_addr, api_addr = excluded.api_addr",
            params![host.id, host.ingress_addr, host.api_addr, now_ms as i64],
        )?;
        if known.is_none() {
            rebalance(&tx)?;
        }
        let version = bump_version(&tx, &format!("host {} registered", host.id))?;
        tx.commit()?;
        Ok(version)
    }

    /// Removes a dead host: its slices go to the remaining hosts (balanced by apps). The app
    /// records keep naming it, so new owners know whose apps they are taking over. Returns the
    /// new table version, or `None` if the host is unknown.
    pub fn remove_host(&mut self, host_id: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.connection.transaction()?;
        if tx.execute("DELETE FROM hosts WHERE id = ?1", [host_id])? == 0 {
            return Ok(None);
        }
        assert!(!hosts(&tx)?.is_empty(), "the last host is never removed");
        tx.execute("DELETE FROM slices WHERE host_id = ?1", [host_id])?;
        rebalance(&tx)?;
        let version = bump_version(&tx, &format!("host {} removed", host_id))?;
        tx.commit()?;
        Ok(Some(version))
    }

    /// Records that `host_id` now serves `name` at `version`. The host that holds the app may
    /// record a new version unless a move of the app is under way; an app nobody live holds
    /// (new, released, or its holder died) may be recorded only by its slice's owner. So a
    /// host with a stale view cannot claim an app, and a move is never raced by a deploy.
    pub fn app_deployed(&mut self, name: &str, deployed: &AppDeployed, now_ms: u64) -> Result<u64, StoreError> {
        let host_id = deployed.host_id.as_str();
        let tx = self.connection.transaction()?;
        let slice = slice_of(name);
        let owner: Option<String> =
            tx.query_row("SELECT host_id FROM slices WHERE slice = ?1", [slice], |r| r.get(0)).optional()?;
        let record: Option<(String, Option<String>)> = tx
            .query_row("SELECT host_id, moving_to FROM apps WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let live = |id: &str| -> Result<bool, StoreError> {
            Ok(tx.query_row("SELECT COUNT(*) FROM hosts WHERE id = ?1", [id], |r| r.get::<_, i64>(0))? > 0)
        };
        match record {
            Some((holder, Some(to))) if holder == host_id || live(&holder)? => {
                return Err(StoreError::Moving { app: name.into(), to });
            }
            Some((holder, None)) if holder == host_id => {}
            Some((holder, _)) if live(&holder)? => {
                return Err(StoreError::NotOwner {
                    app: name.into(),
                    slice,
                    owner: Some(holder),
                    host: host_id.into(),
                });
            }
            _ if owner.as_deref() != Some(host_id) => {
                return Err(StoreError::NotOwner { app: name.into(), slice, owner, host: host_id.into() });
            }
            _ => {}
        }
        tx.execute(
            "INSERT INTO apps (name, host_id, version, updated_at_ms, bundle, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET host_id = excluded.host_id, version = excluded.version,
             updated_at_ms = excluded.updated_at_ms, bundle = excluded.bundle,
             expires_at_ms = excluded.expires_at_ms, moving_to = NULL",
            params![
                name,
                host_id,
                deployed.version as i64,
                now_ms as i64,
                deployed.bundle,
                deployed.expires_at_ms.map(|v| v as i64)
            ],
        )?;
        // An app recorded without going through the API's check belongs to the admin.
        tx.execute(
            "INSERT OR IGNORE INTO claims (name, owner, claimed_at_ms) VALUES (?1, ?2, ?3)",
            params![name, crate::identity::ADMIN_OWNER, now_ms as i64],
        )?;
        let table_version = bump_version(&tx, &format!("app {} recorded on {}", name, host_id))?;
        tx.commit()?;
        Ok(table_version)
    }

    /// Removes `name` from the table. Only the host that holds the app may remove it; an app
    /// the slicer does not know is already gone (not an error, so a retried delete succeeds).
    pub fn app_deleted(&mut self, name: &str, host_id: &str) -> Result<u64, StoreError> {
        let tx = self.connection.transaction()?;
        let holder: Option<String> =
            tx.query_row("SELECT host_id FROM apps WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        match holder {
            None => {
                // A claim whose app never came up is freed with the delete.
                tx.execute("DELETE FROM claims WHERE name = ?1", [name])?;
                let version = table_version(&tx)?;
                tx.commit()?;
                return Ok(version);
            }
            Some(holder) if holder != host_id => {
                return Err(StoreError::NotOwner {
                    app: name.into(),
                    slice: slice_of(name),
                    owner: Some(holder),
                    host: host_id.into(),
                });
            }
            Some(_) => {}
        }
        tx.execute("DELETE FROM apps WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM claims WHERE name = ?1", [name])?;
        let version = bump_version(&tx, &format!("app {} deleted", name))?;
        tx.commit()?;
        Ok(version)
    }

    /// Records that `host_id` let `name` go (its slice has another owner now): the record stays,
    /// with no holder, so the slice's owner adopts it. Only the holder may release an app.
    pub fn app_released(&mut self, name: &str, host_id: &str) -> Result<u64, StoreError> {
        let tx = self.connection.transaction()?;
        let changed = tx.execute("UPDATE apps SET host_id = '' WHERE name = ?1 AND host_id = ?2", [name, host_id])?;
        if changed == 0 {
            return Err(StoreError::NotOwner {
                app: name.into(),
                slice: slice_of(name),
                owner: None,
                host: host_id.into(),
            });
        }
        let version = bump_version(&tx, &format!("app {} released by {}", name, host_id))?;
        tx.commit()?;
        Ok(version)
    }

    /// Marks `host_id` as draining (its slices go to the other hosts and the mover takes its
    /// apps off) or, with `draining` false, as taking apps again. Refuses to drain the last
    /// host that takes apps.
    pub fn set_draining(&mut self, host_id: &str, draining: bool) -> Result<u64, StoreError> {
        let tx = self.connection.transaction()?;
        let known = hosts(&tx)?;
        let Some(host) = known.iter().find(|h| h.id == host_id) else {
            return Err(StoreError::UnknownHost(host_id.into()));
        };
        if host.draining == draining {
            return table_version(&tx);
        }
        if draining && !known.iter().any(|h| h.id != host_id && !h.draining) {
            return Err(StoreError::LastHost(host_id.into()));
        }
        tx.execute("UPDATE hosts SET draining = ?2 WHERE id = ?1", params![host_id, draining])?;
        rebalance(&tx)?;
        let version = bump_version(&tx, &format!("host {} draining: {}", host_id, draining))?;
        tx.commit()?;
        Ok(version)
    }

    /// Records that the move of `name` from `from` to `to` has begun: LBs start probing the
    /// old holder. Restarting a move toward a new target (the owner changed) is allowed.
    pub fn move_started(&mut self, name: &str, from: &str, to: &str) -> Result<u64, StoreError> {
        let tx = self.connection.transaction()?;
        let changed = tx.execute(
            "UPDATE apps SET moving_to = ?3 WHERE name = ?1 AND host_id = ?2 AND moving_to IS NOT ?3",
            params![name, from, to],
        )?;
        if changed == 0 {
            let already: bool = tx.query_row(
                "SELECT COUNT(*) FROM apps WHERE name = ?1 AND host_id = ?2 AND moving_to = ?3",
                params![name, from, to],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            return if already { table_version(&tx) } else { Err(StoreError::StaleMove(name.into())) };
        }
        let version = bump_version(&tx, &format!("move of {} from {} to {} started", name, from, to))?;
        tx.commit()?;
        Ok(version)
    }

    /// Records that `to` serves `name` now (the move from `from` is complete).
    pub fn move_done(&mut self, name: &str, from: &str, to: &str, now_ms: u64) -> Result<u64, StoreError> {
        let tx = self.connection.transaction()?;
        let changed = tx.execute(
            "UPDATE apps SET host_id = ?3, moving_to = NULL, updated_at_ms = ?4
             WHERE name = ?1 AND host_id = ?2 AND moving_to = ?3",
            params![name, from, to, now_ms as i64],
        )?;
        if changed == 0 {
            return Err(StoreError::StaleMove(name.into()));
        }
        let version = bump_version(&tx, &format!("move of {} from {} to {} done", name, from, to))?;
        tx.commit()?;
        Ok(version)
    }

    /// Rebalances the slices of the hosts that take apps by `weight` of each app (the load
    /// its host reports; see [`crate::balance`]). Returns the new table version, or `None` when
    /// the planner keeps every slice where it is (hosts within its tolerance).
    pub fn rebalance_by(&mut self, weight: impl Fn(&str) -> u64) -> Result<Option<u64>, StoreError> {
        let tx = self.connection.transaction()?;
        let mut weights = vec![0u64; SLICE_COUNT as usize];
        {
            let mut statement = tx.prepare("SELECT name FROM apps")?;
            for name in statement.query_map([], |r| r.get::<_, String>(0))? {
                let name = name?;
                weights[slice_of(&name) as usize] += weight(&name);
            }
        }
        if !rebalance_with(&tx, &weights)? {
            return Ok(None);
        }
        let version = bump_version(&tx, "rebalanced by load")?;
        tx.commit()?;
        Ok(Some(version))
    }

    /// The newest `limit` versions of the table with when and why each was made, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut statement =
            self.connection.prepare("SELECT version, at_ms, reason FROM history ORDER BY version DESC LIMIT ?1")?;
        let rows = statement.query_map([limit.min(HISTORY_KEPT as usize) as i64], |r| {
            Ok(HistoryEntry {
                version: r.get::<_, i64>(0)? as u64,
                at_ms: r.get::<_, i64>(1)? as u64,
                reason: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Reads the whole routing table as it is now.
    pub fn table(&self) -> Result<RoutingTable, StoreError> {
        let version = table_version(&self.connection)?;
        let hosts = hosts(&self.connection)?;
        let mut slices = vec![UNASSIGNED; SLICE_COUNT as usize];
        let mut statement = self.connection.prepare("SELECT slice, host_id FROM slices")?;
        let rows = statement.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (slice, host_id) = row?;
            let index = hosts.iter().position(|h| h.id == host_id);
            if let (Some(index), Some(entry)) = (index, slices.get_mut(slice as usize)) {
                *entry = u16::try_from(index).unwrap_or(UNASSIGNED);
            }
        }
        let apps = apps(&self.connection)?;
        let table = RoutingTable { version, hosts, slices, apps };
        debug_assert_eq!(table.check(), Ok(()));
        Ok(table)
    }
}

fn table_version(connection: &Connection) -> Result<u64, StoreError> {
    let version: i64 = connection.query_row("SELECT value FROM meta WHERE key = 'table_version'", [], |r| r.get(0))?;
    Ok(version as u64)
}

/// Bumps the table version and records why in the assignment history (the newest
/// [`HISTORY_KEPT`] versions are kept).
fn bump_version(tx: &Transaction, reason: &str) -> Result<u64, StoreError> {
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'table_version'", [])?;
    let version = table_version(tx)?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    tx.execute(
        "INSERT OR REPLACE INTO history (version, at_ms, reason) VALUES (?1, ?2, ?3)",
        params![version as i64, now_ms as i64, reason],
    )?;
    tx.execute("DELETE FROM history WHERE version <= ?1", [version as i64 - HISTORY_KEPT])?;
    Ok(version)
}

/// One entry of the assignment history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub at_ms: u64,
    pub reason: String,
}

fn hosts(connection: &Connection) -> Result<Vec<HostEntry>, StoreError> {
    let mut statement = connection.prepare("SELECT id, ingress_addr, api_addr, draining FROM hosts ORDER BY id")?;
    let rows = statement.query_map([], |r| {
        Ok(HostEntry { id: r.get(0)?, ingress_addr: r.get(1)?, api_addr: r.get(2)?, draining: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Brings a database made by an earlier release up to [`SCHEMA`].
fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let has_bundle: bool =
        connection
            .query_row("SELECT COUNT(*) FROM pragma_table_info('apps') WHERE name = 'bundle'", [], |r| r.get(0))?;
    if !has_bundle {
        connection.execute_batch(
            "ALTER TABLE apps ADD COLUMN bundle TEXT; ALTER TABLE apps ADD COLUMN expires_at_ms INTEGER;",
        )?;
    }
    let has_column = |table: &str, column: &str| -> Result<bool, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1");
        Ok(connection.query_row(&sql, [column], |r| r.get::<_, i64>(0))? > 0)
    };
    if !has_column("apps", "moving_to")? {
        connection.execute_batch("ALTER TABLE apps ADD COLUMN moving_to TEXT;")?;
    }
    if !has_column("hosts", "draining")? {
        connection.execute_batch("ALTER TABLE hosts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;")?;
    }
    Ok(())
}

fn apps(connection: &Connection) -> Result<Vec<AppEntry>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT name, host_id, version, updated_at_ms, bundle, expires_at_ms, moving_to FROM apps ORDER BY name",
    )?;
    let rows = statement.query_map([], |r| {
        Ok(AppEntry {
            name: r.get(0)?,
            host_id: r.get(1)?,
            version: r.get::<_, i64>(2)? as u64,
            updated_at_ms: r.get::<_, i64>(3)? as u64,
            bundle: r.get(4)?,
            expires_at_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            moving_to: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many recorded apps fall in each slice: the weights the planner balances.
fn app_counts_per_slice(connection: &Connection) -> Result<Vec<u64>, StoreError> {
    let mut weights = vec![0u64; SLICE_COUNT as usize];
    let mut statement = connection.prepare("SELECT name FROM apps")?;
    for name in statement.query_map([], |r| r.get::<_, String>(0))? {
        weights[slice_of(&name?) as usize] += 1;
    }
    Ok(weights)
}

/// Runs the planner over the registered hosts that take apps (all of them if every host is
/// draining), balancing them by app count, and writes the new slice owners. A draining host's
/// slices are orphans to the planner, so they go to the others.
fn rebalance(tx: &Transaction) -> Result<(), StoreError> {
    rebalance_with(tx, &app_counts_per_slice(tx)?).map(|_| ())
}

/// [`rebalance`] with explicit weights per slice; returns whether any slice changed owner.
fn rebalance_with(tx: &Transaction, weights: &[u64]) -> Result<bool, StoreError> {
    let all = hosts(tx)?;
    let mut eligible: Vec<&HostEntry> = all.iter().filter(|h| !h.draining).collect();
    if eligible.is_empty() {
        eligible = all.iter().collect();
    }
    let mut current = vec![None; SLICE_COUNT as usize];
    {
        let mut statement = tx.prepare("SELECT slice, host_id FROM slices")?;
        let rows = statement.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (slice, host_id) = row?;
            if let Some(entry) = current.get_mut(slice as usize) {
                *entry = eligible.iter().position(|h| h.id == host_id);
            }
        }
    }
    let next = planner::rebalance_weighted(&current, weights, eligible.len());
    let mut update = tx.prepare("INSERT OR REPLACE INTO slices (slice, host_id) VALUES (?1, ?2)")?;
    let mut changed = false;
    for (slice, (before, after)) in current.iter().zip(&next).enumerate() {
        // `before` is `None` both for an unowned slice and for a draining host's slice.
        if before != after {
            let host = after.map(|h| eligible[h].id.as_str()).ok_or_else(|| StoreError::UnknownHost(String::new()))?;
            update.execute(params![slice as u32, host])?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    fn deployed(host_id: &str) -> AppDeployed {
        AppDeployed { host_id: host_id.into(), version: 1, bundle: Some("ab".repeat(32)), expires_at_ms: None }
    }

    use super::*;

    fn host(id: &str) -> HostEntry {
        HostEntry { id: id.into(), ingress_addr: format!("{id}:1"), api_addr: format!("{id}:2"), draining: false }
    }

    #[test]
    fn state_survives_reopen_and_reregistration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slicer.db");
        let mut store = Store::open(&path).unwrap();
        for id in ["h1", "h2", "h3"] {
            store.register_host(&host(id), 1).unwrap();
        }
        let owner = store.table().unwrap().owner_of("hello").unwrap().id.clone();
        let v = store.app_deployed("hello", &deployed(&owner), 2).unwrap();
        drop(store);

        let mut store = Store::open(&path).unwrap();
        let before = store.table().unwrap();
        assert_eq!(before.version, v);
        assert_eq!(before.apps.len(), 1);
        assert_eq!(store.register_host(&host("h2"), 3).unwrap(), v, "same addresses: no new version");
        assert_eq!(store.table().unwrap(), before);
    }

    #[test]
    fn only_the_owner_may_claim_an_app() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store.register_host(&host("h1"), 1).unwrap();
        store.register_host(&host("h2"), 1).unwrap();
        let owner = store.table().unwrap().owner_of("hello").unwrap().id.clone();
        let other = if owner == "h1" { "h2" } else { "h1" };
        assert!(matches!(store.app_deployed("hello", &deployed(other), 1), Err(StoreError::NotOwner { .. })));
        assert!(store.app_deployed("hello", &deployed(&owner), 1).is_ok());
        assert!(matches!(store.app_deleted("hello", other), Err(StoreError::NotOwner { .. })));
        let version = store.app_deleted("hello", &owner).unwrap();
        assert!(store.table().unwrap().apps.is_empty());
        assert_eq!(store.app_deleted("hello", &owner).unwrap(), version, "deleting twice is harmless");
    }

    #[test]
    fn a_new_host_gets_its_share_of_the_apps() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store.register_host(&host("h1"), 1).unwrap();
        store.register_host(&host("h2"), 1).unwrap();
        let names: Vec<String> = (0..1000).map(|i| format!("app-{i}")).collect();
        for name in &names {
            let owner = store.table().unwrap().owner_of(name).unwrap().id.clone();
            store.app_deployed(name, &deployed(&owner), 2).unwrap();
        }
        store.register_host(&host("h3"), 3).unwrap();
        let table = store.table().unwrap();
        let mut per_host = std::collections::BTreeMap::<String, usize>::new();
        for name in &names {
            *per_host.entry(table.owner_of(name).unwrap().id.clone()).or_default() += 1;
        }
        let max = per_host.values().max().copied().unwrap_or(0);
        assert_eq!(per_host.len(), 3, "apps per host {per_host:?}");
        assert!(max * 3 * 100 <= names.len() * 110, "apps per host {per_host:?}");
    }

    fn store_with_apps(hosts: &[&str], apps: usize) -> (tempfile::TempDir, Store, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        for id in hosts {
            store.register_host(&host(id), 1).unwrap();
        }
        let names: Vec<String> = (0..apps).map(|i| format!("app-{i}")).collect();
        for name in &names {
            let owner = store.table().unwrap().owner_of(name).unwrap().id.clone();
            store.app_deployed(name, &deployed(&owner), 2).unwrap();
        }
        (dir, store, names)
    }

    fn weight_per_host(table: &RoutingTable, names: &[String], weight: impl Fn(&str) -> u64) -> Vec<u64> {
        table
            .hosts
            .iter()
            .map(|h| names.iter().filter(|n| table.owner_of(n).unwrap().id == h.id).map(|n| weight(n)).sum())
            .collect()
    }

    #[test]
    fn load_moves_slices_off_a_hot_host_and_a_balanced_cluster_stays_put() {
        let (_dir, mut store, names) = store_with_apps(&["h1", "h2", "h3"], 600);
        let hot: std::collections::HashSet<String> = {
            let table = store.table().unwrap();
            names.iter().filter(|n| table.owner_of(n).unwrap().id == "h1").take(60).cloned().collect()
        };
        let weight = |name: &str| if hot.contains(name) { 1_000 } else { 100 };
        let before = weight_per_host(&store.table().unwrap(), &names, weight);
        assert!(store.rebalance_by(weight).unwrap().is_some(), "h1 is hot: {before:?}");
        let after = weight_per_host(&store.table().unwrap(), &names, weight);
        let mean = after.iter().sum::<u64>() as f64 / 3.0;
        let max = *after.iter().max().unwrap() as f64;
        assert!(max / mean <= 1.10, "before {before:?}, after {after:?}");
        assert_eq!(store.rebalance_by(weight).unwrap(), None, "balanced: nothing moves again");
    }

    #[test]
    fn a_draining_host_loses_every_slice_and_the_last_host_cannot_drain() {
        let (_dir, mut store, _names) = store_with_apps(&["h1", "h2"], 100);
        store.set_draining("h1", true).unwrap();
        let table = store.table().unwrap();
        assert!(table.hosts[0].draining);
        assert!(table.slices.iter().all(|&s| table.hosts[usize::from(s)].id == "h2"));
        assert!(matches!(store.set_draining("h2", true), Err(StoreError::LastHost(_))));
        assert!(matches!(store.set_draining("nope", true), Err(StoreError::UnknownHost(_))));
        store.set_draining("h1", false).unwrap();
        let table = store.table().unwrap();
        assert!(table.slices.iter().any(|&s| table.hosts[usize::from(s)].id == "h1"), "undrained: it takes slices");
    }

    #[test]
    fn a_move_is_recorded_only_for_its_holder_and_blocks_deploys_until_done() {
        let (_dir, mut store, names) = store_with_apps(&["h1", "h2"], 20);
        let name = &names[0];
        let holder = store.table().unwrap().app(name).unwrap().host_id.clone();
        let other = if holder == "h1" { "h2" } else { "h1" };
        assert!(matches!(store.move_started(name, other, &holder), Err(StoreError::StaleMove(_))));
        store.move_started(name, &holder, other).unwrap();
        let again = store.move_started(name, &holder, other).unwrap();
        assert_eq!(again, store.table().unwrap().version, "starting twice changes nothing");
        assert!(matches!(store.app_deployed(name, &deployed(&holder), 3), Err(StoreError::Moving { .. })));
        store.move_done(name, &holder, other, 4).unwrap();
        let entry = store.table().unwrap().app(name).cloned().unwrap();
        assert_eq!((entry.host_id.as_str(), entry.moving_to), (other, None));
        assert!(matches!(store.move_done(name, &holder, other, 5), Err(StoreError::StaleMove(_))));
        let history = store.history(2).unwrap();
        assert_eq!(history[0].version, store.table().unwrap().version, "every version is in the history");
        assert_eq!(history[0].reason, format!("move of {name} from {holder} to {other} done"));
        assert!(history[1].reason.ends_with("started"), "{history:?}");
    }
}
