//! The LB against the proxies operators already trust, on this machine in one run: a small app
//! (`hello`, constant cost per request) served by Bun directly, behind nginx (upstream keep-alive),
//! behind HAProxy (connection reuse), behind `steady-lb` alone (routing straight to the same Bun),
//! and through the whole steady path (LB → host daemon → sandboxed app), once over HTTP/1.1 and
//! once over h2c between LB and host, and through the same path built of nginx (nginx → nginx → Bun
//! on a Unix socket: two hops, the second to the app's socket, as the full path's are). Every
//! target gets the same load generator (wrk, with a Lua hook for p99.9) at each connection count,
//! in rounds (every target once a round, in turn; each figure the median over the rounds, and the
//! LB's ratio to nginx round by round beside it, since a shared 2-core machine swings by a fifth
//! between minutes); ratios are against nginx (for the LB) and against Bun direct (for the full
//! path, with its ratio to the nginx path round by round beside it). Beside req/s it prints the CPU
//! time per request of the proxies, the app, the load generator and the whole machine, which the
//! cores' sharing does not blur as much, and for the full path the CPU time per request it may
//! spend to reach half of Bun direct's req/s. nginx and HAProxy set the same forwarding headers
//! `steady-lb` sets (`X-Forwarded-For/-Host/-Proto`, `Forwarded`), so each proxy does the same edge
//! job and the app parses the same headers behind each.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steady_e2e::{free_port, workspace, Cluster, Daemon};

use crate::record::Recorded;
use crate::report::Report;

/// wrk's hook that prints what the report needs on one line.
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("steady-bench requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), e.connect + e.read + e.write + e.status + e.timeout))
end
"#;

/// Proxy comparison parameters.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Connection counts to measure (repeatable).
    #[arg(long = "connections", default_values_t = [32usize, 256])]
    pub connections: Vec<usize>,
    /// Seconds of load per target, connection count and round (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Rounds: every target is measured once per round, in turn, and the report gives each
    /// figure's median over the rounds; so a slow spell of the machine lands on every target
    /// alike rather than on whichever ran then. nginx and `steady-lb` run back to back, in
    /// turns: nginx first in odd rounds, the LB first in even ones.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub rounds: u64,
    /// Measure only these targets (repeatable; all of them by default), e.g. `--target nginx
    /// --target lb` to look closer at the two compared most closely.
    #[arg(long = "target", value_enum)]
    pub targets: Vec<Target>,
    /// Worker threads of every proxy (nginx workers, HAProxy threads, LB threads).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Report directory (default target/bench-reports/proxies-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What the comparison can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The app served by Bun itself.
    Bun,
    Haproxy,
    Nginx,
    /// `steady-lb` alone, in front of the same Bun.
    Lb,
    /// LB → host daemon → sandboxed app, HTTP/1.1 between LB and host.
    Full,
    /// The same over h2c between LB and host.
    FullH2c,
    /// The full path's shape built of nginx: nginx → nginx → Bun on a Unix socket.
    NginxPath,
}

impl Target {
    /// The name the report gives it.
    fn name(self) -> &'static str {
        match self {
            Target::Bun => "bun direct",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
            Target::Lb => "steady-lb",
            Target::Full => "steady full path",
            Target::FullH2c => "full path h2c",
            Target::NginxPath => "nginx → nginx",
        }
    }
}

/// One target at one connection count: each figure the median over the rounds.
#[derive(Debug, Clone)]
pub struct Measured {
    pub target: String,
    pub connections: usize,
    pub requests_per_s: f64,
    /// req/s of each round, in order.
    pub rounds_requests_per_s: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    /// CPU time the proxy processes spent per request (µs): user + system over the run.
    /// Fairer than req/s on a machine whose cores the load generator and app share.
    pub proxy_cpu_us_per_request: Option<f64>,
    /// CPU time the app spent per request (µs): the Bun process behind the peers and the LB
    /// alone, the sandboxed app (with whatever else runs under the host daemon) behind the full
    /// path.
    pub app_cpu_us_per_request: f64,
    /// CPU time the load generator (wrk) spent per request (µs).
    pub load_cpu_us_per_request: f64,
    /// Busy CPU time of the whole machine per request (µs): load generator, proxies and app.
    pub machine_cpu_us_per_request: f64,
}

