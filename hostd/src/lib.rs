//! The host daemon: runs steady apps on one machine.
//!
//! A host stores bundles content-addressed in the cluster's blob store and unpacks them ([`bundle`]), replicates app databases with Litestream ([`replica`]), keeps its apps and their
//! versions in SQLite ([`store`]), runs each app as Bun inside a bubblewrap sandbox on a Unix
//! socket ([`sandbox`], [`process`]), started ahead of need ([`warm`]), under kernel limits ([`cgroup`]), starts apps on demand and swaps versions on deploy
//! ([`apps`]), forwards app traffic from the load balancers to the app's socket ([`ingress`]),
//! serves its control API ([`api`]) and registers with the slicer ([`membership`]). Apps'
//! environment variables are sealed in the blob store ([`secrets`]); `steady db` runs bounded
//! SQL on an app's database ([`db`]). One hostd holds a data directory, and ends what an
//! earlier run left running there ([`leftovers`]).

pub mod api;
pub mod apps;
pub mod build;
pub mod bundle;
pub mod cgroup;
pub mod config;
pub mod db;
pub mod ingress;
pub mod leftovers;
pub mod log;
pub mod membership;
pub mod metrics;
pub mod process;
pub mod replica;
pub mod sandbox;
pub mod schedule;
pub mod secrets;
pub mod store;
pub mod warm;

/// Milliseconds since the Unix epoch, for records and log lines.
pub fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
