//! Who may do what through the API: owners see and touch only their own apps, anonymous
//! callers only run temporary apps (rate-limited), admin calls need the admin token and exist
//! only on the private listener, and a revoked token stops working at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::time::Duration;

use steady_e2e::{assert_exit, stdout_json as json, steady_command, write_app, Cluster};

/// A CLI command against `api` as `token` (none: anonymous).
fn steady_at(api: SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = steady_command(args);
    command.env("STEADY_API", api.to_string());
    if let Some(token) = token {
        command.env("STEADY_TOKEN", token);
    }
    command.output().expect("running steady")
}

/// A token for a new owner, made by the admin.
fn owner_token(cluster: &Cluster, owner: &str) -> String {
    let created = json(&cluster.steady(&["token", "create", "--owner", owner, "--json"]));
    assert_eq!(created["owner"], owner);
    assert_eq!(created["role"], "owner");
    created["token"].as_str().expect("the secret").to_owned()
}

/// A raw HTTP/1.1 request; the status and the whole answer.
fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

fn get(addr: SocketAddr, host: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"))
}

#[test]
fn owners_see_and_touch_only_their_own_apps() {
    let cluster = Cluster::start(1);
    let (alice, bob) = (owner_token(&cluster, "alice"), owner_token(&cluster, "bob"));
    let app = write_app(cluster.dir.path(), "shop", "export default { fetch: () => new Response('alice') };\n");
    let app = app.to_str().unwrap();
    json(&cluster.steady_as(&alice, &["deploy", app, "--name", "shop", "--json"]));

    let taken = cluster.steady_as(&bob, &["deploy", app, "--name", "shop"]);
    assert_exit(&taken, 5, "belongs to another owner");
    for args in
        [vec!["status", "shop"], vec!["logs", "shop"], vec!["versions", "shop"], vec!["delete", "shop", "--yes"]]
    {
        assert_exit(&cluster.steady_as(&bob, &args), 4, "no app named \"shop\"");
    }
    assert_exit(&cluster.steady_as(&bob, &["rollback", "shop"]), 4, "no app named");
    let bobs: serde_json::Value = json(&cluster.steady_as(&bob, &["apps", "--json"]));
    assert_eq!(bobs.as_array().map(Vec::len), Some(0), "bob sees none of alice's apps: {bobs}");

    let alices = json(&cluster.steady_as(&alice, &["apps", "--json"]));
    assert_eq!(alices[0]["name"], "shop");
    assert_eq!(alices[0]["owner"], "alice");
    assert_eq!(json(&cluster.steady_as(&alice, &["status", "shop", "--json"]))["version"], 1);
    let all = json(&cluster.steady(&["apps", "--json"]));
    assert!(all.as_array().unwrap().iter().any(|a| a["name"] == "shop"), "the admin sees every app: {all}");
    assert_eq!(cluster.get("shop", "/").body, "alice", "bob's refused deploy changed nothing");

    // The same rules on the apex domain of the public listener, which the dashboard uses.
    let (status, text) = get(cluster.public, "localhost", "/v1/apps", Some(&bob));
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("shop"), "{text}");
    let (status, text) = get(cluster.public, "localhost", "/v1/apps/shop", Some(&bob));
    assert_eq!(status, 404, "{text}");
    assert_eq!(get(cluster.public, "localhost", "/v1/apps/shop", Some(&alice)).0, 200);
}