impl Measured {
    /// Each figure's median over `rounds` (all of one target and connection count; of an even
    /// count, the upper middle one).
    fn median_of(rounds: &[Measured]) -> Measured {
        assert!(!rounds.is_empty(), "a target is measured at least once");
        let median = |figure: &dyn Fn(&Measured) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let proxy_cpu =
            rounds[0].proxy_cpu_us_per_request.map(|_| median(&|m| m.proxy_cpu_us_per_request.unwrap_or(0.0)));
        Measured {
            target: rounds[0].target.clone(),
            connections: rounds[0].connections,
            requests_per_s: median(&|m| m.requests_per_s),
            rounds_requests_per_s: rounds.iter().map(|m| m.requests_per_s).collect(),
            p50_ms: median(&|m| m.p50_ms),
            p99_ms: median(&|m| m.p99_ms),
            p999_ms: median(&|m| m.p999_ms),
            errors: rounds.iter().map(|m| m.errors).sum(),
            proxy_cpu_us_per_request: proxy_cpu,
            app_cpu_us_per_request: median(&|m| m.app_cpu_us_per_request),
            load_cpu_us_per_request: median(&|m| m.load_cpu_us_per_request),
            machine_cpu_us_per_request: median(&|m| m.machine_cpu_us_per_request),
        }
    }
}

/// A child process stopped (its process group) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: the process group of a child this scenario started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join(format!("{}.log", program.rsplit('/').next().unwrap_or(program))))?;
    let mut command = Command::new(program);
    command.args(args).env_clear().env("PATH", steady_e2e::tools_path()).process_group(0);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn();
    Ok(Proc(child.map_err(|e| anyhow::anyhow!("starting {program}: {e} (run scripts/setup.sh --bench)"))?))
}

/// Waits up to 20 s until `connects` succeeds: `what` listening on `place`.
fn wait_until_listening(what: &str, place: &dyn std::fmt::Display, connects: &dyn Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connects() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not listen on {place} (see its log)");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_socket(path: &Path, what: &str) -> anyhow::Result<()> {
    wait_until_listening(what, &path.display(), &|| std::os::unix::net::UnixStream::connect(path).is_ok())
}

fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    wait_until_listening(what, &addr, &|| TcpStream::connect(addr).is_ok())
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().expect("address")
}

