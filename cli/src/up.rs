//! `steady up`: the whole platform on one machine, in the foreground.
//!
//! Starts one slicer, N host daemons on 127.0.0.2, 127.0.0.3, … and one load balancer, each as
//! a child process in its own process group with its log under `<data>/logs/`. Ctrl-C (or any
//! child dying) stops them all in reverse order: LB, hosts (which stop their apps), slicer; a
//! second Ctrl-C kills what is still running. A child that outlives `steady up` itself gets
//! SIGTERM from the kernel (`PR_SET_PDEATHSIG`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::exit::{Failure, USAGE};

/// Longest a daemon may take to become ready.
const READY_TIMEOUT_MS: u64 = 20_000;
const READY_POLL_MS: u64 = 20;
/// How long a daemon gets to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT_MS: u64 = 10_000;
/// Most hosts `steady up` will start (each needs its own loopback address).
const HOSTS_MAX: u8 = 32;

/// Flags of `steady up`.
#[derive(Debug, clap::Args)]
#[command(after_help = "The API listens on --api (global flag, default 127.0.0.1:8081).\n\
Apps answer at http://<name>.<domain>:<port of --http>/.")]
pub struct UpArgs {
    /// Public listener for app traffic.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Data directory for every daemon; a second run on the same directory serves the same apps.
    #[arg(long, default_value = ".steady")]
    data: PathBuf,
    /// Number of host daemons (on 127.0.0.2, 127.0.0.3, …).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=HOSTS_MAX as i64))]
    hosts: u8,
    /// Domain apps answer under.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Deploy these app folders once the platform is ready (repeatable).
    #[arg(long)]
    deploy: Vec<PathBuf>,
    /// Keep bundles and database replicas in the blob store this YAML file describes (an S3
    /// bucket: `kind: s3`, `bucket`, `endpoint`, `path_style`, credentials) instead of
    /// `<data>/storage`.
    #[arg(long)]
    storage_config: Option<PathBuf>,
}

struct Daemon {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
    /// Whether it may be SIGKILLed at once on a second Ctrl-C. Not a host daemon: its app
    /// sandboxes are process groups of their own, which it kills as it stops (quickly), and
    /// which a SIGKILLed hostd leaves to the kernel's parent-death signal, which a sandbox
    /// that was just starting can miss.
    hurry_kill: bool,
}

/// Runs the platform until Ctrl-C or a daemon dies.
pub async fn run(args: UpArgs, api: &str) -> anyhow::Result<()> {
    let api: SocketAddr = api
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| Failure::new(USAGE, "usage", format!("--api {api:?} must be an ip:port for `steady up`")))?;
    for (flag, addr) in [("--http", args.http), ("--api", api)] {
        std::net::TcpListener::bind(addr).map_err(|e| {
            Failure::new(USAGE, "address_in_use", format!("cannot listen on {addr} ({e}); pick another with {flag}"))
        })?;
    }
    std::fs::create_dir_all(args.data.join("logs"))?;
    let data = args.data.canonicalize()?;
    let env = Environment::find()?;
    // Listened for before anything starts: a Ctrl-C that comes while the daemons start or the
    // examples deploy stops everything too, rather than killing `steady up` alone (the
    // default action) or being lost (a shell starts background jobs with SIGINT ignored).
    let mut stop = StopSignals::listen()?;
    let mut daemons = Vec::new();
    let started = tokio::select! {
        started = start_all(&args, &data, api, &env, &mut daemons) => started.map(|()| None),
        reason = stop.recv() => Ok(Some(reason)),
    };
    match started {
        Ok(None) => {}
        Ok(Some(reason)) => {
            eprintln!("stopping ({reason} while starting)");
            stop_all(&mut daemons, &mut stop).await;
            return Ok(());
        }
        Err(error) => {
            stop_all(&mut daemons, &mut stop).await;
            return Err(error);
        }
    }
    let port = if args.http.port() == 80 { String::new() } else { format!(":{}", args.http.port()) };
    eprintln!("steady is up: {} hosts, API on {api}, apps at http://<name>.{}{port}/", args.hosts, args.domain);
    eprintln!("logs in {}; press Ctrl-C to stop (twice to hurry)", data.join("logs").display());
    let admin = std::fs::read_to_string(data.join("slicer").join("admin.token"))
        .context("reading the admin token the slicer made")?
        .trim()
        .to_owned();
    let setup = async {
        if let Err(error) = sign_in(api, &admin).await {
            eprintln!("could not save the admin token in the config file: {error:#}");
        }
        if let Err(error) = deploy_examples(&args.deploy, api, &admin).await {
            crate::exit::report(&error, false);
        }
    };
    let reason = tokio::select! {
        () = setup => wait_for_stop(&mut daemons, &mut stop).await,
        reason = stop.recv() => reason.to_owned(),
    };
    eprintln!("stopping ({reason})");
    stop_all(&mut daemons, &mut stop).await;
    Ok(())
}

