//! Test harness: starts the real steady binaries (slicer, N host daemons, LB) in a temp dir
//! on free loopback ports, drives them like a user would (the `steady` CLI, plain HTTP), and
//! tears everything down — also when a test fails, in which case it prints every daemon's log.
//!
//! Waits are on conditions (a ready file, `/readyz`, an answer), each with a deadline; nothing
//! waits on a bare sleep. Set `STEADY_KEEP_TEST_DIR=1` to keep the temp dir for debugging.

pub mod load;
pub mod s3;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use steady_proto::wire::RoutingTable;

/// Default patience for conditions; `STEADY_TEST_PATIENCE_MS` overrides it.
pub fn patience() -> Duration {
    let ms = std::env::var("STEADY_TEST_PATIENCE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    Duration::from_millis(ms)
}

/// Retries `check` until it returns `Some` or the patience runs out (then panics with `what`).
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The workspace root (the checkout): the one whose `target/<profile>/` holds the running
/// binaries, so a checkout's `steady-bench` uses that checkout's tools and report folder even
/// when it was built in another; else the one this crate was built in.
pub fn workspace() -> PathBuf {
    let built_in = || Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
    let Ok(exe) = std::env::current_exe() else { return built_in() };
    // `<workspace>/target/<profile>/<binary>` or `<workspace>/target/<profile>/deps/<test>`.
    exe.ancestors()
        .skip(1)
        .take(3)
        .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
        .and_then(Path::parent)
        .filter(|root| root.join("Cargo.toml").is_file() && root.join("e2e").is_dir())
        .map_or_else(built_in, Path::to_owned)
}

/// Where the built binaries are: next to the test executable's `deps/` folder, or beside the
/// running binary (the bench rig, `target/release/steady-bench`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let beside = exe.parent().expect("executable dir").to_owned();
    let dir = if beside.join("steady-hostd").is_file() {
        beside
    } else {
        beside.parent().expect("target profile dir").to_owned()
    };
    for binary in ["steady", "steady-slicer", "steady-hostd", "steady-lb"] {
        assert!(
            dir.join(binary).is_file(),
            "{binary} is not built in {}: run `cargo build --workspace --bins` with the same profile first",
            dir.display()
        );
        if let Some(source) = newer_source(&dir, binary) {
            panic!(
                "{binary} in {} is older than {}: run `cargo build --workspace --bins` with the same profile \
                 first (`cargo test -p steady-e2e` builds the tests, not the daemons they start)",
                dir.display(),
                source.display()
            );
        }
    }
    dir
}

/// A source file `binary` was built from that changed after it was built, from the list of
/// its sources cargo writes beside it (`<binary>.d`); `None` when there is none, or no list.
fn newer_source(dir: &Path, binary: &str) -> Option<PathBuf> {
    let built = std::fs::metadata(dir.join(binary)).and_then(|m| m.modified()).ok()?;
    let list = std::fs::read_to_string(dir.join(format!("{binary}.d"))).ok()?;
    let (_, sources) = list.split_once(": ")?;
    // Paths are separated by spaces; a space inside a path is escaped with a backslash.
    let sources = sources.replace("\\ ", "\u{0}");
    sources
        .split_whitespace()
        .map(|path| PathBuf::from(path.replace('\u{0}', " ")))
        .find(|path| std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|changed| changed > built))
}

/// PATH for the daemons and the CLI: the checkout's `.tools/bin` first.
pub fn tools_path() -> String {
    let tools = workspace().join(".tools/bin");
    format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default())
}

/// A free TCP port on `ip` (bound, then released), never the same one twice in a test process.
pub fn free_port(ip: &str) -> u16 {
    // The kernel may hand the same free port to two binds in a row (the first one's socket is
    // closed at once), and an LB given one port for both its listeners refuses to start. So a
    // port is handed out once per test process.
    static HANDED_OUT: std::sync::Mutex<Vec<(String, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1_000 {
        let port = TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("free port").port();
        if !handed_out.iter().any(|(i, p)| i == ip && *p == port) {
            handed_out.push((ip.to_owned(), port));
            return port;
        }
    }
    panic!("no free port on {ip} that this test process has not handed out already");
}

/// A loopback address where nothing answers: a socket bound but not listening, so every
/// connection to it is refused, held for as long as this lives so that no other process (a
/// server another test starts on a free port) can take the port meanwhile. A server that is
/// stopped to make its address unreachable does not do that: its port is free for anyone.
#[derive(Debug)]
pub struct RefusingAddr {
    _fd: std::os::fd::OwnedFd,
    pub addr: SocketAddr,
}

impl RefusingAddr {
    /// Binds a new socket on `ip` (IPv4) to a port the kernel chooses.
    pub fn bind(ip: std::net::Ipv4Addr) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns from its creation; the
        // address structures are fully initialised and their sizes passed truly.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut address: libc::sockaddr_in = std::mem::zeroed();
            address.sin_family = libc::AF_INET as libc::sa_family_t;
            address.sin_addr.s_addr = u32::from(ip).to_be();
            let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(raw, &address as *const libc::sockaddr_in as *const libc::sockaddr, size);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut length = size;
            let named =
                libc::getsockname(raw, &mut address as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut length);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            let addr = SocketAddr::from((ip, u16::from_be(address.sin_port)));
            Self { _fd: fd, addr }
        }
    }
}

