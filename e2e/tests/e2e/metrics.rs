//! Prometheus metrics: each one is scraped from a live host daemon and seen to move when the
//! thing it counts happens.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steady_e2e::s3::{S3Server, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use steady_e2e::{eventually, workspace, write_app, Cluster};

/// The value of the sample `name` (with its labels, exactly as exposed) on host 0, or 0.
fn sample(cluster: &Cluster, name: &str) -> f64 {
    scrape(&cluster.hosts[0].api.to_string(), name)
}

/// The value of the sample `name` at `http://<addr>/metrics`, or 0 when it is not exposed.
pub fn scrape(addr: &str, name: &str) -> f64 {
    series(addr, name).unwrap_or(0.0)
}

/// The value of the sample `name` at `http://<addr>/metrics`, if it is exposed.
pub fn series(addr: &str, name: &str) -> Option<f64> {
    let text = reqwest::blocking::get(format!("http://{addr}/metrics")).and_then(|r| r.text()).expect("scrape");
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|value| value.trim().parse().expect("a number"))
}

#[test]
fn host_metrics_move_with_what_they_count() {
    let cluster = Cluster::start(1);
    assert_eq!(sample(&cluster, "steady_hostd_deploys_total{outcome=\"serving\"}"), 0.0);
    cluster.deploy(&workspace().join("examples/hello"), "counted");
    assert_eq!(sample(&cluster, "steady_hostd_deploys_total{outcome=\"serving\"}"), 1.0);
    assert_eq!(sample(&cluster, "steady_hostd_apps{state=\"running\"}"), 1.0);
    eventually("the warm pool to refill", || (sample(&cluster, "steady_hostd_warm_sandboxes") >= 1.0).then_some(()));

    let cold_before = sample(&cluster, "steady_hostd_cold_starts_total");
    assert_eq!(cluster.api_post("/v1/apps/counted/sleep")["stopped"], true);
    assert_eq!(sample(&cluster, "steady_hostd_apps{state=\"asleep\"}"), 1.0);
    assert_eq!(cluster.get("counted", "/").status, 200);
    assert_eq!(sample(&cluster, "steady_hostd_cold_starts_total"), cold_before + 1.0);
    assert!(sample(&cluster, "steady_hostd_cold_start_duration_seconds_count") >= 1.0);

    // Per-app usage comes from the app's cgroup: only where the host has kernel limits.
    let limits = cluster.status("counted")["limits"].as_str().unwrap_or_default().to_owned();
    if !limits.starts_with("no kernel limits") {
        let memory = "steady_hostd_app_memory_bytes{app=\"counted\"}";
        let cpu = "steady_hostd_app_cpu_seconds_total{app=\"counted\"}";
        assert!(sample(&cluster, memory) > 1_000_000.0, "a running Bun uses megabytes ({limits})");
        // CPU time may be counted in 10 ms ticks: send requests until it shows.
        let cpu_before = sample(&cluster, cpu);
        eventually("CPU time to grow with requests", || {
            for _ in 0..50 {
                assert_eq!(cluster.get("counted", "/").status, 200);
            }
            (sample(&cluster, cpu) > cpu_before).then_some(())
        });
        assert_eq!(cluster.api_post("/v1/apps/counted/sleep")["stopped"], true);
        assert_eq!(sample(&cluster, memory), 0.0, "an asleep app has no memory series");
        assert!(sample(&cluster, cpu) > cpu_before, "the counter never goes back");
    }

    let crasher = write_app(cluster.dir.path(), "crasher", "export default { fetch() { process.exit(3); } };\n");
    cluster.deploy(&crasher, "crasher");
    eventually("the crash loop to be declared", || {
        let answer = cluster.get("crasher", "/");
        (answer.status == 503 && answer.body.contains("crash_loop")).then_some(())
    });
    assert!(sample(&cluster, "steady_hostd_app_crashes_total") >= 3.0);
    assert!(sample(&cluster, "steady_hostd_requests_dropped_total{reason=\"crash_loop\"}") >= 1.0);

    let broken = write_app(cluster.dir.path(), "broken", "export default { fetch() { return 1 } }; throw 1;\n");
    assert!(!cluster.steady(&["deploy", broken.to_str().unwrap(), "--name", "counted"]).status.success());
    assert_eq!(sample(&cluster, "steady_hostd_deploys_total{outcome=\"failed\"}"), 1.0);
}

