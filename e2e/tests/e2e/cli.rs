//! An app's contents through the CLI: the sources of a version (`pull`, `edit`), its
//! environment variables (`env`) and its database (`db`), against a real cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use steady_e2e::{descendants, describe, eventually, steady_command, write_app, Cluster};

/// An app in two files whose answer comes from the second.
const GREETER: &str = r#"
import { greeting } from "./lib/greeting.ts";
export default { fetch: () => new Response(greeting) };
"#;

/// An app that answers with its `GREETING` variable.
const ENV_APP: &str = r#"
export default { fetch: () => new Response(process.env.GREETING ?? "unset") };
"#;

/// An app with two databases: `notes.db` (named like the app, so the default) and `cache.db`.
const NOTES: &str = r#"
import { Database } from "bun:sqlite";
const db = new Database(`${process.env.STEADY_DATA_DIR}/notes.db`, { create: true });
db.run("PRAGMA journal_mode = WAL");
db.run("PRAGMA busy_timeout = 5000");
db.run("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)");
if (db.query("SELECT count(*) AS n FROM notes").get().n === 0) db.run("INSERT INTO notes (body) VALUES ('first')");
const cache = new Database(`${process.env.STEADY_DATA_DIR}/cache.db`, { create: true });
cache.run("PRAGMA journal_mode = WAL");
cache.run("CREATE TABLE IF NOT EXISTS entries (k TEXT PRIMARY KEY, v TEXT)");
export default {
  fetch: () => Response.json(db.query("SELECT body FROM notes ORDER BY id").all().map((r) => r.body)),
};
"#;

/// Runs the CLI against `cluster` with `editor` as `$EDITOR` (and no `$VISUAL`).
fn steady_with_editor(cluster: &Cluster, editor: &Path, args: &[&str]) -> Output {
    steady_command(args)
        .env("STEADY_API", cluster.private.to_string())
        .env("STEADY_TOKEN", &cluster.admin_token)
        .env("EDITOR", editor)
        .env_remove("VISUAL")
        .output()
        .expect("running steady")
}