/// Runs the comparison and writes its report.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(!options.connections.is_empty() && options.duration_s > 0, "nothing to measure");
    let threads_max = steady_proto::LB_THREADS_MAX;
    anyhow::ensure!((1..=threads_max).contains(&options.threads), "--threads must be 1–{threads_max} (the LB's bound)");
    let dir = crate::scenario::report_dir(options.out.as_deref(), "proxies");
    std::fs::create_dir_all(&dir)?;
    // nginx resolves relative paths against its prefix: give every tool absolute ones.
    let dir = dir.canonicalize()?;
    std::fs::write(dir.join("report.lua"), WRK_SCRIPT)?;
    let threads = options.threads.to_string();

    let bun = addr();
    let data = dir.join("bun-data");
    std::fs::create_dir_all(&data)?;
    let server = dir.join("server.ts");
    // A constant-cost app: the example app counts its visits with `COUNT(*)` over a growing
    // table, which made each target's figure depend on how many ran before it.
    let example = dir.join("app/index.ts");
    std::fs::create_dir_all(dir.join("app"))?;
    std::fs::write(&example, crate::scenario::throughput::HELLO_APP)?;
    // The same process also answers on a Unix socket, as a sandboxed app does, for the nginx
    // path (only one target is measured at a time, so the two listeners never compete).
    let bun_socket = dir.join("bun.sock");
    // A Unix socket's path must fit `sun_path` (108 bytes with its terminating zero).
    let socket_path_bytes = bun_socket.as_os_str().len();
    anyhow::ensure!(
        socket_path_bytes < 108,
        "the report directory's path is too long for a Unix socket in it ({socket_path_bytes} bytes of 107): \
         pick a shorter --out"
    );
    std::fs::write(
        &server,
        format!(
            "import app from {:?};\nBun.serve({{ hostname: \"127.0.0.1\", port: {}, fetch: (r) => app.fetch(r) }});\n\
             Bun.serve({{ unix: {:?}, fetch: (r) => app.fetch(r) }});\n",
            example.display().to_string(),
            bun.port(),
            bun_socket.display().to_string()
        ),
    )?;
    let bun_path = workspace().join(".tools/bin/bun");
    let data_env = data.display().to_string();
    let bun_process = spawn(
        &bun_path.display().to_string(),
        &["run", &server.display().to_string()],
        &dir,
        &[("STEADY_DATA_DIR", &data_env)],
    )?;
    wait_listening(bun, "bun")?;

    wait_socket(&bun_socket, "bun")?;
    // nginx's workers drop to an unprivileged user when started as root; a socket needs write
    // permission to be connected to.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bun_socket, std::fs::Permissions::from_mode(0o666))?;
    let nginx = addr();
    let nginx_process = start_nginx(&dir, "nginx", nginx, &bun.to_string(), FORWARDING_NGINX, &threads)?;
    // The nginx path: a first nginx doing the edge's job, a second forwarding to the app's
    // socket as a host daemon does.
    let (nginx_first, nginx_second) = (addr(), addr());
    let nginx_second_process =
        start_nginx(&dir, "nginx-second", nginx_second, &format!("unix:{}", bun_socket.display()), "", &threads)?;
    let nginx_first_process =
        start_nginx(&dir, "nginx-first", nginx_first, &nginx_second.to_string(), FORWARDING_NGINX, &threads)?;
    let haproxy = addr();
    let haproxy_process = start_haproxy(&dir, haproxy, bun, &threads)?;
    let (lb, lb_daemons) = start_lb_alone(&dir, bun, &threads)?;
    let mut cluster = Cluster::start(1);
    cluster.deploy(&dir.join("app"), "hello");
    // All load comes from one address: the per-client rate limit (20,000 req/s by default)
    // would answer part of it 429, so the measured LBs lift it, as `steady-lb` alone does.
    let unlimited = ["--client-requests-per-second-max", "1000000"];
    let http1 = cluster.add_lb_with(&unlimited);
    // The same cluster through a second LB that speaks h2c to the host: the choice of the
    // LB → host protocol, measured side by side.
    let h2c = cluster.add_lb_with(&[&["--host-protocol", "h2c"][..], &unlimited[..]].concat());
    let host_pid = cluster.hosts[0].daemon.pid();
    let lb_pid = lb_daemons[0].pid();

    // In the order a round measures them (nginx and the LB next to each other: `round_order`).
    let (bun_pid, http1_pid, h2c_pid) =
        (bun_process.0.id(), cluster.more_lbs[http1].daemon.pid(), cluster.more_lbs[h2c].daemon.pid());
    let nginx_path = vec![nginx_first_process.0.id(), nginx_second_process.0.id()];
    let every: [Measuring; 7] = [
        Measuring::new(Target::Bun, bun, vec![], bun_pid),
        Measuring::new(Target::Haproxy, haproxy, vec![haproxy_process.0.id()], bun_pid),
        Measuring::new(Target::Nginx, nginx, vec![nginx_process.0.id()], bun_pid),
        Measuring::new(Target::Lb, lb, vec![lb_pid], bun_pid),
        Measuring::new(Target::NginxPath, nginx_first, nginx_path, bun_pid),
        Measuring::new(Target::Full, cluster.more_lbs[http1].public, vec![http1_pid, host_pid], host_pid),
        Measuring::new(Target::FullH2c, cluster.more_lbs[h2c].public, vec![h2c_pid, host_pid], host_pid),
    ];
    let targets: Vec<Measuring> = every
        .into_iter()
        .filter(|measuring| options.targets.is_empty() || options.targets.contains(&measuring.target))
        .collect();
    let names: Vec<&str> = targets.iter().map(|measuring| measuring.target.name()).collect();
    let mut results = Vec::new();
    for &connections in &options.connections {
        let mut rounds: Vec<Measured> = Vec::new();
        for round in 1..=options.rounds {
            for index in round_order(&names, round) {
                rounds.push(measure(&dir, &targets[index], connections, options.duration_s, round)?);
            }
        }
        for name in &names {
            let of_target: Vec<Measured> = rounds.iter().filter(|m| m.target == *name).cloned().collect();
            results.push(Measured::median_of(&of_target));
        }
    }
    drop(cluster);
    report(&dir, options, &results)
}

