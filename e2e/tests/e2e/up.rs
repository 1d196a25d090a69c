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
    /// `steady up`'s data folder (the daemons' logs are in its `logs/`).
    data: std::path::PathBuf,
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
        let up =
            Self { child, api: api.into(), http: http.into(), config: config.to_owned(), log, data: data.to_owned() };
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

    /// Ctrl-C, as a terminal sends it; waits for `steady up` to exit, successfully. On a
    /// failure it quotes the end of `steady up`'s output and of every daemon's log, and names
    /// the processes still running, before the temp dir goes.
    fn interrupt(mut self) {
        let tree = self.tree();
        // SAFETY: signalling the process this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + steady_e2e::patience();
        let status = loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        if status.is_some_and(|s| s.success()) {
            return;
        }
        let running: Vec<String> = tree.iter().filter(|&&p| alive(p)).map(|p| command_line(*p)).collect();
        panic!(
            "steady up {} after Ctrl-C; still running: {running:?}\n{}",
            status.map_or("did not exit".to_owned(), |s| format!("exited with {s}")),
            self.logs()
        );
    }

    /// The last lines of `steady up`'s output and of each daemon's log.
    fn logs(&self) -> String {
        let tail = |path: &std::path::Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(25).collect();
            format!("--- {}:\n{}", path.display(), lines.into_iter().rev().collect::<Vec<_>>().join("\n"))
        };
        let mut logs = vec![tail(&self.log)];
        let daemons = self.data.join("logs");
        let mut paths: Vec<_> = std::fs::read_dir(&daemons).into_iter().flatten().flatten().map(|e| e.path()).collect();
        paths.sort();
        logs.extend(paths.iter().map(|p| tail(p)));
        logs.join("\n")
    }

    pub fn get(&self, app: &str) -> (u16, String) {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let response =
            client.get(format!("http://{}/", self.http)).header("host", format!("{app}.localhost")).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }
}

/// A `steady up` a test started by hand: if the test fails while it runs, SIGTERM (which it
/// always heeds once running) stops it and the daemons it started.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling the process this test started.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = eventually("steady up to exit", || self.0.try_wait().ok().flatten());
        }
    }
}

/// A process's command line, for a failure message.
fn command_line(pid: u32) -> String {
    let line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let line = String::from_utf8_lossy(&line).replace('\0', " ");
    format!("{pid}: {}", line.chars().take(120).collect::<String>())
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

#[test]
fn ctrl_c_while_starting_stops_everything_even_when_started_as_a_background_job() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (http, api) =
        (format!("127.0.0.1:{}", free_port("127.0.0.1")), format!("127.0.0.1:{}", free_port("127.0.0.1")));
    let log = dir.path().join("up.log");
    let output = std::fs::File::create(&log).unwrap();
    let mut command =
        steady_command(&["up", "--http", &http, "--api", &api, "--data", data.to_str().unwrap(), "--hosts", "2"]);
    command.env("XDG_CONFIG_HOME", dir.path().join("config"));
    command.stdin(Stdio::null()).stdout(output.try_clone().unwrap()).stderr(output).process_group(0);
    // As a shell starts a background job: SIGINT ignored, so a Ctrl-C that came before
    // `steady up` listened for it would be lost.
    // SAFETY: signal is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut up = Reaped(command.spawn().unwrap());
    eventually("steady up to start the slicer", || data.join("logs/slicer.log").exists().then_some(()));
    let tree = descendants(up.0.id());
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(up.0.id() as i32, libc::SIGINT) };
    let status = eventually("steady up to exit after Ctrl-C", || up.0.try_wait().ok().flatten());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "steady up exited with {status}:\n{said}");
    assert!(said.contains("stopping (Ctrl-C"), "{said}");
    eventually("every process steady up started to be gone", || tree.iter().all(|&p| !alive(p)).then_some(()));
}

#[test]
fn a_second_ctrl_c_kills_what_is_still_stopping() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start_in(dir.path());
    // An event stream that never ends: the LB, stopped first, waits for it (up to its drain
    // bound), so the second Ctrl-C surely comes while the platform is stopping.
    let source = "export default { fetch: () => new Response(new ReadableStream({ start(c) { \
                  c.enqueue(new TextEncoder().encode('data: hi\\n\\n')); } }), \
                  { headers: { 'content-type': 'text/event-stream' } }) };\n";
    let app = write_app(dir.path(), "endless", source);
    let deploy = up.command(&["deploy", app.to_str().unwrap(), "--name", "endless"]).output().unwrap();
    assert!(deploy.status.success(), "{}", describe(&deploy));
    let mut stream = std::net::TcpStream::connect(&up.http).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: endless.localhost\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: hi") {
        let mut buffer = [0u8; 4096];
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0 && seen.len() < 65_536, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    let tree = up.tree();
    let folder = dir.path().to_str().unwrap().to_owned();
    assert!(
        processes_naming(&folder).len() >= 4,
        "the daemons name the test's folder: {:?}",
        processes_naming(&folder)
    );
    let said = |up: &Up| std::fs::read_to_string(&up.log).unwrap_or_default();
    // SAFETY: signalling the process this test started (twice).
    unsafe { libc::kill(up.child.id() as i32, libc::SIGINT) };
    eventually("steady up to start stopping", || said(&up).contains("stopping (Ctrl-C)").then_some(()));
    unsafe { libc::kill(up.child.id() as i32, libc::SIGINT) };
    let status = eventually("steady up to exit", || up.child.try_wait().ok().flatten());
    assert!(status.success(), "steady up exited with {status}:\n{}", said(&up));
    assert!(said(&up).contains("Ctrl-C again: killing what is still running"), "{}", said(&up));
    assert!(!said(&up).contains("did not stop within"), "{}", said(&up));
    eventually("every process steady up started to be gone", || tree.iter().all(|&p| !alive(p)).then_some(()));
    // Also the ones started after the tree was taken (a warm sandbox refilling the pool):
    // nothing running names this test's folder.
    eventually("no process of this test's platform to be left", || processes_naming(&folder).is_empty().then_some(()));
}

/// Live processes whose command line holds `text`.
fn processes_naming(text: &str) -> Vec<String> {
    let entries = std::fs::read_dir("/proc").expect("/proc");
    let pids = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    let naming = |pid: &u32| {
        let line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        alive(*pid) && String::from_utf8_lossy(&line).contains(text)
    };
    pids.filter(naming).map(command_line).collect()
}
