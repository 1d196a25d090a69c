//! The API against its OpenAPI file (`docs/openapi.yaml`): schemathesis loads and checks the
//! file, then throws generated calls at a real `steady up` for a bounded time — on the private
//! port with the admin token, and on the apex domain of the public port with an owner's token.
//! Every answer must be documented, match its schema, and never be a 5xx. Afterwards (the
//! fuzzer drains hosts, deletes, deploys and rolls back at random) every app the slicer lists
//! must settle on a host that serves it: none stuck mid-move, none its host does not know.

use std::process::{Command, Output};

use steady_e2e::{describe, eventually, tools_path, workspace};

use crate::up::Up;

/// Seconds of generated calls per listener.
const FUZZ_SECONDS: &str = "45";

fn schemathesis(base_url: &str, token: &str, extra: &[&str]) -> Output {
    let hooks = workspace().join("e2e/schemathesis");
    let spec = workspace().join("docs/openapi.yaml");
    let authorization = format!("Authorization: Bearer {token}");
    let mut command = Command::new("st");
    command.env_clear().env("PATH", tools_path()).env("HOME", std::env::temp_dir());
    command.env("PYTHONPATH", &hooks).env("SCHEMATHESIS_HOOKS", "steady_hooks").current_dir(&hooks);
    command.args(["run", spec.to_str().unwrap(), "--url", base_url, "-H", &authorization]);
    command.args(["--checks", "not_a_server_error,status_code_conformance,response_schema_conformance"]);
    command.args(["--max-time", FUZZ_SECONDS, "--workers", "1", "--request-timeout", "30", "--no-color"]);
    command.args(extra);
    command.output().expect("schemathesis (`st`, installed by scripts/setup.sh)")
}

fn assert_clean(output: &Output, listener: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: String =
        stdout.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    println!("schemathesis on the {listener}:\n{summary}");
    assert!(output.status.success(), "schemathesis found failures on the {listener}: {}", describe(output));
    assert!(stdout.contains("Loaded specification"), "the OpenAPI file loads: {stdout}");
    assert!(stdout.contains(" passed"), "cases ran: {stdout}");
}

#[test]
fn the_api_matches_its_openapi_file_and_fuzzing_finds_no_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_in(dir.path());
    let (data, http, api) = (dir.path().join("data"), &up.http, &up.api);
    let admin = std::fs::read_to_string(data.join("slicer/admin.token")).unwrap().trim().to_owned();
    let hello = workspace().join("examples/hello");
    assert!(up.command(&["deploy", hello.to_str().unwrap(), "--name", "hello"]).output().unwrap().status.success());

    assert_clean(&schemathesis(&format!("http://{api}"), &admin, &[]), "private port");
    every_app_settles(api, &admin);

    let owner = up.command(&["token", "create", "--owner", "fuzz", "--json"]).output().unwrap();
    let owner: serde_json::Value = serde_json::from_slice(&owner.stdout).expect("a token");
    let public = schemathesis(
        &format!("http://{http}"),
        owner["token"].as_str().unwrap(),
        &["-H", "Host: localhost", "--include-tag", "apps", "--include-tag", "account"],
    );
    assert_clean(&public, "public apex");
}

/// Waits until every app the slicer lists is held by a host, not mid-move, and known to that
/// host (its status answers 200).
fn every_app_settles(api: &str, admin: &str) {
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| client.get(format!("http://{api}{path}")).bearer_auth(admin).send().ok();
    let unsettled = || -> Option<Vec<String>> {
        let list: serde_json::Value = get("/v1/apps")?.json().ok()?;
        let apps = list["apps"].as_array()?.clone();
        let stuck = apps.iter().filter(|app| {
            let name = app["name"].as_str().unwrap_or_default();
            let moving = !app["moving_to"].is_null() || app["host_id"].is_null();
            moving || get(&format!("/v1/apps/{name}")).is_none_or(|r| r.status() != 200)
        });
        Some(stuck.map(|app| app.to_string()).collect())
    };
    let mut last = Vec::new();
    let settled = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < settled {
        last = eventually("the app list", unsettled);
        if last.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("apps that did not settle within 30 s of the fuzzing: {last:?}");
}
