//! A cluster described by one YAML file: `steady cluster plan` prints every daemon's command
//! line, and starting exactly those gives a working cluster, over HTTP and HTTPS.

use std::time::Duration;

use steady_e2e::tls::{client_config, https_get, TestCa};
use steady_e2e::{admin_token, bin_dir, describe, eventually, free_port, steady_command, workspace, Daemon};

#[test]
fn the_command_lines_a_cluster_file_plans_run_a_working_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = |ip: &str| format!("{ip}:{}", free_port(ip));
    let (slicer, lb_public, lb_private) = (port("127.0.0.1"), port("127.0.0.1"), port("127.0.0.1"));
    let lb_tls = port("127.0.0.1");
    let ca = TestCa::new(dir.path(), "ca");
    let (chain, cert_key) = ca.issue("steady.test");
    let hosts: Vec<(String, String)> = ["127.0.0.2", "127.0.0.3"].iter().map(|ip| (port(ip), port(ip))).collect();
    let host_lines: String = hosts
        .iter()
        .enumerate()
        .map(|(i, (ingress, api))| format!("  - id: host-{}\n    ingress: {ingress}\n    api: {api}\n", i + 1))
        .collect();
    let key = dir.path().join("secrets.key");
    std::fs::write(&key, "42".repeat(32)).expect("key file");
    let file = dir.path().join("cluster.yaml");
    let text = format!(
        "domains: [localhost, steady.test]\nslicer:\n  listen: {slicer}\nstorage:\n  dir: {storage}\nhosts:\n{host_lines}\
         lbs:\n  - public: {lb_public}\n    private: {lb_private}\n    threads: 2\n    tls_listen: {lb_tls}\n\
         paths:\n  bin: {bin}\n  data: {data}\nsecrets_key_file: {key}\n\
         tls:\n  certs:\n    - domain: steady.test\n      chain: {chain}\n      key: {cert_key}\n",
        storage = dir.path().join("storage").display(),
        bin = bin_dir().display(),
        data = dir.path().join("data").display(),
        key = key.display(),
        chain = chain.display(),
        cert_key = cert_key.display(),
    );
    std::fs::write(&file, text).expect("cluster file");

    let output = steady_command(&["cluster", "plan", &file.display().to_string(), "--json"]).output().expect("plan");
    assert!(output.status.success(), "{}", describe(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("plan JSON");
    let launches = plan.as_array().expect("a list of daemons");
    assert_eq!(launches.len(), 4, "slicer, two hosts, one LB");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut daemons = Daemons(Vec::new());
    for launch in launches {
        let argv: Vec<String> =
            launch["argv"].as_array().expect("argv").iter().map(|a| a.as_str().unwrap().into()).collect();
        daemons.0.push(Daemon::start(dir.path(), launch["name"].as_str().unwrap(), &argv[0], &argv[1..]));
        if launch["name"] == "slicer" {
            let url = format!("http://{slicer}/healthz");
            eventually("the slicer", || http.get(&url).send().ok().filter(|r| r.status().is_success()));
        }
    }
    eventually("both hosts registered", || {
        let hosts: serde_json::Value = http.get(format!("http://{slicer}/v1/hosts")).send().ok()?.json().ok()?;
        (hosts["hosts"].as_array().map_or(0, Vec::len) == 2).then_some(())
    });
    eventually("the LB's table", || {
        let text = http.get(format!("http://{lb_private}/readyz")).send().ok()?.text().ok()?;
        text.starts_with("ready").then_some(())
    });
    let hello = workspace().join("examples/hello").display().to_string();
    let token = admin_token(&dir.path().join("data").join("slicer"));
    let deploy = &mut steady_command(&["deploy", &hello, "--name", "planned"]);
    let output = deploy.env("STEADY_API", &lb_private).env("STEADY_TOKEN", &token).output();
    let output = output.expect("deploy");
    assert!(output.status.success(), "{}", describe(&output));
    let answer = http.get(format!("http://{lb_public}/")).header("host", "planned.localhost").send().expect("answer");
    assert_eq!(answer.status().as_u16(), 200);
    let tls = lb_tls.parse().expect("TLS address");
    let answer = https_get(tls, "planned.steady.test", "/", &client_config(&[ca.cert_path()])).expect("HTTPS");
    assert_eq!(answer.status, 200, "{}", answer.text);
    for daemon in daemons.0.iter_mut().rev() {
        daemon.stop();
    }
}

/// The daemons a test started; a failing test prints the end of each one's log.
struct Daemons(Vec<Daemon>);

impl Drop for Daemons {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon logs:\n{}", self.0.iter().map(|d| d.log_tail(40)).collect::<String>());
        }
    }
}
