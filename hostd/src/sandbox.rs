//! The bubblewrap command line that confines one app process.
//!
//! Inside the sandbox an app sees: the system's `/usr` read-only, Bun read-only at
//! [`BUN_PATH`], its bundle read-only at `/app`, its own data directory read-write at `/data`,
//! a socket directory at `/run/steady`, a private `/tmp`, and nothing else of the host. It has
//! its own empty network namespace (no interfaces but a down loopback), its own PID, IPC, UTS
//! and user namespaces, runs as `nobody` with no capabilities, and dies with its parent.
//!
//! A sandbox is started before it knows its app (see [`crate::warm`]): it mounts a *sandbox
//! directory* of the host, whose `app/` becomes `/app` (read-only) and whose `run/` becomes
//! `/run/steady`. `/data` is a link to `/run/steady/data`, where hostd renames the app's data
//! directory when it hands the sandbox an app. Bind mounts are live views of the host's
//! directories, so files placed there later appear inside; the app's environment arrives with
//! the assignment on stdin, never on the command line (where `ps` would show it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where Bun is mounted inside the sandbox.
pub const BUN_PATH: &str = "/opt/steady/bun";
/// Where the runner script is mounted inside the sandbox.
pub const RUNNER_PATH: &str = "/opt/steady/runner.js";
/// Where the bundle is mounted inside the sandbox.
pub const APP_DIR: &str = "/app";
/// Where the app's data directory appears inside the sandbox.
pub const DATA_DIR: &str = "/data";
/// Sub-directory of a sandbox directory that is mounted at [`APP_DIR`].
pub const HOST_APP_DIR: &str = "app";
/// Sub-directory of a sandbox directory that is mounted at [`SOCKET_DIR`].
pub const HOST_RUN_DIR: &str = "run";
/// Name of the app's data directory inside [`HOST_RUN_DIR`] while it runs.
pub const RUN_DATA_NAME: &str = "data";
/// Where the socket directory is mounted inside the sandbox.
pub const SOCKET_DIR: &str = "/run/steady";
/// Name of the app's socket inside [`SOCKET_DIR`].
pub const SOCKET_NAME: &str = "app.sock";
/// The user and group id the app runs as inside its user namespace.
const NOBODY_ID: &str = "65534";

/// Everything needed to build one sandboxed app command.
#[derive(Debug, Clone)]
pub struct Spec {
    pub bwrap: PathBuf,
    pub bun: PathBuf,
    pub runner: PathBuf,
    /// The host directory holding `app/` and `run/` for this sandbox.
    pub sandbox_dir: PathBuf,
}

impl Spec {
    /// The full argument list for `bwrap` (without the program itself).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::with_capacity(64);
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]);
        push(&["--uid", NOBODY_ID, "--gid", NOBODY_ID, "--cap-drop", "ALL", "--clearenv"]);
        push(&["--ro-bind", "/usr", "/usr"]);
        for link in ["bin", "lib", "lib64", "sbin"] {
            if Path::new("/").join(link).exists() {
                push(&["--symlink", &format!("usr/{link}"), &format!("/{link}")]);
            }
        }
        push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        let mut bind = |flag: &str, from: &Path, to: &str| {
            args.extend([OsString::from(flag), from.as_os_str().to_owned(), OsString::from(to)]);
        };
        bind("--ro-bind", &self.bun, BUN_PATH);
        bind("--ro-bind", &self.runner, RUNNER_PATH);
        bind("--ro-bind", &self.sandbox_dir.join(HOST_APP_DIR), APP_DIR);
        bind("--bind", &self.sandbox_dir.join(HOST_RUN_DIR), SOCKET_DIR);
        push_symlink(&mut args, &format!("{SOCKET_DIR}/{RUN_DATA_NAME}"), DATA_DIR);
        let fixed = [
            ("PATH", "/usr/bin:/bin".to_owned()),
            ("HOME", "/tmp".to_owned()),
            ("TMPDIR", "/tmp".to_owned()),
            ("NODE_ENV", "production".to_owned()),
            // Bun would otherwise try to cache transpiled files under $HOME.
            ("BUN_RUNTIME_TRANSPILER_CACHE_PATH", "0".to_owned()),
            ("STEADY_DATA_DIR", DATA_DIR.to_owned()),
            ("STEADY_ENTRY", format!("{APP_DIR}/{}", crate::bundle::ENTRY_FILE)),
            ("STEADY_SOCKET", format!("{SOCKET_DIR}/{SOCKET_NAME}")),
        ];
        for (key, value) in fixed {
            args.extend([OsString::from("--setenv"), OsString::from(key), OsString::from(value)]);
        }
        args.extend(["--chdir", APP_DIR, BUN_PATH, RUNNER_PATH].map(OsString::from));
        args
    }
}

fn push_symlink(args: &mut Vec<OsString>, target: &str, link: &str) {
    args.extend(["--symlink", target, link].map(OsString::from));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_isolates_and_mounts_only_what_the_app_needs() {
        let spec = Spec {
            bwrap: "/usr/bin/bwrap".into(),
            bun: "/x/bun".into(),
            runner: "/x/runner.js".into(),
            sandbox_dir: "/x/sandboxes/7".into(),
        };
        let args: Vec<String> = spec.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("--unshare-all"), "network and every other namespace unshared");
        assert!(joined.contains("--die-with-parent"));
        assert!(joined.contains("--ro-bind /x/sandboxes/7/app /app"), "bundle read-only");
        assert!(joined.contains("--bind /x/sandboxes/7/run /run/steady"), "sockets and data read-write");
        assert!(joined.contains("--symlink /run/steady/data /data"), "data where apps expect it");
        assert!(!joined.contains("--share-net"));
        let read_write: Vec<&str> = args.windows(3).filter(|w| w[0] == "--bind").map(|w| w[2].as_str()).collect();
        assert_eq!(read_write, ["/run/steady"], "nothing else is writable");
        assert!(joined.ends_with("/opt/steady/bun /opt/steady/runner.js"));
    }
}
