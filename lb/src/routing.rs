//! The LB's view of the routing table: swapped atomically as a whole, read without locks.
//!
//! [`Routes`] is the seam between where tables come from (the slicer watch, or a test) and
//! the proxies that read them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use steady_proto::slice::slice_of;
use steady_proto::wire::RoutingTable;
use tokio::sync::watch;

/// Addresses of one host, parsed once when a table arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAddrs {
    pub ingress: SocketAddr,
    pub api: SocketAddr,
}

/// A routing table in the form the hot path wants: parsed addresses and a set of app names.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub version: u64,
    hosts: Vec<HostAddrs>,
    slices: Vec<u16>,
    apps: HashSet<String>,
}

impl RouteTable {
    /// Converts a wire table, refusing one that breaks its invariants or has bad addresses.
    pub fn from_wire(table: &RoutingTable) -> Result<Self, String> {
        table.check()?;
        let hosts = table
            .hosts
            .iter()
            .map(|h| {
                let ingress =
                    h.ingress_addr.parse().map_err(|e| format!("host {}: ingress {:?}: {e}", h.id, h.ingress_addr))?;
                let api = h.api_addr.parse().map_err(|e| format!("host {}: api {:?}: {e}", h.id, h.api_addr))?;
                Ok(HostAddrs { ingress, api })
            })
            .collect::<Result<_, String>>()?;
        let apps = table.apps.iter().map(|a| a.name.clone()).collect();
        Ok(Self { version: table.version, hosts, slices: table.slices.clone(), apps })
    }

    /// The host owning `app` by the ring, whether or not the app exists.
    pub fn owner(&self, app: &str) -> Option<HostAddrs> {
        let index = *self.slices.get(slice_of(app) as usize)?;
        self.hosts.get(usize::from(index)).copied()
    }

    /// The host serving `app`, if the app exists.
    pub fn route(&self, app: &str) -> Option<HostAddrs> {
        if !self.apps.contains(app) {
            return None;
        }
        self.owner(app)
    }
}

/// The current table plus a channel announcing each new version.
pub struct Routes {
    table: ArcSwap<RouteTable>,
    version: watch::Sender<u64>,
}

impl Routes {
    /// Starts with an empty table (version 0: every app unknown).
    pub fn new() -> Arc<Self> {
        Arc::new(Self { table: ArcSwap::from_pointee(RouteTable::default()), version: watch::channel(0).0 })
    }

    /// The current table.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Installs `table` if it is newer than the current one; returns whether it was.
    pub fn install(&self, table: RouteTable) -> bool {
        let version = table.version;
        if version <= self.table.load().version {
            return false;
        }
        self.table.store(Arc::new(table));
        self.version.send_replace(version);
        true
    }

    /// Waits until the installed table is at least `version`, for at most `wait`.
    pub async fn wait_for(&self, version: u64, wait: std::time::Duration) -> bool {
        let mut receiver = self.version.subscribe();
        tokio::time::timeout(wait, receiver.wait_for(|v| *v >= version)).await.is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steady_proto::slice::SLICE_COUNT;
    use steady_proto::wire::{AppEntry, HostEntry};

    fn wire(version: u64) -> RoutingTable {
        RoutingTable {
            version,
            hosts: vec![HostEntry {
                id: "h1".into(),
                ingress_addr: "127.0.0.2:9".into(),
                api_addr: "127.0.0.2:10".into(),
            }],
            slices: vec![0; SLICE_COUNT as usize],
            apps: vec![AppEntry {
                name: "hello".into(),
                host_id: "h1".into(),
                version: 1,
                updated_at_ms: 0,
                bundle: None,
                expires_at_ms: None,
            }],
        }
    }

    #[test]
    fn routes_known_apps_only_and_keeps_the_newest_table() {
        let routes = Routes::new();
        assert!(routes.current().route("hello").is_none());
        assert!(routes.install(RouteTable::from_wire(&wire(5)).unwrap()));
        assert_eq!(routes.current().route("hello").unwrap().ingress, "127.0.0.2:9".parse().unwrap());
        assert!(routes.current().route("nope").is_none());
        assert!(routes.current().owner("nope").is_some());
        assert!(!routes.install(RouteTable::from_wire(&wire(4)).unwrap()), "older table ignored");
        assert_eq!(routes.current().version, 5);
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut table = wire(1);
        table.hosts[0].ingress_addr = "not an address".into();
        assert!(RouteTable::from_wire(&table).is_err());
        let mut table = wire(1);
        table.slices.pop();
        assert!(RouteTable::from_wire(&table).is_err());
    }
}