/// The order of the targets (by `names`) in round `round` (from 1): as listed, but with the
/// two compared most closely, nginx and `steady-lb`, swapped in even rounds, so neither always
/// runs while the machine settles after the other.
fn round_order(names: &[&str], round: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    let position = |target: Target| names.iter().position(|n| *n == target.name());
    if let (Some(nginx), Some(lb), true) = (position(Target::Nginx), position(Target::Lb), round.is_multiple_of(2)) {
        order.swap(nginx, lb);
    }
    order
}

/// One target as a round measures it: where to send the load, whose CPU is the proxies' and
/// whose the app's.
struct Measuring {
    target: Target,
    addr: SocketAddr,
    /// Process groups of the proxies: each proxy this scenario starts leads its own group
    /// (nginx's workers are in their master's). None for Bun direct.
    proxy_groups: Vec<u32>,
    /// The process the app runs under: the Bun process itself, or the host daemon, whose
    /// sandboxed apps (in sessions of their own) and their helpers are its descendants.
    app_root: u32,
}

impl Measuring {
    fn new(target: Target, addr: SocketAddr, proxy_groups: Vec<u32>, app_root: u32) -> Self {
        Measuring { target, addr, proxy_groups, app_root }
    }

    /// CPU seconds so far of the proxies and of the app (the processes under `app_root`
    /// outside the proxies' groups).
    fn cpu_seconds(&self) -> (f64, f64) {
        let processes = processes();
        let proxies = processes.iter().filter(|p| self.proxy_groups.contains(&p.group)).map(|p| p.cpu_s).sum();
        let app = under(&processes, self.app_root)
            .into_iter()
            .filter(|p| !self.proxy_groups.contains(&p.group))
            .map(|p| p.cpu_s)
            .sum();
        (proxies, app)
    }
}

/// One round of one target: a warm-up, then `duration_s` of load, printed as it ends.
fn measure(
    dir: &Path,
    measuring: &Measuring,
    connections: usize,
    duration_s: u64,
    round: u64,
) -> anyhow::Result<Measured> {
    let name = measuring.target.name();
    wrk(dir, measuring.addr, connections, 2)?;
    let ((proxies_before, app_before), machine_before) = (measuring.cpu_seconds(), machine_busy_seconds());
    let load_before = children_cpu_seconds();
    let measured = wrk(dir, measuring.addr, connections, duration_s)?;
    let load = children_cpu_seconds() - load_before;
    let (proxies_after, app_after) = measuring.cpu_seconds();
    let machine = machine_busy_seconds() - machine_before;
    let requests = measured.0 * duration_s as f64;
    let per_request_us = |seconds: f64| if requests > 0.0 { seconds * 1e6 / requests } else { f64::NAN };
    let proxy_us = (!measuring.proxy_groups.is_empty()).then(|| per_request_us(proxies_after - proxies_before));
    let (app_us, load_us, machine_us) =
        (per_request_us(app_after - app_before), per_request_us(load), per_request_us(machine));
    println!(
        "{name:>17} c={connections:<4} round {round}  {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  errors {}  \
         CPU µs/req: proxies {}  app {app_us:.0}  wrk {load_us:.0}  machine {machine_us:.0}",
        measured.0,
        measured.1,
        measured.2,
        measured.3,
        measured.4,
        proxy_us.map_or("-".into(), |us| format!("{us:.0}")),
    );
    Ok(Measured {
        target: name.to_string(),
        connections,
        requests_per_s: measured.0,
        rounds_requests_per_s: vec![measured.0],
        p50_ms: measured.1,
        p99_ms: measured.2,
        p999_ms: measured.3,
        errors: measured.4,
        proxy_cpu_us_per_request: proxy_us,
        app_cpu_us_per_request: app_us,
        load_cpu_us_per_request: load_us,
        machine_cpu_us_per_request: machine_us,
    })
}

/// A process as `/proc/<pid>/stat` tells it.
struct ProcessCpu {
    pid: u32,
    parent: u32,
    group: u32,
    /// CPU seconds so far, user + system, of all its threads.
    cpu_s: f64,
}

