//! The host daemon as users feel it: sleep and wake, start once under a burst, bounded
//! queues, supervision, no orphans after `kill -9`, versions, temporary apps, logs.

use std::io::{BufRead, BufReader};

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use steady_e2e::{alive, descendants, describe, eventually, steady_command, write_app, Cluster};

/// An app that takes `delay_ms` to load (top-level await), then answers with a fixed text.
fn slow_app(delay_ms: u64, text: &str) -> String {
    format!("await Bun.sleep({delay_ms});\nexport default {{ fetch() {{ return new Response({text:?}); }} }};\n")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn an_idle_app_sleeps_and_the_next_request_wakes_it() {
    let cluster = Cluster::start_with(1, &["--idle-timeout-ms", "300"]);
    let app = write_app(cluster.dir.path(), "sleepy", &slow_app(0, "awake"));
    cluster.deploy(&app, "sleepy");
    assert_eq!(cluster.get("sleepy", "/").body, "awake");
    eventually("the app to fall asleep", || (cluster.status("sleepy")["state"] == "asleep").then_some(()));
    assert!(cluster.app_log("sleepy").contains("asleep after"), "{}", cluster.app_log("sleepy"));

    let answer = cluster.get("sleepy", "/");
    assert_eq!((answer.status, answer.body.as_str()), (200, "awake"));
    assert_eq!(count(&cluster.app_log("sleepy"), "listening after"), 2, "deploy start + one wake");
}

#[test]
fn fifty_concurrent_first_requests_start_one_process() {
    let cluster = Cluster::start_with(1, &["--idle-timeout-ms", "300"]);
    let app = write_app(cluster.dir.path(), "burst", &slow_app(300, "one"));
    cluster.deploy(&app, "burst");
    eventually("the app to fall asleep", || (cluster.status("burst")["state"] == "asleep").then_some(()));

    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50).map(|_| scope.spawn(|| cluster.get("burst", "/").status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
    assert_eq!(count(&cluster.app_log("burst"), "starting (pid"), 2, "deploy start + exactly one wake");
}

#[test]
fn an_overflowing_start_queue_answers_503_with_retry_after() {
    let cluster = Cluster::start_with(1, &["--idle-timeout-ms", "300", "--start-queue-max", "4"]);
    let app = write_app(cluster.dir.path(), "queued", &slow_app(1_000, "served"));
    cluster.deploy(&app, "queued");
    eventually("the app to fall asleep", || (cluster.status("queued")["state"] == "asleep").then_some(()));

    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20).map(|_| scope.spawn(|| cluster.get("queued", "/"))).collect();
        // The requests wait in the start queue while the app takes its second to start.
        let depth = || crate::metrics::scrape(&cluster.hosts[0].api.to_string(), "steady_hostd_start_queue_depth");
        eventually("the start queue depth to show the waiting requests", || (depth() >= 1.0).then_some(()));
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let served = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(served + refused.len(), 20, "only 200 or 503: {answers:?}");
    assert!((1..=4).contains(&served), "at most the queue bound is served: {served}");
    assert!(!refused.is_empty());
    for answer in refused {
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{answer:?}");
        assert!(answer.body.contains("queue_full"), "{}", answer.body);
    }
}

#[test]
fn a_killed_app_restarts_and_a_crash_loop_is_reported() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "victim", &slow_app(0, "alive"));
    cluster.deploy(&app, "victim");
    let pid = cluster.status("victim")["pid"].as_u64().expect("running app has a pid") as i32;
    // SAFETY: the sandbox's process group, started for this test.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    eventually("the kill to be noticed", || cluster.app_log("victim").contains("killed by signal 9").then_some(()));
    let answer = eventually("the killed app to serve again", || {
        let answer = cluster.get("victim", "/");
        (answer.status == 200).then_some(answer)
    });
    assert_eq!(answer.body, "alive");

    let crasher = write_app(cluster.dir.path(), "crasher", "export default { fetch() { process.exit(3); } };\n");
    cluster.deploy(&crasher, "crasher");
    let refused = eventually("the crash loop to be declared", || {
        let answer = cluster.get("crasher", "/");
        (answer.status == 503 && answer.body.contains("crash_loop")).then_some(answer)
    });
    assert!(refused.retry_after.is_some(), "{refused:?}");
    let status = cluster.status("crasher");
    assert_eq!(status["state"], "crash-loop", "{status}");
    assert!(status["crashes"].as_u64().unwrap() >= 3, "{status}");
    assert!(cluster.app_log("crasher").contains("crash loop: "), "{}", cluster.app_log("crasher"));
    assert_eq!(cluster.get("victim", "/").body, "alive", "the neighbour is unaffected");
}

