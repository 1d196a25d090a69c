//! Density benchmark: 1,000 apps deployed over three hosts, 200 of them awake at once; prints
//! deploy rate, the memory of hostd and of each app, and request latency at that density.
//!
//! Run: `cargo bench -p steady-e2e --bench density` (after `scripts/setup.sh`).
//! `STEADY_BENCH_APPS` and `STEADY_BENCH_AWAKE` change the 1,000 and the 200.

use std::process::Command;
use std::time::{Duration, Instant};

use steady_e2e::{workspace, Cluster};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[(((p / 100.0) * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// Proportional set size of a process tree: shared pages split among their users.
fn pss_kib(root: u32) -> u64 {
    steady_e2e::descendants(root)
        .into_iter()
        .map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            let line = rollup.lines().find(|l| l.starts_with("Pss:")).unwrap_or("Pss: 0 kB");
            line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Bundles examples/hello once, as `steady deploy` would.
fn hello_bundle(dir: &std::path::Path) -> Vec<u8> {
    let bun = workspace().join(".tools/bin/bun");
    let status = Command::new(bun)
        .args(["build", "--target=bun", "--outfile"])
        .arg(dir.join("index.js"))
        .arg(workspace().join("examples/hello/index.ts"))
        .status()
        .expect("bun build");
    assert!(status.success());
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_path_with_name(dir.join("index.js"), "index.js").unwrap();
    archive.into_inner().unwrap()
}

fn main() {
    let (apps, awake) = (env_number("STEADY_BENCH_APPS", 1_000), env_number("STEADY_BENCH_AWAKE", 200));
    assert!(awake <= apps && apps <= 10_000);
    let cluster = Cluster::start_with(3, &["--awake-max", "80", "--idle-timeout-ms", "600000"]);
    let bundle = hello_bundle(cluster.dir.path());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();

    let started = Instant::now();
    for i in 0..apps {
        let url = format!("http://{}/v1/apps/d-{i}/deploy", cluster.private);
        let response = http.post(url).body(bundle.clone()).send().expect("deploy");
        assert_eq!(response.status(), 201, "deploy d-{i}: {}", response.text().unwrap_or_default());
    }
    let deploy_s = started.elapsed().as_secs_f64();
    // Let every host settle to its awake limit, then wake the chosen apps.
    for i in 0..awake {
        assert_eq!(cluster.get(&format!("d-{i}"), "/").status, 200);
    }
    let mut latencies: Vec<f64> = Vec::with_capacity(awake * 10);
    for round in 0..10 {
        for i in 0..awake {
            let started = Instant::now();
            let answer = cluster.get(&format!("d-{}", (i + round * 7) % awake), "/");
            assert_eq!(answer.status, 200);
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let statuses: Vec<serde_json::Value> = (0..awake).map(|i| cluster.status(&format!("d-{i}"))).collect();
    let running = statuses.iter().filter(|s| s["state"] == "running").count();
    let app_bytes: Vec<u64> = statuses.iter().filter_map(|s| s["memory_bytes"].as_u64()).collect();
    let app_mib_mean = app_bytes.iter().sum::<u64>() as f64 / app_bytes.len().max(1) as f64 / 1048576.0;
    println!("density: {apps} apps over 3 hosts, {awake} awake (awake limit 80 per host)");
    println!(
        "deploys: {apps} in {deploy_s:.1} s ({:.1} per second, each started and health-checked)",
        apps as f64 / deploy_s
    );
    println!("awake among the {awake}: {running}");
    for host in &cluster.hosts {
        println!("hostd {}: RSS {:.1} MiB", host.id, rss_kib(host.daemon.pid()) as f64 / 1024.0);
        let is_litestream =
            |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "litestream");
        for pid in steady_e2e::descendants(host.daemon.pid()).iter().filter(|p| is_litestream(p)) {
            println!("  its litestream (replicating every awake app): RSS {:.1} MiB", rss_kib(*pid) as f64 / 1024.0);
        }
    }
    println!(
        "slicer RSS {:.1} MiB, lb RSS {:.1} MiB",
        rss_kib(cluster.slicer.pid()) as f64 / 1024.0,
        rss_kib(cluster.lb.pid()) as f64 / 1024.0
    );
    let pss: Vec<u64> = statuses.iter().filter_map(|s| s["pid"].as_u64()).map(|p| pss_kib(p as u32)).collect();
    let pss_mib_mean = pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64 / 1024.0;
    println!("per awake app (PSS of its process tree): mean {pss_mib_mean:.1} MiB over {} apps", pss.len());
    println!("per awake app (cgroup memory): mean {app_mib_mean:.1} MiB over {} apps", app_bytes.len());
    println!(
        "requests over the {awake} awake apps via LB: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies[latencies.len() - 1]
    );
}
