//! The web dashboard in headless Chromium (Debian's, driven by playwright-core): the script
//! `e2e/browser/dashboard.mjs` is a person's session against a real `steady up`. Screenshots
//! of the editor and the app page land in `target/dashboard-screenshots/`.

use std::process::Command;

use steady_e2e::{describe, tools_path, workspace};

use crate::up::Up;

#[test]
fn write_run_watch_deploy_break_and_roll_back_from_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_in(dir.path());
    let owner = up.command(&["token", "create", "--owner", "dana", "--json"]).output().unwrap();
    assert!(owner.status.success(), "{}", describe(&owner));
    let owner: serde_json::Value = serde_json::from_slice(&owner.stdout).unwrap();

    let shots = workspace().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let port = up.http.rsplit(':').next().unwrap();
    let output = Command::new("node")
        .arg(workspace().join("e2e/browser/dashboard.mjs"))
        .args([&format!("http://localhost:{port}"), owner["token"].as_str().unwrap()])
        .env("PATH", tools_path())
        .env("PLAYWRIGHT_DIR", workspace().join(".tools/playwright"))
        .env("SCREENSHOTS", &shots)
        .env("HOME", dir.path())
        .output()
        .expect("node (the browser test's driver)");
    assert!(output.status.success(), "the browser session failed: {}", describe(&output));
    let figures: serde_json::Value =
        serde_json::from_slice(String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or("").as_bytes())
            .unwrap_or_else(|e| panic!("figures ({e}): {}", describe(&output)));
    println!("dashboard figures: {figures}");
    assert!(figures["console_line_in_log_ms"].as_u64().is_some(), "{figures}");
    for shot in ["editor.png", "app-page.png", "build-error.png"] {
        assert!(shots.join(shot).is_file(), "{shot} saved");
    }
}
