//! Cold-start storm: many apps put to sleep, then all woken by one request each at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::attack::{self, Shape};
use crate::record::{Kind, Recorder};
use crate::report::Report;
use crate::scenario::{self, throughput::hello_step, throughput::HELLO_APP};

/// Cold-storm parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Sleeping apps woken at once.
    #[arg(long, default_value_t = 1000)]
    pub apps: usize,
    /// Host daemons.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Report directory (default target/bench-reports/cold-storm-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the cold-start storm and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.apps > 0, "nothing to wake");
    let dir = scenario::report_dir(options.out.as_deref(), "cold-storm");
    let cluster = scenario::start_cluster(options.hosts, 2, &[], &[]);
    let apps = Arc::new(scenario::deploy_apps(&cluster, HELLO_APP, "cold", options.apps));
    for app in apps.iter() {
        let response = cluster.api().post(format!("http://{}/v1/apps/{app}/sleep", cluster.private)).send()?;
        anyhow::ensure!(response.status().is_success(), "putting {app} to sleep: {}", response.status());
    }
    let target = scenario::target(&cluster);
    let recorder = Arc::new(Recorder::new());
    let step = hello_step(apps.clone(), target.clone(), recorder.clone(), |user, count| user % count);
    let shape = Shape {
        users: options.apps,
        hatch_per_s: options.apps,
        run_time_s: None,
        iterations: Some(1),
        wait_ms: (0, 0),
    };
    let metrics = scenario::run_goose("cold-storm", &shape, &target, step, &dir)?;
    let recorded = recorder.snapshot();
    let last_answer_s = recorded.samples.iter().map(|s| f64::from(s.at_ms) / 1000.0).fold(0.0, f64::max);
    let settled = scenario::converge(&target, &apps, "/", Duration::from_secs(60));
    drop(cluster);
    let mut report = Report::new("cold-storm", &dir, recorded, &[Kind::Read]);
    report.fact(
        "cluster",
        format!("{} hosts, 2 LBs, {} sleeping apps, one request each at once", options.hosts, options.apps),
    );
    report.fact("last wake answered after", format!("{last_answer_s:.2} s"));
    let (all, failed) = attack::goose_counts(&metrics);
    report.fact("goose counted", format!("{all} requests, {failed} failed"));
    let whole = report.summary("whole run");
    report.check(format!("{:.2} % of wake-ups answered", whole.completion() * 100.0), whole.completion() >= 0.99);
    report.check(
        format!(
            "every app answered through both LBs afterwards ({})",
            settled.map_or("no".into(), |s| format!("{s:.2} s"))
        ),
        settled.is_some(),
    );
    report.write()?;
    Ok(report)
}
