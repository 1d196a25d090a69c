//! The sandbox, tested from inside: an app tries what a hostile app would and reports.

use steady_e2e::{write_app, Cluster};

const PROBE_APP: &str = r#"
import fs from "node:fs";
import net from "node:net";

function tryConnect(target: string): Promise<string> {
  const [host, port] = target.split(":");
  return new Promise((resolve) => {
    const socket = net.connect({ host, port: Number(port) }, () => { socket.end(); resolve("connected"); });
    socket.on("error", (e) => resolve(`failed: ${e.message}`));
    setTimeout(() => { socket.destroy(); resolve("failed: timeout"); }, 3000);
  });
}

function attempt(action: () => void): string {
  try { action(); return "done"; } catch (e: any) { return `failed: ${e.code ?? e.message}`; }
}

export default {
  async fetch(request: Request) {
    const query = new URL(request.url).searchParams;
    const paths: string[] = JSON.parse(query.get("paths") ?? "[]");
    const report: Record<string, unknown> = {};
    report.connect = await tryConnect(query.get("connect") ?? "127.0.0.1:1");
    try {
      await fetch("http://1.1.1.1/", { signal: AbortSignal.timeout(3000) });
      report.fetch = "fetched";
    } catch (e: any) { report.fetch = `failed: ${e.message}`; }
    report.visible = Object.fromEntries(paths.map((p) => [p, fs.existsSync(p)]));
    report.root = fs.readdirSync("/").sort();
    report.bundleWrite = attempt(() => fs.writeFileSync("/app/index.js", "overwritten"));
    report.systemWrite = attempt(() => fs.writeFileSync("/usr/evil", "x"));
    report.dataWrite = attempt(() => fs.writeFileSync("/data/mine.txt", process.env.STEADY_APP ?? ""));
    report.data = fs.readdirSync("/data");
    return Response.json(report);
  },
};
"#;

#[test]
fn an_app_cannot_reach_the_network_the_host_or_another_app() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "probe", PROBE_APP);
    cluster.deploy(&app, "probe-a");
    cluster.deploy(&app, "probe-b");
    let host_data = &cluster.hosts[0].data;
    let other_data = host_data.join("apps/probe-b/data");
    // A running app holds its data inside its sandbox; asleep, it is back in its place.
    cluster.api_post("/v1/apps/probe-b/sleep");
    std::fs::write(other_data.join("secret.txt"), "b's data").unwrap();
    let paths = serde_json::json!([
        host_data,
        other_data,
        other_data.join("secret.txt"),
        cluster.dir.path(),
        steady_e2e::workspace(),
        "/root",
        "/home",
        "/etc/passwd",
        "/etc",
        "/var",
        "/sys/fs/cgroup"
    ]);
    let query = format!("/?connect={}&paths={}", cluster.public, urlencode(&paths.to_string()));
    let answer = cluster.get("probe-a", &query);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let report: serde_json::Value = serde_json::from_str(&answer.body).unwrap();

    let connect = report["connect"].as_str().unwrap();
    assert!(connect.starts_with("failed"), "outbound connection to the host's LB: {connect}");
    let fetched = report["fetch"].as_str().unwrap();
    assert!(fetched.starts_with("failed"), "outbound fetch: {fetched}");
    for (path, visible) in report["visible"].as_object().unwrap() {
        assert_eq!(visible, false, "{path} is visible inside the sandbox");
    }
    let allowed = ["app", "bin", "data", "dev", "lib", "lib64", "opt", "proc", "run", "sbin", "tmp", "usr"];
    for entry in report["root"].as_array().unwrap() {
        assert!(allowed.contains(&entry.as_str().unwrap()), "unexpected / entry inside the sandbox: {entry}");
    }
    assert!(report["bundleWrite"].as_str().unwrap().starts_with("failed"), "{report}");
    assert!(report["systemWrite"].as_str().unwrap().starts_with("failed"), "{report}");
    assert_eq!(report["dataWrite"], "done", "{report}");
    assert_eq!(report["data"], serde_json::json!(["mine.txt"]), "only its own data is in /data");

    cluster.api_post("/v1/apps/probe-a/sleep");
    let mine = std::fs::read_to_string(host_data.join("apps/probe-a/data/mine.txt")).unwrap();
    assert_eq!(mine, "probe-a", "the write landed in the app's own data directory");
    assert_eq!(std::fs::read_to_string(other_data.join("secret.txt")).unwrap(), "b's data");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