#[test]
fn after_kill_9_of_hostd_no_app_process_is_left_and_apps_serve_again() {
    let mut cluster = Cluster::start(1);
    let mut processes = Vec::new();
    for name in ["orphan-a", "orphan-b"] {
        let app = write_app(cluster.dir.path(), name, &slow_app(0, name));
        cluster.deploy(&app, name);
        let pid = cluster.status(name)["pid"].as_u64().unwrap() as u32;
        let tree = descendants(pid);
        assert!(tree.len() >= 2, "bwrap and the app under it: {tree:?}");
        processes.extend(tree);
    }
    cluster.hosts[0].daemon.stop_with(libc::SIGKILL);
    eventually("every app process to die with hostd", || processes.iter().all(|&p| !alive(p)).then_some(()));

    cluster.start_host_again(0);
    for name in ["orphan-a", "orphan-b"] {
        let answer = cluster.get(name, "/");
        assert_eq!((answer.status, answer.body.as_str()), (200, name));
    }
}

/// A sandbox process nobody ends: what bwrap leaves when its outer process dies in its first
/// milliseconds (docs/notes.md "Sandboxes that outlive hostd"). The race is a few milliseconds
/// wide, so this test starts such a process itself: a real `bwrap` naming a sandbox directory
/// under the data of a host it then kills, running a command named for this test.
#[test]
fn a_sandbox_process_an_earlier_hostd_left_running_is_ended_when_hostd_starts_again() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "after", &slow_app(0, "after"));
    cluster.deploy(&app, "after");
    let sandbox_dir = cluster.hosts[0].data.join("sandboxes").join("left-behind");
    std::fs::create_dir_all(sandbox_dir.join("app")).expect("sandbox dir");
    cluster.hosts[0].daemon.stop_with(libc::SIGKILL);
    let marker = format!("{}.{}", 3600, std::process::id());
    let mut leftover = KillOnDrop(
        std::process::Command::new("bwrap")
            .args(["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"])
            .args(["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"])
            .args(["--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev"])
            .arg("--ro-bind")
            .arg(sandbox_dir.join("app"))
            .args(["/app", "/usr/bin/sleep", &marker])
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .expect("bwrap"),
    );
    let outer = leftover.0.id();
    // The outer bwrap, the sandbox's pid 1 and the command under it.
    let tree = eventually("the leftover sandbox to run its command", || {
        let tree = descendants(outer);
        (tree.len() >= 3).then_some(tree)
    });

    cluster.start_host_again(0);
    eventually("the leftover sandbox's outer bwrap to be ended", || leftover.0.try_wait().ok().flatten());
    eventually("everything in the leftover sandbox to be gone", || tree.iter().all(|&p| !alive(p)).then_some(()));
    let log = cluster.hosts[0].daemon.log_tail(200);
    assert!(log.contains("ended sandbox processes an earlier run left behind"), "{log}");
    assert!(!sandbox_dir.exists(), "the sandbox directory is recovered and removed");
    let answer = cluster.get("after", "/");
    assert_eq!((answer.status, answer.body.as_str()), (200, "after"));
}

