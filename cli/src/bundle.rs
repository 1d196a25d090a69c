//! Turning an app folder into a bundle on the user's machine: `bun build` resolves imports and
//! `package.json` dependencies into one module, so hosts never need the network. The bundle
//! also carries the app's own source files under `source/` (see [`crate::sources`]), so every
//! version can be pulled back and edited.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::exit::{Failure, FAILED, USAGE};

/// Entry files looked for in a folder, in order.
const ENTRY_CANDIDATES: &[&str] = &["index.ts", "index.tsx", "index.js", "index.mjs", "src/index.ts", "src/index.js"];
/// Largest bundle the CLI will upload; the host enforces its own limit too.
const BUNDLE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A bundle ready to upload.
pub struct Built {
    pub name: String,
    pub entry: PathBuf,
    /// A tar archive holding `index.js` and the sources under `source/`.
    pub archive: Vec<u8>,
    /// How many source files it carries.
    pub source_files: usize,
}

/// Finds the entry, derives or checks the name, runs `bun build` and packs the result.
pub fn build(path: &Path, name: Option<&str>) -> anyhow::Result<Built> {
    let entry = entry_of(path)?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => default_name(&entry)?,
    };
    steady_proto::name::validate(&name)
        .map_err(|e| Failure::new(USAGE, "bad_name", format!("{e} (choose one with --name)")))?;
    let sources = crate::sources::gather(path)?;
    let bun = crate::tools::find("bun")
        .ok_or_else(|| Failure::new(FAILED, "no_bun", "bun not found: install it or run scripts/setup.sh"))?;
    let out = tempfile::tempdir()?;
    let output = Command::new(&bun)
        .args(["build", "--target=bun", "--outfile"])
        .arg(out.path().join("index.js"))
        .arg(&entry)
        .output()
        .with_context(|| format!("running {}", bun.display()))?;
    if !output.status.success() {
        let mut failure = Failure::new(FAILED, "bundle_failed", format!("bun build failed for {}", entry.display()));
        let text = String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout);
        failure.detail = text.lines().map(str::to_owned).collect();
        return Err(failure.into());
    }
    let archive = pack(out.path(), &sources)?;
    if archive.len() > BUNDLE_BYTES_MAX {
        anyhow::bail!(Failure::new(
            FAILED,
            "bundle_too_large",
            format!("bundle is {} bytes; the limit is {BUNDLE_BYTES_MAX}", archive.len())
        ));
    }
    Ok(Built { name, entry, archive, source_files: sources.len() })
}

/// The entry file of an app at `path` (a file, or a folder holding one of the usual names).
pub fn entry_of(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    if !path.is_dir() {
        anyhow::bail!(Failure::new(USAGE, "not_found", format!("{} does not exist", path.display())));
    }
    if let Some(entry) = package_entry(path) {
        return Ok(entry);
    }
    ENTRY_CANDIDATES.iter().map(|c| path.join(c)).find(|c| c.is_file()).ok_or_else(|| {
        Failure::new(
            USAGE,
            "no_entry",
            format!("no entry file in {} (looked for {})", path.display(), ENTRY_CANDIDATES.join(", ")),
        )
        .into()
    })
}

/// The entry named by `package.json` (`module`, then `main`), if any.
fn package_entry(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join("package.json")).ok()?;
    let package: serde_json::Value = serde_json::from_str(&text).ok()?;
    ["module", "main"].iter().filter_map(|k| package.get(k)?.as_str()).map(|p| dir.join(p)).find(|p| p.is_file())
}

/// The app folder's name made into an app name: `My_App` → `my-app`.
fn default_name(entry: &Path) -> anyhow::Result<String> {
    let dir =
        entry.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
    let dir = dir.canonicalize()?;
    let dir = if dir.file_name().is_some_and(|n| n == "src") { dir.parent().unwrap_or(&dir).to_owned() } else { dir };
    let raw = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let name: String =
        raw.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    Ok(name.trim_matches('-').to_owned())
}

fn pack(dir: &Path, sources: &crate::sources::Files) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_path_with_name(dir.join("index.js"), "index.js")?;
    crate::sources::append(&mut builder, sources)?;
    Ok(builder.into_inner()?)
}
