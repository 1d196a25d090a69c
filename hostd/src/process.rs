//! One app process: a sandbox spawned ahead of need, handed an app, supervised, stopped.
//!
//! A [`Sandbox`] is bwrap running Bun running the runner, waiting on stdin for an app. It says
//! `warm` on fd 3 once Bun is up; [`Sandbox::assign`] links the bundle into the sandbox
//! directory, renames the app's data directory into it, sends the app's environment and waits
//! for `ready [schedules]` on fd 3 — notifications, never polls. The result is an
//! [`AppProcess`]. When the process exits (asked to, or not), its data directory is renamed
//! back before anyone is told it exited, so the next start of the app finds it where it
//! belongs; the `home` file in the sandbox directory lets a restarted hostd do the same after
//! a crash ([`recover`]). hostd always holds the pid of the sandbox's outer `bwrap`; killing
//! that process group ends the app too (`--die-with-parent` inside, `PR_SET_PDEATHSIG`
//! outside). bwrap sets up the inner half only as it starts, so what a sandbox ended in its
//! first milliseconds left running is found and ended (`crate::leftovers`), here and by the
//! next hostd after a crash: no stop, crash or hostd death leaves an orphan.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::cgroup::{AppGroup, Events};
use crate::config::LOG_LINE_BYTES_MAX;
use crate::log::AppLog;
use crate::sandbox::{Spec, HOST_APP_DIR, HOST_RUN_DIR, RUN_DATA_NAME, SOCKET_NAME};

/// The file descriptor number the runner reports readiness on.
const READY_FD: i32 = 3;
/// Longest readiness line: `ready` and the app's schedules as JSON.
const READY_LINE_BYTES_MAX: u64 = 16 * 1024;
/// How long a stopped process gets to exit after SIGKILL (and its exit hook, a final sync, to
/// finish) before we stop waiting.
const STOP_WAIT_MS: u64 = 30_000;
/// File in a sandbox directory naming where its data directory goes back to.
const HOME_FILE: &str = "home";
/// Most sandbox directories looked at when recovering after a crash.
const RECOVER_DIRS_MAX: usize = 100_000;

/// Why an app did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not spawn the sandbox: {0}")]
    Spawn(std::io::Error),
    #[error("could not hand the app to its sandbox: {0}")]
    Assign(std::io::Error),
    #[error("the app exited before it was ready ({0})")]
    Exited(String),
    #[error("the app was not ready within {0} ms")]
    Timeout(u64),
    #[error("the app's data is not available: {0}")]
    Data(String),
}

/// Work to finish after the process exited and before its data directory moves (a final
/// replication sync).
pub type ExitHook = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// Who a sandbox works for, once it has an app: where its output and exit go, and where its
/// data directory returns when it ends.
struct Tenant {
    log: Arc<AppLog>,
    label: String,
    /// The data directory's place outside the sandbox; `None` for a throw-away copy.
    data_home: Option<PathBuf>,
    on_exit: Option<ExitHook>,
}

#[derive(Default)]
struct Occupancy {
    tenant: Option<Tenant>,
    /// Set by the exit watcher: nothing may be moved into the sandbox directory any more.
    ended: bool,
    /// hostd killed the sandbox on purpose (an unassigned one at a stop is no news).
    killed: bool,
}

/// What the output pumps and the exit watcher share with the owner of a sandbox.
struct Shared {
    dir: PathBuf,
    pid: i32,
    /// Bun said `warm`: bwrap's own setup is over, so the sandbox's inner processes die with
    /// the outer one (`steady_hostd::leftovers`).
    warm: AtomicBool,
    occupancy: Mutex<Occupancy>,
}

