//! Any bytes as a Host header: the edge's host check, the app-name extraction for each domain
//! and the route lookup never panic, and what they accept keeps their promises.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use steady_proto::name::{app_from_host, is_apex, valid_host};
use steady_proto::slice::SLICE_COUNT;
use steady_proto::wire::RoutingTable;

/// Three hosts owning every slice in turn, three apps (sorted by name).
static TABLE: LazyLock<RoutingTable> = LazyLock::new(|| {
    let hosts: Vec<_> = (1..=3)
        .map(|i| serde_json::json!({"id": format!("host-{i}"), "ingress_addr": format!("127.0.0.{i}:1"), "api_addr": format!("127.0.0.{i}:2")}))
        .collect();
    let slices: Vec<u16> = (0..SLICE_COUNT).map(|s| (s % 3) as u16).collect();
    let apps: Vec<_> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|name| serde_json::json!({"name": name, "host_id": "host-2", "version": 1, "updated_at_ms": 0}))
        .collect();
    let table = serde_json::json!({"version": 1, "hosts": hosts, "slices": slices, "apps": apps});
    let table: RoutingTable = serde_json::from_value(table).expect("a table");
    table.check().expect("a valid table");
    table
});

fuzz_target!(|data: &[u8]| {
    if valid_host(data) {
        assert!(data.len() <= 253 + 6, "a valid host is bounded");
        assert!(data.iter().all(|b| b.is_ascii_graphic()), "a valid host has no spaces or controls");
    }
    let Ok(host) = std::str::from_utf8(data) else { return };
    for domain in ["steady.page", "localhost"] {
        let _ = is_apex(host, domain);
        let Some(app) = app_from_host(host, domain) else { continue };
        assert!(!app.is_empty() && !app.contains('.'), "an app name is one label: {app:?}");
        assert!(host.starts_with(app), "the app name comes from the host");
        let table = &*TABLE;
        assert!(table.owner_of(app).is_some(), "every slice has an owner");
        let holder = table.holder_of(app).expect("a holder or an owner");
        if let Some(entry) = table.app(app) {
            assert!(["alpha", "beta", "gamma"].contains(&app));
            assert_eq!(holder.id, entry.host_id);
        }
    }
});