/// A process this test started, killed when the test ends (if nothing else ended it).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_hostd_on_the_same_data_directory_is_refused_and_the_first_serves_on() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "first", &slow_app(0, "first"));
    cluster.deploy(&app, "first");
    let host = &cluster.hosts[0];
    let data = host.data.display().to_string();
    let mut second = KillOnDrop(
        std::process::Command::new(steady_e2e::bin_dir().join("steady-hostd"))
            .args(["--id", "intruder", "--data", &data, "--ingress", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(["--slicer", &cluster.slicer_addr, "--storage-dir"])
            .arg(cluster.dir.path().join("storage"))
            .env_clear()
            .env("PATH", steady_e2e::tools_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("steady-hostd"),
    );
    let status = eventually("the second hostd to exit", || second.0.try_wait().ok().flatten());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!("another steady-hostd uses the data directory {data} (pid {})", host.daemon.pid());
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(cluster.get("first", "/").body, "first");
}

#[test]
fn a_warm_sandbox_that_dies_while_waiting_is_replaced_at_once() {
    let cluster = Cluster::start_with(1, &["--warm-sandboxes", "2"]);
    let api = cluster.hosts[0].api.to_string();
    let hostd = cluster.hosts[0].daemon.pid();
    let warm = || crate::metrics::scrape(&api, "steady_hostd_warm_sandboxes");
    // No app runs, so hostd's bwrap children are its warm sandboxes.
    let sandboxes = || children_named(hostd, "bwrap");
    let before = eventually("two warm sandboxes", || {
        let pids = sandboxes();
        (warm() == 2.0 && pids.len() == 2).then_some(pids)
    });
    // SAFETY: signalling a sandbox's process group, as an out-of-memory kill would end it.
    unsafe { libc::kill(-(before[0] as i32), libc::SIGKILL) };

    // On the binary before, the pool counted the dead one as warm until a wake took it.
    let after = eventually("a new warm sandbox in the dead one's place", || {
        let pids = sandboxes();
        (warm() == 2.0 && pids.len() == 2 && !pids.contains(&before[0])).then_some(pids)
    });
    assert!(after.contains(&before[1]), "the other one still waits: {before:?} → {after:?}");
    let log = cluster.hosts[0].daemon.log_tail(100);
    assert!(log.contains("a warm sandbox died while waiting"), "{log}");
}

/// The children of `parent` whose command is `name`, from `/proc`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("/proc");
    let pids = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    let child = |pid: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, tail)) = stat.rsplit_once(") ") else { return false };
        let ppid = tail.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        head.ends_with(&format!("({name}")) && ppid == Some(parent) && alive(*pid)
    };
    let mut found: Vec<u32> = pids.filter(child).collect();
    found.sort_unstable();
    found
}

#[test]
fn rollback_serves_an_earlier_version_and_versions_lists_them() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "rolling", &slow_app(0, "one"));
    cluster.deploy(&app, "rolling");
    std::fs::write(app.join("index.ts"), slow_app(0, "two")).unwrap();
    cluster.deploy(&app, "rolling");
    assert_eq!(cluster.get("rolling", "/").body, "two");

    let back = cluster.steady(&["rollback", "rolling"]);
    assert!(back.status.success(), "{}", describe(&back));
    assert!(String::from_utf8_lossy(&back.stderr).contains("database was left as it is"), "{}", describe(&back));
    assert_eq!(cluster.get("rolling", "/").body, "one");

    let listed = cluster.steady(&["versions", "rolling", "--json"]);
    let versions: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("versions JSON");
    let current: Vec<_> = versions.as_array().unwrap().iter().filter(|v| v["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["version"], 1);

    let forward = cluster.steady(&["rollback", "rolling", "2"]);
    assert!(forward.status.success(), "{}", describe(&forward));
    assert_eq!(cluster.get("rolling", "/").body, "two");
    let missing = cluster.steady(&["rollback", "rolling", "9"]);
    assert_eq!(missing.status.code(), Some(4), "{}", describe(&missing));
}

#[test]
fn a_temporary_app_vanishes_with_its_data_after_its_ttl() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "scratch", &slow_app(0, "for now"));
    let run = cluster.steady(&["run", app.join("index.ts").to_str().unwrap(), "--ttl", "2s", "--json"]);
    assert!(run.status.success(), "{}", describe(&run));
    let deployed: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let name = deployed["name"].as_str().unwrap().to_owned();
    assert_eq!(cluster.get(&name, "/").body, "for now");
    let app_dir = cluster.hosts[0].data.join("apps").join(&name);
    assert!(app_dir.is_dir());

    eventually("the temporary app to be collected", || (cluster.get(&name, "/").status == 404).then_some(()));
    eventually("its files to be gone", || (!app_dir.exists()).then_some(()));
    let apps = cluster.steady(&["apps", "--json"]);
    assert!(!String::from_utf8_lossy(&apps.stdout).contains(&name), "{}", describe(&apps));
}

