//! Named scenarios. Each starts a real cluster (slicer, hosts, two LBs, as `steady up` runs
//! them), puts a load on it with goose, injects its faults on a schedule, and returns a
//! [`Report`](crate::report::Report).

pub mod chaos;
pub mod cold_storm;
pub mod deploy_storm;
pub mod migration;
pub mod proxies;
pub mod soak;
pub mod throughput;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::prelude::*;
use steady_e2e::load::{self, COUNTER_APP};
use steady_e2e::Cluster;

use crate::attack::{self, Step, Target};
use crate::record::{Kind, Outcome, Recorder};

/// Bound on one request of a scenario (held requests wait up to hostd's 15 s move hold).
pub const REQUEST_TIMEOUT_MS: u64 = 20_000;
/// Most apps a scenario deploys.
pub const APPS_MAX: usize = 5_000;

/// Starts a cluster of `hosts` hosts and `lbs` LBs (1 or 2); `host_flags` go to every host.
pub fn start_cluster(hosts: usize, lbs: usize, host_flags: &[&str], slicer_flags: &[&str]) -> Cluster {
    assert!((1..=2).contains(&lbs));
    let mut cluster = Cluster::start_full(hosts, host_flags, slicer_flags);
    if lbs == 2 {
        cluster.add_lb();
    }
    cluster
}

/// The cluster's LBs as a load target.
pub fn target(cluster: &Cluster) -> Target {
    let lbs = std::iter::once(cluster.public).chain(cluster.more_lbs.iter().map(|l| l.public)).collect();
    Target { lbs, domain: cluster.domain.clone(), timeout_ms: REQUEST_TIMEOUT_MS }
}

/// Deploys `count` copies of `source` as `<prefix>-<i>`; returns their names.
pub fn deploy_apps(cluster: &Cluster, source: &str, prefix: &str, count: usize) -> Vec<String> {
    assert!(count <= APPS_MAX, "at most {APPS_MAX} apps");
    let bundle = load::bundle(source, cluster.dir.path());
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for name in &names {
        load::deploy_bundle(cluster, name, &bundle);
    }
    names
}

