//! Cold-start benchmark: request to first byte through the LB for a sleeping app, over many
//! wakes, with its breakdown and the peers it is made of (among them the same cluster without
//! warm sandboxes), measured in the same run.
//!
//! Run: `cargo bench -p steady-e2e --bench cold_start` (after `scripts/setup.sh`).
//! `STEADY_BENCH_WAKES` sets the number of wakes (default 200).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use steady_e2e::{workspace, Cluster};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = percentile(&samples, 50.0);
    println!(
        "{name:<34} n={:<4} p50={p50:>7.2} ms  p90={:>7.2}  p99={:>7.2}  max={:>7.2}",
        samples.len(),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples[samples.len() - 1]
    );
    p50
}

fn time_command(program: &str, args: &[&str], runs: usize) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
            assert!(status.is_ok_and(|s| s.success()), "{program} {args:?} failed");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Cold and warm request latencies (and hostd's assignment→listening times) of one cluster.
struct Run {
    cold: Vec<f64>,
    listening: Vec<f64>,
    warm: Vec<f64>,
}

fn measure(wakes: usize, pause_ms: u64, flags: &[&str]) -> Run {
    let cluster = Cluster::start_with(1, flags);
    cluster.deploy(&workspace().join("examples/hello"), "cold");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let url = format!("http://{}/", cluster.public);
    let ttfb = |http: &reqwest::blocking::Client| {
        let started = Instant::now();
        let response = http.get(&url).header("host", "cold.localhost").send().expect("request");
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(response.status(), 200);
        let _ = response.bytes();
        elapsed
    };
    let warm: Vec<f64> = (0..wakes).map(|_| ttfb(&http)).collect();
    let (mut cold, mut listening) = (Vec::with_capacity(wakes), Vec::with_capacity(wakes));
    for _ in 0..wakes {
        assert_eq!(cluster.api_post("/v1/apps/cold/sleep")["stopped"], true);
        // A real wake comes long after the sleep: let the stopped process's teardown (and the
        // pool's refill) finish.
        std::thread::sleep(Duration::from_millis(pause_ms));
        cold.push(ttfb(&http));
        listening.push(cluster.status("cold")["last_start_duration_ms"].as_u64().unwrap() as f64);
    }
    Run { cold, listening, warm }
}

fn main() {
    let wakes: usize = std::env::var("STEADY_BENCH_WAKES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    assert!((1..=100_000).contains(&wakes));
    let pause_ms: u64 = std::env::var("STEADY_BENCH_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let flags: Vec<String> =
        std::env::var("STEADY_BENCH_HOST_FLAGS").unwrap_or_default().split_whitespace().map(String::from).collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pooled = measure(wakes, pause_ms, &flags);
    let unpooled_flags: Vec<&str> = flags.iter().copied().chain(["--warm-sandboxes", "0"]).collect();
    let unpooled = measure(wakes, pause_ms, &unpooled_flags);
    let tools = workspace().join(".tools/bin");
    let bun = tools.join("bun");
    let bun_runs = time_command(bun.to_str().unwrap(), &["-e", "0"], 30);
    let bwrap_args =
        ["--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib"];
    let bwrap_args: Vec<&str> = bwrap_args
        .iter()
        .copied()
        .chain(["--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "/usr/bin/true"])
        .collect();
    let bwrap_runs = time_command("bwrap", &bwrap_args, 30);

    println!("cold start of examples/hello (SQLite open), request to first byte through the LB");
    let cold_p50 = summary("cold: sleeping app, via LB", pooled.cold);
    let listening_p50 = summary("  of which assigned→listening", pooled.listening);
    let warm_p50 = summary("warm: running app, via LB", pooled.warm);
    let unpooled_p50 = summary("peer: cold, no warm sandboxes", unpooled.cold);
    summary("  of which spawn→listening", unpooled.listening);
    summary("peer: bun -e 0", bun_runs);
    summary("peer: bwrap --unshare-all true", bwrap_runs);
    println!(
        "breakdown at p50: assigned→listening {listening_p50:.1} ms, LB + hostd + first request {:.1} ms (warm path {warm_p50:.1} ms)",
        cold_p50 - listening_p50
    );
    println!("warm sandboxes cut the cold start to {:.2}× of spawning on demand", cold_p50 / unpooled_p50);
    println!("targets: p50 ≤ 30 ms, p99 ≤ 60 ms");
}
