//! The load balancer's Prometheus metrics, served at `/metrics` on the private listener:
//! requests by app and status class, their duration, requests in flight, upstream errors and
//! the routing table version, and the outcomes of move probes.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Request duration buckets, in seconds: 0.5 ms to 10 s.
const DURATION_BUCKETS_S: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Labels of a finished request. `app` is `-` for requests that named no app (the apex page,
/// unknown hosts); the set of apps is bounded by the routing table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `none` when no response was written.
    pub status: &'static str,
}

/// What a probe of a moving app's old host found.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The old host still serves the app.
    Live,
    /// It does not (the request goes to the new host).
    Gone,
    /// No answer in time (the request goes to the new host).
    Failed,
}

impl EncodeLabelValue for ProbeOutcome {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let text = match self {
            ProbeOutcome::Live => "live",
            ProbeOutcome::Gone => "gone",
            ProbeOutcome::Failed => "failed",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

/// Labels of a probe.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub outcome: ProbeOutcome,
}

/// Labels of a request refused by a limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `client_rate` or `app_in_flight`.
    pub limit: &'static str,
}

/// Labels of a client connection count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `public` (apps, plain and TLS) or `private` (the API, metrics).
    pub listener: &'static str,
}

/// Every metric of one load balancer.
pub struct Metrics {
    registry: Registry,
    /// Finished requests on the public listener.
    pub requests: Family<RequestLabels, Counter>,
    /// Their duration, from the request filter to the end of the response.
    pub duration_seconds: Histogram,
    /// Requests on the public listener not finished yet.
    pub in_flight: Gauge,
    /// Requests that failed on the way to or from a host.
    pub upstream_errors: Counter,
    /// Connections to hosts that failed and were tried again.
    pub connect_retries: Counter,
    /// Version of the routing table in use (set at scrape time).
    pub table_version: Gauge<i64, AtomicI64>,
    /// Probes of moving apps' old hosts, by outcome.
    pub probes: Family<ProbeLabels, Counter>,
    /// Requests answered 429 by a limit.
    pub limited: Family<LimitLabels, Counter>,
    /// Client connections open, by listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Client connections refused because their listener's bound was reached, by listener.
    pub connections_refused: Family<ListenerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            requests: Family::default(),
            duration_seconds: Histogram::new(DURATION_BUCKETS_S),
            in_flight: Gauge::default(),
            upstream_errors: Counter::<u64, AtomicU64>::default(),
            connect_retries: Counter::<u64, AtomicU64>::default(),
            table_version: Gauge::default(),
            probes: Family::default(),
            limited: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
        };
        let mut registry = Registry::with_prefix("steady_lb");
        registry.register("requests", "Finished public requests by app and status class", metrics.requests.clone());
        registry.register("request_duration_seconds", "Public request duration", metrics.duration_seconds.clone());
        registry.register("requests_in_flight", "Public requests not finished yet", metrics.in_flight.clone());
        registry.register(
            "upstream_connect_retries",
            "Requests tried again because the connection to their host failed (nothing was sent)",
            metrics.connect_retries.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests that failed on the way to a host",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "routing_table_version",
            "Version of the routing table in use",
            metrics.table_version.clone(),
        );
        registry.register("move_probes", "Probes of a moving app's old host, by outcome", metrics.probes.clone());
        registry.register("requests_limited", "Requests answered 429 by a limit, by limit", metrics.limited.clone());
        registry.register("connections_open", "Client connections open, by listener", metrics.connections_open.clone());
        registry.register(
            "connections_refused",
            "Client connections refused because the listener's bound was reached, by listener",
            metrics.connections_refused.clone(),
        );
        for listener in ["public", "private"] {
            drop(metrics.connections_open.get_or_create(&ListenerLabels { listener }));
            drop(metrics.connections_refused.get_or_create(&ListenerLabels { listener }));
        }
        for limit in ["client_rate", "app_in_flight"] {
            drop(metrics.limited.get_or_create(&LimitLabels { limit }));
        }
        // Every outcome is exported from the start (at 0), so dashboards and alerts see the series.
        for outcome in [ProbeOutcome::Live, ProbeOutcome::Gone, ProbeOutcome::Failed] {
            drop(metrics.probes.get_or_create(&ProbeLabels { outcome }));
        }
        Self { registry, ..metrics }
    }
}

/// The status classes [`Metrics::status_class`] names, in the order [`RequestCounters`] keeps
/// them.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// One connection's handles on the request counters of the app it last served, so that
/// counting another request of that app takes no lookup in the family (a lock and a hash).
/// A handle counts into the same series as the family's (prometheus-client counters share
/// their value), and series are never removed.
#[derive(Debug, Default)]
pub struct RequestCounters {
    app: String,
    by_class: [Option<Counter>; STATUS_CLASSES.len()],
}

impl Metrics {
    /// Counts a finished request of `app` with `status`, through `cache`.
    pub fn count_request(&self, cache: &mut RequestCounters, app: &str, status: Option<u16>) {
        if cache.app != app {
            cache.app.clear();
            cache.app.push_str(app);
            cache.by_class = Default::default();
        }
        let class = Self::status_class(status);
        let index = STATUS_CLASSES.iter().position(|c| *c == class).expect("a known class");
        let counter = cache.by_class[index].get_or_insert_with(|| {
            self.requests.get_or_create(&RequestLabels { app: app.to_owned(), status: class }).clone()
        });
        counter.inc();
    }

    /// The status class label of `status` (`None`: nothing was written).
    pub fn status_class(status: Option<u16>) -> &'static str {
        match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "1xx",
            None => "none",
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