impl Shared {
    fn occupancy(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        self.occupancy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_line(&self, stream: &str, line: &str) {
        match &self.occupancy().tenant {
            Some(tenant) => tenant.log.line(stream, line),
            None => tracing::warn!(pid = self.pid, stream, line = line.trim_end(), "output of an unassigned sandbox"),
        }
    }

    /// After the process exited: return the data, drop the directory, say why it ended.
    fn end(&self, description: &str) {
        let mut occupancy = self.occupancy();
        occupancy.ended = true;
        let data = self.dir.join(HOST_RUN_DIR).join(RUN_DATA_NAME);
        if let Some(home) = occupancy.tenant.as_ref().and_then(|t| t.data_home.as_ref()) {
            if let Err(error) = std::fs::rename(&data, home) {
                tracing::error!(%error, from = %data.display(), to = %home.display(), "returning app data failed");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(%error, dir = %self.dir.display(), "removing a sandbox directory");
        }
        match &occupancy.tenant {
            Some(tenant) => tenant.log.line("steady", &format!("{} exited: {description}", tenant.label)),
            None if occupancy.killed => tracing::debug!(pid = self.pid, description, "a warm sandbox stopped"),
            None => tracing::warn!(pid = self.pid, description, "an unassigned sandbox exited"),
        }
    }
}

/// A sandbox with Bun running, waiting for an app.
pub struct Sandbox {
    shared: Arc<Shared>,
    stdin: tokio::process::ChildStdin,
    ready: BufReader<tokio::net::unix::pipe::Receiver>,
    exited: watch::Receiver<Option<String>>,
    group: Option<Arc<AppGroup>>,
    /// Milliseconds from spawn until Bun was up and waiting.
    pub boot_ms: u64,
    /// Whether the app that gets this sandbox waited for its boot (it was not warm).
    pub booted_on_demand: bool,
}

/// What a sandbox needs to become an app.
pub struct Assignment {
    /// The unpacked bundle (its files are hard-linked into the sandbox, which sees them
    /// read-only).
    pub bundle_dir: PathBuf,
    /// The data directory, renamed into the sandbox for as long as the process lives.
    pub data_dir: PathBuf,
    /// Whether the data directory returns to `data_dir` afterwards (a trial's copy does not).
    pub keep_data: bool,
    /// The app's environment, on top of the sandbox's fixed variables.
    pub env: Vec<(String, String)>,
    pub version: u64,
    pub log: Arc<AppLog>,
    /// How the process is named in the app's log ("version 3", "version 4 (trial)").
    pub label: String,
    /// Runs after the process exits, before the data directory moves back.
    pub on_exit: Option<ExitHook>,
}

/// A live (or just exited) app process.
pub struct AppProcess {
    shared: Arc<Shared>,
    /// Host-side path of the app's Unix socket.
    pub socket: PathBuf,
    /// The version this process runs.
    pub version: u64,
    exited: watch::Receiver<Option<String>>,
    /// Milliseconds from asking for a sandbox to listening: the sandbox's share of a cold
    /// start (its boot counts only when the app waited for it).
    pub start_ms: u64,
    /// Milliseconds the sandbox took to boot (zero-cost to the request when it was warm).
    pub boot_ms: u64,
    /// When the process was handed its app.
    pub spawned_at: Instant,
    /// Set once hostd decided to stop it, so its exit is not taken for a crash.
    stop_requested: AtomicBool,
    /// The cgroup holding its limits, if the host has cgroups.
    group: Option<Arc<AppGroup>>,
    /// Cron expressions the app declared when it became ready.
    pub schedules: Vec<String>,
}

impl Sandbox {
    /// Spawns a sandbox in the (empty) directory `spec.sandbox_dir` and waits until Bun is up.
    /// `group`, when given, holds the kernel limits the process runs under.
    pub async fn spawn(spec: &Spec, group: Option<AppGroup>, timeout_ms: u64) -> Result<Self, StartError> {
        for sub in [HOST_APP_DIR, HOST_RUN_DIR] {
            std::fs::create_dir_all(spec.sandbox_dir.join(sub)).map_err(StartError::Spawn)?;
        }
        let group = group.map(Arc::new);
        let (ready_reader, ready_writer) = std::io::pipe().map_err(StartError::Spawn)?;
        let mut command = tokio::process::Command::new(&spec.bwrap);
        command.args(spec.args()).env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.process_group(0).kill_on_drop(true);
        let writer_fd = ready_writer.as_raw_fd();
        let joining = group.clone();
        let hostd = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls (dup2, prctl, getppid, open/write) between fork
        // and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(group) = &joining {
                    group.join_self()?;
                }
                if libc::dup2(writer_fd, READY_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                crate::leftovers::die_with_parent(hostd)
            });
        }
        let spawned = Instant::now();
        let mut child = command.spawn().map_err(StartError::Spawn)?;
        drop(ready_writer);
        let pid = child.id().map(|p| p as i32).ok_or_else(|| StartError::Exited("no pid".into()))?;
        let shared = Arc::new(Shared {
            dir: spec.sandbox_dir.clone(),
            pid,
            warm: AtomicBool::new(false),
            occupancy: Mutex::new(Occupancy::default()),
        });
        pump(child.stdout.take(), shared.clone(), "out");
        pump(child.stderr.take(), shared.clone(), "err");
        let stdin = child.stdin.take().ok_or_else(|| StartError::Exited("no stdin".into()))?;
        let (exit_sender, exited) = watch::channel(None);
        let exit_shared = shared.clone();
        let exit_group = group.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let mut description = describe(status);
            if !exit_shared.warm.load(Ordering::Acquire) {
                end_leftovers(&exit_shared).await;
            }
            if let Some(group) = exit_group {
                description += &limit_events(group.events());
                group.remove().await;
            }
            let hook = exit_shared.occupancy().tenant.as_mut().and_then(|t| t.on_exit.take());
            if let Some(hook) = hook {
                hook().await;
            }
            exit_shared.end(&description);
            let _ = exit_sender.send(Some(description));
        });
        let receiver =
            tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(ready_reader)).map_err(StartError::Spawn)?;
        let mut sandbox =
            Self { shared, stdin, ready: BufReader::new(receiver), exited, group, boot_ms: 0, booted_on_demand: false };
        let line = sandbox.read_line(timeout_ms).await?;
        if line.trim_end() != "warm" {
            sandbox.kill_and_wait().await;
            return Err(StartError::Exited(format!("unexpected first line from the runner: {line:?}")));
        }
        sandbox.shared.warm.store(true, Ordering::Release);
        sandbox.boot_ms = spawned.elapsed().as_millis() as u64;
        Ok(sandbox)
    }

    /// Is the sandbox still running?
    pub fn is_alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// A watch that turns `Some` when the sandbox has exited and hostd has dealt with it.
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    /// The sandbox's process id (and process group id).
    pub fn pid(&self) -> u32 {
        self.shared.pid as u32
    }

    /// Hands the sandbox its app and waits until the app listens.
    pub async fn assign(mut self, assignment: Assignment, timeout_ms: u64) -> Result<AppProcess, StartError> {
        let assigned = Instant::now();
        let Assignment { bundle_dir, data_dir, keep_data, env, version, log, label, on_exit } = assignment;
        log.line("steady", &format!("{label} starting (pid {})", self.shared.pid));
        link_tree(&bundle_dir, &self.shared.dir.join(HOST_APP_DIR)).map_err(StartError::Assign)?;
        self.move_data_in(
            Tenant {
                log: log.clone(),
                label: label.clone(),
                data_home: keep_data.then_some(data_dir.clone()),
                on_exit,
            },
            &data_dir,
        )?;
        let mut message = serde_json::to_vec(
            &serde_json::json!({ "env": env.into_iter().collect::<std::collections::BTreeMap<_, _>>() }),
        )
        .expect("a map of strings serialises");
        message.push(b'\n');
        let sent = async {
            self.stdin.write_all(&message).await?;
            self.stdin.flush().await
        };
        if let Err(error) = sent.await {
            self.kill_and_wait().await;
            return Err(StartError::Assign(error));
        }
        let line = self.read_line(timeout_ms).await?;
        let Some(schedules) = line.strip_prefix("ready") else {
            self.kill_and_wait().await;
            return Err(StartError::Exited(format!("unexpected line from the runner: {line:?}")));
        };
        let schedules = match schedules.trim() {
            "" => Vec::new(),
            text => match serde_json::from_str(text) {
                Ok(schedules) => schedules,
                Err(error) => {
                    self.kill_and_wait().await;
                    return Err(StartError::Exited(format!("bad readiness line: {error}")));
                }
            },
        };
        let mut start_ms = assigned.elapsed().as_millis() as u64;
        if self.booted_on_demand {
            start_ms += self.boot_ms;
        }
        let how = if self.booted_on_demand { "a sandbox started for it" } else { "a warm sandbox" };
        log.line("steady", &format!("{label} listening after {start_ms} ms ({how})"));
        Ok(AppProcess {
            socket: self.shared.dir.join(HOST_RUN_DIR).join(SOCKET_NAME),
            shared: self.shared,
            version,
            exited: self.exited,
            start_ms,
            boot_ms: self.boot_ms,
            spawned_at: assigned,
            stop_requested: AtomicBool::new(false),
            group: self.group,
            schedules,
        })
    }

    /// Records the tenant and renames its data in, unless the process already ended (then the
    /// exit watcher would never move the data back).
    fn move_data_in(&self, tenant: Tenant, data_dir: &Path) -> Result<(), StartError> {
        let mut occupancy = self.shared.occupancy();
        if occupancy.ended {
            return Err(StartError::Exited("the sandbox ended before it got its app".into()));
        }
        if !data_dir.is_dir() {
            let missing = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no data directory at {}", data_dir.display()),
            );
            return Err(StartError::Assign(missing));
        }
        if let Some(home) = &tenant.data_home {
            write_synced(&self.shared.dir.join(HOME_FILE), home.as_os_str().as_encoded_bytes())
                .map_err(StartError::Assign)?;
        }
        std::fs::rename(data_dir, self.shared.dir.join(HOST_RUN_DIR).join(RUN_DATA_NAME))
            .map_err(StartError::Assign)?;
        occupancy.tenant = Some(tenant);
        Ok(())
    }

    /// Reads one line from the readiness pipe within `timeout_ms`; an error if the process
    /// ended or timed out (and then it is killed).
    async fn read_line(&mut self, timeout_ms: u64) -> Result<String, StartError> {
        let mut line = String::new();
        // Bounded: the app's own code could write to fd 3 before the runner does.
        let mut bounded = (&mut self.ready).take(READY_LINE_BYTES_MAX);
        let read = bounded.read_line(&mut line);
        let outcome = tokio::time::timeout(Duration::from_millis(timeout_ms), read).await;
        drop(bounded);
        match outcome {
            Ok(Ok(n)) if n > 0 && line.ends_with('\n') => Ok(line),
            Ok(_) => {
                // The pipe closed without a line: the process is exiting; wait for its status.
                let reason = self.wait_exit().await.unwrap_or_else(|| "closed its readiness pipe".to_owned());
                self.kill_and_wait().await;
                Err(StartError::Exited(reason))
            }
            Err(_) => {
                self.kill_and_wait().await;
                Err(StartError::Timeout(timeout_ms))
            }
        }
    }

    async fn wait_exit(&self) -> Option<String> {
        let mut exited = self.exited.clone();
        let waited = tokio::time::timeout(Duration::from_millis(STOP_WAIT_MS), exited.wait_for(Option::is_some)).await;
        waited.ok().and_then(|r| r.ok()).and_then(|v| v.clone())
    }

    /// Kills the sandbox and waits (bounded) until it has exited and its data is back.
    pub async fn kill_and_wait(&self) {
        self.shared.occupancy().killed = true;
        kill_group(self.shared.pid);
        if self.wait_exit().await.is_none() {
            tracing::error!(pid = self.shared.pid, "sandbox did not exit after SIGKILL");
        }
    }
}

