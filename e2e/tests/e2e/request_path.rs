//! Deploy → request through the LB, placement by the ring, redeploys, persistence, bad input.

use steady_e2e::{describe, write_app, Cluster};

const COUNTER_APP: &str = r#"
import { Database } from "bun:sqlite";
const db = new Database(`${process.env.STEADY_DATA_DIR}/counter.db`, { create: true });
db.run("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY)");
export default {
  fetch(request: Request) {
    db.run("INSERT INTO hits DEFAULT VALUES");
    const row = db.query("SELECT COUNT(*) AS n FROM hits").get() as { n: number };
    return new Response(`${process.env.STEADY_APP} hits=${row.n}`);
  },
};
"#;

fn text_app(text: &str) -> String {
    format!("export default {{ fetch() {{ return new Response({text:?}); }} }};\n")
}

#[test]
fn a_deployed_app_answers_through_the_lb_and_is_listed() {
    let cluster = Cluster::start(3);
    let app = write_app(cluster.dir.path(), "hello", COUNTER_APP);
    let deployed = cluster.deploy(&app, "hello");
    assert_eq!(deployed["version"], 1);
    assert_eq!(deployed["url"], format!("http://hello.localhost:{}/", cluster.public.port()));

    let answer = cluster.get("hello", "/");
    assert_eq!((answer.status, answer.body.as_str()), (200, "hello hits=1"));

    let listed = cluster.steady(&["apps", "--json"]);
    assert!(listed.status.success(), "{}", describe(&listed));
    let apps: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(apps[0]["name"], "hello");
    assert_eq!(apps[0]["version"], 1);
    assert_eq!(apps[0]["host_id"], deployed["host_id"]);
    let table = cluster.steady(&["apps"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("hello"), "{}", describe(&table));
}

#[test]
fn ten_apps_land_on_the_hosts_the_ring_names() {
    let cluster = Cluster::start(3);
    let table = cluster.table();
    let mut hosts_used = std::collections::BTreeSet::new();
    for i in 0..10 {
        let name = format!("spread-{i}");
        let app = write_app(cluster.dir.path(), &name, &text_app(&name));
        let deployed = cluster.deploy(&app, &name);
        let owner = table.owner_of(&name).expect("ring has an owner").id.clone();
        assert_eq!(deployed["host_id"], owner.as_str(), "{name} placed off the ring");
        let host = cluster.hosts.iter().find(|h| h.id == owner).unwrap();
        assert!(host.data.join("apps").join(&name).is_dir(), "{name} has its files on {owner}");
        let answer = cluster.get(&name, "/");
        assert_eq!((answer.status, answer.body.as_str()), (200, name.as_str()));
        hosts_used.insert(owner);
    }
    assert!(hosts_used.len() > 1, "ten apps all landed on one host: {hosts_used:?}");
}

#[test]
fn a_redeploy_serves_the_new_code_and_a_failed_one_keeps_the_old() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "v", &text_app("one"));
    cluster.deploy(&app, "edited");
    assert_eq!(cluster.get("edited", "/").body, "one");

    std::fs::write(app.join("index.ts"), text_app("two")).unwrap();
    let deployed = cluster.deploy(&app, "edited");
    assert_eq!(deployed["version"], 2);
    assert_eq!(cluster.get("edited", "/").body, "two");

    std::fs::write(app.join("index.ts"), "console.log('booting v3'); throw new Error('broken on purpose');\n").unwrap();
    let failed = cluster.steady(&["deploy", app.to_str().unwrap(), "--name", "edited"]);
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("version 3 failed to start"), "{stderr}");
    assert!(stderr.contains("broken on purpose"), "the failure shows the app's log: {stderr}");
    assert_eq!(cluster.get("edited", "/").body, "two", "the old version keeps serving");
}

#[test]
fn sqlite_data_survives_an_app_restart() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "counter", COUNTER_APP);
    cluster.deploy(&app, "counter");
    assert_eq!(cluster.get("counter", "/").body, "counter hits=1");
    assert_eq!(cluster.get("counter", "/").body, "counter hits=2");
    // Restarting the host daemon stops the app process; the next request starts a new one.
    cluster.restart_host(0);
    assert_eq!(cluster.get("counter", "/").body, "counter hits=3");
}

/// The LB keeps idle connections to a host daemon; a restarted daemon has closed them all. Each
/// request that borrows one of them goes again on a new connection, so no request fails.
#[test]
fn a_restarted_host_daemon_fails_no_request_on_the_lbs_old_connections() {
    const SLOW_APP: &str = "export default { async fetch() { await Bun.sleep(300); return new Response(\"ok\"); } };\n";
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "slow", SLOW_APP);
    cluster.deploy(&app, "slow");
    // Requests at the same time each need a connection to the host: the LB keeps them all.
    std::thread::scope(|scope| {
        let cluster = &cluster;
        let answers: Vec<_> = (0..8).map(|_| scope.spawn(move || cluster.get("slow", "/").status)).collect();
        for answer in answers {
            assert_eq!(answer.join().expect("a request thread"), 200);
        }
    });
    cluster.restart_host(0);
    for i in 0..8 {
        let answer = cluster.get("slow", "/");
        assert_eq!(answer.status, 200, "request {i} after the restart: {}", answer.body);
    }
}

