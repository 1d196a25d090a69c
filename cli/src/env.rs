//! `steady env`: an app's environment variables (secrets it reads from `process.env`). Values
//! are never printed unless asked for with `--reveal`.

use std::io::Read;

use crate::api;
use crate::exit::{Failure, USAGE};

/// `steady env set NAME KEY=VALUE`, or `KEY` alone with the value on stdin (kept out of the
/// shell's history).
pub async fn set(client: &api::Client, name: &str, assignment: &str, json: bool) -> anyhow::Result<()> {
    let (key, value) = match assignment.split_once('=') {
        Some((key, value)) => (key.to_owned(), value.to_owned()),
        None => (assignment.to_owned(), read_stdin()?),
    };
    check_key(&key)?;
    steady_proto::env::validate_value(&value).map_err(|e| Failure::new(USAGE, "bad_env", e.to_string()))?;
    let change = client.env_change(name, &key, Some(&value)).await?;
    print_change(&change, json, "set")
}

/// `steady env unset NAME KEY`.
pub async fn unset(client: &api::Client, name: &str, key: &str, json: bool) -> anyhow::Result<()> {
    check_key(key)?;
    let change = client.env_change(name, key, None).await?;
    if !change.existed && !json {
        eprintln!("{name} has no variable {key}; nothing changed");
        return Ok(());
    }
    print_change(&change, json, "unset")
}

/// `steady env list NAME [--reveal]`: names, one a line (`KEY=VALUE` with `--reveal`).
pub async fn list(client: &api::Client, name: &str, reveal: bool, json: bool) -> anyhow::Result<()> {
    let list = client.env_list(name, reveal).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.keys.is_empty() {
        eprintln!("{name} has no environment variables; set one with `steady env set {name} KEY=VALUE`");
    }
    match &list.values {
        Some(values) => values.iter().for_each(|(k, v)| println!("{k}={v}")),
        None => list.keys.iter().for_each(|k| println!("{k}")),
    }
    Ok(())
}

fn check_key(key: &str) -> anyhow::Result<()> {
    steady_proto::env::validate_name(key).map_err(|e| Failure::new(USAGE, "bad_env", e.to_string()).into())
}

/// The value from stdin, without its final newline, bounded.
fn read_stdin() -> anyhow::Result<String> {
    let limit = steady_proto::env::ENV_VALUE_BYTES_MAX as u64;
    let mut value = String::new();
    std::io::stdin().take(limit + 2).read_to_string(&mut value)?;
    let value = value.strip_suffix('\n').unwrap_or(&value);
    Ok(value.strip_suffix('\r').unwrap_or(value).to_owned())
}

fn print_change(change: &steady_proto::wire::EnvChange, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(change)?);
        return Ok(());
    }
    let (name, key) = (&change.name, &change.key);
    let applied = match (&change.restarted, &change.restart_error) {
        (true, None) => "its process was restarted, so the next request sees the change".to_owned(),
        (true, Some(error)) => {
            format!("its process was stopped but did not start again ({error}); the next request retries")
        }
        (false, _) => "it is asleep; its next start sees the change".to_owned(),
    };
    eprintln!("{verb} {key} for {name} ({} variables): {applied}", change.keys);
    Ok(())
}
