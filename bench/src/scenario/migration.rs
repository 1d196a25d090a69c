//! Migration under load: the counter load while a host joins (apps move to it), then a host is
//! drained and undrained; the moves' downtime and the clients' view are reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attack::Shape;
use crate::record::{Kind, Outcome, Recorder};
use crate::report::{Phase, Report};
use crate::scenario::{self, CounterLoad};

const WARM_UP_S: f64 = 5.0;
/// The events, in order (`drive` carries them out).
const EVENTS: [&str; 3] = ["host joins", "host-1 drained", "host-1 undrained"];
/// Time given to each event's moves before the next event.
const EVENT_WINDOW_S: f64 = 20.0;

/// Migration parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Apps under load (one goose user each).
    #[arg(long, default_value_t = 50)]
    pub apps: usize,
    /// Host daemons at the start (one more joins).
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Pause between a user's write+read steps (ms).
    #[arg(long, default_value_t = 250)]
    pub wait_ms: u64,
    /// Report directory (default target/bench-reports/migration-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the migration scenario and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.apps > 0 && options.hosts >= 2, "migration needs apps and at least two hosts");
    let dir = scenario::report_dir(options.out.as_deref(), "migration");
    let cluster = scenario::start_cluster(options.hosts, 2, &[], &[]);
    let apps = scenario::deploy_apps(&cluster, scenario::counter_source(), "move", options.apps);
    let target = scenario::target(&cluster);
    let recorder = Arc::new(Recorder::new());
    let load = CounterLoad::new(apps, target.clone(), Arc::clone(&recorder));
    let events = EVENTS;
    let end_s = WARM_UP_S + EVENT_WINDOW_S * events.len() as f64;
    let driver = {
        let recorder = Arc::clone(&recorder);
        std::thread::spawn(move || drive(cluster, &recorder))
    };
    let shape = Shape {
        users: options.apps,
        hatch_per_s: options.apps,
        run_time_s: Some(end_s.ceil() as usize),
        iterations: None,
        wait_ms: (options.wait_ms, options.wait_ms),
    };
    let metrics = scenario::run_goose("migration", &shape, &target, load.step(), &dir)?;
    let (cluster, settled) = driver.join().map_err(|_| anyhow::anyhow!("the event driver panicked"))?;
    let (lost, gaps) = load.final_check();
    let moves = cluster.api_get("/v1/moves");
    drop(cluster);
    let mut report = Report::new("migration", &dir, recorder.snapshot(), &[Kind::Read, Kind::Write]);
    for (i, event) in events.iter().enumerate() {
        let from_s = WARM_UP_S + EVENT_WINDOW_S * i as f64;
        report.phases.push(Phase { name: (*event).into(), from_s, to_s: from_s + EVENT_WINDOW_S });
    }
    report.fact("cluster", format!("{} hosts + 1 joining, 2 LBs, {} counter apps", options.hosts, options.apps));
    let mut downtimes: Vec<f64> = moves["recent"]
        .as_array()
        .map(|r| r.iter().filter_map(|m| m["downtime_ms"].as_f64()).collect())
        .unwrap_or_default();
    downtimes.sort_by(f64::total_cmp);
    report.fact(
        "moves",
        format!(
            "{}, downtime p50 {:.0} ms, p99 {:.0} ms",
            downtimes.len(),
            crate::record::percentile(&downtimes, 0.5),
            crate::record::percentile(&downtimes, 0.99)
        ),
    );
    for (event, seconds) in &settled {
        report.fact(
            format!("moves settled after {event}"),
            seconds.map_or("not within the window".into(), |s| format!("{s:.2} s")),
        );
        report.check(format!("the moves of \"{event}\" settled"), seconds.is_some());
    }
    let (all, failed) = crate::attack::goose_counts(&metrics);
    report.fact("goose counted", format!("{all} requests, {failed} failed"));
    let whole = report.summary("whole run");
    report.check(format!("{:.3} % of requests succeeded", whole.completion() * 100.0), whole.completion() >= 0.999);
    let wrong = report.recorded.samples.iter().filter(|s| s.outcome == Outcome::WrongAnswer).count();
    report.check(format!("reads that missed an acknowledged write or showed a gap: {wrong}"), wrong == 0);
    report.check(format!("acknowledged writes lost: {} apps {lost:?}", lost.len()), lost.is_empty());
    report.check(format!("apps with gaps or duplicate rows: {} {gaps:?}", gaps.len()), gaps.is_empty());
    report.write()?;
    Ok(report)
}

/// Runs the events on their schedule; returns the cluster and, per event, how long until no
/// move was pending or under way.
fn drive(mut cluster: steady_e2e::Cluster, recorder: &Recorder) -> (steady_e2e::Cluster, Vec<(String, Option<f64>)>) {
    let mut settled = Vec::new();
    let wait_until = |at_s: f64| recorder.wait_until(at_s);
    for (i, event) in EVENTS.into_iter().enumerate() {
        let at_s = WARM_UP_S + EVENT_WINDOW_S * i as f64;
        wait_until(at_s);
        recorder.mark(event, false);
        let started = Instant::now();
        match i {
            0 => {
                cluster.add_host();
            }
            1 => {
                cluster.steady(&["hosts", "drain", "host-1", "--no-wait"]);
            }
            _ => {
                cluster.steady(&["hosts", "undrain", "host-1"]);
            }
        }
        let deadline_s = at_s + EVENT_WINDOW_S - 1.0;
        let mut done = None;
        while recorder.now_s() < deadline_s {
            let moves = cluster.api_get("/v1/moves");
            let idle = |key: &str| moves[key].as_array().is_some_and(|a| a.is_empty());
            if idle("pending") && idle("in_flight") {
                done = Some(started.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        settled.push((event.to_owned(), done));
    }
    (cluster, settled)
}