/// Writes an executable shell script (a scripted editor) and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn current_version(cluster: &Cluster, app: &str) -> u64 {
    cluster.status(app)["version"].as_u64().expect("version")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn pull_round_trips_the_sources_and_edit_deploys_only_a_change_that_builds() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "greeter", GREETER);
    std::fs::create_dir_all(app.join("lib")).unwrap();
    std::fs::write(app.join("lib/greeting.ts"), "export const greeting = \"hello v1\";\n").unwrap();
    // None of these are the user's sources: they stay on this machine.
    for (path, text) in [("node_modules/dep/index.js", "x"), (".git/HEAD", "ref"), (".env", "SECRET=1")] {
        std::fs::create_dir_all(app.join(path).parent().unwrap()).unwrap();
        std::fs::write(app.join(path), text).unwrap();
    }
    cluster.deploy(&app, "greeter");
    assert_eq!(cluster.get("greeter", "/").body, "hello v1");

    let pulled = cluster.dir.path().join("pulled");
    let output = cluster.steady(&["pull", "greeter", pulled.to_str().unwrap()]);
    assert!(output.status.success(), "{}", describe(&output));
    let mut files: Vec<String> =
        walk(&pulled).iter().map(|p| p.strip_prefix(&pulled).unwrap().display().to_string()).collect();
    files.sort();
    assert_eq!(files, ["index.ts", "lib/greeting.ts"]);
    assert_eq!(std::fs::read(pulled.join("index.ts")).unwrap(), std::fs::read(app.join("index.ts")).unwrap());
    let again = cluster.steady(&["pull", "greeter", pulled.to_str().unwrap()]);
    assert!(again.status.success(), "identical files are fine: {}", describe(&again));
    std::fs::write(pulled.join("index.ts"), "// mine").unwrap();
    let refused = cluster.steady(&["pull", "greeter", pulled.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(5), "{}", describe(&refused));
    assert!(stderr(&refused).contains("--force") && stderr(&refused).contains("index.ts"), "{}", describe(&refused));
    assert_eq!(std::fs::read_to_string(pulled.join("index.ts")).unwrap(), "// mine", "nothing overwritten");
    let forced = cluster.steady(&["pull", "greeter", pulled.to_str().unwrap(), "--force"]);
    assert!(forced.status.success(), "{}", describe(&forced));
    assert_eq!(std::fs::read(pulled.join("index.ts")).unwrap(), std::fs::read(app.join("index.ts")).unwrap());

    let editors = cluster.dir.path().join("editors");
    std::fs::create_dir_all(&editors).unwrap();
    let v1 = current_version(&cluster, "greeter");
    let untouched = script(&editors, "look.sh", "cat \"$@\" > /dev/null");
    let output = steady_with_editor(&cluster, &untouched, &["edit", "greeter"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stderr(&output).contains("no change; nothing deployed"), "{}", describe(&output));
    assert_eq!(current_version(&cluster, "greeter"), v1, "an unchanged edit deploys nothing");

    let change = script(&editors, "change.sh", "sed -i 's/hello v1/hello v2/' \"$@\"");
    let output = steady_with_editor(&cluster, &change, &["edit", "greeter"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("greeter."), "prints the URL: {}", describe(&output));
    assert_eq!(cluster.get("greeter", "/").body, "hello v2");
    assert_eq!(current_version(&cluster, "greeter"), v1 + 1);
    let pulled_again = cluster.dir.path().join("pulled-v2");
    assert!(cluster.steady(&["pull", "greeter", pulled_again.to_str().unwrap()]).status.success());
    assert!(std::fs::read_to_string(pulled_again.join("lib/greeting.ts")).unwrap().contains("hello v2"));
    let old = cluster.dir.path().join("pulled-v1");
    let output = cluster.steady(&["pull", "greeter", old.to_str().unwrap(), "--version", &v1.to_string()]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(std::fs::read_to_string(old.join("lib/greeting.ts")).unwrap().contains("hello v1"), "any version");

    let breaking = script(&editors, "break.sh", "printf 'export default {{{ broken\\n' > index.ts");
    let output = steady_with_editor(&cluster, &breaking, &["edit", "greeter"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let message = stderr(&output);
    let kept = message.split("kept in ").nth(1).and_then(|rest| rest.split(':').next()).expect("the kept directory");
    assert!(std::fs::read_to_string(Path::new(kept.trim()).join("index.ts")).unwrap().contains("broken"), "{message}");
    assert!(message.contains("bun build failed"), "{message}");
    assert_eq!(cluster.get("greeter", "/").body, "hello v2", "the old version keeps serving");
    assert_eq!(current_version(&cluster, "greeter"), v1 + 1);
    std::fs::remove_dir_all(kept.trim()).unwrap();
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Whether any file under `dir` contains `needle`.
fn anywhere_on_disk(dir: &Path, needle: &str) -> Option<PathBuf> {
    walk(dir)
        .into_iter()
        .find(|path| std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())))
}

#[test]
fn env_reaches_the_app_is_sealed_at_rest_and_follows_it_through_a_move_and_a_dead_host() {
    let mut cluster = Cluster::start_full(2, &["--heartbeat-ms", "100"], &["--host-timeout-ms", "1000"]);
    let app = write_app(cluster.dir.path(), "env-app", ENV_APP);
    let deployed = cluster.deploy(&app, "env-app");
    assert_eq!(cluster.get("env-app", "/").body, "unset");
    let secret = "s3cret-value-7781";

    let output = cluster.steady(&["env", "set", "env-app", &format!("GREETING={secret}")]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stderr(&output).contains("restarted"), "the running app was restarted: {}", describe(&output));
    assert_eq!(cluster.get("env-app", "/").body, secret, "the next request sees the value");
    let listed = cluster.steady(&["env", "list", "env-app"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "GREETING\n", "{}", describe(&listed));
    assert!(!String::from_utf8_lossy(&listed.stderr).contains(secret));
    let revealed = cluster.steady(&["env", "list", "env-app", "--reveal"]);
    assert_eq!(String::from_utf8_lossy(&revealed.stdout), format!("GREETING={secret}\n"));
    for bad in ["lower=1", "STEADY_APP=x", "1X=y"] {
        let output = cluster.steady(&["env", "set", "env-app", bad]);
        assert_eq!(output.status.code(), Some(2), "{bad}: {}", describe(&output));
    }
    let reserved = cluster.steady(&["env", "set", "env-app", "STEADY_VERSION=9"]);
    assert!(stderr(&reserved).contains("reserved"), "{}", describe(&reserved));
    assert_eq!(cluster.steady(&["env", "list", "nope-app"]).status.code(), Some(4));
    let stored = cluster.dir.path().join("storage/env/env-app");
    assert!(stored.is_file(), "sealed in the blob store");
    assert_eq!(anywhere_on_disk(cluster.dir.path(), secret), None, "the value is nowhere on disk in plaintext");

    // A live move: its holder is drained, the other host restarts it and opens its variables.
    let first = cluster.hosts.iter().position(|h| deployed["host_id"] == h.id.as_str()).expect("holder");
    let first_id = cluster.hosts[first].id.clone();
    let drained = cluster.steady(&["hosts", "drain", &first_id, "--timeout-s", "60"]);
    assert!(drained.status.success(), "{}", describe(&drained));
    assert_eq!(cluster.status("env-app")["host_id"], cluster.hosts[1 - first].id.as_str(), "moved");
    assert_eq!(cluster.get("env-app", "/").body, secret, "the variable followed the live move");
    assert!(cluster.steady(&["hosts", "undrain", &first_id]).status.success());

    // The new holder dies with everything it started; the first host adopts the app and opens
    // its variables from the blob store.
    let holder = 1 - first;
    let survivor = first_id;
    let tree = descendants(cluster.hosts[holder].daemon.pid());
    cluster.hosts[holder].daemon.stop_with(libc::SIGKILL);
    for pid in tree {
        // SAFETY: signalling processes this test's cluster started (already dying with hostd).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    eventually("the live host to take the app", || {
        let table = cluster.table();
        let entry = table.apps.iter().find(|a| a.name == "env-app")?;
        (table.hosts.len() == 1 && entry.host_id == survivor).then_some(())
    });
    let answer = eventually("the app to answer on the new host", || {
        let answer = cluster.get("env-app", "/");
        (answer.status == 200).then_some(answer)
    });
    assert_eq!(answer.body, secret, "the variable followed the app");

    let output = cluster.steady(&["env", "unset", "env-app", "GREETING"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(cluster.get("env-app", "/").body, "unset");
    assert!(!stored.exists(), "no variables, no object");
    cluster.steady(&["env", "set", "env-app", "GREETING=again"]);
    assert!(stored.is_file());
    assert!(cluster.steady(&["delete", "env-app", "--yes"]).status.success());
    assert!(!stored.exists(), "deleting the app deletes its variables");
}

#[test]
fn db_reads_writes_with_write_only_and_reports_sql_errors() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "notes", NOTES);
    cluster.deploy(&app, "notes");
    assert_eq!(cluster.get("notes", "/").body, r#"["first"]"#);

    let output = cluster.steady(&["db", "notes", "SELECT id, body FROM notes", "--json"]);
    assert!(output.status.success(), "{}", describe(&output));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON answer");
    assert_eq!(answer["database"], "notes.db", "the database named like the app is the default");
    assert_eq!(answer["columns"], serde_json::json!(["id", "body"]));
    assert_eq!(answer["rows"], serde_json::json!([[1, "first"]]));
    assert_eq!((answer["truncated"].clone(), answer["changes"].clone()), (false.into(), 0.into()));
    let table = cluster.steady(&["db", "notes", "SELECT id, body FROM notes"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("id  body\n") && text.contains("1   first"), "{}", describe(&table));

    let insert = "INSERT INTO notes (body) VALUES ('from the cli')";
    let refused = cluster.steady(&["db", "notes", insert]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(stderr(&refused).contains("--write"), "{}", describe(&refused));
    assert_eq!(cluster.get("notes", "/").body, r#"["first"]"#, "nothing written without --write");
    let written = cluster.steady(&["db", "notes", insert, "--write", "--json"]);
    assert!(written.status.success(), "{}", describe(&written));
    let written: serde_json::Value = serde_json::from_slice(&written.stdout).expect("JSON answer");
    assert_eq!(written["changes"], 1);
    assert_eq!(cluster.get("notes", "/").body, r#"["first","from the cli"]"#, "the running app sees the write");

    let error = cluster.steady(&["db", "notes", "SELECT nope FROM notes"]);
    assert_eq!(error.status.code(), Some(1), "{}", describe(&error));
    assert!(stderr(&error).contains("no such column: nope"), "SQLite's message: {}", describe(&error));
    let other =
        cluster.steady(&["db", "notes", "SELECT count(*) AS n FROM entries", "--database", "cache.db", "--json"]);
    assert!(other.status.success(), "{}", describe(&other));
    let missing = cluster.steady(&["db", "notes", "SELECT 1", "--database", "nope.db"]);
    assert_eq!(missing.status.code(), Some(4), "{}", describe(&missing));
    assert!(stderr(&missing).contains("cache.db, notes.db"), "the error lists the databases: {}", describe(&missing));

    // Asleep, the data is read where it rests; a write wakes the app first.
    cluster.api_post("/v1/apps/notes/sleep");
    eventually("the app asleep", || (cluster.status("notes")["state"] == "asleep").then_some(()));
    let asleep = cluster.steady(&["db", "notes", "SELECT count(*) AS n FROM notes", "--json"]);
    assert!(asleep.status.success(), "{}", describe(&asleep));
    let asleep: serde_json::Value = serde_json::from_slice(&asleep.stdout).expect("JSON answer");
    assert_eq!(asleep["rows"], serde_json::json!([[2]]));
    assert_eq!(cluster.status("notes")["state"], "asleep", "a read does not wake the app");
    let woke = cluster.steady(&["db", "notes", "DELETE FROM notes WHERE id = 1", "--write"]);
    assert!(woke.status.success(), "{}", describe(&woke));
    assert_eq!(cluster.get("notes", "/").body, r#"["from the cli"]"#);
}