/// Every process on the machine, read from `/proc` (skipping any that ends while read).
fn processes() -> Vec<ProcessCpu> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut processes = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command (which may hold spaces): state, ppid, pgrp, … utime (14th
        // field overall, 12th here) and stime.
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cpu_s = (field(11) + field(12)) as f64 / ticks_per_second;
        processes.push(ProcessCpu { pid, parent: field(1) as u32, group: field(2) as u32, cpu_s });
    }
    processes
}

/// `root` and its descendants among `processes`.
fn under(processes: &[ProcessCpu], root: u32) -> Vec<&ProcessCpu> {
    let mut found: Vec<&ProcessCpu> = processes.iter().filter(|p| p.pid == root).collect();
    // Each pass adds the children of what was found; a tree is at most as deep as it is large.
    for _ in 0..processes.len() {
        let more: Vec<&ProcessCpu> = processes
            .iter()
            .filter(|p| found.iter().any(|f| f.pid == p.parent) && !found.iter().any(|f| f.pid == p.pid))
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found
}

/// CPU seconds (user + system) of this process's children that have ended and been waited
/// for: a wrk run, read before and after it.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Busy CPU seconds of the whole machine so far (`/proc/stat`: every state but idle and
/// waiting for I/O).
fn machine_busy_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return 0.0 };
    let ticks: Vec<u64> = cpu.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // user, nice, system, idle, iowait, irq, softirq, steal (guest time is inside user).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy as f64 / ticks_per_second
}

/// One wrk run: (req/s, p50, p99, p99.9 in ms, errors).
fn wrk(dir: &Path, target: SocketAddr, connections: usize, seconds: u64) -> anyhow::Result<(f64, f64, f64, f64, u64)> {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--timeout", "10s"])
        .args(["-H", "Host: hello.localhost", "-s"])
        .arg(dir.join("report.lua"))
        .arg(format!("http://{target}/"))
        .output()
        .map_err(|e| anyhow::anyhow!("running wrk: {e} (run scripts/setup.sh --bench)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("steady-bench "))
        .ok_or_else(|| anyhow::anyhow!("wrk printed no figures:\n{text}"))?;
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok());
    let errors = field("errors") as u64 + non_2xx.unwrap_or(0);
    let requests_per_s = field("requests") / (field("duration_us") / 1e6);
    Ok((requests_per_s, field("p50_us") / 1e3, field("p99_us") / 1e3, field("p999_us") / 1e3, errors))
}

/// The forwarding headers `steady-lb` sets on every request (`X-Forwarded-For/-Host/-Proto`,
/// `Forwarded`), set by nginx too: the peers do the same edge job as the LB they are measured
/// against.
const FORWARDING_NGINX: &str = concat!(
    "      proxy_set_header X-Forwarded-For $remote_addr;\n",
    "      proxy_set_header X-Forwarded-Host $host;\n",
    "      proxy_set_header X-Forwarded-Proto $scheme;\n",
    "      proxy_set_header Forwarded \"for=$remote_addr;host=\\\"$host\\\";proto=$scheme\";\n",
);

/// The same forwarding headers, set by HAProxy.
const FORWARDING_HAPROXY: &str = concat!(
    "  option forwardfor\n",
    "  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n",
    "  http-request set-header X-Forwarded-Proto http\n",
    "  http-request set-header Forwarded \"for=%[src];host=\\\"%[req.hdr(host)]\\\";proto=http\"\n",
);

/// An nginx (prefix `dir/name`) listening on `listen` and proxying to `upstream` (`host:port`
/// or `unix:path`) with keep-alive, setting `forwarding` (header directives).
fn start_nginx(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    upstream: &str,
    forwarding: &str,
    threads: &str,
) -> anyhow::Result<Proc> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = format!(
        "worker_processes {threads};\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
           upstream next {{ server {upstream}; keepalive 256; }}\n\
           server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://next;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n{forwarding}    }}\n  }}\n}}\n",
        p = prefix.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = spawn(
        "/usr/sbin/nginx",
        &["-p", &prefix.display().to_string(), "-c", &conf_path.display().to_string(), "-g", "daemon off;"],
        &prefix,
        &[],
    )?;
    wait_listening(listen, name)?;
    Ok(child)
}

fn start_haproxy(dir: &Path, listen: SocketAddr, bun: SocketAddr, threads: &str) -> anyhow::Result<Proc> {
    let conf = format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n\
         frontend front\n  bind {listen}\n  default_backend bun\n\
         backend bun\n{FORWARDING_HAPROXY}  server bun {bun} maxconn 1024\n"
    );
    let conf_path = dir.join("haproxy.cfg");
    std::fs::write(&conf_path, conf)?;
    let child = spawn("/usr/sbin/haproxy", &["-f", &conf_path.display().to_string(), "-db"], dir, &[])?;
    wait_listening(listen, "haproxy")?;
    Ok(child)
}

