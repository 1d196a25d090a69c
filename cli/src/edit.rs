//! `steady pull` and `steady edit`: a version's sources back on this machine, and a change to
//! them deployed as the next version after the same local build as `steady deploy`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::exit::{Failure, FAILED};
use crate::sources::{self, Files};
use crate::{api, bundle};

/// The editor used when neither `$VISUAL` nor `$EDITOR` is set.
const DEFAULT_EDITOR: &str = "vi";

/// Fetches and checks the sources of `version` of `name` (the current one by default).
async fn fetch(client: &api::Client, name: &str, version: Option<u64>) -> anyhow::Result<(u64, Files)> {
    let version = match version {
        Some(version) => version,
        None => client.status_with_url(name).await?.0.version,
    };
    let archive = client.sources(name, Some(version)).await?;
    Ok((version, sources::read_archive(&archive)?))
}

/// `steady pull NAME [DIR]`: writes the sources into `dir` (default `./NAME`).
pub async fn pull(
    client: &api::Client,
    name: &str,
    dir: Option<PathBuf>,
    version: Option<u64>,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (version, files) = fetch(client, name, version).await?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let written = sources::write_out(&files, &dir, force)?;
    if json {
        let paths: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
        let answer =
            serde_json::json!({ "name": name, "version": version, "dir": dir, "files": paths, "written": written });
        println!("{answer}");
    } else {
        let unchanged = files.len() - written;
        eprintln!(
            "pulled version {version} of {name} into {}: {written} files written, {unchanged} already the same",
            dir.display()
        );
    }
    Ok(())
}

/// `steady edit NAME`: pull into a temporary directory, run the editor on every file, and
/// deploy what changed. A failed build or deploy keeps the edited files and says where.
pub async fn edit(client: &api::Client, name: &str, json: bool) -> anyhow::Result<()> {
    let (version, files) = fetch(client, name, None).await?;
    let workspace = tempfile::Builder::new().prefix(&format!("steady-edit-{name}-")).tempdir()?;
    sources::write_out(&files, workspace.path(), false)?;
    let edited = run_editor(workspace.path(), &files).and_then(|()| sources::gather(workspace.path()));
    let edited = match edited {
        Ok(edited) => edited,
        Err(error) => return Err(keep(workspace, error)),
    };
    if edited == files {
        if json {
            println!("{}", serde_json::json!({ "name": name, "version": version, "changed": false }));
        } else {
            eprintln!("no change; nothing deployed");
        }
        return Ok(());
    }
    let target = build_target(workspace.path(), &edited);
    let built = match bundle::build(&target, Some(name)) {
        Ok(built) => built,
        Err(error) => return Err(keep(workspace, error)),
    };
    if !json {
        eprintln!("bundled the edit of version {version} ({} bytes); deploying…", built.archive.len());
    }
    match client.deploy(name, built.archive, None).await {
        Ok(deployed) => crate::print_deployed(&deployed, json, "deployed"),
        Err(error) => Err(keep(workspace, error)),
    }
}

/// Keeps the edited files when the edit went nowhere, and says where they are.
fn keep(workspace: tempfile::TempDir, error: anyhow::Error) -> anyhow::Error {
    let kept = workspace.keep();
    error.context(format!("nothing deployed; your edited files are kept in {}", kept.display()))
}

/// Runs `$VISUAL`, `$EDITOR` or `vi` on every file, through `sh -c` so an editor given with
/// arguments (`code --wait`) works.
fn run_editor(dir: &Path, files: &Files) -> anyhow::Result<()> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_EDITOR.to_owned());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg("sh")
        .args(files.keys())
        .current_dir(dir)
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        let message = format!("the editor {editor:?} exited with {status}");
        return Err(Failure::new(FAILED, "editor_failed", message).into());
    }
    Ok(())
}

/// What to build: the folder when it has an entry file, else its only file (an app deployed
/// from a single file named otherwise).
fn build_target(dir: &Path, files: &Files) -> PathBuf {
    if bundle::entry_of(dir).is_ok() {
        return dir.to_owned();
    }
    match files.keys().collect::<Vec<_>>().as_slice() {
        [only] => dir.join(only),
        _ => dir.to_owned(),
    }
}