/// One daemon started by the harness, in its own process group.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `binary` with `args`, output to `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, binary: &str, args: &[String]) -> Self {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(bin_dir().join(binary))
            .args(args)
            .env_clear()
            .env("PATH", tools_path())
            .env("STEADY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Self { name: name.into(), child: Some(child), log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Has the daemon exited?
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Sends `signal` to the daemon's process group and waits (bounded) for it to exit.
    pub fn stop_with(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling a process group this harness created.
        unsafe {
            libc::kill(-(child.id() as i32), signal);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop after signal {signal}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the daemon's own process (not its group), e.g. SIGHUP to reload.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling a process this harness started and has not reaped yet.
        let result = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(result, 0, "signal {signal} to {}", self.name);
    }

    /// Waits (bounded by `timeout`) for the daemon to exit by itself; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.exited() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGTERM);
    }
}

impl Daemon {
    /// The last `lines` lines of the daemon's log, under its name.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        format!("--- {} ---\n{}\n", self.name, all[all.len().saturating_sub(lines)..].join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: as in stop_with; errors (already gone) are fine here.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

fn wait_ready_file(daemon: &mut Daemon, path: &Path) -> serde_json::Value {
    eventually(&format!("{} ready file", daemon.name), || {
        assert!(
            !daemon.exited(),
            "{} exited while starting:\n{}",
            daemon.name,
            std::fs::read_to_string(&daemon.log).unwrap_or_default()
        );
        std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
    })
}

/// A host daemon and the fixed addresses it keeps across restarts.
pub struct Host {
    pub id: String,
    pub ip: String,
    pub ingress: SocketAddr,
    pub api: SocketAddr,
    pub data: PathBuf,
    pub daemon: Daemon,
}

/// A whole steady platform on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub slicer_addr: String,
    pub slicer: Daemon,
    pub hosts: Vec<Host>,
    pub lb: Daemon,
    pub public: SocketAddr,
    pub private: SocketAddr,
    pub domain: String,
    /// The admin token the slicer made (in its data folder).
    pub admin_token: String,
    http: reqwest::blocking::Client,
    /// A client that calls the API with the admin token.
    api_http: reqwest::blocking::Client,
    host_flags: Vec<String>,
    slicer_args: Vec<String>,
    /// More load balancers beside `lb`, started with [`Cluster::add_lb`].
    pub more_lbs: Vec<Lb>,
}

/// A load balancer started after the first.
pub struct Lb {
    pub daemon: Daemon,
    pub public: SocketAddr,
    pub private: SocketAddr,
    /// Its command line, for an upgrade to a new process with the same flags.
    pub args: Vec<String>,
}

