//! Builds an app on the host from its source files, for callers that have no Bun of their own
//! (the web dashboard; the CLI builds on the developer's machine). The files are written to a
//! fresh directory, `bun build` bundles the entry inside a bubblewrap sandbox (no network, no
//! capabilities, nothing writable but its output directory, a time limit), and the result is
//! packed exactly like a CLI bundle — `index.js` plus the files under `source/` — so it deploys,
//! pulls and edits the same way.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::bundle::{ENTRY_FILE, SOURCE_BYTES_MAX, SOURCE_DIR, SOURCE_FILES_MAX};

/// Longest a build may take.
const BUILD_TIMEOUT_MS: u64 = 30_000;
/// Lines of the build's output kept for the caller.
const BUILD_LOG_LINES_MAX: usize = 200;
const BUILD_LOG_BYTES_MAX: usize = 64 * 1024;
/// Longest path of a source file.
const PATH_BYTES_MAX: usize = 256;
/// Entry files looked for, in order (the CLI's list).
const ENTRY_CANDIDATES: &[&str] = &["index.ts", "index.tsx", "index.js", "index.mjs", "src/index.ts", "src/index.js"];
/// Builds under way at once on this host; more wait (each is a Bun process).
const BUILDS_CONCURRENT_MAX: usize = 2;

/// Why a build did not give a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    BadSources(String),
    #[error("the build failed")]
    Failed { log: Vec<String> },
    #[error("the build took longer than {BUILD_TIMEOUT_MS} ms")]
    Timeout,
    #[error("build directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs builds in sandboxes under `work_dir`.
pub struct Builder {
    bwrap: PathBuf,
    bun: PathBuf,
    work_dir: PathBuf,
    slots: tokio::sync::Semaphore,
}

impl Builder {
    /// A builder using these binaries, building in directories under `work_dir`.
    pub fn new(bwrap: PathBuf, bun: PathBuf, work_dir: PathBuf) -> Self {
        Self { bwrap, bun, work_dir, slots: tokio::sync::Semaphore::new(BUILDS_CONCURRENT_MAX) }
    }

    /// Bundles `files` (path → text) into a deployable tar archive.
    pub async fn build(&self, files: &BTreeMap<String, String>) -> Result<Vec<u8>, BuildError> {
        let entry = check(files)?;
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        std::fs::create_dir_all(&self.work_dir)?;
        let dir = tempfile::Builder::new().prefix("build-").tempdir_in(&self.work_dir)?;
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        for (path, text) in files {
            let file = src.join(path);
            std::fs::create_dir_all(file.parent().expect("a file has a folder"))?;
            std::fs::write(file, text)?;
        }
        std::fs::create_dir_all(&out)?;
        self.run(&src, &out, entry).await?;
        pack(&out.join(ENTRY_FILE), files)
    }

    async fn run(&self, src: &Path, out: &Path, entry: &str) -> Result<(), BuildError> {
        let mut command = tokio::process::Command::new(&self.bwrap);
        command.args(sandbox_args(&self.bun, src, out, entry));
        command.env_clear().stdin(Stdio::null()).kill_on_drop(true);
        let hostd = std::process::id() as i32;
        // SAFETY: die_with_parent makes only async-signal-safe calls. A build outlives no hostd.
        unsafe {
            command.pre_exec(move || crate::leftovers::die_with_parent(hostd));
        }
        let run = command.output();
        let output = match tokio::time::timeout(Duration::from_millis(BUILD_TIMEOUT_MS), run).await {
            Ok(output) => output?,
            Err(_) => return Err(BuildError::Timeout),
        };
        if output.status.success() && out.join(ENTRY_FILE).is_file() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        text.truncate(BUILD_LOG_BYTES_MAX);
        let log = text.lines().filter(|l| !l.trim().is_empty()).take(BUILD_LOG_LINES_MAX).map(str::to_owned).collect();
        Err(BuildError::Failed { log })
    }
}