impl AppProcess {
    /// Where the app's data directory is while this process lives.
    pub fn data_dir(&self) -> PathBuf {
        self.shared.dir.join(HOST_RUN_DIR).join(RUN_DATA_NAME)
    }

    /// Is the process still running?
    pub fn is_alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// A watch that turns `Some` when the process has exited and hostd has dealt with it.
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    /// Did it exit without hostd asking it to?
    pub fn crashed(&self) -> bool {
        !self.is_alive() && !self.stop_requested.load(Ordering::Acquire)
    }

    /// Memory the app uses now, when it runs under a cgroup.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.group.as_ref().and_then(|g| g.memory_bytes())
    }

    /// CPU time the process has used so far, in seconds (where cgroups are available).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.group.as_ref().and_then(|g| g.cpu_seconds())
    }

    /// The sandbox's process id (and process group id).
    pub fn pid(&self) -> u32 {
        self.shared.pid as u32
    }

    /// Kills the sandbox and waits (bounded) until the process has exited and its data
    /// directory is back in place.
    pub async fn stop(&self) {
        self.stop_requested.store(true, Ordering::Release);
        kill_group(self.shared.pid);
        let mut exited = self.exited.clone();
        let waited = tokio::time::timeout(Duration::from_millis(STOP_WAIT_MS), exited.wait_for(Option::is_some)).await;
        if waited.is_err() {
            tracing::error!(pid = self.shared.pid, "app process did not exit after SIGKILL");
        }
    }
}

