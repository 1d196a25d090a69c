//! The LB's own lifecycle: a stop (SIGTERM) lets requests in flight finish, and an upgrade to
//! a new process (`--upgrade`, then SIGQUIT to the old one) refuses no request, a second LB on
//! an address the first listens on refuses to start, and the LB runs without transparent huge
//! pages, and serves keep-alive requests without waking its own event loop for each.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use steady_e2e::tls::{client_config, TestCa};
use steady_e2e::{eventually, write_app, Cluster};

use crate::metrics::scrape;
use crate::tls::{cluster_with_app, tls_lb, tls_loop, wait_for_progress};

/// One plain `GET /` for `host` on a fresh connection; the status, or why there was none.
fn plain_get(lb: SocketAddr, host: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&lb, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream.take(1024 * 1024).read_to_end(&mut answer).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no answer: {text:?}"))
}

/// Plain requests on fresh connections until `stop`, counted in `sent`; returns the failures.
fn plain_loop(lb: SocketAddr, stop: &AtomicBool, sent: &AtomicUsize) -> Vec<String> {
    let mut failures = Vec::new();
    while !stop.load(Ordering::Acquire) && sent.load(Ordering::Acquire) < 20_000 {
        sent.fetch_add(1, Ordering::AcqRel);
        match plain_get(lb, "a.steady.page") {
            Ok(200) => {}
            Ok(status) => failures.push(format!("status {status}")),
            Err(error) => failures.push(error),
        }
    }
    failures
}

#[test]
fn an_upgrade_to_a_new_process_fails_no_request() {
    let mut cluster = cluster_with_app();
    let ca = TestCa::new(cluster.dir.path(), "ca");
    let (page, sh) = (ca.issue("steady.page"), ca.issue("steady.sh"));
    let (index, tls) = tls_lb(&mut cluster, &[("steady.page", &page), ("steady.sh", &sh)]);
    let config = client_config(&[ca.cert_path()]);
    let public = cluster.more_lbs[index].public;
    let old_pid = cluster.more_lbs[index].daemon.pid();

    let stop = AtomicBool::new(false);
    let (plain_sent, tls_sent) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (plain_failures, tls_failures, old_exit) = std::thread::scope(|scope| {
        let plain = scope.spawn(|| plain_loop(public, &stop, &plain_sent));
        let secure = scope.spawn(|| tls_loop(tls, "a.steady.page", &config, &stop, &tls_sent));
        wait_for_progress(&plain_sent, 20);
        let old_exit = cluster.upgrade_lb(index);
        // The new process alone serves the same addresses now.
        wait_for_progress(&plain_sent, 20);
        wait_for_progress(&tls_sent, 20);
        stop.store(true, Ordering::Release);
        (plain.join().expect("plain loop"), secure.join().expect("TLS loop"), old_exit)
    });
    let (plain_sent, tls_sent) = (plain_sent.load(Ordering::Acquire), tls_sent.load(Ordering::Acquire));
    eprintln!(
        "upgrade: {plain_sent} plain and {tls_sent} TLS requests on fresh connections, {} and {} failed; the old LB exited {:.1} s after SIGQUIT",
        plain_failures.len(),
        tls_failures.len(),
        old_exit.as_secs_f64()
    );
    assert!(plain_failures.is_empty(), "plain: {plain_failures:?}");
    assert!(tls_failures.is_empty(), "TLS: {tls_failures:?}");
    assert_ne!(cluster.more_lbs[index].daemon.pid(), old_pid);
    assert_eq!(plain_get(public, "a.steady.sh"), Ok(200));
}

/// An app that answers after 2 s.
const SLOW_APP: &str = r#"export default { async fetch() { await Bun.sleep(2000); return new Response("slow"); } };"#;

