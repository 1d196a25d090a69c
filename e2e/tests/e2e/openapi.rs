//! The API against its OpenAPI file (`docs/openapi.yaml`): schemathesis loads and checks the
//! file, then throws generated calls at a real `steady up` for a bounded time — on the private
//! port with the admin token, and on the apex domain of the public port with an owner's token.
//! Every answer must be documented, match its schema, and never be a 5xx.

use std::process::{Command, Output};

use steady_e2e::{describe, tools_path, workspace};

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

    let owner = up.command(&["token", "create", "--owner", "fuzz", "--json"]).output().unwrap();
    let owner: serde_json::Value = serde_json::from_slice(&owner.stdout).expect("a token");
    let public = schemathesis(
        &format!("http://{http}"),
        owner["token"].as_str().unwrap(),
        &["-H", "Host: localhost", "--include-tag", "apps", "--include-tag", "account"],
    );
    assert_clean(&public, "public apex");
}