/// The answer to a plain HTTP request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Cluster {
    /// Starts a slicer, `host_count` hosts on 127.0.0.2… and one LB; returns once the LB has a table.
    pub fn start(host_count: usize) -> Self {
        Self::start_with(host_count, &[])
    }

    /// Like [`Cluster::start`], with extra flags for every host daemon.
    pub fn start_with(host_count: usize, host_flags: &[&str]) -> Self {
        Self::start_full(host_count, host_flags, &[])
    }

    /// Like [`Cluster::start_with`], with extra flags for the slicer too.
    pub fn start_full(host_count: usize, host_flags: &[&str], slicer_flags: &[&str]) -> Self {
        assert!((1..=30).contains(&host_count));
        let dir = tempfile::Builder::new().prefix("steady-e2e-").tempdir().expect("temp dir");
        let root = dir.path().to_owned();
        let mut slicer_args = [strings(&["--data", &path(&root.join("slicer"))]), strings(slicer_flags)].concat();
        if !slicer_flags.contains(&"--rebalance-interval-ms") {
            // Tests that look at where apps live choose when they move; the ones about moves
            // turn the load rebalance on.
            slicer_args.extend(strings(&["--rebalance-interval-ms", "0"]));
        }
        let (slicer, slicer_addr) = start_slicer(&root, "127.0.0.1:0", &slicer_args);
        let host_flags = strings(host_flags);
        let hosts = (1..=host_count).map(|i| start_host(&root, i, &slicer_addr, &host_flags)).collect();
        let Lb { daemon: lb, public, private, .. } = start_lb(&root, "lb", &slicer_addr);
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        let admin_token = admin_token(&root.join("slicer"));
        let api_http = api_client(&admin_token);
        let domain = "localhost".into();
        let more_lbs = Vec::new();
        let cluster = Self {
            dir,
            slicer_addr,
            slicer,
            hosts,
            lb,
            public,
            private,
            domain,
            admin_token,
            http,
            api_http,
            host_flags,
            slicer_args,
            more_lbs,
        };
        cluster.wait_lb_table(1);
        cluster
    }

    /// Starts one more load balancer on the same slicer; returns its index in `more_lbs`.
    pub fn add_lb(&mut self) -> usize {
        self.add_lb_with(&[])
    }

    /// Like [`Cluster::add_lb`], with extra flags for the new LB.
    pub fn add_lb_with(&mut self, flags: &[&str]) -> usize {
        let name = format!("lb-{}", self.more_lbs.len() + 2);
        let (public, private) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
        let lb = start_lb_on(self.dir.path(), &name, &self.slicer_addr, public, private, &strings(flags));
        self.more_lbs.push(lb);
        let index = self.more_lbs.len() - 1;
        let private = self.more_lbs[index].private;
        eventually(&format!("{name}'s routing table"), || {
            let text = self.http.get(format!("http://{private}/readyz")).send().ok()?.text().ok()?;
            text.starts_with("ready").then_some(())
        });
        index
    }

    /// Starts one more host daemon (`host-<n>` on 127.0.0.<n+1>); returns its index in `hosts`.
    pub fn add_host(&mut self) -> usize {
        let index = self.hosts.len() + 1;
        let host = start_host(self.dir.path(), index, &self.slicer_addr, &self.host_flags);
        self.hosts.push(host);
        self.hosts.len() - 1
    }

    /// Kills LB `index` of `more_lbs` with SIGKILL, as a crash, and starts it again on the same
    /// addresses (as its service manager would); returns once it serves a routing table.
    pub fn kill_and_restart_lb(&mut self, index: usize) {
        let lb = &mut self.more_lbs[index];
        lb.daemon.stop_with(libc::SIGKILL);
        let name = lb.daemon.name.clone();
        let (public, private) = (lb.public, lb.private);
        *lb = start_lb_on(self.dir.path(), &name, &self.slicer_addr, public, private, &[]);
        eventually(&format!("{name}'s routing table after its restart"), || {
            let text = self.http.get(format!("http://{private}/readyz")).send().ok()?.text().ok()?;
            text.starts_with("ready").then_some(())
        });
    }

    /// Upgrades LB `index` of `more_lbs` as an operator would: starts a new process with the
    /// same flags and `--upgrade`, sends the old one SIGQUIT (it hands its listening sockets
    /// over, keeps serving a few seconds, drains and exits) and returns once the old one has
    /// exited and the new one serves a routing table. Returns how long the old one took to exit.
    pub fn upgrade_lb(&mut self, index: usize) -> Duration {
        let lb = &mut self.more_lbs[index];
        let args = [lb.args.clone(), strings(&["--upgrade"])].concat();
        let next = Daemon::start(self.dir.path(), &lb.daemon.name, "steady-lb", &args);
        let started = Instant::now();
        lb.daemon.signal(libc::SIGQUIT);
        assert!(lb.daemon.wait_exit(Duration::from_secs(30)), "the old LB did not exit after SIGQUIT");
        let old_exit = started.elapsed();
        lb.daemon = next;
        let private = lb.private;
        eventually("the upgraded LB's routing table", || {
            let text = self.http.get(format!("http://{private}/readyz")).send().ok()?.text().ok()?;
            text.starts_with("ready").then_some(())
        });
        old_exit
    }

    /// Kills host `index` with SIGKILL (its whole process group, as a service manager does to a
    /// crashed unit) and starts it again on the same data and addresses.
    pub fn kill_and_restart_host(&mut self, index: usize) {
        self.hosts[index].daemon.stop_with(libc::SIGKILL);
        self.start_host_again(index);
    }

    /// Kills the slicer with SIGKILL and starts it again on the same address and data.
    pub fn kill_and_restart_slicer(&mut self) {
        self.slicer.stop_with(libc::SIGKILL);
        let (slicer, addr) = start_slicer(self.dir.path(), &self.slicer_addr, &self.slicer_args);
        assert_eq!(addr, self.slicer_addr, "the slicer came back on its address");
        self.slicer = slicer;
    }

    /// Waits until the LB has installed a table at least as new as `version`.
    pub fn wait_lb_table(&self, version: u64) {
        // Like `eventually`, but a timeout says what `/readyz` answered last.
        let deadline = Instant::now() + patience();
        loop {
            let answer = self.http.get(format!("http://{}/readyz", self.private)).send().and_then(|a| a.text());
            let last = match answer {
                Ok(text) => {
                    let installed = text.trim().rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
                    if installed.is_some_and(|installed| installed >= version) {
                        return;
                    }
                    text
                }
                Err(error) => error.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the LB's routing table (version {version}); /readyz said last: {}",
                last.trim()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// An HTTP client that calls the API with the admin token.
    pub fn api(&self) -> &reqwest::blocking::Client {
        &self.api_http
    }

    /// Runs the `steady` CLI against this cluster's API.
    pub fn steady(&self, args: &[&str]) -> Output {
        self.steady_as(&self.admin_token, args)
    }

    /// Runs the `steady` CLI against this cluster's API with `token`.
    pub fn steady_as(&self, token: &str, args: &[&str]) -> Output {
        let command = &mut steady_command(args);
        command.env("STEADY_API", self.private.to_string()).env("STEADY_TOKEN", token);
        command.output().expect("running steady")
    }

    /// Deploys `source` (a folder) as `name` with the CLI; panics with its output on failure.
    pub fn deploy(&self, source: &Path, name: &str) -> serde_json::Value {
        let output = self.steady(&["deploy", &path(source), "--name", name, "--json"]);
        assert!(output.status.success(), "deploy of {name} failed: {}", describe(&output));
        serde_json::from_slice(&output.stdout).expect("deploy prints JSON")
    }

    /// GET `path` of `app` through the LB's public listener.
    pub fn get(&self, app: &str, path: &str) -> Answer {
        let url = format!("http://{}{path}", self.public);
        let response =
            self.http.get(url).header("host", format!("{app}.{}", self.domain)).send().expect("request through the LB");
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Answer { status: response.status().as_u16(), retry_after, body: response.text().unwrap_or_default() }
    }

    /// The slicer's routing table, read through the LB's private listener.
    pub fn table(&self) -> RoutingTable {
        let url = format!("http://{}/v1/table", self.private);
        self.api_http.get(url).send().and_then(|r| r.json()).expect("routing table")
    }

    /// Stops host `index` gracefully and starts it again on the same data and addresses.
    pub fn restart_host(&mut self, index: usize) {
        self.hosts[index].daemon.stop();
        self.start_host_again(index);
    }

    /// Puts a new machine in place of host `index` (which must be stopped or killed): the same
    /// host id, an empty data directory and new ports. It adopts the host's apps from the
    /// routing table and restores their data from the replicas.
    pub fn replace_host(&mut self, index: usize) {
        let root = self.dir.path().to_owned();
        let host = &mut self.hosts[index];
        assert!(host.daemon.exited(), "replace a host only after it stopped");
        let generation = std::fs::read_dir(root.join("hosts")).map(|d| d.count()).unwrap_or(0);
        let data = root.join("hosts").join(format!("{}-{generation}", host.id));
        let (ingress, api) = (free_addr(&host.ip), free_addr(&host.ip));
        let (data, daemon) = start_host_in(&root, &data, &host.id, ingress, api, &self.slicer_addr, &self.host_flags);
        (host.ingress, host.api, host.data, host.daemon) = (ingress, api, data, daemon);
    }

    /// Starts host `index` again (after it was stopped or killed) on the same data and addresses.
    pub fn start_host_again(&mut self, index: usize) {
        let root = self.dir.path().to_owned();
        let host = &mut self.hosts[index];
        let data = host.data.clone();
        host.daemon =
            start_host_in(&root, &data, &host.id, host.ingress, host.api, &self.slicer_addr, &self.host_flags).1;
    }

    /// GET an API path on the private listener, as JSON.
    pub fn api_get(&self, path: &str) -> serde_json::Value {
        let response = self.api_http.get(format!("http://{}{path}", self.private)).send().expect("API request");
        response.json().expect("API answers JSON")
    }

    /// POST an API path on the private listener (empty body), as JSON.
    pub fn api_post(&self, path: &str) -> serde_json::Value {
        let response = self.api_http.post(format!("http://{}{path}", self.private)).send().expect("API request");
        response.json().expect("API answers JSON")
    }

    /// The app's state on its host (`GET /v1/apps/<name>`).
    pub fn status(&self, app: &str) -> serde_json::Value {
        self.api_get(&format!("/v1/apps/{app}"))
    }

    /// The app's log as text.
    pub fn app_log(&self, app: &str) -> String {
        let url = format!("http://{}/v1/apps/{app}/logs?tail=1000", self.private);
        self.api_http.get(url).send().and_then(|r| r.text()).expect("app log")
    }

    /// The tail of every daemon's log, for failure reports.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let more_lbs = self.more_lbs.iter().map(|l| &l.daemon);
        for daemon in [&self.slicer, &self.lb].into_iter().chain(more_lbs).chain(self.hosts.iter().map(|h| &h.daemon)) {
            text += &daemon.log_tail(40);
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster in {} — daemon logs:\n{}", self.dir.path().display(), self.logs());
        }
        self.lb.stop_with(libc::SIGINT);
        for lb in &mut self.more_lbs {
            lb.daemon.stop_with(libc::SIGINT);
        }
        for host in &mut self.hosts {
            host.daemon.stop();
        }
        self.slicer.stop();
        if std::env::var_os("STEADY_KEEP_TEST_DIR").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept {}", kept.keep().display());
        }
    }
}