#[test]
fn logs_follow_live_and_requests_are_logged() {
    let cluster = Cluster::start(1);
    let source = "export default { fetch(r: Request) { console.log('saw ' + new URL(r.url).pathname); \
                  return new Response('logged'); } };\n";
    let app = write_app(cluster.dir.path(), "chatty", source);
    cluster.deploy(&app, "chatty");
    assert_eq!(cluster.get("chatty", "/first").body, "logged");
    let logs = cluster.steady(&["logs", "chatty"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("out saw /first"), "{}", describe(&logs));
    assert!(text.contains("version 1 starting"), "a marker line at every version start: {text}");

    let mut follower = steady_command(&["logs", "chatty", "--follow", "--tail", "0"])
        .env("STEADY_API", cluster.private.to_string())
        .env("STEADY_TOKEN", &cluster.admin_token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    // The follower may connect after a request: keep making requests (a bounded number)
    // until one of their lines arrives live.
    let deadline = std::time::Instant::now() + steady_e2e::patience();
    let seen = loop {
        assert!(std::time::Instant::now() < deadline, "no live log line arrived");
        assert_eq!(cluster.get("chatty", "/live").status, 200);
        if let Ok(line) = receiver.recv_timeout(std::time::Duration::from_millis(200)) {
            if line.contains("saw /live") {
                break line;
            }
        }
    };
    assert!(seen.contains(" out saw /live"), "{seen}");
    let _ = follower.kill();
    let _ = follower.wait();

    let requests = cluster.steady(&["requests", "chatty", "--json"]);
    let records: serde_json::Value = serde_json::from_slice(&requests.stdout).expect("requests JSON");
    let first = records.as_array().unwrap().iter().find(|r| r["path"] == "/first").expect("request logged");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 6);
}

const CRON_APP: &str = r#"
import fs from "node:fs";
export default {
  fetch() { return new Response(fs.existsSync("/data/ticks") ? fs.readFileSync("/data/ticks", "utf8") : ""); },
  crons: {
    "*/1 * * * * *": () => { fs.appendFileSync("/data/ticks", `${Math.floor(Date.now() / 1000)}\n`); },
  },
};
"#;

#[test]
fn a_cron_handler_runs_once_per_tick_waking_the_app_and_across_a_redeploy() {
    let cluster = Cluster::start_with(1, &["--idle-timeout-ms", "400"]);
    let app = write_app(cluster.dir.path(), "ticker", CRON_APP);
    cluster.deploy(&app, "ticker");
    eventually("three cron runs", || (count(&cluster.app_log("ticker"), "ran in") >= 3).then_some(()));
    cluster.deploy(&app, "ticker");
    let log = eventually("six cron runs", || {
        let log = cluster.app_log("ticker");
        (count(&log, "ran in") >= 6).then_some(log)
    });
    let ticks_text = cluster.get("ticker", "/").body;
    let ticks: Vec<u64> = ticks_text.lines().map(|l| l.parse().unwrap()).collect();
    let distinct: std::collections::BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick ran twice: {ticks:?}");
    assert!(ticks.len() >= 6, "{ticks:?}\n{log}");

    let broken = write_app(
        cluster.dir.path(),
        "bad-cron",
        "export default { fetch() { return new Response('x'); }, \
        crons: { 'every minute please': () => {} } };\n",
    );
    let refused = cluster.steady(&["deploy", broken.to_str().unwrap(), "--name", "ticker"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid cron expression"), "{}", describe(&refused));
}

#[test]
fn a_sleeping_app_is_woken_for_its_cron() {
    let cluster = Cluster::start_with(1, &["--idle-timeout-ms", "200"]);
    let source = CRON_APP.replace("*/1 * * * * *", "*/3 * * * * *");
    let app = write_app(cluster.dir.path(), "waker", &source);
    cluster.deploy(&app, "waker");
    eventually("the app to sleep, then wake for a cron", || {
        let log = cluster.app_log("waker");
        let slept = log.find("asleep after")?;
        log[slept..].contains("ran in").then_some(())
    });
}

#[test]
fn a_host_keeps_at_most_awake_max_apps_running() {
    let cluster = Cluster::start_with(1, &["--awake-max", "2"]);
    let names = ["first", "second", "third"];
    for name in names {
        cluster.deploy(&write_app(cluster.dir.path(), name, &slow_app(0, name)), name);
    }
    let running = || names.iter().filter(|n| cluster.status(n)["state"] == "running").count();
    eventually("at most two running apps", || (running() <= 2).then_some(()));
    eventually("the least recently used app to sleep", || {
        cluster.app_log("first").contains("limit of awake apps").then_some(())
    });
    for name in names {
        assert_eq!(cluster.get(name, "/").body, name, "every app still answers");
    }
    eventually("the limit to hold again", || (running() <= 2).then_some(()));
}