/// After a sandbox ended before Bun was up: ends what bwrap may have left running of it
/// (`steady_hostd::leftovers`), so nothing outlives the sandbox's directory.
async fn end_leftovers(shared: &Shared) {
    let dir = shared.dir.clone();
    let ended = tokio::task::spawn_blocking(move || crate::leftovers::kill_processes_naming(&dir)).await;
    match ended {
        Ok(Ok(0)) => {}
        // Often what it ends was about to die anyway (bwrap's own parent-death signal, a moment
        // behind): no news for an operator.
        Ok(Ok(ended)) => {
            tracing::debug!(pid = shared.pid, ended, "a sandbox ended while starting; ended what it left running")
        }
        Ok(Err(error)) => tracing::error!(pid = shared.pid, %error, "ending what a sandbox left running"),
        Err(error) => tracing::error!(pid = shared.pid, %error, "ending what a sandbox left running"),
    }
}

fn kill_group(pid: i32) {
    assert!(pid > 1, "never signal init or every process");
    // SAFETY: kill(2) on a process group we created; a stale group id fails with ESRCH.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Writes `bytes` to `path` and flushes them to disk before returning.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Hard-links every file under `from` into `to` (directories are created): instant, and safe
/// because the sandbox sees `to` read-only.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    mirror_tree(from, to, &|from, to| std::fs::hard_link(from, to))
}