fn start_slicer(root: &Path, listen: &str, args: &[String]) -> (Daemon, String) {
    let ready = root.join("slicer.ready");
    let _ = std::fs::remove_file(&ready);
    let listen_args = strings(&["--listen", listen, "--ready-file", &path(&ready)]);
    let mut slicer = Daemon::start(root, "slicer", "steady-slicer", &[listen_args, args.to_vec()].concat());
    let addr = wait_ready_file(&mut slicer, &ready)["api"].as_str().expect("slicer api").to_owned();
    (slicer, addr)
}

fn start_lb(root: &Path, name: &str, slicer: &str) -> Lb {
    start_lb_on(root, name, slicer, free_addr("127.0.0.1"), free_addr("127.0.0.1"), &[])
}

fn start_lb_on(root: &Path, name: &str, slicer: &str, public: SocketAddr, private: SocketAddr, flags: &[String]) -> Lb {
    let args = strings(&[
        "--public",
        &public.to_string(),
        "--private",
        &private.to_string(),
        "--slicer",
        slicer,
        "--domain",
        "localhost",
        "--data",
        &path(&root.join(name)),
    ]);
    let args = [args, flags.to_vec()].concat();
    Lb { daemon: Daemon::start(root, name, "steady-lb", &args), public, private, args }
}

