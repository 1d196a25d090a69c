//! Chaos: the counter load through two LBs while faults are injected on a schedule.
//!
//! 1. warm-up;
//! 2. an app process (a random `bun` under a random host) is killed every `kill_every_ms` for
//!    `kill_for_s` — at least 99.9 % of reads must succeed meanwhile;
//! 3. the slicer is killed and restarted;
//! 4. one of the two LBs is killed and restarted (clients move to the other LB when a
//!    connection is refused);
//! 5. a host daemon is killed (its whole process group: apps, Litestream) and restarted.
//!
//! After each kind of kill every app must answer through both LBs again (the time it takes is
//! reported), and at the end no acknowledged write may be missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::IndexedRandom;
use steady_e2e::Cluster;

use crate::attack::{Shape, Target};
use crate::record::{Kind, Outcome, Recorder, Summary};
use crate::report::{Phase, Report};
use crate::scenario::{self, CounterLoad};

/// Share of reads that must succeed while app processes are killed.
pub const READS_OK_MIN: f64 = 0.999;
/// Longest the platform may take to serve every app again after a kill.
const CONVERGE_LIMIT_S: u64 = 20;
const WARM_UP_S: f64 = 5.0;
/// Time after each daemon kill before the next fault.
const DAEMON_WINDOW_S: f64 = 12.0;

/// Chaos parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Apps under load (one goose user each).
    #[arg(long, default_value_t = 40)]
    pub apps: usize,
    /// Host daemons.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Kill an app process this often …
    #[arg(long, default_value_t = 500)]
    pub kill_every_ms: u64,
    /// … for this long.
    #[arg(long, default_value_t = 60)]
    pub kill_for_s: u64,
    /// Pause between a user's write+read steps (ms); each user's rate is about 1000 / this.
    #[arg(long, default_value_t = 100)]
    pub wait_ms: u64,
    /// Report directory (default target/bench-reports/chaos-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The fault schedule, in seconds from the start of the load.
struct Schedule {
    kills_from_s: f64,
    kills_to_s: f64,
    slicer_s: f64,
    lb_s: f64,
    host_s: f64,
    end_s: f64,
}

impl Schedule {
    fn new(options: &Options) -> Self {
        let kills_to_s = WARM_UP_S + options.kill_for_s as f64;
        let slicer_s = kills_to_s + 5.0;
        let lb_s = slicer_s + DAEMON_WINDOW_S;
        let host_s = lb_s + DAEMON_WINDOW_S;
        Self { kills_from_s: WARM_UP_S, kills_to_s, slicer_s, lb_s, host_s, end_s: host_s + DAEMON_WINDOW_S + 3.0 }
    }
}

/// Runs the chaos scenario and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.apps > 0 && options.hosts >= 2, "chaos needs at least one app and two hosts");
    anyhow::ensure!(options.kill_every_ms >= 10, "--kill-every-ms must be at least 10");
    let dir = scenario::report_dir(options.out.as_deref(), "chaos");
    let cluster = scenario::start_cluster(options.hosts, 2, &[], &[]);
    let apps = scenario::deploy_apps(&cluster, scenario::counter_source(), "chaos", options.apps);
    let target = scenario::target(&cluster);
    let recorder = Arc::new(Recorder::new());
    let load = CounterLoad::new(apps.clone(), target.clone(), Arc::clone(&recorder));
    let schedule = Schedule::new(options);
    let faults = {
        let (recorder, options, target) = (Arc::clone(&recorder), options.clone(), target.clone());
        std::thread::spawn(move || inject(cluster, &options, &target, &apps, &recorder))
    };
    let shape = Shape {
        users: options.apps,
        hatch_per_s: options.apps,
        run_time_s: Some(schedule.end_s.ceil() as usize),
        iterations: None,
        wait_ms: (options.wait_ms, options.wait_ms),
    };
    let metrics = scenario::run_goose("chaos", &shape, &target, load.step(), &dir)?;
    let (cluster, injected) = faults.join().map_err(|_| anyhow::anyhow!("the fault injector panicked"))?;
    let (lost, gaps) = load.final_check();
    drop(cluster);
    let recorded = recorder.snapshot();
    let mut report = Report::new("chaos", &dir, recorded, &[Kind::Read]);
    report.phases.extend([
        phase("warm-up", 0.0, schedule.kills_from_s),
        phase("app kills", schedule.kills_from_s, schedule.kills_to_s),
        phase("slicer kill", schedule.slicer_s, schedule.lb_s),
        phase("LB kill", schedule.lb_s, schedule.host_s),
        phase("host kill", schedule.host_s, schedule.end_s),
    ]);
    describe(&mut report, options, &load, &injected, &metrics);
    let reads = report.summary("app kills");
    report.check(
        format!("app kills: {:.3} % of reads succeeded (≥ {:.1} %)", reads.completion() * 100.0, READS_OK_MIN * 100.0),
        reads.completion() >= READS_OK_MIN,
    );
    for (kind, seconds) in &injected.converged {
        let what = match seconds {
            Some(s) => format!("after the {kind}, every app answered through both LBs again in {s:.2} s"),
            None => format!("after the {kind}, some app did not answer within {CONVERGE_LIMIT_S} s"),
        };
        report.check(what, seconds.is_some());
    }
    let wrong = report.recorded.samples.iter().filter(|s| s.outcome == Outcome::WrongAnswer).count();
    report.check(format!("reads that missed an acknowledged write or showed a gap: {wrong}"), wrong == 0);
    report.check(format!("acknowledged writes lost at the end: {} apps {:?}", lost.len(), lost), lost.is_empty());
    report.check(format!("apps with gaps or duplicate rows: {} {:?}", gaps.len(), gaps), gaps.is_empty());
    report.write()?;
    Ok(report)
}

