//! Durability: an app's SQLite is replicated by Litestream, and a host that lost its disk gets
//! every acknowledged write back — from the embedded file replica and from a real S3 server.

use std::time::Duration;

use steady_e2e::s3::S3Server;
use steady_e2e::{descendants, eventually, write_app, Cluster};

/// An app that inserts `?write=<n>` and lists every row otherwise.
const LEDGER: &str = r#"
import { Database } from "bun:sqlite";
const db = new Database(`${process.env.STEADY_DATA_DIR}/ledger.db`, { create: true });
db.run("PRAGMA journal_mode = WAL");
db.run("PRAGMA busy_timeout = 5000");
db.run("CREATE TABLE IF NOT EXISTS entries (n INTEGER PRIMARY KEY)");
export default {
  fetch(request) {
    const n = new URL(request.url).searchParams.get("write");
    if (n !== null) {
      db.run("INSERT INTO entries (n) VALUES (?)", [Number(n)]);
      return new Response("ok");
    }
    return Response.json(db.query("SELECT n FROM entries ORDER BY n").all().map((row) => row.n));
  },
};
"#;

/// Litestream ships a database registered over its control socket about once a second.
const SYNC_INTERVAL: Duration = Duration::from_millis(1_000);

fn write_rows(cluster: &Cluster, app: &str, rows: std::ops::RangeInclusive<u64>) {
    for n in rows {
        let answer = cluster.get(app, &format!("/?write={n}"));
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "write {n}");
    }
}

/// Kills hostd and everything it started with SIGKILL — no final sync, no cleanup — and
/// throws its disk away.
fn lose_host(cluster: &mut Cluster) {
    let tree = descendants(cluster.hosts[0].daemon.pid());
    assert!(tree.len() >= 3, "hostd, litestream and the app's sandbox: {tree:?}");
    cluster.hosts[0].daemon.stop_with(libc::SIGKILL);
    for pid in tree {
        // SAFETY: signalling processes this test's cluster started (already dying with hostd).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    std::fs::remove_dir_all(&cluster.hosts[0].data).expect("delete the host's data directory");
}

fn rows(cluster: &Cluster, app: &str) -> Vec<u64> {
    let answer = eventually("the app to answer on the new host", || {
        let answer = cluster.get(app, "/");
        (answer.status == 200).then_some(answer)
    });
    serde_json::from_str(&answer.body).expect("rows as JSON")
}

fn survives_losing_the_host(mut cluster: Cluster) {
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    cluster.deploy(&app, "ledger");
    write_rows(&cluster, "ledger", 1..=40);
    // The property under test is time-based: writes acknowledged more than one sync interval
    // before the loss must survive it. Writes after this point may or may not.
    std::thread::sleep(SYNC_INTERVAL * 3);
    write_rows(&cluster, "ledger", 41..=45);
    lose_host(&mut cluster);

    cluster.replace_host(0);
    let rows = rows(&cluster, "ledger");
    assert!((1..=40).all(|n| rows.contains(&n)), "rows acknowledged long before the loss: {rows:?}");
    let log = cluster.app_log("ledger");
    assert!(log.contains("restored ledger.db from the replica"), "{log}");
}

#[test]
fn a_lost_host_loses_no_write_older_than_the_sync_interval_with_the_file_replica() {
    survives_losing_the_host(Cluster::start(1));
}

#[test]
fn a_lost_host_loses_no_write_older_than_the_sync_interval_with_s3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::start(dir.path());
    s3.create_bucket("steady");
    let config = s3.storage_config("steady", None);
    let cluster = Cluster::start_with(1, &["--storage-config", config.to_str().unwrap()]);
    survives_losing_the_host(cluster);
    let objects = walk(&s3.data().join("steady/cluster"));
    assert!(objects.iter().any(|p| p.contains("replicas/ledger/ledger.db/")), "replica in the bucket: {objects:?}");
    assert!(objects.iter().any(|p| p.contains("sha256/")), "bundle in the bucket: {objects:?}");
}

#[test]
fn a_planned_stop_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    cluster.deploy(&app, "ledger");
    write_rows(&cluster, "ledger", 1..=30);
    // Straight from the last acknowledged write to sleep: the final sync must carry all of it.
    assert_eq!(cluster.api_post("/v1/apps/ledger/sleep")["stopped"], true);
    lose_host(&mut cluster);

    cluster.replace_host(0);
    assert_eq!(rows(&cluster, "ledger"), (1..=30).collect::<Vec<u64>>());
}

