//! Soak: the counter load for a long time (an hour by default) with no faults, sampling each
//! daemon's resident memory. Passes when, after the warm-up, no daemon's memory grew by 10 %
//! or more (last window against the first), p99 stayed within 2× of its best window, no read
//! failed beyond 0.1 %, and no acknowledged write was lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::attack::Shape;
use crate::record::{Kind, Recorder, Series, Summary};
use crate::report::{Phase, Report};
use crate::scenario::{self, CounterLoad};

/// Most a daemon's memory may grow after the warm-up.
pub const MEMORY_GROWTH_MAX: f64 = 0.10;
/// Most a window's p99 may be above the best window's.
pub const P99_SPREAD_MAX: f64 = 2.0;
/// Windows the run is cut into for the figures (the first is the warm-up).
const WINDOWS: usize = 6;

/// Soak parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// How long the load runs.
    #[arg(long, default_value_t = 3600)]
    pub duration_s: u64,
    /// Apps under load (one goose user each).
    #[arg(long, default_value_t = 30)]
    pub apps: usize,
    /// Host daemons.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Pause between a user's write+read steps (ms).
    #[arg(long, default_value_t = 200)]
    pub wait_ms: u64,
    /// How often daemon memory is sampled.
    #[arg(long, default_value_t = 10)]
    pub sample_every_s: u64,
    /// Report directory (default target/bench-reports/soak-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the soak and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.duration_s >= 60, "a soak runs at least 60 s");
    anyhow::ensure!(options.sample_every_s >= 1, "--sample-every-s must be at least 1");
    let dir = scenario::report_dir(options.out.as_deref(), "soak");
    let cluster = scenario::start_cluster(options.hosts, 2, &[], &[]);
    let apps = scenario::deploy_apps(&cluster, scenario::counter_source(), "soak", options.apps);
    let target = scenario::target(&cluster);
    let recorder = Arc::new(Recorder::new());
    let load = CounterLoad::new(apps, target.clone(), Arc::clone(&recorder));
    let mut daemons = vec![("slicer".to_owned(), cluster.slicer.pid()), ("lb".to_owned(), cluster.lb.pid())];
    daemons.extend(cluster.more_lbs.iter().map(|l| (l.daemon.name.clone(), l.daemon.pid())));
    daemons.extend(cluster.hosts.iter().map(|h| (h.id.clone(), h.daemon.pid())));
    let stop = Arc::new(AtomicBool::new(false));
    let series = Arc::new(Mutex::new(daemons.iter().map(|(name, _)| memory_series(name)).collect::<Vec<_>>()));
    let sampler = {
        let (stop, series, recorder, every) = (stop.clone(), series.clone(), recorder.clone(), options.sample_every_s);
        std::thread::spawn(move || sample_memory(&daemons, &series, &recorder, &stop, every))
    };
    let shape = Shape {
        users: options.apps,
        hatch_per_s: options.apps,
        run_time_s: Some(options.duration_s as usize),
        iterations: None,
        wait_ms: (options.wait_ms, options.wait_ms),
    };
    let metrics = scenario::run_goose("soak", &shape, &target, load.step(), &dir);
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
    let metrics = metrics?;
    let (lost, gaps) = load.final_check();
    drop(cluster);
    let mut report = Report::new("soak", &dir, recorder.snapshot(), &[Kind::Read, Kind::Write]);
    report.series = series.lock().expect("series lock").clone();
    // The windows cover the load (the run ends a moment after the last answer).
    let load_s = report.recorded.samples.last().map_or(report.recorded.duration_s, |s| f64::from(s.at_ms) / 1000.0);
    let window_s = load_s / WINDOWS as f64;
    for i in 0..WINDOWS {
        let name = if i == 0 { "warm-up".to_owned() } else { format!("window {i}") };
        report.phases.push(Phase { name, from_s: i as f64 * window_s, to_s: (i + 1) as f64 * window_s });
    }
    report.fact("cluster", format!("{} hosts, 2 LBs, {} counter apps", options.hosts, options.apps));
    report.fact("load", format!("{} s, each user a write and a read every {} ms", options.duration_s, options.wait_ms));
    let (all, failed) = crate::attack::goose_counts(&metrics);
    report.fact("goose counted", format!("{all} requests, {failed} failed"));
    check_memory(&mut report, window_s);
    check_latency(&mut report);
    let reads = Summary::of(&report.recorded, &[Kind::Read], 0.0, report.recorded.duration_s);
    report.check(format!("reads succeeded: {:.4} %", reads.completion() * 100.0), reads.completion() >= 0.999);
    report.check(format!("acknowledged writes lost: {} apps {lost:?}", lost.len()), lost.is_empty());
    report.check(format!("apps with gaps or duplicate rows: {} {gaps:?}", gaps.len()), gaps.is_empty());
    report.write()?;
    Ok(report)
}

fn memory_series(name: &str) -> Series {
    Series { name: format!("{name} MiB"), unit: "resident memory, MiB".into(), points: Vec::new() }
}

fn sample_memory(
    daemons: &[(String, u32)],
    series: &Mutex<Vec<Series>>,
    recorder: &Recorder,
    stop: &AtomicBool,
    every_s: u64,
) {
    let tick = Duration::from_millis(100);
    let mut next_s = 0.0;
    while !stop.load(Ordering::Relaxed) {
        if recorder.now_s() >= next_s {
            let mut series = series.lock().expect("series lock");
            for ((_, pid), line) in daemons.iter().zip(series.iter_mut()) {
                if let Some(bytes) = scenario::rss_bytes(*pid) {
                    line.points.push((recorder.now_s(), bytes as f64 / (1024.0 * 1024.0)));
                }
            }
            next_s += every_s as f64;
        }
        std::thread::sleep(tick);
    }
}

/// Mean of a series' values in `[from_s, to_s)`.
fn mean_in(series: &Series, from_s: f64, to_s: f64) -> Option<f64> {
    let values: Vec<f64> = series.points.iter().filter(|p| p.0 >= from_s && p.0 < to_s).map(|p| p.1).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn check_memory(report: &mut Report, window_s: f64) {
    let end_s = window_s * WINDOWS as f64;
    let lines: Vec<(String, Option<f64>, Option<f64>)> = report
        .series
        .iter()
        .map(|s| (s.name.clone(), mean_in(s, window_s, 2.0 * window_s), mean_in(s, end_s - window_s, end_s + 1.0)))
        .collect();
    for (name, first, last) in lines {
        let (Some(first), Some(last)) = (first, last) else {
            report.check(format!("{name}: no memory samples"), false);
            continue;
        };
        let growth = last / first - 1.0;
        report.check(
            format!("{name}: {first:.1} after warm-up, {last:.1} at the end ({:+.1} %)", growth * 100.0),
            growth < MEMORY_GROWTH_MAX,
        );
    }
}

fn check_latency(report: &mut Report) {
    let p99s: Vec<(String, f64)> =
        report.phases.iter().skip(2).map(|p| (p.name.clone(), report.summary(&p.name).p99_ms)).collect();
    let best = p99s.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let worst = p99s.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let listed: Vec<String> = p99s.iter().map(|(name, p99)| format!("{name} {p99:.1} ms")).collect();
    report.check(
        format!("p99 per window after warm-up within {P99_SPREAD_MAX}× of the best: {}", listed.join(", ")),
        best.is_finite() && worst <= best * P99_SPREAD_MAX,
    );
}