#[test]
fn load_balancer_metrics_move_with_what_they_count() {
    let mut cluster = Cluster::start(1);
    let lb = cluster.private.to_string();
    assert!(scrape(&lb, "steady_lb_routing_table_version") >= 1.0);
    cluster.deploy(&workspace().join("examples/hello"), "counted");
    let ok = "steady_lb_requests_total{app=\"counted\",status=\"2xx\"}";
    let before = scrape(&lb, ok);
    for _ in 0..3 {
        assert_eq!(cluster.get("counted", "/").status, 200);
    }
    eventually("three requests counted", || (scrape(&lb, ok) == before + 3.0).then_some(()));
    assert!(scrape(&lb, "steady_lb_request_duration_seconds_count") >= 3.0);
    assert_eq!(scrape(&lb, "steady_lb_requests_in_flight"), 0.0);
    assert_eq!(cluster.get("nobody-here", "/").status, 404);
    // The LB counts a request after its answer is sent, so the scrape may come first.
    let not_found = "steady_lb_requests_total{app=\"-\",status=\"4xx\"}";
    eventually("the 404 counted", || (scrape(&lb, not_found) >= 1.0).then_some(()));

    let errors = scrape(&lb, "steady_lb_upstream_errors_total");
    let retries = scrape(&lb, "steady_lb_upstream_connect_retries_total");
    cluster.hosts[0].daemon.stop_with(libc::SIGKILL);
    // The port may still accept for a moment after the daemon is gone: most likely a child
    // it had forked and not yet turned into its program (a sandbox, a Litestream) holds a copy
    // of the listening socket until it execs or dies too. A request then reaches no one and
    // is a 502 with no connect to retry (the LB's log showed that in 1 of 40 looped runs).
    let ingress = cluster.hosts[0].ingress;
    eventually("the dead host's port to refuse connections", || {
        TcpStream::connect_timeout(&ingress, Duration::from_secs(1)).is_err().then_some(())
    });
    assert!(cluster.get("counted", "/").status >= 500);
    eventually("the failed request counted", || {
        (scrape(&lb, "steady_lb_upstream_errors_total") > errors).then_some(())
    });
    // Nothing reached the dead host, so the LB tried to connect again (three times) first.
    assert!(scrape(&lb, "steady_lb_upstream_connect_retries_total") >= retries + 3.0);
}

/// An app whose `/slow` answers after 1.5 s; every answer names the process that gave it.
const SLOW_ANSWER_APP: &str = r#"const id = Math.random().toString(36).slice(2);
export default {
  async fetch(request) {
    if (new URL(request.url).pathname === "/slow") {
      console.log(`slow request in ${id}`);
      await Bun.sleep(1500);
    }
    return new Response(id);
  },
};
"#;

/// Sends `method /slow` to `app` through the LB while the app's process is killed under it.
fn slow_request_with_a_kill(cluster: &Cluster, app: &str, method: reqwest::Method) -> (u16, String) {
    let seen_before = cluster.app_log(app).matches("slow request in").count();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    std::thread::scope(|scope| {
        let request = scope.spawn(|| {
            let url = format!("http://{}/slow", cluster.public);
            let response = http.request(method, url).header("host", format!("{app}.localhost")).send().expect("answer");
            (response.status().as_u16(), response.text().unwrap_or_default())
        });
        eventually("the slow request to reach the app", || {
            (cluster.app_log(app).matches("slow request in").count() > seen_before).then_some(())
        });
        let pid = cluster.status(app)["pid"].as_u64().expect("a running app has a pid") as i32;
        // SAFETY: the app's sandbox process group, started by this test's host daemon.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        request.join().expect("request thread")
    })
}

