//! `steady up` as a user runs it: start, deploy, Ctrl-C, start again on the same data.

use std::process::{Child, Stdio};
use std::time::Duration;

use steady_e2e::{alive, descendants, describe, eventually, free_port, steady_command, write_app};

pub struct Up {
    child: Child,
    pub api: String,
    pub http: String,
    /// The CLI's config folder (`XDG_CONFIG_HOME`) for this test's commands.
    pub config: std::path::PathBuf,
    /// Where `steady up`'s output goes (beside `data`), quoted when it fails.
    log: std::path::PathBuf,
}

impl Up {
    /// Starts `steady up` in `dir` (`data/` and the CLI's `config/`) on free loopback ports.
    pub fn start_in(dir: &std::path::Path) -> Self {
        let (http, api) =
            (format!("127.0.0.1:{}", free_port("127.0.0.1")), format!("127.0.0.1:{}", free_port("127.0.0.1")));
        Self::start(&dir.join("data"), &dir.join("config"), &http, &api)
    }

    /// Starts `steady up` on `data` with the CLI config in `config`; returns once it is ready
    /// and has signed the CLI in.
    pub fn start(data: &std::path::Path, config: &std::path::Path, http: &str, api: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let args = ["up", "--http", http, "--api", api, "--data", data.to_str().unwrap(), "--hosts", "2"];
        let log = data.with_file_name("up.log");
        let output = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("up's log");
        let child = steady_command(&args)
            .env("XDG_CONFIG_HOME", config)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("up's log"))
            .stderr(output)
            .process_group(0)
            .spawn()
            .expect("steady up");
        let up = Self { child, api: api.into(), http: http.into(), config: config.to_owned(), log };
        eventually("steady up ready", || {
            let ready = reqwest::blocking::get(format!("http://{}/readyz", up.api)).ok()?;
            ready.status().is_success().then_some(())
        });
        eventually("steady up to sign the CLI in", || {
            let text = std::fs::read_to_string(config.join("steady/config.yaml")).ok()?;
            text.contains(&format!("http://{api}:")).then_some(())
        });
        up
    }

    /// A CLI command against this platform, with the config `steady up` signed in.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = steady_command(args);
        command.env("STEADY_API", &self.api).env("XDG_CONFIG_HOME", &self.config);
        command
    }

    /// Every process in `steady up`'s tree right now.
    fn tree(&self) -> Vec<u32> {
        descendants(self.child.id())
    }

    /// Ctrl-C, as a terminal sends it; waits for `steady up` to exit.
    fn interrupt(mut self) {
        // SAFETY: signalling the process this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = eventually("steady up to exit after Ctrl-C", || self.child.try_wait().ok().flatten());
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        assert!(status.success(), "steady up exited with {status}; its output ended:\n{}", tail.join("\n"));
    }

    pub fn get(&self, app: &str) -> (u16, String) {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let response =
            client.get(format!("http://{}/", self.http)).header("host", format!("{app}.localhost")).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as above; the test failed before Ctrl-C.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGINT);
            }
            let _ = eventually("steady up to exit", || self.child.try_wait().ok().flatten());
        }
    }
}

#[test]
fn up_serves_the_same_apps_after_a_restart_and_ctrl_c_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let api = format!("127.0.0.1:{}", free_port("127.0.0.1"));

    let config = dir.path().join("config");
    let up = Up::start(&data, &config, &http, &api);
    let source = "export default { fetch: () => new Response(process.env.GREETING ?? 'still here') };\n";
    let app = write_app(dir.path(), "kept", source);
    let deploy = up.command(&["deploy", app.to_str().unwrap(), "--name", "kept"]).output().unwrap();
    assert!(deploy.status.success(), "{}", describe(&deploy));
    let url = String::from_utf8_lossy(&deploy.stdout).trim().to_owned();
    assert_eq!(url, format!("http://kept.localhost:{}/", http.rsplit(':').next().unwrap()));
    assert_eq!(up.get("kept"), (200, "still here".to_owned()));
    // The cluster key is made once, private, and opens the variables again in the next run.
    let key = std::fs::metadata(data.join("secrets.key")).expect("steady up made the cluster key");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);
    let set = up.command(&["env", "set", "kept", "GREETING=still here, with a secret"]).output().unwrap();
    assert!(set.status.success(), "{}", describe(&set));
    assert_eq!(up.get("kept"), (200, "still here, with a secret".to_owned()));
    let processes = up.tree();
    assert!(processes.len() >= 5, "slicer, 2 hosts, LB and the app run under steady up: {processes:?}");
    up.interrupt();
    eventually("every process of steady up to be gone", || processes.iter().all(|&p| !alive(p)).then_some(()));

    let again = Up::start(&data, &config, &http, &api);
    let expected = (200, "still here, with a secret".to_owned());
    assert_eq!(again.get("kept"), expected, "the second run serves the first run's app with its variables");
    let apps = again.command(&["apps", "--json"]).output().unwrap();
    let apps: serde_json::Value = serde_json::from_slice(&apps.stdout).unwrap();
    assert_eq!(apps[0]["name"], "kept");
    again.interrupt();
}