#[test]
fn a_stopping_lb_lets_its_requests_in_flight_finish_then_exits() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "slow", SLOW_APP);
    cluster.deploy(&app, "slow");
    let index = cluster.add_lb_with(&["--drain-timeout-ms", "20000"]);
    let (public, private) = (cluster.more_lbs[index].public, cluster.more_lbs[index].private);

    std::thread::scope(|scope| {
        let request = scope.spawn(move || {
            let started = Instant::now();
            let answer = plain_get(public, "slow.localhost");
            (answer, started.elapsed())
        });
        let in_flight = eventually("the slow request in flight, or its early end", || {
            if request.is_finished() {
                return Some(false);
            }
            (scrape(&private.to_string(), "steady_lb_requests_in_flight") == 1.0).then_some(true)
        });
        if !in_flight {
            let (answer, took) = request.join().expect("request thread");
            panic!("the slow request ended before it was seen in flight, after {took:?}: {answer:?}");
        }
        let lb = &mut cluster.more_lbs[index].daemon;
        let stopped = Instant::now();
        lb.signal(libc::SIGTERM);
        let (answer, took) = request.join().expect("request thread");
        assert_eq!(answer, Ok(200), "the request in flight finished");
        assert!(took >= Duration::from_millis(1500), "it was really in flight ({took:?})");
        assert!(lb.wait_exit(Duration::from_secs(10)), "the LB exited after its last request");
        let exited = stopped.elapsed();
        eprintln!(
            "stop: the request in flight finished {took:?} after it started; the LB exited {exited:?} after SIGTERM"
        );
        // Well before the 20 s drain bound: the LB waits for requests, not for a timer.
        assert!(exited < Duration::from_secs(6), "exited {exited:?} after SIGTERM");
    });
}

#[test]
fn a_second_lb_on_a_public_address_in_use_refuses_to_start() {
    let cluster = Cluster::start(1);
    let private = format!("127.0.0.1:{}", steady_e2e::free_port("127.0.0.1"));
    let data = cluster.dir.path().join("second-lb");
    let mut second = std::process::Command::new(steady_e2e::bin_dir().join("steady-lb"))
        .args(["--public", &cluster.public.to_string(), "--private", &private, "--slicer", &cluster.slicer_addr])
        .args(["--domain", "localhost", "--data", &data.display().to_string()])
        .env_clear()
        .env("PATH", steady_e2e::tools_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("steady-lb starts");
    // Its workers share their address (SO_REUSEPORT): without the check a second LB of the
    // same user would start and take part of the first one's connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second LB on {} kept running", cluster.public);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    second.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr read");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {}", cluster.public)), "{stderr}");
    assert_eq!(cluster.get("nobody-here", "/").status, 404, "the first LB serves on");
}

/// A burst of new connections makes the LB take fresh heap; with transparent huge pages each
/// first touch zeroed 2 MiB and stalled the workers for tens of milliseconds (docs/notes.md,
/// "The LB's tail in a burst of new connections"). The process turns them off for itself.
#[test]
fn the_lb_runs_without_transparent_huge_pages() {
    let cluster = cluster_with_app();
    let status = std::fs::read_to_string(format!("/proc/{}/status", cluster.lb.pid())).expect("the LB's status");
    let flag = status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(str::trim);
    assert_eq!(flag, Some("0"), "{status}");
    // Requests on many connections took heap, none of it in huge pages.
    for _ in 0..200 {
        assert_eq!(plain_get(cluster.public, &format!("a.{}", cluster.domain)), Ok(200));
    }
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", cluster.lb.pid())).expect("smaps_rollup");
    let huge = rollup.lines().find_map(|line| line.strip_prefix("AnonHugePages:")).map(str::trim);
    assert_eq!(huge, Some("0 kB"), "{rollup}");
}

/// Write syscalls of process `pid` so far (`syscw` in `/proc/<pid>/io`: `write` and `writev`,
/// not the `sendto` a socket is written with).
fn write_syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("the process's io counters");
    let syscw = io.lines().find_map(|line| line.strip_prefix("syscw:")).map(str::trim);
    syscw.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no syscw in {io}"))
}

/// A worker serving keep-alive requests does not wake its own event loop for each: tokio does
/// (a write to an eventfd) whenever a deadline is set sooner than the earliest it knew of when
/// it last waited, and after each answer the lane sets the header deadline (15 s) where it had
/// waited under the host's (120 s). The lane keeps a timer due sooner (docs/notes.md, "Timer
/// wake-ups"); without it, each of these requests cost one such write.
#[test]
fn keep_alive_requests_do_not_wake_the_lbs_event_loop() {
    const REQUESTS: u64 = 500;
    let cluster = cluster_with_app();
    let http = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (url, host) = (format!("http://{}/", cluster.public), format!("a.{}", cluster.domain));
    let get = || http.get(&url).header("host", &host).send().map(|r| r.status().as_u16());
    // The first request opens the client's and the host's connections.
    assert_eq!(get().ok(), Some(200));
    let before = write_syscalls(cluster.lb.pid());
    for _ in 0..REQUESTS {
        assert_eq!(get().ok(), Some(200));
    }
    let writes = write_syscalls(cluster.lb.pid()) - before;
    println!("{writes} write syscalls for {REQUESTS} keep-alive requests");
    assert!(writes < REQUESTS / 10, "{writes} write syscalls for {REQUESTS} requests on one connection");
}
