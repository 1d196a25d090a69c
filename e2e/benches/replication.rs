//! Replication benchmark: lag from an acknowledged write to its arrival in the replica under a
//! steady write load, and the time to restore a 100 MB database — with the same restore done by
//! the Litestream CLI alone as the peer, measured in the same run.
//!
//! Run: `cargo bench -p steady-e2e --bench replication` (after `scripts/setup.sh`).
//! `STEADY_BENCH_WRITES` (default 500) and `STEADY_BENCH_WRITES_PER_S` (default 50) shape the
//! load; `STEADY_BENCH_RESTORE_MB` (default 100) the database to restore.
//!
//! Lag is measured on the file replica: a watcher lists the replica's level-0 directory every
//! millisecond and notes when each new file appears; a write's lag is the time from its
//! acknowledgement to the first file that appears after it (a sync ships everything committed
//! before it starts). A final restore checks that every acknowledged write is in the replica.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steady_e2e::{workspace, write_app, Cluster};

const APP: &str = r#"
import { Database } from "bun:sqlite";
const db = new Database(`${process.env.STEADY_DATA_DIR}/bench.db`, { create: true });
db.run("PRAGMA journal_mode = WAL");
db.run("PRAGMA busy_timeout = 5000");
db.run("CREATE TABLE IF NOT EXISTS entries (n INTEGER PRIMARY KEY, blob BLOB)");
export default {
  fetch(request) {
    const params = new URL(request.url).searchParams;
    if (params.has("write")) {
      db.run("INSERT INTO entries (n) VALUES (?)", [Number(params.get("write"))]);
      return new Response("ok");
    }
    if (params.has("fill_mb")) {
      const rows = Number(params.get("fill_mb")) * 256;
      const insert = db.prepare("INSERT INTO entries (blob) VALUES (randomblob(4096))");
      db.transaction(() => { for (let i = 0; i < rows; i++) insert.run(); })();
      return new Response("filled");
    }
    return Response.json(db.query("SELECT COUNT(*) AS rows FROM entries").get());
  },
};
"#;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn summary(name: &str, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| samples[((p / 100.0 * (samples.len() - 1) as f64).round() as usize).min(samples.len() - 1)];
    println!(
        "{name:<40} n={:<4} p50={:>7.1} ms  p90={:>7.1}  p99={:>7.1}  max={:>7.1}",
        samples.len(),
        at(50.0),
        at(90.0),
        at(99.0),
        samples[samples.len() - 1]
    );
}

/// Notes when each new file appears under `dir` until `stop` is set.
fn watch(dir: PathBuf, stop: Arc<Mutex<bool>>) -> std::thread::JoinHandle<Vec<Instant>> {
    std::thread::spawn(move || {
        let (mut seen, mut arrivals) = (HashSet::new(), Vec::new());
        while !*stop.lock().unwrap() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if seen.insert(entry.file_name()) {
                    arrivals.push(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        arrivals
    })
}

fn get(cluster: &Cluster, path: &str) -> String {
    let answer = cluster.get("bench", path);
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    answer.body
}

fn litestream_restore(replica: &Path, output: &Path) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new(workspace().join(".tools/bin/litestream"))
        .arg("restore")
        .arg("-o")
        .arg(output)
        .arg(format!("file://{}", replica.display()))
        .env_clear()
        .status()
        .expect("litestream restore");
    assert!(status.success());
    started.elapsed()
}

fn main() {
    let writes = env_number("STEADY_BENCH_WRITES", 500);
    let per_s = env_number("STEADY_BENCH_WRITES_PER_S", 50).max(1);
    let restore_mb = env_number("STEADY_BENCH_RESTORE_MB", 100);
    assert!((1..=100_000).contains(&writes) && restore_mb <= 1_000);
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "bench", APP);
    cluster.deploy(&app, "bench");
    let replica = cluster.dir.path().join("storage/replicas/bench/bench.db");
    let level0 = replica.join("ltx/0");
    let stop = Arc::new(Mutex::new(false));
    let watcher = watch(level0, stop.clone());

    let interval = Duration::from_micros(1_000_000 / per_s);
    let started = Instant::now();
    let mut acknowledged = Vec::with_capacity(writes as usize);
    for n in 1..=writes {
        let due = started + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        assert_eq!(get(&cluster, &format!("/?write={n}")), "ok");
        acknowledged.push(Instant::now());
    }
    assert!(cluster.steady(&["backup", "bench"]).status.success());
    std::thread::sleep(Duration::from_millis(1_500));
    *stop.lock().unwrap() = true;
    let arrivals = watcher.join().expect("watcher");
    let lags: Vec<f64> = acknowledged
        .iter()
        .filter_map(|ack| arrivals.iter().find(|a| *a > ack).map(|a| (*a - *ack).as_secs_f64() * 1000.0))
        .collect();
    let check = cluster.dir.path().join("check.db");
    litestream_restore(&replica, &check);
    let rows = count_rows(&check);

    println!("replication of an app's SQLite through Litestream (file replica), {per_s} writes/s");
    summary("lag: write acknowledged → in the replica", lags);
    println!("replica holds {rows} of {writes} acknowledged writes after the final backup");

    assert_eq!(get(&cluster, &format!("/?fill_mb={restore_mb}")), "filled");
    assert!(cluster.steady(&["backup", "bench"]).status.success());
    let data = cluster.hosts[0].data.join("apps/bench");
    let restore_started = Instant::now();
    let restored = cluster.steady(&["restore", "bench", "--json"]);
    let restore_s = restore_started.elapsed().as_secs_f64();
    assert!(restored.status.success(), "{}", steady_e2e::describe(&restored));
    let size_mb = std::fs::metadata(data.join("data/bench.db")).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let peer_s = litestream_restore(&replica, &cluster.dir.path().join("peer.db")).as_secs_f64();
    println!("restore of a {size_mb:.0} MB database: steady restore {restore_s:.2} s (stop, restore, integrity check)");
    println!("peer: litestream restore alone {peer_s:.2} s; steady's restore is {:.2}× of it", restore_s / peer_s);
}

/// Acknowledged writes (rows with a number) in the database at `path`, read with Bun's SQLite.
fn count_rows(path: &Path) -> String {
    let script = format!(
        "import {{ Database }} from 'bun:sqlite'; console.log(new Database('{}', {{ readonly: true }}).query('SELECT COUNT(*) AS n FROM entries WHERE n IS NOT NULL').get().n)",
        path.display()
    );
    let output =
        std::process::Command::new(workspace().join(".tools/bin/bun")).args(["-e", &script]).output().expect("bun");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