fn start_host(root: &Path, index: usize, slicer: &str, flags: &[String]) -> Host {
    let id = format!("host-{index}");
    let ip = format!("127.0.0.{}", index + 1);
    let (ingress, api) = (free_addr(&ip), free_addr(&ip));
    let (data, daemon) = start_host_in(root, &root.join("hosts").join(&id), &id, ingress, api, slicer, flags);
    Host { id, ip, ingress, api, data, daemon }
}

fn start_host_in(
    root: &Path,
    data: &Path,
    id: &str,
    ingress: SocketAddr,
    api: SocketAddr,
    slicer: &str,
    flags: &[String],
) -> (PathBuf, Daemon) {
    let data = data.to_owned();
    let ready = root.join(format!("{id}.ready"));
    let _ = std::fs::remove_file(&ready);
    let mut args = strings(&[
        "--id",
        id,
        "--data",
        &path(&data),
        "--ingress",
        &ingress.to_string(),
        "--api",
        &api.to_string(),
        "--slicer",
        slicer,
        "--ready-file",
        &path(&ready),
    ]);
    if !flags.iter().any(|f| f == "--storage-config" || f == "--storage-dir") {
        // The hosts of one test cluster share one blob store, as on one machine under `steady up`.
        args.extend(strings(&["--storage-dir", &path(&root.join("storage"))]));
    }
    if !flags.iter().any(|f| f == "--secrets-key-file") {
        // And one cluster key, as `steady up` gives them.
        args.extend(strings(&["--secrets-key-file", &path(&secrets_key_file(root))]));
    }
    args.extend_from_slice(flags);
    let mut daemon = Daemon::start(root, id, "steady-hostd", &args);
    wait_ready_file(&mut daemon, &ready);
    (data, daemon)
}