/// Checks the files and names the entry.
fn check(files: &BTreeMap<String, String>) -> Result<&'static str, BuildError> {
    let bad = |message: String| Err(BuildError::BadSources(message));
    if files.is_empty() {
        return bad("no files: an app needs at least index.ts".into());
    }
    if files.len() > SOURCE_FILES_MAX {
        return bad(format!("{} files, more than the {SOURCE_FILES_MAX} allowed", files.len()));
    }
    let bytes: u64 = files.values().map(|t| t.len() as u64).sum();
    if bytes > SOURCE_BYTES_MAX {
        return bad(format!("{bytes} bytes of sources, more than the {SOURCE_BYTES_MAX} allowed"));
    }
    for path in files.keys() {
        if !valid_path(path) {
            let message = format!(
                "{path:?} is not a file path an app may have (relative, at most {PATH_BYTES_MAX} bytes of letters, \
                 digits, '.', '-', '_' and '/', no '..' and no hidden parts)"
            );
            return bad(message);
        }
    }
    match ENTRY_CANDIDATES.iter().find(|c| files.contains_key(**c)) {
        Some(entry) => Ok(entry),
        None => bad(format!("no entry file: name one of {}", ENTRY_CANDIDATES.join(", "))),
    }
}

fn valid_path(path: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/');
    !path.is_empty()
        && path.len() <= PATH_BYTES_MAX
        && path.bytes().all(allowed)
        && path.split('/').all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// The bubblewrap arguments of one build: the sources read-only at `/src`, the output at
/// `/out`, Bun at its usual place, no network.
fn sandbox_args(bun: &Path, src: &Path, out: &Path, entry: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(48);
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]);
    push(&["--uid", "65534", "--gid", "65534", "--cap-drop", "ALL", "--clearenv"]);
    push(&["--ro-bind", "/usr", "/usr"]);
    for link in ["bin", "lib", "lib64", "sbin"] {
        if Path::new("/").join(link).exists() {
            push(&["--symlink", &format!("usr/{link}"), &format!("/{link}")]);
        }
    }
    push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    push(&["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]);
    push(&["--setenv", "BUN_RUNTIME_TRANSPILER_CACHE_PATH", "0"]);
    let mut bind = |flag: &str, from: &Path, to: &str| {
        args.extend([OsString::from(flag), from.as_os_str().to_owned(), OsString::from(to)]);
    };
    bind("--ro-bind", bun, crate::sandbox::BUN_PATH);
    bind("--ro-bind", src, "/src");
    bind("--bind", out, "/out");
    let entry = format!("/src/{entry}");
    let outfile = format!("/out/{ENTRY_FILE}");
    let tail = ["--chdir", "/src", crate::sandbox::BUN_PATH, "build", &entry, "--target=bun", "--outfile", &outfile];
    args.extend(tail.map(OsString::from));
    args
}

/// `index.js` and the sources under `source/`, deterministic.
fn pack(index: &Path, files: &BTreeMap<String, String>) -> Result<Vec<u8>, BuildError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_path_with_name(index, ENTRY_FILE)?;
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append_data(&mut header, format!("{SOURCE_DIR}/{path}"), text.as_bytes())?;
    }
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> BTreeMap<String, String> {
        paths.iter().map(|p| (p.to_string(), "export {}".to_string())).collect()
    }

    #[test]
    fn sources_are_checked_before_anything_runs() {
        assert_eq!(check(&files(&["index.ts", "lib/util.ts"])).unwrap(), "index.ts");
        assert_eq!(check(&files(&["src/index.ts"])).unwrap(), "src/index.ts");
        assert!(check(&files(&["util.ts"])).is_err(), "no entry");
        assert!(check(&files(&[])).is_err());
        for bad in ["../index.ts", "/etc/passwd", "a//b.ts", ".env", "lib/.hidden", "a b.ts", "x\0.ts"] {
            assert!(check(&files(&["index.ts", bad])).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn the_sandbox_sees_sources_read_only_and_no_network() {
        let args = sandbox_args(Path::new("/x/bun"), Path::new("/b/src"), Path::new("/b/out"), "index.ts");
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("--unshare-all"));
        assert!(joined.contains("--ro-bind /b/src /src") && joined.contains("--bind /b/out /out"));
        let writable: Vec<&str> = args.windows(3).filter(|w| w[0] == "--bind").map(|w| w[2].as_str()).collect();
        assert_eq!(writable, ["/out"]);
        assert!(joined.ends_with("build /src/index.ts --target=bun --outfile /out/index.js"));
    }
}