/// Recreates the directories under `from` in `to` and calls `place` for each regular file
/// (links and other kinds are skipped, never followed).
pub(crate) fn mirror_tree(
    from: &Path,
    to: &Path,
    place: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            mirror_tree(&entry.path(), &to.join(entry.file_name()), place)?;
        } else if kind.is_file() {
            place(&entry.path(), &to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// After a crash of hostd: puts every data directory left in a sandbox directory under
/// `root` back where it belongs, then removes the sandbox directories. A data directory whose
/// home is taken (it should never be) is kept beside it with a `.recovered-<n>` suffix.
pub fn recover(root: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    for entry in entries.take(RECOVER_DIRS_MAX) {
        let dir = entry?.path();
        let data = dir.join(HOST_RUN_DIR).join(RUN_DATA_NAME);
        if let (Ok(home), true) = (std::fs::read(dir.join(HOME_FILE)), data.is_dir()) {
            let home = PathBuf::from(std::ffi::OsString::from(String::from_utf8_lossy(&home).into_owned()));
            let target = if home.exists() {
                let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let aside = PathBuf::from(format!("{}.recovered-{name}", home.display()));
                tracing::error!(home = %home.display(), aside = %aside.display(), "two copies of app data; keeping both");
                aside
            } else {
                home
            };
            std::fs::rename(&data, &target)?;
            tracing::info!(data = %target.display(), "app data recovered from a sandbox of an earlier run");
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Copies a stream into the log line by line. Lines are bounded by [`LOG_LINE_BYTES_MAX`]:
/// a longer run without a newline is logged in pieces, so an app cannot make hostd buffer
/// without end.
fn pump(stream: Option<impl AsyncRead + Unpin + Send + 'static>, shared: Arc<Shared>, name: &'static str) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match (&mut reader).take(LOG_LINE_BYTES_MAX as u64).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => shared.log_line(name, &String::from_utf8_lossy(&line)),
            }
        }
    });
}

/// What the kernel's limits did to the process, as a suffix for its exit line.
fn limit_events(events: Events) -> String {
    let mut text = String::new();
    if events.oom_kills > 0 {
        text += "; killed for exceeding its memory limit";
    }
    if events.pids_max_hits > 0 {
        text += &format!("; refused {} new processes at its process limit", events.pids_max_hits);
    }
    if events.cpu_throttled_periods > 0 {
        text += &format!("; CPU-throttled in {} periods", events.cpu_throttled_periods);
    }
    text
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => "unknown status".to_owned(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}
