//! The slicer's Prometheus metrics, served at `/metrics`: hosts, slices and apps per host and
//! the assignment (table) version, all read from the current table at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use steady_proto::wire::RoutingTable;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

/// Renders the metrics of `table` and the mover in the text exposition format.
pub fn render(table: &RoutingTable, moves: &crate::mover::MoveLog) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut registry = Registry::with_prefix("steady_slicer");
    let hosts = Gauge::<i64>::default();
    let version = Gauge::<i64>::default();
    let apps = Gauge::<i64>::default();
    let slices_per_host = Family::<HostLabels, Gauge>::default();
    let apps_per_host = Family::<HostLabels, Gauge>::default();
    hosts.set(table.hosts.len() as i64);
    version.set(table.version as i64);
    apps.set(table.apps.len() as i64);
    for (index, host) in table.hosts.iter().enumerate() {
        let labels = HostLabels { host: host.id.clone() };
        let slices = table.slices.iter().filter(|&&s| usize::from(s) == index).count();
        slices_per_host.get_or_create(&labels).set(slices as i64);
        let held = table.apps.iter().filter(|a| a.host_id == host.id).count();
        apps_per_host.get_or_create(&labels).set(held as i64);
    }
    registry.register("hosts", "Registered hosts", hosts);
    registry.register("assignment_version", "Version of the slice assignment and app table", version);
    registry.register("apps", "Apps in the table", apps);
    registry.register("slices", "Slices owned, by host", slices_per_host);
    registry.register("host_apps", "Apps held, by host", apps_per_host);
    let pending = Gauge::<i64>::default();
    pending.set(moves.pending.load(Relaxed) as i64);
    registry.register("moves_pending", "Moves the table asks for that are not done", pending);
    let in_flight = Gauge::<i64>::default();
    in_flight.set(moves.in_flight().len() as i64);
    registry.register("moves_in_flight", "Moves under way", in_flight);
    let done = Counter::<u64>::default();
    done.inc_by(moves.done_total.load(Relaxed));
    registry.register("moves_done", "Moves completed", done);
    let failed = Counter::<u64>::default();
    failed.inc_by(moves.failed_total.load(Relaxed));
    registry.register("move_step_failures", "Move steps that failed (the move is retried)", failed);
    let mut text = String::with_capacity(2048);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
    text
}