#[test]
fn admin_calls_need_the_admin_token_and_never_cross_the_public_listener() {
    let cluster = Cluster::start(1);
    let alice = owner_token(&cluster, "alice");
    assert_exit(&cluster.steady_as(&alice, &["hosts"]), 3, "only an admin token");
    assert_exit(&cluster.steady_as(&alice, &["hosts", "drain", "host-1", "--no-wait"]), 3, "only an admin token");
    let made = cluster.steady_as(&alice, &["token", "create", "--owner", "bob"]);
    assert_exit(&made, 3, "only an admin token");
    assert_eq!(json(&cluster.steady(&["hosts", "--json"]))["hosts"].as_array().map(Vec::len), Some(1));

    for path in ["/v1/hosts", "/v1/moves", "/v1/history", "/v1/table", "/v1/auth/authorize", "/metrics"] {
        for token in [None, Some(alice.as_str()), Some(cluster.admin_token.as_str())] {
            let (status, text) = get(cluster.public, "localhost", path, token);
            assert!(matches!(status, 401 | 403 | 404 | 200), "{path}: {text}");
            assert!(!text.contains("host-1") && !text.contains("slices"), "{path} leaked admin data: {text}");
        }
    }
    let (status, text) = get(cluster.public, "localhost", "/v1/apps", Some(&cluster.admin_token));
    assert_eq!(status, 403, "an admin token is refused on the public listener: {text}");
    assert!(text.contains("admin_only_private"), "{text}");
    let (status, _) = get(cluster.private, "localhost", "/v1/auth/authorize", Some(&cluster.admin_token));
    assert_eq!(status, 404, "the slicer's authorize call is not part of the API");
}

#[test]
fn a_revoked_token_stops_working_at_once() {
    let cluster = Cluster::start(1);
    let alice = owner_token(&cluster, "alice");
    let laptop = json(&cluster.steady_as(&alice, &["token", "create", "--label", "laptop", "--json"]));
    let (id, secret) = (laptop["id"].as_str().unwrap(), laptop["token"].as_str().unwrap());
    assert_eq!(json(&cluster.steady_as(secret, &["whoami", "--json"]))["owner"], "alice");
    let listed = json(&cluster.steady_as(&alice, &["token", "list", "--json"]));
    assert!(listed.as_array().unwrap().iter().all(|t| t["owner"] == "alice"), "only alice's tokens: {listed}");
    assert!(!listed.to_string().contains(secret), "a listing never shows a secret");

    json(&cluster.steady_as(&alice, &["token", "revoke", id, "--json"]));
    assert_exit(&cluster.steady_as(secret, &["whoami"]), 3, "not valid");
    assert_exit(&cluster.steady_as(secret, &["apps"]), 3, "steady login");
    assert_exit(&cluster.steady_as("stdy_made_up", &["apps"]), 3, "not valid");
    assert_eq!(json(&cluster.steady_as(&alice, &["whoami", "--json"]))["owner"], "alice", "other tokens still work");
}

#[test]
fn anonymous_callers_only_run_temporary_apps_a_few_a_minute() {
    let mut cluster = Cluster::start(1);
    let index = cluster.add_lb_with(&["--anonymous-runs-per-minute-max", "2"]);
    let api = cluster.more_lbs[index].private;
    let app = write_app(cluster.dir.path(), "scratch", "export default { fetch: () => new Response('scratch') };\n");
    let app = app.to_str().unwrap();

    assert_exit(&steady_at(api, None, &["deploy", app, "--name", "keeper"]), 3, "steady login");
    assert_exit(&steady_at(api, None, &["apps"]), 3, "steady login");
    assert_exit(&steady_at(api, None, &["hosts"]), 3, "steady login");

    let ran = json(&steady_at(api, None, &["run", app, "--ttl", "10m", "--json"]));
    let (name, token) = (ran["name"].as_str().unwrap(), ran["token"].as_str().expect("a token for the app"));
    assert_eq!(cluster.get(name, "/").body, "scratch");
    assert_eq!(json(&steady_at(api, Some(token), &["status", name, "--json"]))["name"], name);
    assert_exit(&steady_at(api, Some(token), &["deploy", app, "--name", "keeper"]), 3, "temporary");
    assert_exit(&steady_at(api, Some(token), &["status", "keeper"]), 4, "no app named");

    json(&steady_at(api, None, &["run", app, "--ttl", "10m", "--json"]));
    let third = steady_at(api, None, &["run", app, "--ttl", "10m"]);
    assert_exit(&third, 1, "too many anonymous runs");
    let signed_in = owner_token(&cluster, "carol");
    json(&steady_at(api, Some(&signed_in), &["run", app, "--ttl", "10m", "--json"]));
    json(&steady_at(api, Some(token), &["delete", name, "--yes", "--json"]));
}