/// A slicer whose only "host" is the Bun server itself, and an LB: the LB's own cost, with
/// no host daemon behind it.
fn start_lb_alone(dir: &Path, bun: SocketAddr, threads: &str) -> anyhow::Result<(SocketAddr, Vec<Daemon>)> {
    let (slicer, public, private) = (addr(), addr(), addr());
    let slicer_data = dir.join("slicer").display().to_string();
    let slicer_args: Vec<String> = ["--listen", &slicer.to_string(), "--data", &slicer_data]
        .iter()
        .chain(&["--host-timeout-ms", "3600000", "--rebalance-interval-ms", "0"])
        .map(|s| s.to_string())
        .collect();
    let slicer_daemon = Daemon::start(dir, "slicer", "steady-slicer", &slicer_args);
    wait_listening(slicer, "the slicer")?;
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let host =
        serde_json::json!({ "host": { "id": "bun", "ingress_addr": bun.to_string(), "api_addr": "127.0.0.1:9" } });
    http.post(format!("http://{slicer}/v1/hosts/register")).json(&host).send()?.error_for_status()?;
    let app = serde_json::json!({ "host_id": "bun", "version": 1 });
    http.put(format!("http://{slicer}/v1/apps/hello")).json(&app).send()?.error_for_status()?;
    let lb_data = dir.join("lb").display().to_string();
    let lb_args: Vec<String> = [
        "--public",
        &public.to_string(),
        "--private",
        &private.to_string(),
        "--slicer",
        &slicer.to_string(),
        "--domain",
        "localhost",
        "--data",
        &lb_data,
        "--threads",
        threads,
        // One load generator on one address: the per-client rate limit would cap the figure.
        "--client-requests-per-second-max",
        "1000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lb_daemon = Daemon::start(dir, "lb", "steady-lb", &lb_args);
    wait_listening(public, "the LB")?;
    Ok((public, vec![lb_daemon, slicer_daemon]))
}

/// `a`'s req/s over `b`'s in each round: measured minutes apart at most, so the machine's slow
/// spells weigh on both alike.
fn paired_ratios(a: &Measured, b: &Measured) -> String {
    let ratios: Vec<f64> = a.rounds_requests_per_s.iter().zip(&b.rounds_requests_per_s).map(|(a, b)| a / b).collect();
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    match sorted.get(sorted.len() / 2) {
        Some(median) if sorted.len() > 1 => format!("{} (median {median:.2}×)", listed.join(", ")),
        _ => listed.join(", "),
    }
}

/// The machine's CPU time per request the full path may spend to reach half of Bun direct's
/// req/s, measured against what it spends. At that rate `cores` give `cores / rate` of CPU per
/// request; the load generator takes what it took on the full path (its cost follows the
/// requests, not the target), and the rest is all the proxies and the app may spend, at
/// most (the kernel's own work outside any process comes out of it too). `others` are paths
/// of the same shape to set beside it (the nginx path).
fn full_path_budget(bun: &Measured, full: &Measured, others: &[&Measured], cores: usize) -> String {
    assert!(cores > 0, "a machine has a core");
    let half_rate = 0.5 * bun.requests_per_s;
    let machine_us = cores as f64 * 1e6 / half_rate;
    let budget_us = machine_us - full.load_cpu_us_per_request;
    let spent = |m: &Measured| {
        let proxies_us = m.proxy_cpu_us_per_request.unwrap_or(0.0);
        format!(
            "{} {:.0} µs (proxies {proxies_us:.0} + app {:.0})",
            m.target,
            proxies_us + m.app_cpu_us_per_request,
            m.app_cpu_us_per_request
        )
    };
    let spenders: Vec<String> = std::iter::once(full).chain(others.iter().copied()).map(spent).collect();
    format!(
        "at 0.5× Bun direct ({half_rate:.0} req/s) {cores} cores give {machine_us:.1} µs per request; wrk takes \
         {:.1} of them, leaving at most {budget_us:.1} µs for the proxies and the app; spent: {}",
        full.load_cpu_us_per_request,
        spenders.join(", ")
    )
}

fn report(dir: &Path, options: &Options, results: &[Measured]) -> anyhow::Result<Report> {
    let mut report = Report::new("proxies", dir, Recorded::default(), &[]);
    report.phases.clear();
    report.fact(
        "load",
        format!(
            "wrk, 2 threads, {} s per run after 2 s of warm-up, {} rounds (every target once a round, \
             in turn; each figure the median over the rounds); proxies with {} threads",
            options.duration_s, options.rounds, options.threads
        ),
    );
    let mut table = String::from(
        "| target | connections | req/s | req/s per round | p50 ms | p99 ms | p99.9 ms | errors | ratio | \
         proxy CPU µs/req | app CPU µs/req | wrk CPU µs/req | machine CPU µs/req |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &connections in &options.connections {
        let of = |name: &str| results.iter().find(|m| m.target == name && m.connections == connections);
        let (bun, nginx) = (of(Target::Bun.name()), of(Target::Nginx.name()));
        for m in results.iter().filter(|m| m.connections == connections) {
            let ratio = match (m.target.as_str(), nginx, bun) {
                ("steady-lb" | "haproxy", Some(nginx), _) => {
                    format!("{:.2}× nginx", m.requests_per_s / nginx.requests_per_s)
                }
                ("steady full path" | "full path h2c" | "nginx → nginx", _, Some(bun)) => {
                    format!("{:.2}× bun direct", m.requests_per_s / bun.requests_per_s)
                }
                _ => String::new(),
            };
            let cpu = m.proxy_cpu_us_per_request.map_or("-".into(), |us| format!("{us:.0}"));
            let per_round: Vec<String> = m.rounds_requests_per_s.iter().map(|r| format!("{r:.0}")).collect();
            table += &format!(
                "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {ratio} | {cpu} | {:.0} | {:.0} | {:.0} |\n",
                m.target,
                m.connections,
                m.requests_per_s,
                per_round.join(" / "),
                m.p50_ms,
                m.p99_ms,
                m.p999_ms,
                m.errors,
                m.app_cpu_us_per_request,
                m.load_cpu_us_per_request,
                m.machine_cpu_us_per_request
            );
        }
        if let (Some(lb), Some(nginx)) = (of(Target::Lb.name()), nginx) {
            report.fact(format!("c={connections}: steady-lb ÷ nginx req/s, round by round"), paired_ratios(lb, nginx));
            report.check(
                format!(
                    "c={connections}: steady-lb {:.2}× nginx req/s (≥ 1.0), p99 {:.2} vs {:.2} ms",
                    lb.requests_per_s / nginx.requests_per_s,
                    lb.p99_ms,
                    nginx.p99_ms
                ),
                lb.requests_per_s >= nginx.requests_per_s && lb.p99_ms <= nginx.p99_ms,
            );
        }
        if let (Some(bun), Some(full)) = (bun, of(Target::Full.name())) {
            let others: Vec<&Measured> = of(Target::NginxPath.name()).into_iter().collect();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            report.fact(
                format!("c={connections}: the full path's CPU budget"),
                full_path_budget(bun, full, &others, cores),
            );
        }
        if let (Some(full), Some(path)) = (of(Target::Full.name()), of(Target::NginxPath.name())) {
            report.fact(
                format!("c={connections}: steady full path ÷ nginx → nginx req/s, round by round"),
                paired_ratios(full, path),
            );
        }
        if let (Some(full), Some(bun)) = (of(Target::Full.name()), bun) {
            report.check(
                format!(
                    "c={connections}: the full path {:.2}× Bun direct req/s (≥ 0.5)",
                    full.requests_per_s / bun.requests_per_s
                ),
                full.requests_per_s >= 0.5 * bun.requests_per_s,
            );
        }
        let errors: u64 = results.iter().filter(|m| m.connections == connections).map(|m| m.errors).sum();
        report.check(format!("c={connections}: errors over all targets: {errors}"), errors == 0);
    }
    report.table = Some(table);
    report.write()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(requests_per_s: f64, p99_ms: f64, errors: u64) -> Measured {
        Measured {
            target: "nginx".into(),
            connections: 32,
            requests_per_s,
            rounds_requests_per_s: vec![requests_per_s],
            p50_ms: 1.0,
            p99_ms,
            p999_ms: 5.0,
            errors,
            proxy_cpu_us_per_request: Some(requests_per_s / 1000.0),
            app_cpu_us_per_request: 10.0,
            load_cpu_us_per_request: 12.0,
            machine_cpu_us_per_request: 40.0,
        }
    }

    #[test]
    fn each_figure_is_its_own_median_and_errors_add_up() {
        let rounds = [round(50_000.0, 3.0, 0), round(40_000.0, 1.0, 2), round(45_000.0, 2.0, 1)];
        let median = Measured::median_of(&rounds);
        assert_eq!(median.requests_per_s, 45_000.0);
        assert_eq!(median.rounds_requests_per_s, vec![50_000.0, 40_000.0, 45_000.0]);
        assert_eq!(median.p99_ms, 2.0);
        assert_eq!(median.proxy_cpu_us_per_request, Some(45.0));
        assert_eq!(median.errors, 3);
    }

    #[test]
    fn ratios_pair_the_rounds() {
        let mut lb = Measured::median_of(&[round(50_000.0, 1.0, 0), round(44_000.0, 1.0, 0)]);
        let nginx = Measured::median_of(&[round(40_000.0, 1.0, 0), round(44_000.0, 1.0, 0)]);
        assert_eq!(paired_ratios(&lb, &nginx), "1.25×, 1.00× (median 1.25×)");
        lb.rounds_requests_per_s.pop();
        assert_eq!(paired_ratios(&lb, &nginx), "1.25×");
    }

    #[test]
    fn nginx_and_the_lb_take_turns_going_first() {
        let names = ["bun direct", "haproxy", "nginx", "steady-lb", "steady full path"];
        assert_eq!(round_order(&names, 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(round_order(&names, 2), vec![0, 1, 3, 2, 4]);
        assert_eq!(round_order(&names, 3), vec![0, 1, 2, 3, 4]);
        assert_eq!(round_order(&names[..3], 2), vec![0, 1, 2], "nothing to swap without the LB");
    }

    #[test]
    fn the_budget_is_what_half_of_bun_directs_rate_leaves_after_the_load_generator() {
        let bun = Measured { requests_per_s: 72_000.0, ..round(72_000.0, 1.0, 0) };
        let mut full = round(26_000.0, 2.0, 0);
        full.target = "steady full path".into();
        (full.proxy_cpu_us_per_request, full.app_cpu_us_per_request, full.load_cpu_us_per_request) =
            (Some(46.0), 14.0, 14.0);
        let budget = full_path_budget(&bun, &full, &[], 2);
        // 2 cores at 36,000 req/s: 55.6 µs per request, 14 of them wrk's.
        assert!(budget.contains("(36000 req/s) 2 cores give 55.6 µs"), "{budget}");
        assert!(budget.contains("leaving at most 41.6 µs"), "{budget}");
        assert!(budget.ends_with("steady full path 60 µs (proxies 46 + app 14)"), "{budget}");
    }

    #[test]
    fn the_app_is_its_root_and_everything_under_it() {
        // A process table written for the test: 10 → 11, 12 → 13; 20 is someone else's.
        let table: Vec<ProcessCpu> = [(10, 1), (11, 10), (12, 10), (13, 12), (20, 1)]
            .into_iter()
            .map(|(pid, parent)| ProcessCpu { pid, parent, group: pid, cpu_s: 1.0 })
            .collect();
        let mut pids: Vec<u32> = under(&table, 10).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12, 13]);
        assert!(under(&table, 99).is_empty(), "a process that is gone has nothing under it");
    }
}