#[test]
fn a_corrupt_or_missing_replica_is_an_error_and_nothing_is_deleted() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    cluster.deploy(&app, "ledger");
    write_rows(&cluster, "ledger", 1..=10);
    assert_eq!(cluster.api_post("/v1/apps/ledger/sleep")["stopped"], true);
    lose_host(&mut cluster);
    let replica = cluster.dir.path().join("storage/replicas/ledger/ledger.db");
    let files = walk(&replica);
    assert!(!files.is_empty(), "the replica has files");
    for file in &files {
        std::fs::write(file, b"not an ltx file").expect("corrupt the replica");
    }

    cluster.replace_host(0);
    let answer = cluster.get("ledger", "/");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("data is not available"), "{}", answer.body);
    let log = cluster.app_log("ledger");
    assert!(log.contains("not started: restoring \"ledger.db\""), "{log}");
    assert_eq!(walk(&replica), files, "the replica is left as it was");
    assert!(!cluster.hosts[0].data.join("apps/ledger/data").exists(), "no empty database was made");
    let status = cluster.steady(&["status", "ledger"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("DATA:       not available"), "steady status says why: {status}");

    std::fs::remove_dir_all(&replica).expect("delete the replica");
    let answer = cluster.get("ledger", "/");
    assert_eq!(answer.status, 503, "a manifest without its replica: {}", answer.body);
    assert!(cluster.app_log("ledger").contains("no matching backup files"), "{}", cluster.app_log("ledger"));
}

/// Every file under `dir`, sorted.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            } else {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// The current time as RFC 3339 with milliseconds (UTC), from the system's `date`.
fn now_rfc3339() -> String {
    let output = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"]).output().expect("date");
    String::from_utf8(output.stdout).expect("date prints text").trim().to_owned()
}

#[test]
fn backup_and_point_in_time_restore_through_the_cli() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    cluster.deploy(&app, "ledger");
    write_rows(&cluster, "ledger", 1..=10);
    let backup = cluster.steady(&["backup", "ledger", "--json"]);
    assert!(backup.status.success(), "{}", steady_e2e::describe(&backup));
    let backup: serde_json::Value = serde_json::from_slice(&backup.stdout).expect("backup JSON");
    assert_eq!((backup["running"].clone(), backup["synced"].clone()), (true.into(), 1.into()), "{backup}");
    // Litestream restores to a time by its files' timestamps: leave a clear gap on each side.
    std::thread::sleep(SYNC_INTERVAL + Duration::from_millis(200));
    let between = now_rfc3339();
    std::thread::sleep(SYNC_INTERVAL + Duration::from_millis(200));
    write_rows(&cluster, "ledger", 11..=20);
    assert!(cluster.steady(&["backup", "ledger"]).status.success());

    let restored = cluster.steady(&["restore", "ledger", "--at", &between, "--json"]);
    assert!(restored.status.success(), "{}", steady_e2e::describe(&restored));
    let restored: serde_json::Value = serde_json::from_slice(&restored.stdout).expect("restore JSON");
    assert_eq!(rows(&cluster, "ledger"), (1..=10).collect::<Vec<u64>>(), "the state as of {between}");
    let kept = restored["kept"].as_str().expect("earlier data kept");
    assert!(cluster.hosts[0].data.join("apps/ledger").join(kept).join("ledger.db").is_file(), "{restored}");

    let latest = cluster.steady(&["restore", "ledger"]);
    assert!(latest.status.success(), "{}", steady_e2e::describe(&latest));
    assert_eq!(rows(&cluster, "ledger"), (1..=10).collect::<Vec<u64>>(), "the replica continues from the restore");

    let bad = cluster.steady(&["restore", "ledger", "--at", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1), "{}", steady_e2e::describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an RFC 3339 time"), "{}", steady_e2e::describe(&bad));
    let early = cluster.steady(&["restore", "ledger", "--at", "2001-01-01T00:00:00Z"]);
    assert!(!early.status.success(), "a time before any backup: {}", steady_e2e::describe(&early));
    assert_eq!(rows(&cluster, "ledger"), (1..=10).collect::<Vec<u64>>(), "a failed restore changes nothing");
}

#[test]
fn wrong_s3_credentials_fail_the_deploy_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::start(dir.path());
    s3.create_bucket("steady");
    let config = s3.storage_config("steady", Some("not-the-secret"));
    let cluster = Cluster::start_with(1, &["--storage-config", config.to_str().unwrap()]);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    let output = cluster.steady(&["deploy", app.to_str().unwrap(), "--name", "ledger"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("access denied"), "{stderr}");
    assert_eq!(cluster.get("ledger", "/").status, 404, "nothing was deployed");
}

