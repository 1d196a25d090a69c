//! Throughput: many apps behind two LBs, keep-alive clients sending as fast as answers come.

use std::path::PathBuf;
use std::sync::Arc;

use rand::Rng;

use crate::attack::{self, Shape};
use crate::record::{Kind, Recorder};
use crate::report::Report;
use crate::scenario;

/// An app that answers at once.
pub const HELLO_APP: &str = r#"export default { fetch() { return new Response("hello"); } };"#;

/// A step that GETs `/` of one app (picked by `pick(user index, app count)`) and expects
/// [`HELLO_APP`]'s answer.
pub fn hello_step(
    apps: Arc<Vec<String>>,
    target: crate::attack::Target,
    recorder: Arc<Recorder>,
    pick: fn(usize, usize) -> usize,
) -> attack::Step {
    attack::step(move |user| {
        let (apps, target, recorder) = (apps.clone(), target.clone(), recorder.clone());
        Box::pin(async move {
            let app = &apps[pick(user.weighted_users_index, apps.len())];
            let fetched = attack::get(user, &target, Kind::Read, app, "/").await;
            recorder.record(Kind::Read, fetched.sent, fetched.outcome(|body| body == "hello"));
            Ok(())
        })
    })
}

/// Throughput parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Apps the requests spread over (each request picks one at random).
    #[arg(long, default_value_t = 50)]
    pub apps: usize,
    /// Host daemons.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Concurrent keep-alive connections (goose users).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long the load runs.
    #[arg(long, default_value_t = 20)]
    pub duration_s: u64,
    /// Report directory (default target/bench-reports/throughput-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the throughput scenario and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.apps > 0 && options.connections > 0 && options.duration_s > 0, "nothing to run");
    let dir = scenario::report_dir(options.out.as_deref(), "throughput");
    let cluster = scenario::start_cluster(options.hosts, 2, &[], &[]);
    let apps = Arc::new(scenario::deploy_apps(&cluster, HELLO_APP, "hello", options.apps));
    let target = scenario::target(&cluster);
    let recorder = Arc::new(Recorder::new());
    let step = hello_step(apps, target.clone(), recorder.clone(), |_, count| rand::rng().random_range(0..count));
    let shape = Shape {
        users: options.connections,
        hatch_per_s: options.connections,
        run_time_s: Some(options.duration_s as usize),
        iterations: None,
        wait_ms: (0, 0),
    };
    let metrics = scenario::run_goose("throughput", &shape, &target, step, &dir)?;
    drop(cluster);
    let mut report = Report::new("throughput", &dir, recorder.snapshot(), &[Kind::Read]);
    report.fact("cluster", format!("{} hosts, 2 LBs, {} apps", options.hosts, options.apps));
    report.fact("load", format!("{} keep-alive connections for {} s", options.connections, options.duration_s));
    let (all, failed) = attack::goose_counts(&metrics);
    report.fact("goose counted", format!("{all} requests, {failed} failed"));
    let whole = report.summary("whole run");
    report.check(format!("{:.3} % of requests succeeded", whole.completion() * 100.0), whole.completion() >= 0.999);
    report.write()?;
    Ok(report)
}
