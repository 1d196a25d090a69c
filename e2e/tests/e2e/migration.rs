//! Live moves under load: a host joins, a host drains, the slicer is killed mid-move, a host
//! dies — while 50 apps take paced writes through two LBs.

use steady_e2e::load::{self, Load, COUNTER_APP};
use steady_e2e::{eventually, Cluster};

use crate::metrics::scrape;

const APPS: usize = 50;
/// 50 apps × 8 writes/s: 400 requests/s offered.
const WRITES_PER_APP_PER_SECOND: u32 = 8;

fn cluster_with_apps(host_flags: &[&str], slicer_flags: &[&str]) -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::start_full(3, host_flags, slicer_flags);
    cluster.add_lb();
    let bundle = load::bundle(COUNTER_APP, cluster.dir.path());
    let apps: Vec<String> = (0..APPS).map(|i| format!("mv-{i}")).collect();
    for app in &apps {
        load::deploy_bundle(&cluster, app, &bundle);
    }
    let version = cluster.table().version;
    wait_lbs(&cluster, version);
    (cluster, apps)
}

fn wait_lbs(cluster: &Cluster, version: u64) {
    cluster.wait_lb_table(version);
    for lb in &cluster.more_lbs {
        eventually("the second LB's table", || {
            let text = reqwest::blocking::get(format!("http://{}/readyz", lb.private)).ok()?.text().ok()?;
            let installed: u64 = text.trim().rsplit(' ').next()?.parse().ok()?;
            (installed >= version).then_some(())
        });
    }
}

fn lbs(cluster: &Cluster) -> Vec<std::net::SocketAddr> {
    std::iter::once(cluster.public).chain(cluster.more_lbs.iter().map(|l| l.public)).collect()
}

fn moves(cluster: &Cluster) -> serde_json::Value {
    cluster.api_get("/v1/moves")
}

/// Waits until the table asks for no move and none is under way.
fn wait_settled(cluster: &Cluster, what: &str) {
    eventually(what, || {
        let moves = moves(cluster);
        let idle = moves["pending"].as_array()?.is_empty() && moves["in_flight"].as_array()?.is_empty();
        idle.then_some(())
    });
}

fn apps_held_by(cluster: &Cluster, host: &str) -> usize {
    cluster.table().apps.iter().filter(|a| a.host_id == host).count()
}

fn wait_for_more_load(load: &Load, requests: u64) {
    let target = load.sent() + requests;
    eventually("more requests under load", || (load.sent() >= target).then_some(()));
}