/// Paths handed to the daemons, resolved once.
struct Environment {
    path: String,
    bun: PathBuf,
    bwrap: PathBuf,
    litestream: PathBuf,
}

impl Environment {
    fn find() -> anyhow::Result<Self> {
        let missing = |what: &str| {
            Failure::new(crate::exit::FAILED, "missing_tool", format!("{what} not found: run scripts/setup.sh"))
        };
        let bun = crate::tools::find("bun").ok_or_else(|| missing("bun"))?;
        let bwrap = crate::tools::find("bwrap").ok_or_else(|| missing("bwrap (bubblewrap)"))?;
        let litestream = crate::tools::find("litestream").ok_or_else(|| missing("litestream"))?;
        Ok(Self { path: std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()), bun, bwrap, litestream })
    }
}

async fn start_all(
    args: &UpArgs,
    data: &Path,
    api: SocketAddr,
    env: &Environment,
    daemons: &mut Vec<Daemon>,
) -> anyhow::Result<()> {
    let ready = data.join("slicer.ready");
    let slicer_args = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data".into(),
        path(&data.join("slicer")),
        "--ready-file".into(),
        path(&ready),
    ];
    let slicer_ready = start(daemons, "slicer", "steady-slicer", slicer_args, data, env, Some(&ready)).await?;
    let slicer_api = slicer_ready["api"].as_str().context("slicer ready file has no api address")?.to_owned();
    let secrets_key = secrets_key_file(data)?;
    for index in 1..=args.hosts {
        let id = format!("host-{index}");
        let ip = format!("127.0.0.{}", index + 1);
        let ready = data.join(format!("{id}.ready"));
        let storage = match &args.storage_config {
            Some(file) => vec!["--storage-config".into(), path(file)],
            None => vec!["--storage-dir".into(), path(&data.join("storage"))],
        };
        let host_args = vec![
            "--id".into(),
            id.clone(),
            "--data".into(),
            path(&data.join("hosts").join(&id)),
            "--ingress".into(),
            format!("{ip}:0"),
            "--api".into(),
            format!("{ip}:0"),
            "--slicer".into(),
            slicer_api.clone(),
            "--ready-file".into(),
            path(&ready),
            "--secrets-key-file".into(),
            path(&secrets_key),
        ];
        let host_args = host_args.into_iter().chain(storage).collect();
        start(daemons, &id, "steady-hostd", host_args, data, env, Some(&ready)).await?;
    }
    let lb_args = vec![
        "--public".into(),
        args.http.to_string(),
        "--private".into(),
        api.to_string(),
        "--slicer".into(),
        slicer_api,
        "--domain".into(),
        args.domain.clone(),
        "--data".into(),
        path(&data.join("lb")),
    ];
    start(daemons, "lb", "steady-lb", lb_args, data, env, None).await?;
    wait_lb_ready(daemons, api).await
}

/// The cluster key for app environment variables, `<data>/secrets.key`: made once (32 random
/// bytes as hex, mode 0600) and given to every host, so any host can open what another sealed.
fn secrets_key_file(data: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let file = data.join("secrets.key");
    if file.exists() {
        return Ok(file);
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut key)).context("reading /dev/urandom")?;
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("creating {}", file.display()))?;
    out.write_all(format!("{text}\n").as_bytes())?;
    out.sync_all()?;
    Ok(file)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Starts one daemon and, given a ready file, waits for it and returns its content.
async fn start(
    daemons: &mut Vec<Daemon>,
    name: &str,
    binary: &str,
    args: Vec<String>,
    data: &Path,
    env: &Environment,
    ready: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let program = crate::tools::sibling(binary)?;
    if let Some(ready) = ready {
        let _ = std::fs::remove_file(ready);
    }
    let log = data.join("logs").join(format!("{name}.log"));
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let mut command = tokio::process::Command::new(&program);
    command.args(&args).env_clear().env("PATH", &env.path).env("STEADY_BUN", &env.bun).env("STEADY_BWRAP", &env.bwrap);
    command.env("STEADY_LITESTREAM", &env.litestream);
    if let Ok(level) = std::env::var("STEADY_LOG") {
        command.env("STEADY_LOG", level);
    }
    command.stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file).process_group(0);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("starting {}", program.display()))?;
    let hurry_kill = binary != "steady-hostd";
    daemons.push(Daemon { name: name.to_owned(), child, log, hurry_kill });
    let Some(ready) = ready else {
        return Ok(serde_json::Value::Null);
    };
    let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            return Ok(serde_json::from_str(&text)?);
        }
        check_alive(daemons.last_mut().expect("just pushed"))?;
        anyhow::ensure!(Instant::now() < deadline, "{name} was not ready within {READY_TIMEOUT_MS} ms");
        tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
}

