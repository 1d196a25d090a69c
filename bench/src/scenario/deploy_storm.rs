//! Deploy storm: many deploys at once through the API, then every new app must answer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use goose::prelude::*;

use crate::attack::{self, Shape};
use crate::record::{Kind, Outcome, Recorder};
use crate::report::Report;
use crate::scenario::{self, throughput::HELLO_APP};

/// Deploy-storm parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Apps deployed.
    #[arg(long, default_value_t = 200)]
    pub apps: usize,
    /// Deploys under way at once (goose users).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Host daemons.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Report directory (default target/bench-reports/deploy-storm-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the deploy storm and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.apps > 0 && options.concurrency > 0, "nothing to deploy");
    anyhow::ensure!(options.apps <= scenario::APPS_MAX, "at most {} apps", scenario::APPS_MAX);
    let dir = scenario::report_dir(options.out.as_deref(), "deploy-storm");
    let cluster = scenario::start_cluster(options.hosts, 2, &[], &[]);
    let bundle = Arc::new(steady_e2e::load::bundle(HELLO_APP, cluster.dir.path()));
    let target = scenario::target(&cluster);
    let recorder = Arc::new(Recorder::new());
    let next = Arc::new(AtomicUsize::new(0));
    let (private, total) = (cluster.private, options.apps);
    let authorization = format!("Bearer {}", cluster.admin_token);
    let step = {
        let recorder = recorder.clone();
        attack::step(move |user| {
            let (bundle, recorder, next) = (bundle.clone(), recorder.clone(), next.clone());
            let authorization = authorization.clone();
            Box::pin(async move {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok(());
                }
                let url = format!("http://{private}/v1/apps/storm-{index}/deploy");
                let builder =
                    user.get_request_builder(&GooseMethod::Post, &url)?.header("authorization", authorization);
                let builder =
                    builder.body(bundle.to_vec()).timeout(Duration::from_millis(scenario::REQUEST_TIMEOUT_MS));
                let sent = Instant::now();
                let request = GooseRequest::builder().set_request_builder(builder).name("deploy").build();
                let response = user.request(request).await?;
                let outcome = match response.response {
                    Ok(r) if r.status().is_success() => Outcome::Ok,
                    Ok(r) => Outcome::Status(r.status().as_u16()),
                    Err(e) if e.is_timeout() => Outcome::Timeout,
                    Err(_) => Outcome::Transport,
                };
                recorder.record(Kind::Deploy, sent, outcome);
                Ok(())
            })
        })
    };
    let iterations = options.apps.div_ceil(options.concurrency);
    let shape = Shape {
        users: options.concurrency,
        hatch_per_s: options.concurrency,
        run_time_s: None,
        iterations: Some(iterations),
        wait_ms: (0, 0),
    };
    let metrics = scenario::run_goose("deploy-storm", &shape, &target, step, &dir)?;
    let storm_s = recorder.now_s();
    let apps: Vec<String> = (0..options.apps).map(|i| format!("storm-{i}")).collect();
    let settled = scenario::converge(&target, &apps, "/", Duration::from_secs(60));
    drop(cluster);
    let mut report = Report::new("deploy-storm", &dir, recorder.snapshot(), &[Kind::Deploy]);
    report.fact("cluster", format!("{} hosts, 2 LBs", options.hosts));
    report.fact("storm", format!("{} deploys, {} at a time, over {storm_s:.1} s", options.apps, options.concurrency));
    let (all, failed) = attack::goose_counts(&metrics);
    report.fact("goose counted", format!("{all} requests, {failed} failed"));
    let whole = report.summary("whole run");
    report.check(format!("{} of {} deploys succeeded", whole.ok, options.apps), whole.ok as usize == options.apps);
    report.check(
        format!(
            "every deployed app answered through both LBs {} after the storm",
            settled.map_or("— not within 60 s".into(), |s| format!("{s:.2} s"))
        ),
        settled.is_some(),
    );
    report.write()?;
    Ok(report)
}