#[test]
fn apps_move_live_under_load_through_two_lbs_and_no_request_fails() {
    // Two moves at a time, so the drain takes long enough to kill the slicer in its middle.
    let (mut cluster, apps) = cluster_with_apps(
        &["--heartbeat-ms", "200"],
        &["--host-timeout-ms", "5000", "--moves-concurrent-max", "2", "--rebalance-interval-ms", "1000"],
    );
    let load = Load::start(&apps, &lbs(&cluster), &cluster.domain, WRITES_PER_APP_PER_SECOND);
    wait_for_more_load(&load, 800);

    let joined = cluster.add_host();
    let new_id = cluster.hosts[joined].id.clone();
    eventually("moves toward the new host", || (apps_held_by(&cluster, &new_id) > 0).then_some(()));
    wait_settled(&cluster, "the join's moves to finish");
    let moved_in = apps_held_by(&cluster, &new_id);
    assert!(moved_in >= APPS / 6, "the new host took {moved_in} of {APPS} apps");
    wait_for_more_load(&load, 400);

    let drained = cluster.steady(&["hosts", "drain", "host-1", "--no-wait"]);
    assert!(drained.status.success(), "{}", steady_e2e::describe(&drained));
    eventually("a move under way", || (!moves(&cluster)["in_flight"].as_array()?.is_empty()).then_some(()));
    cluster.kill_and_restart_slicer();
    eventually("host-1 drained", || (apps_held_by(&cluster, "host-1") == 0).then_some(()));
    wait_settled(&cluster, "the drain's moves to finish");
    wait_for_more_load(&load, 800);

    let report = load.stop();
    let failures = report.failure_lines();
    assert!(failures.is_empty(), "{} of {} requests failed:\n{}", report.failed(), report.sent(), failures.join("\n"));
    assert!(report.rate() >= 300.0, "the load ran at {:.0} requests/s", report.rate());
    for outcome in &report.apps {
        let counted = load::count(cluster.public, &outcome.app, &cluster.domain);
        assert_eq!(counted, Some((outcome.acked, outcome.acked)), "{}: every acknowledged write, once", outcome.app);
    }
    let table = cluster.table();
    let recent = moves(&cluster)["recent"].as_array().map_or(0, Vec::len);
    assert!(recent > 0, "the restarted slicer finished moves");
    let local: Vec<Vec<String>> = cluster.hosts.iter().map(|h| local_apps(h.api)).collect();
    for app in &table.apps {
        assert_eq!(
            Some(app.host_id.as_str()),
            table.owner_of(&app.name).map(|h| h.id.as_str()),
            "{} settled",
            app.name
        );
        assert!(app.moving_to.is_none());
        let copies = local.iter().filter(|names| names.contains(&app.name)).count();
        assert_eq!(copies, 1, "{} is on exactly one host", app.name);
    }
    let host_1 = cluster.steady(&["hosts", "--json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&host_1.stdout).expect("hosts JSON");
    let entry = hosts["hosts"].as_array().unwrap().iter().find(|h| h["id"] == "host-1").cloned().unwrap();
    assert_eq!((entry["draining"].as_bool(), entry["apps"].as_u64()), (Some(true), Some(0)), "{entry}");
    let slicer = cluster.slicer_addr.clone();
    assert!(scrape(&slicer, "steady_slicer_moves_done_total") >= recent as f64, "moves counted");
    assert_eq!(scrape(&slicer, "steady_slicer_moves_pending"), 0.0);
    let lb_addrs: Vec<String> = std::iter::once(cluster.private)
        .chain(cluster.more_lbs.iter().map(|l| l.private))
        .map(|a| a.to_string())
        .collect();
    let probes: f64 = lb_addrs
        .iter()
        .map(|lb| {
            ["live", "gone", "failed"]
                .iter()
                .map(|o| scrape(lb, &format!("steady_lb_move_probes_total{{outcome=\"{o}\"}}")))
                .sum::<f64>()
        })
        .sum();
    assert!(probes >= 1.0, "the LBs probed old hosts during moves");
    eprintln!(
        "moves under load: {} requests at {:.0}/s, 0 failed; worst latency {:.0} ms",
        report.sent(),
        report.rate(),
        report.latencies_ms().last().copied().unwrap_or(0.0)
    );
}

#[test]
fn a_killed_hosts_apps_answer_again_from_the_others_within_ten_seconds() {
    // Default heartbeat and host timeout: the ten seconds hold with the settings an operator gets.
    let (mut cluster, apps) = cluster_with_apps(&[], &[]);
    let table = cluster.table();
    let victims: Vec<String> = table.apps.iter().filter(|a| a.host_id == "host-2").map(|a| a.name.clone()).collect();
    assert!(!victims.is_empty());
    let load = Load::start(&apps, &lbs(&cluster), &cluster.domain, WRITES_PER_APP_PER_SECOND);
    wait_for_more_load(&load, 800);
    let killed_at_s = load.elapsed_s();
    cluster.hosts[1].daemon.stop_with(libc::SIGKILL);
    eventually("host-2 declared dead", || cluster.table().host("host-2").is_none().then_some(()));
    let declared_s = load.elapsed_s() - killed_at_s;
    // Every victim answers a write again (the writers resync after the replica's last row).
    eventually("the victims answer again", || {
        victims.iter().all(|app| answers_from_a_live_host(&cluster, app)).then_some(())
    });
    wait_for_more_load(&load, 400);
    let report = load.stop();
    let mut worst_s: f64 = 0.0;
    for outcome in report.apps.iter().filter(|a| victims.contains(&a.app)) {
        let back = outcome.samples.iter().filter(|s| s.at_s > killed_at_s).find(|s| s.ok).map(|s| s.at_s - killed_at_s);
        let back = back.unwrap_or_else(|| panic!("{} never answered again", outcome.app));
        worst_s = worst_s.max(back);
    }
    assert!(worst_s < 10.0, "the slowest app answered again {worst_s:.1} s after the kill");
    for outcome in report.apps.iter().filter(|a| !victims.contains(&a.app)) {
        assert!(outcome.failures.is_empty(), "{} on a live host failed: {:?}", outcome.app, outcome.failures);
    }
    eprintln!(
        "host kill: declared dead after {declared_s:.1} s; {} apps back on other hosts, the slowest after {worst_s:.1} s",
        victims.len()
    );
}

/// The apps a host has, from its own API.
fn local_apps(api: std::net::SocketAddr) -> Vec<String> {
    let answer: serde_json::Value =
        reqwest::blocking::get(format!("http://{api}/v1/apps")).and_then(|r| r.json()).expect("host's app list");
    answer["apps"].as_array().into_iter().flatten().filter_map(|a| a["name"].as_str().map(str::to_owned)).collect()
}

/// Whether `app` answers through the LB and the table has it on a host other than host-2.
fn answers_from_a_live_host(cluster: &Cluster, app: &str) -> bool {
    cluster.get(app, "/count").status == 200 && {
        let table = cluster.table();
        table.app(app).is_some_and(|a| a.host_id != "host-2")
    }
}
