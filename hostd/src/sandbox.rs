//! The bubblewrap command line that confines one app process.
//!
//! Inside the sandbox an app sees: the system's `/usr` read-only, Bun read-only at
//! [`BUN_PATH`], its bundle read-only at `/app`, its own data directory read-write at `/data`,
//! a socket directory at `/run/steady`, a private `/tmp`, and nothing else of the host. It has
//! its own empty network namespace (no interfaces but a down loopback), its own PID, IPC, UTS
//! and user namespaces, runs as `nobody` with no capabilities, and dies with its parent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where Bun is mounted inside the sandbox.
pub const BUN_PATH: &str = "/opt/steady/bun";
/// Where the runner script is mounted inside the sandbox.
pub const RUNNER_PATH: &str = "/opt/steady/runner.js";
/// Where the bundle is mounted inside the sandbox.
pub const APP_DIR: &str = "/app";
/// Where the app's data directory is mounted inside the sandbox.
pub const DATA_DIR: &str = "/data";
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
    pub bundle_dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    /// Environment of the app, on top of the fixed `STEADY_*` variables.
    pub env: Vec<(String, String)>,
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
        bind("--ro-bind", &self.bundle_dir, APP_DIR);
        bind("--bind", &self.data_dir, DATA_DIR);
        bind("--bind", &self.socket_dir, SOCKET_DIR);
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
        for (key, value) in
            self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).chain(fixed.iter().map(|(k, v)| (*k, v.clone())))
        {
            args.extend([OsString::from("--setenv"), OsString::from(key), OsString::from(value)]);
        }
        args.extend(["--chdir", APP_DIR, BUN_PATH, RUNNER_PATH].map(OsString::from));
        args
    }
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
            bundle_dir: "/x/bundles/abc".into(),
            data_dir: "/x/apps/hello/data".into(),
            socket_dir: "/x/run/1-1".into(),
            env: vec![("STEADY_APP".into(), "hello".into())],
        };
        let args: Vec<String> = spec.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("--unshare-all"), "network and every other namespace unshared");
        assert!(joined.contains("--die-with-parent"));
        assert!(joined.contains("--ro-bind /x/bundles/abc /app"), "bundle read-only");
        assert!(joined.contains("--bind /x/apps/hello/data /data"), "data read-write");
        assert!(!joined.contains("--share-net"));
        let read_write: Vec<&str> = args.windows(3).filter(|w| w[0] == "--bind").map(|w| w[2].as_str()).collect();
        assert_eq!(read_write, ["/data", "/run/steady"], "nothing else is writable");
        assert!(joined.ends_with("/opt/steady/bun /opt/steady/runner.js"));
    }
}
