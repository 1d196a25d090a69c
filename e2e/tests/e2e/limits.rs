//! Kernel limits, tested with hostile apps: a memory hog, a fork bomb and a busy loop are each
//! contained while a neighbour app on the same host keeps answering.

use std::time::{Duration, Instant};

use steady_e2e::{write_app, Cluster};

const HOG: &str = "export default { fetch() { const keep = []; \
    for (let i = 0; i < 4096; i++) { keep.push(Buffer.alloc(1 << 20, 1)); } \
    return new Response('allocated ' + keep.length + ' MiB'); } };\n";
const FORK_BOMB: &str = "export default { fetch() { let spawned = 0; let error = 'none'; \
    try { for (let i = 0; i < 500; i++) { Bun.spawn(['/usr/bin/sleep', '30']); spawned++; } } \
    catch (e) { error = String(e.code ?? e.message); } \
    return Response.json({ spawned, error }); } };\n";
const BUSY: &str = "export default { fetch() { while (true) {} } };\n";
const NEIGHBOUR: &str = "export default { fetch() { return new Response('fine'); } };\n";

/// Asks the neighbour `count` times and returns the slowest answer; every answer must be right.
fn neighbour_slowest(cluster: &Cluster, count: usize) -> Duration {
    (0..count)
        .map(|_| {
            let started = Instant::now();
            let answer = cluster.get("neighbour", "/");
            assert_eq!((answer.status, answer.body.as_str()), (200, "fine"));
            started.elapsed()
        })
        .max()
        .unwrap()
}

fn cluster_with(apps: &[(&str, &str)]) -> Cluster {
    let flags = ["--app-memory-max-mib", "96", "--app-pids-max", "48", "--app-cpu-max-percent", "50"];
    let cluster = Cluster::start_with(1, &flags);
    for (name, source) in apps.iter().chain([("neighbour", NEIGHBOUR)].iter()) {
        cluster.deploy(&write_app(cluster.dir.path(), name, source), name);
    }
    let limits = cluster.status("neighbour")["limits"].as_str().unwrap().to_owned();
    assert!(limits.starts_with("cgroup"), "this machine has cgroups; hostd must use them: {limits}");
    cluster
}

#[test]
fn a_memory_hog_is_killed_at_its_limit_and_the_log_says_so() {
    let cluster = cluster_with(&[("hog", HOG)]);
    let answer = cluster.get("hog", "/");
    assert_ne!(answer.status, 200, "the hog never gets to allocate 4 GiB: {}", answer.body);
    steady_e2e::eventually("the log to report the memory limit", || {
        cluster.app_log("hog").contains("killed for exceeding its memory limit").then_some(())
    });
    let slowest = neighbour_slowest(&cluster, 20);
    assert!(slowest < Duration::from_secs(1), "neighbour slowed to {slowest:?}");
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    let cluster = cluster_with(&[("bomb", FORK_BOMB)]);
    let answer = cluster.get("bomb", "/");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let report: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let spawned = report["spawned"].as_u64().unwrap();
    assert!(spawned < 48, "spawning stopped at the limit: {report}");
    assert_ne!(report["error"], "none", "{report}");
    let slowest = neighbour_slowest(&cluster, 20);
    assert!(slowest < Duration::from_secs(1), "neighbour slowed to {slowest:?}");
}

#[test]
fn a_busy_loop_is_throttled_and_the_neighbour_keeps_answering() {
    let cluster = cluster_with(&[("busy", BUSY)]);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let url = format!("http://{}/", cluster.public);
    let spun = client.get(url).header("host", "busy.localhost").send();
    assert!(spun.is_err(), "the busy loop never answers");
    let slowest = neighbour_slowest(&cluster, 50);
    assert!(slowest < Duration::from_secs(1), "neighbour slowed to {slowest:?}");
    let pid = cluster.status("busy")["pid"].as_u64().expect("the busy app still runs");
    assert!(pid > 0);
}

#[test]
fn per_app_concurrency_and_request_bodies_are_bounded() {
    let cluster = Cluster::start_with(1, &["--app-concurrency-max", "2", "--request-body-max-bytes", "1000"]);
    let source = "export default { async fetch(r: Request) { const body = await r.text(); \
                  if (new URL(r.url).pathname === '/slow') await Bun.sleep(500); \
                  return new Response(String(body.length)); } };\n";
    cluster.deploy(&write_app(cluster.dir.path(), "bounded", source), "bounded");

    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6).map(|_| scope.spawn(|| cluster.get("bounded", "/slow"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(answers.iter().filter(|a| a.status == 200).count() >= 2, "{answers:?}");
    assert!(
        !busy.is_empty() && busy.iter().all(|a| a.body.contains("app_busy") && a.retry_after.is_some()),
        "{answers:?}"
    );

    let client = reqwest::blocking::Client::new();
    let post = |size: usize| {
        let url = format!("http://{}/", cluster.public);
        client.post(url).header("host", "bounded.localhost").body(vec![b'a'; size]).send().unwrap()
    };
    let small = post(500);
    assert_eq!((small.status().as_u16(), small.text().unwrap()), (200, "500".to_owned()));
    let large = post(2_000);
    assert_eq!(large.status().as_u16(), 413);
    assert!(large.text().unwrap().contains("body_too_large"));
}