fn phase(name: &str, from_s: f64, to_s: f64) -> Phase {
    Phase { name: name.into(), from_s, to_s }
}

fn describe(
    report: &mut Report,
    options: &Options,
    load: &CounterLoad,
    injected: &Injected,
    metrics: &goose::metrics::GooseMetrics,
) {
    let writes = Summary::of(&report.recorded, &[Kind::Write], 0.0, report.recorded.duration_s);
    report.fact("cluster", format!("{} hosts, 2 LBs, {} counter apps", options.hosts, options.apps));
    report.fact(
        "app processes killed",
        format!("{} (every {} ms for {} s)", injected.app_kills, options.kill_every_ms, options.kill_for_s),
    );
    report.fact(
        "writes",
        format!(
            "{} sent, {} acknowledged in all, p99 {:.1} ms; failed: {}",
            writes.requests,
            load.acked_total(),
            writes.p99_ms,
            writes.errors_line()
        ),
    );
    let (all, failed) = crate::attack::goose_counts(metrics);
    report.fact(
        "goose counted",
        format!("{all} requests, {failed} failed (a refused connection before a fail-over counts here)"),
    );
    for (kind, seconds) in &injected.converged {
        let value = seconds.map_or("not within the limit".to_owned(), |s| format!("{s:.2} s"));
        report.fact(format!("every app served again after the {kind}"), value);
    }
}

/// What the fault injector did.
struct Injected {
    app_kills: usize,
    /// Per kind of kill: seconds until every app answered again.
    converged: Vec<(String, Option<f64>)>,
}

fn inject(
    mut cluster: Cluster,
    options: &Options,
    target: &Target,
    apps: &[String],
    recorder: &Recorder,
) -> (Cluster, Injected) {
    let schedule = Schedule::new(options);
    let wait_until = |at_s: f64| recorder.wait_until(at_s);
    let converge = |cluster_target: &Target| {
        scenario::converge(cluster_target, apps, "/count", Duration::from_secs(CONVERGE_LIMIT_S))
    };
    let mut injected = Injected { app_kills: 0, converged: Vec::new() };
    wait_until(schedule.kills_from_s);
    let mut next_s = schedule.kills_from_s;
    while next_s < schedule.kills_to_s {
        wait_until(next_s);
        if kill_an_app(&cluster) {
            injected.app_kills += 1;
            recorder.mark("app killed", true);
        }
        next_s += options.kill_every_ms as f64 / 1000.0;
    }
    injected.converged.push(("app kills".into(), converge(target)));
    wait_until(schedule.slicer_s);
    recorder.mark("slicer killed", false);
    cluster.kill_and_restart_slicer();
    injected.converged.push(("slicer kill".into(), converge(target)));
    wait_until(schedule.lb_s);
    recorder.mark("LB killed", false);
    cluster.kill_and_restart_lb(0);
    injected.converged.push(("LB kill".into(), converge(target)));
    wait_until(schedule.host_s);
    recorder.mark("host killed", false);
    cluster.kill_and_restart_host(1);
    injected.converged.push(("host kill".into(), converge(target)));
    (cluster, injected)
}

/// SIGKILLs one random app process (a `bun` under a host daemon); false if none runs.
fn kill_an_app(cluster: &Cluster) -> bool {
    let mut bun = Vec::new();
    for host in &cluster.hosts {
        for pid in steady_e2e::descendants(host.daemon.pid()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "bun" {
                bun.push(pid);
            }
        }
    }
    let Some(pid) = bun.choose(&mut rand::rng()) else { return false };
    // SAFETY: a process of the cluster this scenario started.
    unsafe { libc::kill(*pid as i32, libc::SIGKILL) == 0 }
}