/// A report directory: `out` if given, else `target/bench-reports/<scenario>-<unix seconds>`.
pub fn report_dir(out: Option<&Path>, scenario: &str) -> PathBuf {
    if let Some(out) = out {
        return out.to_owned();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    steady_e2e::workspace().join("target/bench-reports").join(format!("{scenario}-{now}"))
}

/// Seconds until all `apps` answer `GET path` with 200 through every LB of `target`, or None
/// if they do not within `limit`.
pub fn converge(target: &Target, apps: &[String], path: &str, limit: Duration) -> Option<f64> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let started = Instant::now();
    let mut pending: Vec<(SocketAddr, &String)> =
        target.lbs.iter().flat_map(|lb| apps.iter().map(move |app| (*lb, app))).collect();
    while started.elapsed() < limit {
        pending.retain(|(lb, app)| {
            let answer =
                http.get(format!("http://{lb}{path}")).header("host", format!("{app}.{}", target.domain)).send();
            !answer.is_ok_and(|r| r.status().is_success())
        });
        if pending.is_empty() {
            return Some(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One app's writer state in the counter load.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter {
    /// The next number to write (0: ask the app first).
    pub next: u64,
    /// The highest number the app acknowledged.
    pub acked: u64,
}

/// The counter load: user `i` writes numbered rows to app `i` and reads its count back, so a
/// lost acknowledged write shows up as a wrong read at once, and in the final count.
pub struct CounterLoad {
    pub apps: Vec<String>,
    pub target: Target,
    pub recorder: Arc<Recorder>,
    pub counters: Vec<Mutex<Counter>>,
}

impl CounterLoad {
    pub fn new(apps: Vec<String>, target: Target, recorder: Arc<Recorder>) -> Arc<Self> {
        let counters = apps.iter().map(|_| Mutex::default()).collect();
        Arc::new(Self { apps, target, recorder, counters })
    }

    /// The goose step: one write, then one read.
    pub fn step(self: &Arc<Self>) -> Step {
        let load = Arc::clone(self);
        attack::step(move |user| {
            let load = Arc::clone(&load);
            Box::pin(async move {
                load.write_and_read(user).await;
                Ok(())
            })
        })
    }

    async fn write_and_read(&self, user: &mut GooseUser) {
        let index = user.weighted_users_index % self.apps.len();
        let app = &self.apps[index];
        let counter = *self.counters[index].lock().expect("counter lock");
        if counter.next > 0 {
            let seq = counter.next;
            let fetched = attack::get(user, &self.target, Kind::Write, app, &format!("/write?seq={seq}")).await;
            let outcome = fetched.outcome(|body| body == seq.to_string());
            self.recorder.record(Kind::Write, fetched.sent, outcome);
            if outcome != Outcome::Ok {
                self.recorder.note_failure(|| format!("write {seq} to {app}: {}", fetched.describe()));
            }
            let mut counter = self.counters[index].lock().expect("counter lock");
            // Whether a failed write happened is unknown: the read below sets the next number.
            (counter.acked, counter.next) = if outcome == Outcome::Ok { (seq, seq + 1) } else { (counter.acked, 0) };
        }
        let acked = self.counters[index].lock().expect("counter lock").acked;
        let fetched = attack::get(user, &self.target, Kind::Read, app, "/count").await;
        let count = match &fetched.answer {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(body).ok(),
            _ => None,
        };
        let max = count.as_ref().and_then(|c| c["max"].as_u64());
        let rows = count.as_ref().and_then(|c| c["rows"].as_u64());
        // A read that shows fewer rows than were acknowledged, or a gap, is a wrong answer.
        let right = max.is_some_and(|m| m >= acked) && max == rows;
        let outcome = fetched.outcome(|_| right);
        self.recorder.record(Kind::Read, fetched.sent, outcome);
        if outcome != Outcome::Ok {
            self.recorder.note_failure(|| format!("read of {app} (acked {acked}): {}", fetched.describe()));
        }
        let mut counter = self.counters[index].lock().expect("counter lock");
        if counter.next == 0 {
            if let Some(max) = max {
                counter.next = max + 1;
            }
        }
    }

    /// After the load: apps whose rows are fewer than acknowledged, or have gaps (by name).
    pub fn final_check(&self) -> (Vec<String>, Vec<String>) {
        let (mut lost, mut gaps) = (Vec::new(), Vec::new());
        for (index, app) in self.apps.iter().enumerate() {
            let acked = self.counters[index].lock().expect("counter lock").acked;
            match load::count(self.target.lbs[0], app, &self.target.domain) {
                Some((max, rows)) => {
                    if max < acked {
                        lost.push(format!("{app}: {max} rows, {acked} acknowledged"));
                    }
                    if rows != max {
                        gaps.push(format!("{app}: {rows} rows up to {max}"));
                    }
                }
                None => lost.push(format!("{app}: no answer to the final count")),
            }
        }
        (lost, gaps)
    }

    /// Writes acknowledged over all apps.
    pub fn acked_total(&self) -> u64 {
        self.counters.iter().map(|c| c.lock().expect("counter lock").acked).sum()
    }
}

/// The counter app's source.
pub fn counter_source() -> &'static str {
    COUNTER_APP
}

/// Runs goose on a fresh tokio runtime (the scenarios' other threads are plain threads).
pub fn run_goose(
    scenario: &str,
    shape: &attack::Shape,
    target: &Target,
    step: Step,
    dir: &Path,
) -> anyhow::Result<GooseMetrics> {
    std::fs::create_dir_all(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(attack::run(scenario, shape, target, step, dir))
}

pub use steady_e2e::rss_bytes;
