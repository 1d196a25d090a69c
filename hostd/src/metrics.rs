//! The host daemon's Prometheus metrics, served at `/metrics` on its API listener.
//!
//! Counters and histograms are updated where things happen (a cold start, a dropped request,
//! a crash, a deploy); gauges that describe the current state (apps by state, the start
//! queue, warm sandboxes) are set from a snapshot just before each scrape, so they never
//! drift from what hostd sees.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

/// Cold-start duration buckets, in seconds: 2 ms to 2 s.
const COLD_START_BUCKETS_S: [f64; 11] = [0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 2.0];

/// Why a request was answered by hostd instead of the app.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    CrashLoop,
    Busy,
    Deadline,
    StartFailed,
    DataUnavailable,
    /// Held for an app on its way here longer than `--move-hold-ms`.
    Moving,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
}

/// App state, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AppState {
    Running,
    Asleep,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: AppState,
}

/// How a deploy or rollback ended, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Serving,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// Label values in Prometheus's snake_case, not Rust's variant names.
macro_rules! snake_case_labels {
    ($($kind:ident { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                let text = match self { $($kind::$variant => $text),+ };
                EncodeLabelValue::encode(&text, encoder)
            }
        }
    )+};
}

snake_case_labels! {
    DropReason {
        QueueFull => "queue_full",
        CrashLoop => "crash_loop",
        Busy => "busy",
        Deadline => "deadline",
        StartFailed => "start_failed",
        DataUnavailable => "data_unavailable",
        Moving => "moving",
    }
    AppState { Running => "running", Asleep => "asleep" }
    Outcome { Serving => "serving", Failed => "failed" }
}

/// Every metric of one host daemon.
pub struct Metrics {
    registry: Registry,
    /// Wakes that had to start the app.
    pub cold_starts: Counter,
    /// Sandbox share of each cold start (asking for a sandbox → listening).
    pub cold_start_seconds: Histogram,
    /// Requests hostd answered itself (503/429), by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// App processes that exited without hostd asking them to.
    pub crashes: Counter,
    /// Deploys and rollbacks, by outcome.
    pub deploys: Family<OutcomeLabels, Counter>,
    /// Apps on this host, by state (set at scrape time).
    pub apps: Family<StateLabels, Gauge>,
    /// Requests waiting for an app to start (set at scrape time).
    pub start_queue_depth: Gauge,
    /// Sandboxes started and waiting for an app (set at scrape time).
    pub warm_sandboxes: Gauge,
    /// Requests sent on to another host (the app moved, or the LB's table was stale).
    pub forwarded: Counter,
    /// Idempotent requests sent once more because the app's process died under them.
    pub requests_resent: Counter,
    /// Requests held for apps on their way to this host (set at scrape time).
    pub held_requests: Gauge,
    /// Memory of each running app (set at scrape time; asleep apps have no series).
    pub app_memory_bytes: Family<AppLabels, Gauge>,
    /// CPU time used by each app's processes (advanced at scrape time).
    pub app_cpu_seconds: Family<AppLabels, Counter<f64, AtomicU64>>,
    /// How far each replicated app's replica is behind (set at scrape time, see
    /// [`Metrics::set_replication_lags`]).
    app_replication_lag_seconds: Family<AppLabels, Gauge<f64, AtomicU64>>,
    /// Apps with a lag series, so the series of an app no longer replicated is removed.
    replicated_apps: Mutex<BTreeSet<String>>,
}

/// Labels of a per-app series; bounded by the apps on this host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("steady_hostd");
        let metrics = Self {
            cold_starts: Counter::default(),
            cold_start_seconds: Histogram::new(COLD_START_BUCKETS_S),
            dropped: Family::default(),
            crashes: Counter::default(),
            deploys: Family::default(),
            apps: Family::default(),
            start_queue_depth: Gauge::default(),
            warm_sandboxes: Gauge::default(),
            forwarded: Counter::default(),
            requests_resent: Counter::default(),
            held_requests: Gauge::default(),
            app_memory_bytes: Family::default(),
            app_cpu_seconds: Family::default(),
            app_replication_lag_seconds: Family::default(),
            replicated_apps: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        registry.register("cold_starts", "Wakes that had to start the app", metrics.cold_starts.clone());
        registry.register(
            "cold_start_duration_seconds",
            "From asking for a sandbox to the app listening",
            metrics.cold_start_seconds.clone(),
        );
        registry.register("requests_dropped", "Requests answered by hostd instead of the app", metrics.dropped.clone());
        registry.register("app_crashes", "App processes that exited unasked", metrics.crashes.clone());
        registry.register("deploys", "Deploys and rollbacks by outcome", metrics.deploys.clone());
        registry.register("apps", "Apps on this host by state", metrics.apps.clone());
        registry.register(
            "start_queue_depth",
            "Requests waiting for an app to start",
            metrics.start_queue_depth.clone(),
        );
        registry.register("warm_sandboxes", "Sandboxes waiting for an app", metrics.warm_sandboxes.clone());
        registry.register(
            "requests_forwarded",
            "Requests sent on to the host that has the app",
            metrics.forwarded.clone(),
        );
        registry.register(
            "requests_resent",
            "Idempotent requests sent once more to a new process after the app died under them",
            metrics.requests_resent.clone(),
        );
        registry.register("held_requests", "Requests held for apps moving here", metrics.held_requests.clone());
        // Every reason and outcome is exported from the start (at 0), so dashboards see it.
        for reason in [
            DropReason::QueueFull,
            DropReason::CrashLoop,
            DropReason::Busy,
            DropReason::Deadline,
            DropReason::StartFailed,
            DropReason::DataUnavailable,
            DropReason::Moving,
        ] {
            drop(metrics.dropped.get_or_create(&DropLabels { reason }));
        }
        for outcome in [Outcome::Serving, Outcome::Failed] {
            drop(metrics.deploys.get_or_create(&OutcomeLabels { outcome }));
        }
        registry.register("app_memory_bytes", "Memory of each running app", metrics.app_memory_bytes.clone());
        registry.register("app_cpu_seconds", "CPU time used by each app", metrics.app_cpu_seconds.clone());
        registry.register(
            "app_replication_lag_seconds",
            "How long the oldest transaction of the app's SQLite databases that the replica storage does not \
             hold yet has waited since hostd first saw it in Litestream's local position (0 when the replica \
             holds them all); only apps whose databases are attached to replication",
            metrics.app_replication_lag_seconds.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl Metrics {
    /// Counts a request hostd answered itself.
    pub fn drop_request(&self, reason: DropReason) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }

    /// Counts a deploy or rollback.
    pub fn deployed(&self, outcome: Outcome) {
        self.deploys.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Sets the lag series of each app in `lags` (the apps attached to replication) and removes
    /// those of apps no longer there.
    pub fn set_replication_lags(&self, lags: &[(String, Duration)]) {
        let mut replicated = self.replicated_apps.lock().unwrap_or_else(|p| p.into_inner());
        let now: BTreeSet<String> = lags.iter().map(|(app, _)| app.clone()).collect();
        for gone in replicated.difference(&now) {
            self.app_replication_lag_seconds.remove(&AppLabels { app: gone.clone() });
        }
        for (app, lag) in lags {
            self.app_replication_lag_seconds.get_or_create(&AppLabels { app: app.clone() }).set(lag.as_secs_f64());
        }
        *replicated = now;
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