#[test]
fn a_get_whose_app_dies_under_it_goes_once_more_and_a_post_does_not() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "fragile", SLOW_ANSWER_APP);
    cluster.deploy(&app, "fragile");
    let first = cluster.get("fragile", "/").body;
    let resent = "steady_hostd_requests_resent_total";
    assert_eq!(sample(&cluster, resent), 0.0);

    let (status, answered_by) = slow_request_with_a_kill(&cluster, "fragile", reqwest::Method::GET);
    assert_eq!(status, 200, "{answered_by}");
    assert_ne!(answered_by, first, "a new process answered");
    assert_eq!(sample(&cluster, resent), 1.0);
    assert_eq!(cluster.status("fragile")["state"], "running", "one kill while serving is no crash loop");

    let (status, body) = slow_request_with_a_kill(&cluster, "fragile", reqwest::Method::POST);
    assert_eq!(status, 502, "a POST is never sent twice: {body}");
    assert_eq!(sample(&cluster, resent), 1.0);
    assert_eq!(cluster.get("fragile", "/").status, 200, "the next request starts the app again");
}

#[test]
fn slicer_metrics_follow_the_table() {
    let cluster = Cluster::start(2);
    let slicer = cluster.slicer_addr.clone();
    assert_eq!(scrape(&slicer, "steady_slicer_hosts"), 2.0);
    let slices = scrape(&slicer, "steady_slicer_slices{host=\"host-1\"}")
        + scrape(&slicer, "steady_slicer_slices{host=\"host-2\"}");
    assert_eq!(slices, 1024.0, "every slice has an owner");
    let version = scrape(&slicer, "steady_slicer_assignment_version");
    cluster.deploy(&workspace().join("examples/hello"), "counted");
    assert_eq!(scrape(&slicer, "steady_slicer_apps"), 1.0);
    assert!(scrape(&slicer, "steady_slicer_assignment_version") > version);
}

/// Metric names a `/metrics` page declares (`# TYPE` lines), with the sample suffixes each
/// type exposes (`_total` for counters; `_bucket`, `_sum`, `_count` for histograms).
fn exported_names(addr: &str) -> Vec<String> {
    let text = reqwest::blocking::get(format!("http://{addr}/metrics")).and_then(|r| r.text()).expect("scrape");
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        names.push(name.to_owned());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

#[test]
fn every_grafana_panel_queries_metrics_the_binaries_export() {
    let cluster = Cluster::start(1);
    // Per-app series exist once an app runs and has answered through the LB.
    cluster.deploy(&workspace().join("examples/hello"), "graphed");
    assert_eq!(cluster.get("graphed", "/").status, 200);
    let host = cluster.hosts[0].api.to_string();
    let lag = "steady_hostd_app_replication_lag_seconds{app=\"graphed\"}";
    eventually("the app's database to be attached to replication", || series(&host, lag));
    eventually("the file replica to hold the app's writes", || (series(&host, lag) == Some(0.0)).then_some(()));
    let mut exported = exported_names(&cluster.hosts[0].api.to_string());
    exported.extend(exported_names(&cluster.private.to_string()));
    exported.extend(exported_names(&cluster.slicer_addr));
    let path = workspace().join("deploy/grafana/steady-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard file")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "the dashboard has its panels");
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("panel {title:?} has no query")) {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("steady_"))
                .collect();
            assert!(!names.is_empty(), "panel {title:?}: {expr:?} names no steady metric");
            for name in names {
                assert!(exported.iter().any(|e| e == name), "panel {title:?}: {name} is not exported");
            }
        }
    }
}

/// An app that writes one row per `?write=N` request into its SQLite database.
const WRITER: &str = r#"
import { Database } from "bun:sqlite";
const db = new Database(`${process.env.STEADY_DATA_DIR}/rows.db`, { create: true });
db.run("PRAGMA journal_mode = WAL");
db.run("PRAGMA busy_timeout = 5000");
db.run("CREATE TABLE IF NOT EXISTS rows (n INTEGER PRIMARY KEY)");
export default {
  fetch(request) {
    const n = new URL(request.url).searchParams.get("write");
    if (n !== null) db.run("INSERT INTO rows (n) VALUES (?)", [Number(n)]);
    return new Response("ok");
  },
};
"#;

