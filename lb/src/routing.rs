//! The LB's view of the routing table: swapped atomically as a whole, read without locks.
//!
//! [`Routes`] is the seam between where tables come from (the slicer watch, or a test) and
//! the proxies that read them.

use std::collections::HashMap;
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

/// Where one app's requests go, as indices into the table's hosts.
#[derive(Debug, Clone, Copy, Default)]
struct AppRoute {
    /// The live host holding the app; `None` while nobody holds it (the slice owner adopts it).
    holder: Option<u16>,
    /// The host a move under way takes it to.
    moving_to: Option<u16>,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to this host.
    Host(HostAddrs),
    /// The app is moving: ask `from` whether it still serves it (a `HEAD` probe); if not, the
    /// request goes to `to`, which holds it until the app is up there.
    Moving { from: HostAddrs, to: HostAddrs },
}

/// A routing table in the form the hot path wants: parsed addresses and the apps by name.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub version: u64,
    hosts: Vec<HostAddrs>,
    slices: Vec<u16>,
    apps: HashMap<String, AppRoute>,
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
        let index = |id: &str| table.hosts.iter().position(|h| h.id == id).and_then(|i| u16::try_from(i).ok());
        let apps = table
            .apps
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AppRoute { holder: index(&a.host_id), moving_to: a.moving_to.as_deref().and_then(index) },
                )
            })
            .collect();
        Ok(Self { version: table.version, hosts, slices: table.slices.clone(), apps })
    }

    /// The host owning `app` by the ring, whether or not the app exists.
    pub fn owner(&self, app: &str) -> Option<HostAddrs> {
        let index = *self.slices.get(slice_of(app) as usize)?;
        self.hosts.get(usize::from(index)).copied()
    }

    /// Where `app`'s requests go, if the app exists.
    pub fn route(&self, app: &str) -> Option<Route> {
        let route = self.apps.get(app)?;
        let host = |index: u16| self.hosts.get(usize::from(index)).copied();
        match (route.holder.and_then(host), route.moving_to.and_then(host)) {
            (Some(from), Some(to)) if from != to => Some(Route::Moving { from, to }),
            (Some(holder), _) => Some(Route::Host(holder)),
            (None, _) => self.owner(app).map(Route::Host),
        }
    }

    /// The host that answers `app`'s API calls: its live holder (also during a move, until it
    /// completes), else the slice's owner (a new app, or one to be adopted).
    pub fn api_host(&self, app: &str) -> Option<HostAddrs> {
        let holder = self.apps.get(app).and_then(|r| r.holder).and_then(|i| self.hosts.get(usize::from(i)).copied());
        holder.or_else(|| self.owner(app))
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
                draining: false,
            }],
            slices: vec![0; SLICE_COUNT as usize],
            apps: vec![AppEntry {
                name: "hello".into(),
                host_id: "h1".into(),
                version: 1,
                updated_at_ms: 0,
                bundle: None,
                expires_at_ms: None,
                moving_to: None,
            }],
        }
    }

    #[test]
    fn routes_known_apps_only_and_keeps_the_newest_table() {
        let routes = Routes::new();
        assert!(routes.current().route("hello").is_none());
        assert!(routes.install(RouteTable::from_wire(&wire(5)).unwrap()));
        let expected = HostAddrs { ingress: "127.0.0.2:9".parse().unwrap(), api: "127.0.0.2:10".parse().unwrap() };
        assert_eq!(routes.current().route("hello"), Some(Route::Host(expected)));
        assert!(routes.current().route("nope").is_none());
        assert!(routes.current().owner("nope").is_some());
        assert!(!routes.install(RouteTable::from_wire(&wire(4)).unwrap()), "older table ignored");
        assert_eq!(routes.current().version, 5);
    }

    #[test]
    fn a_moving_app_is_probed_and_an_orphan_goes_to_its_owner() {
        let mut table = wire(7);
        table.hosts.push(HostEntry {
            id: "h2".into(),
            ingress_addr: "127.0.0.3:9".into(),
            api_addr: "127.0.0.3:10".into(),
            draining: false,
        });
        table.apps[0].moving_to = Some("h2".into());
        let routes = RouteTable::from_wire(&table).unwrap();
        let Some(Route::Moving { from, to }) = routes.route("hello") else { panic!("not moving") };
        assert_eq!((from.ingress.port(), to.ingress.ip().to_string()), (9, "127.0.0.3".to_owned()));
        assert_eq!(routes.api_host("hello").unwrap().api, "127.0.0.2:10".parse().unwrap(), "API calls: holder");
        table.apps[0].moving_to = None;
        table.apps[0].host_id = "dead".into();
        let routes = RouteTable::from_wire(&table).unwrap();
        assert_eq!(routes.route("hello"), routes.owner("hello").map(Route::Host), "no live holder: the owner");
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