#[test]
fn an_unknown_app_gets_the_lbs_404_page() {
    let cluster = Cluster::start(1);
    let answer = cluster.get("nothing-here", "/some/path");
    assert_eq!(answer.status, 404);
    assert!(answer.body.contains("No app named <code>nothing-here</code>"), "{}", answer.body);
}

#[test]
fn bad_names_and_bad_bundles_get_a_clear_4xx() {
    let cluster = Cluster::start(1);
    let http = cluster.api();
    let deploy_url = |name: &str| format!("http://{}/v1/apps/{name}/deploy", cluster.private);

    let bad = http.post(deploy_url("Bad_Name")).body("x").send().unwrap();
    assert_eq!(bad.status(), 400);
    let error: serde_json::Value = bad.json().unwrap();
    assert_eq!(error["code"], "bad_name");
    assert!(error["message"].as_str().unwrap().contains("lowercase"), "{error}");

    let app = write_app(cluster.dir.path(), "named", &text_app("x"));
    let cli = cluster.steady(&["deploy", app.to_str().unwrap(), "--name=-nope"]);
    assert_eq!(cli.status.code(), Some(2), "{}", describe(&cli));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("must start with a letter"), "{}", describe(&cli));

    let oversized = vec![b'x'; 17 * 1024 * 1024];
    let too_big = http.post(deploy_url("big")).body(oversized).send().unwrap();
    assert_eq!(too_big.status(), 413);
    assert_eq!(too_big.json::<serde_json::Value>().unwrap()["code"], "bundle_too_large");

    let mut escaping = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    header.set_cksum();
    escaping.append(&header, &b"x"[..]).unwrap();
    let escape = http.post(deploy_url("escape")).body(escaping.into_inner().unwrap()).send().unwrap();
    assert_eq!(escape.status(), 400);
    let error: serde_json::Value = escape.json().unwrap();
    assert_eq!(error["code"], "bad_bundle");
    assert!(error["message"].as_str().unwrap().contains("escapes"), "{error}");

    assert_eq!(cluster.get("big", "/").status, 404, "nothing was deployed");
}

#[test]
fn a_hono_app_works_as_it_is() {
    let cluster = Cluster::start(1);
    let example = steady_e2e::workspace().join("examples/hono");
    assert!(example.join("node_modules/hono").is_dir(), "scripts/setup.sh installs the example's dependencies");
    cluster.deploy(&example, "hono");
    assert_eq!(cluster.get("hono", "/").body, "Hello from Hono on steady\n");
    let greeting = cluster.get("hono", "/greet/ada");
    assert_eq!((greeting.status, greeting.body.as_str()), (200, r#"{"hello":"ada"}"#));
}

#[test]
fn a_bad_migration_fails_its_trial_and_never_touches_the_live_data() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "migrating", COUNTER_APP);
    cluster.deploy(&app, "migrating");
    assert_eq!(cluster.get("migrating", "/").body, "migrating hits=1");

    let bad = r#"
import { Database } from "bun:sqlite";
const db = new Database(`${process.env.STEADY_DATA_DIR}/counter.db`);
db.run("DROP TABLE hits");
export default { fetch() { const row = db.query("SELECT COUNT(*) AS n FROM hits").get(); return new Response(String(row)); } };
"#;
    std::fs::write(app.join("index.ts"), bad).unwrap();
    let refused = cluster.steady(&["deploy", app.to_str().unwrap(), "--name", "migrating"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("failed its trial against a copy of the data"), "{stderr}");
    assert_eq!(cluster.get("migrating", "/").body, "migrating hits=2", "live data and version untouched");
    assert!(!cluster.hosts[0].data.join("apps/migrating/trial").exists(), "the copy is cleaned up");
}

#[test]
fn sources_sent_as_json_are_built_on_the_host_and_a_build_error_comes_back() {
    let cluster = Cluster::start(1);
    let url = format!("http://{}/v1/apps/built/deploy", cluster.private);
    let files = serde_json::json!({ "files": {
        "index.ts": "import { greet } from './lib/greet';\nexport default { fetch: () => new Response(greet('web')) };\n",
        "lib/greet.ts": "export const greet = (who: string): string => `hello, ${who}`;\n",
    }});
    let deployed = cluster.api().post(&url).json(&files).send().unwrap();
    assert_eq!(deployed.status(), 201, "{}", deployed.text().unwrap_or_default());
    assert_eq!(cluster.get("built", "/").body, "hello, web");
    let pulled = cluster.steady(&["pull", "built", cluster.dir.path().join("pulled").to_str().unwrap()]);
    assert!(pulled.status.success(), "{}", describe(&pulled));
    assert!(cluster.dir.path().join("pulled/lib/greet.ts").is_file(), "the sources travel with the version");

    let broken =
        serde_json::json!({ "files": { "index.ts": "export default { fetch: () => new Response(\"x\" };\n" } });
    let refused = cluster.api().post(&url).json(&broken).send().unwrap();
    assert_eq!(refused.status(), 422);
    let error: serde_json::Value = refused.json().unwrap();
    assert_eq!(error["code"], "build_failed");
    assert!(error["log"].as_array().is_some_and(|l| !l.is_empty()), "the build's own words: {error}");
    assert_eq!(cluster.get("built", "/").body, "hello, web", "the old version keeps serving");

    let escape = serde_json::json!({ "files": { "index.ts": "export default {};", "../etc/x.ts": "" } });
    let refused = cluster.api().post(&url).json(&escape).send().unwrap();
    assert_eq!(refused.status(), 400);
}