/// `s3s-fs` started again at the address and on the data of a stopped [`S3Server`] (which
/// picks a new port each time it starts, where hostd's storage config names a fixed one).
/// Stopped by its pid on drop.
struct S3Again {
    child: Child,
    log: PathBuf,
}

impl S3Again {
    fn start(address: &str, data: &Path, log: PathBuf) -> Self {
        let (host, port) = address.rsplit_once(':').expect("host:port");
        let output = std::fs::File::create(&log).expect("s3 log");
        let child = Command::new(workspace().join(".tools/bin/s3s-fs"))
            .args(["--host", host, "--port", port, "--access-key", ACCESS_KEY_ID, "--secret-key", SECRET_ACCESS_KEY])
            .arg(data)
            .env_clear()
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("s3 log"))
            .stderr(output)
            .spawn()
            .expect("start s3s-fs again");
        let mut server = S3Again { child, log };
        eventually("s3s-fs to accept connections again", || {
            let exited = server.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "s3s-fs exited: {}", std::fs::read_to_string(&server.log).unwrap_or_default());
            TcpStream::connect(address).ok()
        });
        server
    }
}

impl Drop for S3Again {
    fn drop(&mut self) {
        // Child::kill signals this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn replication_lag_grows_while_the_replica_storage_is_down_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::start(dir.path());
    s3.create_bucket("steady");
    let config = s3.storage_config("steady", None);
    let (address, data) = (s3.endpoint.trim_start_matches("http://").to_owned(), s3.data());
    // The replica's Level-0 objects (one per Litestream transaction) as s3s-fs stores them.
    let level0 = data.join("steady/cluster/replicas/writer/rows.db/0000");
    let level0_objects = || std::fs::read_dir(&level0).map_or(0, |entries| entries.count());
    let cluster = Cluster::start_with(1, &["--storage-config", config.to_str().unwrap()]);
    let app = write_app(cluster.dir.path(), "writer", WRITER);
    cluster.deploy(&app, "writer");
    let host = cluster.hosts[0].api.to_string();
    let lag = "steady_hostd_app_replication_lag_seconds{app=\"writer\"}";
    let mut written = 0u64;
    let mut write_and_scrape = || {
        written += 1;
        let answer = cluster.get("writer", &format!("/?write={written}"));
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "write {written}");
        series(&host, lag).expect("the app's lag series exists while it runs")
    };
    eventually("the app's database to be attached to replication", || series(&host, lag));

    // Storage up: several seconds of steady writes, each followed by a scrape.
    let (healthy_since, mut healthy_max) = (Instant::now(), 0f64);
    while healthy_since.elapsed() < Duration::from_secs(5) {
        healthy_max = healthy_max.max(write_and_scrape());
    }
    assert!(healthy_max < 2.0, "the lag stays small while the replica storage is up: {healthy_max} s");

    // Storage down (stopped by its pid): local writes go on, the replica falls behind.
    let objects_before_the_stop = level0_objects();
    assert!(objects_before_the_stop > 0, "the replica is in the bucket");
    drop(s3);
    let stopped = Instant::now();
    let mut peak = eventually("the lag to pass 3 s while the storage is down", || {
        let seconds = write_and_scrape();
        (seconds > 3.0).then_some(seconds)
    });
    let to_three_seconds = stopped.elapsed();

    // Storage up again, same address and data: the replica catches up.
    let again = S3Again::start(&address, &data, dir.path().join("s3s-fs-again.log"));
    let restarted = Instant::now();
    let recovered = eventually("the lag to fall under 2 s once the storage is back", || {
        let seconds = write_and_scrape();
        peak = peak.max(seconds);
        (seconds < 2.0).then_some(seconds)
    });
    assert!(level0_objects() > objects_before_the_stop, "the catch-up is in the bucket, as the lag says");
    eprintln!(
        "replication lag: at most {healthy_max:.2} s while up; over 3 s {:.1} s after the storage stopped; \
         peak {peak:.2} s; back to {recovered:.2} s {:.1} s after it restarted ({written} writes)",
        to_three_seconds.as_secs_f64(),
        restarted.elapsed().as_secs_f64(),
    );
    drop(cluster);
    drop(again);
}