#[test]
fn an_unreachable_s3_fails_the_deploy_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::start(dir.path());
    let config = s3.storage_config("steady", None);
    // The configured endpoint refuses connections for the whole test (a stopped server's port
    // could be taken by another test's server, which would answer).
    let refusing = steady_e2e::RefusingAddr::bind(std::net::Ipv4Addr::LOCALHOST);
    let text = std::fs::read_to_string(&config).expect("storage config");
    std::fs::write(&config, text.replace(&s3.endpoint, &format!("http://{}", refusing.addr))).expect("storage config");
    drop(s3);
    let cluster = Cluster::start_with(1, &["--storage-config", config.to_str().unwrap()]);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    let output = cluster.steady(&["deploy", app.to_str().unwrap(), "--name", "ledger"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert_eq!(cluster.get("ledger", "/").status, 404, "nothing was deployed");
}

#[test]
fn a_dead_hosts_apps_move_to_a_live_host_with_their_data() {
    moves_off_a_dead_host(&[]);
}

#[test]
fn a_dead_hosts_apps_move_to_a_live_host_with_their_data_from_s3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s3 = S3Server::start(dir.path());
    s3.create_bucket("steady");
    let config = s3.storage_config("steady", None);
    moves_off_a_dead_host(&["--storage-config", config.to_str().unwrap()]);
}

/// Kills the app's host with its tree and disk; the other host must serve it with its data.
fn moves_off_a_dead_host(storage_flags: &[&str]) {
    let host_flags: Vec<&str> =
        ["--heartbeat-ms", "100"].iter().copied().chain(storage_flags.iter().copied()).collect();
    let mut cluster = Cluster::start_full(2, &host_flags, &["--host-timeout-ms", "1000"]);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    let deployed = cluster.deploy(&app, "ledger");
    let holder = cluster.hosts.iter().position(|h| deployed["host_id"] == h.id.as_str()).expect("holder");
    let survivor = cluster.hosts[1 - holder].id.clone();
    write_rows(&cluster, "ledger", 1..=25);
    std::thread::sleep(SYNC_INTERVAL * 3);

    let tree = descendants(cluster.hosts[holder].daemon.pid());
    cluster.hosts[holder].daemon.stop_with(libc::SIGKILL);
    for pid in tree {
        // SAFETY: signalling processes this test's cluster started (already dying with hostd).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    std::fs::remove_dir_all(&cluster.hosts[holder].data).expect("delete the dead host's data");
    eventually("the slicer to give the app to the live host", || {
        let table = cluster.table();
        let entry = table.apps.iter().find(|a| a.name == "ledger")?;
        (table.hosts.len() == 1 && entry.host_id == survivor).then_some(())
    });
    let rows = rows(&cluster, "ledger");
    assert!((1..=25).all(|n| rows.contains(&n)), "rows on the new host: {rows:?}");
    assert_eq!(cluster.status("ledger")["host_id"], survivor.as_str());
    assert!(cluster.app_log("ledger").contains("restored ledger.db from the replica"), "{}", cluster.app_log("ledger"));
}

#[test]
fn when_a_dead_host_returns_every_app_still_answers_with_its_data() {
    let host_flags = ["--heartbeat-ms", "100"];
    let mut cluster = Cluster::start_full(2, &host_flags, &["--host-timeout-ms", "1000"]);
    let app = write_app(cluster.dir.path(), "ledger", LEDGER);
    let names: Vec<String> = (1..=6).map(|i| format!("ledger-{i}")).collect();
    for name in &names {
        cluster.deploy(&app, name);
        write_rows(&cluster, name, 1..=5);
    }
    std::thread::sleep(SYNC_INTERVAL * 3);
    cluster.hosts[0].daemon.stop_with(libc::SIGKILL);
    eventually("the slicer to declare host-1 dead", || (cluster.table().hosts.len() == 1).then_some(()));
    let hosts = cluster.steady(&["hosts", "--json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&hosts.stdout).expect("hosts JSON");
    assert_eq!(hosts["hosts"].as_array().map(Vec::len), Some(1), "steady hosts: {hosts}");
    assert_eq!(hosts["hosts"][0]["slices"], 1024, "{hosts}");
    for name in &names {
        assert_eq!(rows(&cluster, name), (1..=5).collect::<Vec<u64>>(), "{name} on the survivor");
    }

    cluster.start_host_again(0);
    eventually("host-1 to take slices again", || {
        let table = cluster.table();
        (table.hosts.len() == 2 && names.iter().any(|n| table.owner_of(n).is_some_and(|o| o.id == "host-1")))
            .then_some(())
    });
    for name in &names {
        assert_eq!(rows(&cluster, name), (1..=5).collect::<Vec<u64>>(), "{name} after host-1 came back");
        // The apps move back one by one after host-1 takes its slices: wait for each to land.
        eventually(&format!("{name} to run on its slice's owner"), || {
            let owner = cluster.table().owner_of(name)?.id.clone();
            (cluster.status(name)["host_id"] == owner.as_str()).then_some(())
        });
    }
}
