//! Migration benchmark: how fast a table change reaches every LB, how long a moving app is
//! down, and what the clients see while apps move — with a sleep/wake of the same app as the
//! peer for the downtime, measured in the same run.
//!
//! Run: `cargo bench -p steady-e2e --bench migration` (after `scripts/setup.sh`).
//! `STEADY_BENCH_APPS` (default 50) apps take `STEADY_BENCH_WRITES_PER_S` (default 8) writes a
//! second each through two LBs; `STEADY_BENCH_CHANGES` (default 200) table changes are timed.
//!
//! - **Routing convergence**: the slicer records an app (a table change, answered with its
//!   version right after the commit); the clock runs until both LBs report that version on
//!   their `/readyz` (polled back to back).
//! - **Move downtime**: a fourth host joins, then a host drains and comes back; the slicer's
//!   `/v1/moves` gives each move's downtime (from the old host's depart to the new host
//!   serving). The peer is the same app put to sleep and woken by a request.
//! - **Client latency** of every write before the moves and during them.

use std::time::{Duration, Instant};

use steady_e2e::load::{self, percentile, Load, COUNTER_APP};
use steady_e2e::Cluster;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn readyz_version(http: &reqwest::blocking::Client, private: std::net::SocketAddr) -> u64 {
    let text = http.get(format!("http://{private}/readyz")).send().and_then(|r| r.text()).unwrap_or_default();
    text.trim().rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Milliseconds from a slicer commit to both LBs serving it, `changes` times.
fn convergence_ms(cluster: &Cluster, changes: usize) -> Vec<f64> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let privates: Vec<_> = std::iter::once(cluster.private).chain(cluster.more_lbs.iter().map(|l| l.private)).collect();
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let name = format!("conv-{}", i % 20);
        let owner = cluster.table().owner_of(&name).expect("an owner").id.clone();
        let body = serde_json::json!({ "host_id": owner, "version": i + 1 });
        let started = Instant::now();
        let answer: serde_json::Value = http
            .put(format!("http://{}/v1/apps/{name}", cluster.slicer_addr))
            .json(&body)
            .send()
            .and_then(|r| r.json())
            .expect("record an app");
        let version = answer["version"].as_u64().expect("table version");
        for private in &privates {
            let deadline = Instant::now() + Duration::from_secs(10);
            while readyz_version(&http, *private) < version {
                assert!(Instant::now() < deadline, "an LB did not converge on version {version}");
            }
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    for i in 0..20.min(changes) {
        let name = format!("conv-{i}");
        let holder = cluster.table().app(&name).map(|a| a.host_id.clone()).unwrap_or_default();
        let url = format!("http://{}/v1/apps/{name}?host_id={holder}", cluster.slicer_addr);
        http.delete(url).send().expect("remove the app");
    }
    samples.sort_by(f64::total_cmp);
    samples
}

fn moves_settled(cluster: &Cluster) -> bool {
    let moves = cluster.api_get("/v1/moves");
    moves["pending"].as_array().is_some_and(Vec::is_empty) && moves["in_flight"].as_array().is_some_and(Vec::is_empty)
}

/// Sleep/wake of one app, `rounds` times: ms from the wake request to its answer.
fn sleep_wake_ms(cluster: &Cluster, app: &str, rounds: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let slept = cluster.api_post(&format!("/v1/apps/{app}/sleep"));
        assert!(slept.is_object(), "{slept}");
        let started = Instant::now();
        assert_eq!(cluster.get(app, "/count").status, 200);
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    samples
}

fn summary(label: &str, sorted: &[f64]) {
    println!(
        "{label:<44} n={:<5} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        sorted.len(),
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let apps_count = env_number("STEADY_BENCH_APPS", 50);
    let rate = env_number("STEADY_BENCH_WRITES_PER_S", 8) as u32;
    let changes = env_number("STEADY_BENCH_CHANGES", 200);
    let mut cluster = Cluster::start_full(3, &["--heartbeat-ms", "200"], &["--host-timeout-ms", "5000"]);
    cluster.add_lb();
    let bundle = load::bundle(COUNTER_APP, cluster.dir.path());
    let apps: Vec<String> = (0..apps_count).map(|i| format!("mb-{i}")).collect();
    for app in &apps {
        load::deploy_bundle(&cluster, app, &bundle);
    }
    steady_e2e::eventually("moves after the deploys", || moves_settled(&cluster).then_some(()));

    let converge = convergence_ms(&cluster, changes);
    let peer = sleep_wake_ms(&cluster, &apps[0], 20);

    let lbs: Vec<_> = std::iter::once(cluster.public).chain(cluster.more_lbs.iter().map(|l| l.public)).collect();
    let load = Load::start(&apps, &lbs, &cluster.domain, rate);
    std::thread::sleep(Duration::from_secs(3));
    let moves_from_s = load.elapsed_s();
    let done_before = cluster.api_get("/v1/moves")["recent"].as_array().map_or(0, Vec::len);
    cluster.add_host();
    steady_e2e::eventually("the join's moves", || moves_settled(&cluster).then_some(()));
    let drained = cluster.steady(&["hosts", "drain", "host-1"]);
    assert!(drained.status.success(), "{}", steady_e2e::describe(&drained));
    let undrained = cluster.steady(&["hosts", "undrain", "host-1"]);
    assert!(undrained.status.success(), "{}", steady_e2e::describe(&undrained));
    steady_e2e::eventually("the undrain's moves", || moves_settled(&cluster).then_some(()));
    let moves_to_s = load.elapsed_s();
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();

    let recent = cluster.api_get("/v1/moves")["recent"].as_array().cloned().unwrap_or_default();
    let mut downtime: Vec<f64> = recent.iter().skip(done_before).filter_map(|m| m["downtime_ms"].as_f64()).collect();
    downtime.sort_by(f64::total_cmp);
    let latencies = |from: f64, to: f64| {
        let mut all: Vec<f64> = report
            .apps
            .iter()
            .flat_map(|a| a.samples.iter().filter(|s| s.ok && s.at_s >= from && s.at_s <= to).map(|s| s.latency_ms))
            .collect();
        all.sort_by(f64::total_cmp);
        all
    };
    let before = latencies(0.0, moves_from_s);
    let during = latencies(moves_from_s, moves_to_s);

    println!("\nsteady migration benchmark — {apps_count} apps, 3→4 hosts, 2 LBs, {rate} writes/s per app");
    summary("routing convergence (commit → both LBs)", &converge);
    summary("move downtime (depart → serving on new host)", &downtime);
    summary("peer: sleep + wake of one app (request)", &peer);
    summary("client write latency before moves", &before);
    summary("client write latency during moves", &during);
    println!(
        "moves: {}; requests: {} at {:.0}/s, failed {}; downtime p50 is {:.2}× a sleep/wake",
        downtime.len(),
        report.sent(),
        report.rate(),
        report.failed(),
        percentile(&downtime, 0.5) / percentile(&peer, 0.5)
    );
    for line in report.failure_lines().iter().take(10) {
        println!("  failure: {line}");
    }
}