fn check_alive(daemon: &mut Daemon) -> anyhow::Result<()> {
    if let Some(status) = daemon.child.try_wait()? {
        let tail = std::fs::read_to_string(&daemon.log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        anyhow::bail!(
            "{} exited ({status}) while starting; its log ({}) ends:\n{}",
            daemon.name,
            daemon.log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

async fn wait_lb_ready(daemons: &mut [Daemon], api: SocketAddr) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(1_000)).build()?;
    let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
    loop {
        let ready = http.get(format!("http://{api}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        check_alive(daemons.last_mut().expect("lb started"))?;
        anyhow::ensure!(Instant::now() < deadline, "the load balancer was not ready within {READY_TIMEOUT_MS} ms");
        tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
}

/// Saves the admin token for `api` in the config file unless a token that works is saved
/// there already, so `steady deploy` and friends work at once on this machine.
async fn sign_in(api: SocketAddr, admin: &str) -> anyhow::Result<()> {
    let mut file = crate::config::ConfigFile::load()?;
    let api = api.to_string();
    if let Some(saved) = file.token_for(&api) {
        if crate::api::Client::new(&api, Some(saved))?.whoami().await.is_ok() {
            return Ok(());
        }
    }
    file.tokens.insert(crate::config::base_url(&api), admin.to_owned());
    file.api.get_or_insert_with(|| crate::config::base_url(&api));
    let path = file.save()?;
    eprintln!("signed in to {api} as admin (token saved in {})", path.display());
    Ok(())
}

async fn deploy_examples(paths: &[PathBuf], api: SocketAddr, token: &str) -> anyhow::Result<()> {
    let client = crate::api::Client::new(&api.to_string(), Some(token))?;
    for path in paths {
        let built = crate::bundle::build(path, None)?;
        let deployed = client.deploy(&built.name, built.archive, None).await?;
        eprintln!(
            "deployed {} version {} on {}:",
            deployed.result.name, deployed.result.version, deployed.result.host_id
        );
        println!("{}", deployed.url);
    }
    Ok(())
}

/// Ctrl-C and SIGTERM, the two ways to stop `steady up`.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening: from here on neither signal ends the process by itself.
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
        let terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        Ok(Self { interrupt, terminate })
    }

    /// The next one to arrive (or to have arrived since [`StopSignals::listen`]), by name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Waits for Ctrl-C, SIGTERM or any daemon exiting; says which.
async fn wait_for_stop(daemons: &mut [Daemon], stop: &mut StopSignals) -> String {
    let any_exit = async {
        let waits = daemons.iter_mut().map(|d| Box::pin(async move { (d.name.clone(), d.child.wait().await) }));
        let ((name, status), _, _) = futures::future::select_all(waits.collect::<Vec<_>>()).await;
        format!("{name} exited: {}", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))
    };
    tokio::select! {
        reason = stop.recv() => reason.to_owned(),
        reason = any_exit => reason,
    }
}

/// Stops daemons in reverse start order: SIGTERM, bounded wait, then SIGKILL. A second Ctrl-C
/// (or SIGTERM) while they stop kills the rest at once, as one expects of a second Ctrl-C,
/// but for host daemons, which still stop their apps (they take well under a second).
async fn stop_all(daemons: &mut Vec<Daemon>, stop: &mut StopSignals) {
    let mut hurry = false;
    while let Some(mut daemon) = daemons.pop() {
        let Some(pid) = daemon.child.id() else {
            continue;
        };
        if !(hurry && daemon.hurry_kill) && stop_one(&mut daemon, pid, stop, &mut hurry).await {
            continue;
        }
        signal_group(pid, libc::SIGKILL);
        let _ = daemon.child.wait().await;
    }
}

/// SIGTERM to `daemon` (leading process group `pid`), then waits for it to exit within the
/// stop bound, or until a second Ctrl-C (which sets `hurry`) for a daemon that may be killed
/// then. Whether it exited.
async fn stop_one(daemon: &mut Daemon, pid: u32, stop: &mut StopSignals, hurry: &mut bool) -> bool {
    signal_group(pid, libc::SIGTERM);
    let bound = tokio::time::sleep(Duration::from_millis(STOP_TIMEOUT_MS));
    tokio::pin!(bound);
    loop {
        tokio::select! {
            _ = daemon.child.wait() => return true,
            reason = stop.recv(), if !*hurry => {
                eprintln!("{reason} again: killing what is still running (host daemons still stop their apps)");
                *hurry = true;
                if daemon.hurry_kill {
                    return false;
                }
            }
            () = &mut bound => {
                eprintln!("{} did not stop within {STOP_TIMEOUT_MS} ms; killing it", daemon.name);
                return false;
            }
        }
    }
}

/// Sends `signal` to the process group our child `pid` leads.
fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: signalling our own child's process group.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}