/// The test cluster's key for app environment variables, `<root>/secrets.key`, made on first
/// use from the kernel's random source (64 hex digits, mode 0600, as `steady up` makes it).
pub fn secrets_key_file(root: &Path) -> PathBuf {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let file = root.join("secrets.key");
    if file.exists() {
        return file;
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut key)).expect("random key");
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file).expect("key file");
    out.write_all(text.as_bytes()).expect("key file");
    file
}

fn free_addr(ip: &str) -> SocketAddr {
    format!("{ip}:{}", free_port(ip)).parse().expect("socket address")
}

/// A `steady` CLI command with the tools on PATH, no API or token from the environment, and a
/// config folder of its own (`XDG_CONFIG_HOME`, empty unless the test writes one there).
pub fn steady_command(args: &[&str]) -> Command {
    let mut command = Command::new(bin_dir().join("steady"));
    command.args(args).env("PATH", tools_path()).env_remove("STEADY_API").env_remove("STEADY_TOKEN");
    command.env("XDG_CONFIG_HOME", std::env::temp_dir().join(format!("steady-e2e-config-{}", std::process::id())));
    command
}

/// The admin token a slicer made in its data folder `slicer_data`.
pub fn admin_token(slicer_data: &Path) -> String {
    let file = slicer_data.join("admin.token");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display())).trim().to_owned()
}

/// An HTTP client that sends `token` as its bearer token on every request.
pub fn api_client(token: &str) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token fits a header");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    let builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).default_headers(headers);
    builder.build().expect("http client")
}

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The JSON a successful CLI command printed on stdout; panics with its output otherwise.
pub fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", describe(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("JSON on stdout ({e}): {}", describe(output)))
}

/// Asserts a CLI command exited with `code` and said `says` on stderr.
pub fn assert_exit(output: &Output, code: i32, says: &str) {
    assert_eq!(output.status.code(), Some(code), "{}", describe(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "stderr should say {says:?}: {}", describe(output));
}

/// Writes an app (`index.ts` with `source`) into a new folder under `parent`.
pub fn write_app(parent: &Path, folder: &str, source: &str) -> PathBuf {
    let dir = parent.join("src").join(folder);
    std::fs::create_dir_all(&dir).expect("app folder");
    std::fs::write(dir.join("index.ts"), source).expect("app source");
    dir
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Every process in the tree under `root` (including `root`), from `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        if let Some(ppid) = after.split(' ').nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        index += 1;
    }
    found
}

/// Resident memory of `pid` in bytes, from `/proc` (None once it is gone).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?;
    Some(kib.parse::<u64>().ok()? * 1024)
}

/// Is `pid` a live (not zombie) process?
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap_or(0)..].starts_with(") Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn set_modified(path: &Path, at: SystemTime) {
        std::fs::File::options().write(true).open(path).expect("open").set_modified(at).expect("set mtime");
    }

    #[test]
    fn a_binary_older_than_one_of_its_sources_is_found_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (binary, source, spaced) =
            (dir.path().join("steady-lb"), dir.path().join("main.rs"), dir.path().join("a b.rs"));
        for path in [&binary, &source, &spaced] {
            std::fs::write(path, "x").expect("file");
        }
        let escaped = spaced.display().to_string().replace(' ', "\\ ");
        let list = format!("{}: {} {escaped}\n", binary.display(), source.display());
        std::fs::write(dir.path().join("steady-lb.d"), list).expect("dep-info");
        let now = SystemTime::now();
        set_modified(&source, now - Duration::from_secs(60));
        set_modified(&spaced, now - Duration::from_secs(60));
        set_modified(&binary, now - Duration::from_secs(30));
        assert_eq!(newer_source(dir.path(), "steady-lb"), None, "built after its sources");
        set_modified(&spaced, now);
        assert_eq!(newer_source(dir.path(), "steady-lb"), Some(spaced), "a source changed since");
        assert_eq!(newer_source(dir.path(), "steady"), None, "no list, no verdict");
    }
}
