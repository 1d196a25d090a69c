//! Load-based balance. Hosts report each app's request rate and memory in their heartbeats;
//! every `--rebalance-interval-ms` the slicer weighs each app by that load and lets the
//! planner move slices when a host is more than its tolerance (8 %) above the mean. Joins,
//! leaves and drains balance by app count at once; this loop refines by load afterwards, and
//! also evens out app counts that drifted as apps were deployed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steady_proto::wire::{AppLoad, Heartbeat};

use crate::api::Slicer;

/// The weight of an idle app (one app, for balancing by count).
pub const WEIGHT_IDLE: u64 = 100;
/// Requests per second that weigh as much as one more idle app.
const REQUESTS_PER_S_PER_IDLE: f64 = 10.0;
/// Memory that weighs as much as one more idle app.
const MEMORY_BYTES_PER_IDLE: u64 = 64 * 1024 * 1024;
/// A report older than this counts as idle (its host stopped reporting the app).
const REPORT_KEEP_MS: u64 = 30_000;
/// Bound on the apps whose load is remembered.
const LOADS_MAX: usize = 1_000_000;

/// The balancing weight of an app with `load` (`None`: no report, an idle app).
pub fn weight(load: Option<&AppLoad>) -> u64 {
    let Some(load) = load else { return WEIGHT_IDLE };
    let requests = (load.requests_per_s.max(0.0) / REQUESTS_PER_S_PER_IDLE * WEIGHT_IDLE as f64).min(1e9) as u64;
    let memory = load.memory_bytes / (MEMORY_BYTES_PER_IDLE / WEIGHT_IDLE);
    WEIGHT_IDLE + requests + memory
}

/// The latest load of each app, from heartbeats.
#[derive(Default)]
pub struct Loads {
    apps: Mutex<HashMap<String, (AppLoad, Instant)>>,
}

impl Loads {
    /// Records a host's heartbeat.
    pub fn report(&self, heartbeat: Heartbeat) {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if apps.len() + heartbeat.apps.len() > LOADS_MAX {
            apps.retain(|_, (_, at)| at.elapsed() < Duration::from_millis(REPORT_KEEP_MS));
        }
        for load in heartbeat.apps.into_iter().take(LOADS_MAX.saturating_sub(apps.len())) {
            apps.insert(load.name.clone(), (load, now));
        }
    }

    /// The weight of `name` by its latest fresh report.
    pub fn weight_of(&self, name: &str) -> u64 {
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = apps.get(name).filter(|(_, at)| at.elapsed() < Duration::from_millis(REPORT_KEEP_MS));
        weight(fresh.map(|(load, _)| load))
    }
}

/// Runs forever: every `interval_ms`, when no move is pending, rebalances by load.
pub async fn run(slicer: Arc<Slicer>, interval_ms: u64) {
    assert!(interval_ms > 0);
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if !crate::mover::pending(&slicer.current_table()).is_empty() {
            continue;
        }
        let loads = &slicer.loads;
        match slicer.change(|store| store.rebalance_by(|name| loads.weight_of(name))) {
            Ok(Some(version)) => tracing::info!(version, "rebalanced by load"),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "rebalancing by load failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(requests_per_s: f64, memory_bytes: u64) -> AppLoad {
        AppLoad { name: "a".into(), requests_per_s, memory_bytes }
    }

    #[test]
    fn busy_and_big_apps_weigh_more() {
        assert_eq!(weight(None), WEIGHT_IDLE);
        assert_eq!(weight(Some(&load(0.0, 0))), WEIGHT_IDLE);
        assert_eq!(weight(Some(&load(10.0, 0))), 2 * WEIGHT_IDLE);
        assert_eq!(weight(Some(&load(0.0, 64 * 1024 * 1024))), 2 * WEIGHT_IDLE);
        assert_eq!(weight(Some(&load(f64::NAN, 0))), WEIGHT_IDLE);
    }
}
