//! The `steady` CLI as a developer uses it against `steady up`: sign in, deploy, look, roll
//! back, open, run, delete, sign out; `--json` parsed back and exit codes checked.

use steady_e2e::{assert_exit, describe, eventually, stdout_json as json, steady_command, write_app};

use crate::up::Up;

/// An app that answers `text` (and `process.env.GREETING` after it) and keeps a database.
fn app_source(text: &str) -> String {
    format!(
        "import {{ Database }} from 'bun:sqlite';\n\
         const db = new Database(`${{process.env.STEADY_DATA_DIR}}/notes.db`, {{ create: true }});\n\
         db.run('CREATE TABLE IF NOT EXISTS seen (path TEXT)');\n\
         export default {{ fetch(request) {{\n\
           const path = new URL(request.url).pathname;\n\
           console.log('served', path);\n\
           db.run('INSERT INTO seen (path) VALUES (?)', [path]);\n\
           return new Response({text:?} + (process.env.GREETING ?? ''));\n\
         }} }};\n"
    )
}

#[test]
fn a_developer_session_from_login_to_delete() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_in(dir.path());
    let steady = |args: &[&str]| up.command(args).output().expect("steady");

    // `steady up` signed the CLI in as the admin; the admin makes a user, who signs in.
    assert_eq!(json(&steady(&["whoami", "--json"]))["role"], "admin");
    let created = json(&steady(&["token", "create", "--owner", "dana", "--label", "laptop", "--json"]));
    let login = up.command(&["login", "--token", created["token"].as_str().unwrap()]).output().unwrap();
    assert!(login.status.success(), "{}", describe(&login));
    assert_eq!(json(&steady(&["whoami", "--json"]))["owner"], "dana", "login saved dana's token for this API");

    let app = write_app(dir.path(), "notes", &app_source("v1"));
    let deployed = json(&steady(&["deploy", app.to_str().unwrap(), "--name", "notes", "--json"]));
    let url = deployed["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("http://notes.localhost:{}/", up.http.rsplit(':').next().unwrap()));
    assert_eq!(up.get("notes"), (200, "v1".to_owned()));
    let apps = json(&steady(&["apps", "--json"]));
    assert_eq!((apps[0]["name"].as_str(), apps[0]["owner"].as_str()), (Some("notes"), Some("dana")));
    let status = json(&steady(&["status", "notes", "--json"]));
    assert_eq!((status["version"].as_u64(), status["url"].as_str()), (Some(1), Some(url.as_str())));

    // The request and the app's console.log show up.
    eventually("the request in the request log", || {
        let requests = json(&steady(&["requests", "notes", "--json"]));
        requests.as_array()?.iter().any(|r| r["path"] == "/" && r["status"] == 200).then_some(())
    });
    eventually("the console.log line in the log", || {
        let output = steady(&["logs", "notes", "--json"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
        lines.iter().any(|l| l["line"].as_str().is_some_and(|t| t.contains("served /"))).then_some(())
    });

    // A second version, the list of versions, and a rollback to the first.
    std::fs::write(app.join("index.ts"), app_source("v2")).unwrap();
    assert_eq!(json(&steady(&["deploy", app.to_str().unwrap(), "--name", "notes", "--json"]))["version"], 2);
    assert_eq!(up.get("notes"), (200, "v2".to_owned()));
    let versions = json(&steady(&["versions", "notes", "--json"]));
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{versions}");
    json(&steady(&["rollback", "notes", "--json"]));
    assert_eq!(up.get("notes"), (200, "v1".to_owned()));

    // The sources come back with `pull`; `edit` deploys what a (scripted) editor changed.
    let pulled = dir.path().join("pulled");
    json(&steady(&["pull", "notes", pulled.to_str().unwrap(), "--json"]));
    assert!(
        std::fs::read_to_string(pulled.join("index.ts")).unwrap().contains("\"v1\""),
        "the current version's files"
    );
    let editor = dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/\"v1\"/\"v3\"/' \"$@\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let edit = up.command(&["edit", "notes"]).env("EDITOR", &editor).env_remove("VISUAL").output().unwrap();
    assert!(edit.status.success(), "{}", describe(&edit));
    assert_eq!(up.get("notes"), (200, "v3".to_owned()));

    // A secret in the environment, and SQL on the app's database.
    json(&steady(&["env", "set", "notes", "GREETING=, hello", "--json"]));
    assert_eq!(json(&steady(&["env", "list", "notes", "--json"]))["keys"], serde_json::json!(["GREETING"]));
    assert_eq!(up.get("notes"), (200, "v3, hello".to_owned()));
    let counted = json(&steady(&["db", "notes", "SELECT count(*) AS n FROM seen", "--json"]));
    assert!(counted["rows"][0][0].as_u64().is_some_and(|n| n >= 1), "{counted}");
    assert_exit(&steady(&["db", "notes", "DELETE FROM seen"]), 1, "--write");
    assert_eq!(
        json(&steady(&["db", "notes", "DELETE FROM seen", "--write", "--json"]))["changes"].as_u64().map(|n| n >= 1),
        Some(true)
    );

    // `open` hands the URL to $BROWSER.
    let opened = dir.path().join("opened");
    let browser = format!("sh -c 'echo \"$0\" > {}'", opened.display());
    let open = up.command(&["open", "notes"]).env("BROWSER", &browser).output().unwrap();
    assert!(open.status.success(), "{}", describe(&open));
    let seen = eventually("the browser to be given the URL", || std::fs::read_to_string(&opened).ok());
    assert_eq!(seen.trim(), url);
    assert_eq!(json(&steady(&["open", "notes", "--print", "--json"]))["url"], url.as_str());

    // A temporary app.
    let scratch = write_app(dir.path(), "scratch", &app_source("scratch"));
    let ran = json(&steady(&["run", scratch.join("index.ts").to_str().unwrap(), "--ttl", "5m", "--json"]));
    let name = ran["name"].as_str().unwrap();
    assert_eq!(up.get(name), (200, "scratch".to_owned()));
    assert!(json(&steady(&["status", name, "--json"]))["expires_at_ms"].as_u64().is_some());

    // Admin calls are refused to dana, failures have their exit codes.
    assert_exit(&steady(&["hosts"]), 3, "only an admin token");
    assert_exit(&steady(&["status", "missing"]), 4, "no app named");
    assert_exit(&steady(&["delete", "notes"]), 2, "--yes");
    assert_exit(&steady(&["deploy", app.to_str().unwrap(), "--name", "Bad_Name"]), 2, "lowercase");
    assert_exit(&steady_command(&["apps"]).env("STEADY_API", "127.0.0.1:1").output().unwrap(), 6, "cannot reach");
    assert_eq!(json(&steady(&["delete", "notes", "--yes", "--json"]))["deleted"], "notes");
    assert_exit(&steady(&["status", "notes"]), 4, "no app named");

    // Completions, and signing out.
    for shell in ["bash", "zsh", "fish"] {
        let script = steady(&["completions", shell]);
        assert!(script.status.success() && String::from_utf8_lossy(&script.stdout).contains("rollback"), "{shell}");
    }
    assert!(steady(&["logout"]).status.success());
    assert_exit(&steady(&["whoami"]), 3, "steady login");
}
