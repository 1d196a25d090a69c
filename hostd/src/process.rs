//! One running app process: spawn inside the sandbox, wait for readiness, pump its output into
//! the app's log, notice its exit, stop it.
//!
//! Readiness is a notification, not a poll: the runner writes `ready` on fd 3 once its socket
//! listens. hostd always holds the pid of the sandbox's outer `bwrap`; killing that process
//! group ends the app too (`--die-with-parent` inside, `PR_SET_PDEATHSIG` outside), so no stop,
//! crash or hostd death leaves an orphan.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::watch;

use crate::cgroup::{AppGroup, Events};
use crate::config::LOG_LINE_BYTES_MAX;
use crate::log::AppLog;
use crate::sandbox::{Spec, SOCKET_NAME};

/// The file descriptor number the runner reports readiness on.
const READY_FD: i32 = 3;
/// Longest readiness line: `ready` and the app's schedules as JSON.
const READY_LINE_BYTES_MAX: u64 = 16 * 1024;
/// How long a stopped process gets to exit after SIGKILL before we stop waiting.
const STOP_WAIT_MS: u64 = 5_000;

/// Why an app did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not spawn the sandbox: {0}")]
    Spawn(std::io::Error),
    #[error("the app exited before it was ready ({0})")]
    Exited(String),
    #[error("the app was not ready within {0} ms")]
    Timeout(u64),
}

/// A live (or just exited) app process.
pub struct AppProcess {
    pid: i32,
    /// Host-side path of the app's Unix socket.
    pub socket: PathBuf,
    /// The version this process runs.
    pub version: u64,
    exited: watch::Receiver<Option<String>>,
    /// Milliseconds from spawn to listening: the sandbox's share of a cold start.
    pub start_ms: u64,
    /// When the process was spawned.
    pub spawned_at: Instant,
    /// Set once hostd decided to stop it, so its exit is not taken for a crash.
    stop_requested: AtomicBool,
    /// The cgroup holding its limits, if the host has cgroups.
    group: Option<Arc<AppGroup>>,
    /// Cron expressions the app declared when it became ready.
    pub schedules: Vec<String>,
}

impl AppProcess {
    /// Spawns the sandboxed app and waits until it listens, or fails with the reason.
    /// `group`, when given, holds the kernel limits the process runs under.
    pub async fn start(
        spec: &Spec,
        version: u64,
        log: Arc<AppLog>,
        timeout_ms: u64,
        group: Option<AppGroup>,
        trial: bool,
    ) -> Result<Self, StartError> {
        let label = if trial { format!("version {version} (trial)") } else { format!("version {version}") };
        let group = group.map(Arc::new);
        let socket = spec.socket_dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&socket);
        let (ready_reader, ready_writer) = std::io::pipe().map_err(StartError::Spawn)?;
        let mut command = tokio::process::Command::new(&spec.bwrap);
        command.args(spec.args()).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.process_group(0).kill_on_drop(true);
        let writer_fd = ready_writer.as_raw_fd();
        let joining = group.clone();
        // SAFETY: only async-signal-safe calls (dup2, prctl, open/write) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(group) = &joining {
                    group.join_self()?;
                }
                if libc::dup2(writer_fd, READY_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = Instant::now();
        let mut child = command.spawn().map_err(StartError::Spawn)?;
        drop(ready_writer);
        let pid = child.id().map(|p| p as i32).ok_or_else(|| StartError::Exited("no pid".into()))?;
        log.line("steady", &format!("{label} starting (pid {pid})"));
        pump(child.stdout.take(), log.clone(), "out");
        pump(child.stderr.take(), log.clone(), "err");
        let (exit_sender, exited) = watch::channel(None);
        let exit_log = log.clone();
        let exit_label = label.clone();
        let exit_group = group.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let mut description = describe(status);
            if let Some(group) = exit_group {
                description += &limit_events(group.events());
                group.remove().await;
            }
            exit_log.line("steady", &format!("{exit_label} exited: {description}"));
            let _ = exit_sender.send(Some(description));
        });
        let process = Self {
            pid,
            socket,
            version,
            exited,
            start_ms: 0,
            spawned_at: spawned,
            stop_requested: AtomicBool::new(false),
            group,
            schedules: Vec::new(),
        };
        let schedules = process.wait_ready(OwnedFd::from(ready_reader), timeout_ms).await?;
        let start_ms = spawned.elapsed().as_millis() as u64;
        log.line("steady", &format!("{label} listening after {start_ms} ms"));
        Ok(Self { start_ms, schedules, ..process })
    }

    /// Waits for `ready [<schedules as JSON>]` on the readiness pipe; returns the schedules.
    async fn wait_ready(&self, reader: OwnedFd, timeout_ms: u64) -> Result<Vec<String>, StartError> {
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(reader).map_err(StartError::Spawn)?;
        let mut line = String::new();
        // Bounded: the app's own code could write to fd 3 before the runner does.
        let mut reader = BufReader::new(receiver).take(READY_LINE_BYTES_MAX);
        let read = reader.read_line(&mut line);
        let mut exited = self.exited.clone();
        let outcome = tokio::time::timeout(Duration::from_millis(timeout_ms), read).await;
        match outcome {
            Ok(Ok(_)) if line.starts_with("ready") => {
                let schedules = line["ready".len()..].trim();
                if schedules.is_empty() {
                    return Ok(Vec::new());
                }
                serde_json::from_str(schedules).map_err(|e| StartError::Exited(format!("bad readiness line: {e}")))
            }
            Ok(_) => {
                // The pipe closed without "ready": the process is exiting; wait for its status.
                let status =
                    tokio::time::timeout(Duration::from_millis(STOP_WAIT_MS), exited.wait_for(Option::is_some)).await;
                let reason = match status {
                    Ok(Ok(value)) => value.clone().unwrap_or_default(),
                    _ => "closed its readiness pipe".to_owned(),
                };
                self.kill();
                Err(StartError::Exited(reason))
            }
            Err(_) => {
                self.stop().await;
                Err(StartError::Timeout(timeout_ms))
            }
        }
    }

    /// Is the process still running?
    pub fn is_alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Did it exit without hostd asking it to?
    pub fn crashed(&self) -> bool {
        !self.is_alive() && !self.stop_requested.load(Ordering::Acquire)
    }

    /// Memory the app uses now, when it runs under a cgroup.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.group.as_ref().and_then(|g| g.memory_bytes())
    }

    /// The sandbox's process id (and process group id).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn kill(&self) {
        // SAFETY: kill(2) on a process group we created; a stale group id fails with ESRCH.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
    }

    /// Kills the sandbox and waits (bounded) until the process has exited.
    pub async fn stop(&self) {
        self.stop_requested.store(true, Ordering::Release);
        self.kill();
        let mut exited = self.exited.clone();
        let waited = tokio::time::timeout(Duration::from_millis(STOP_WAIT_MS), exited.wait_for(Option::is_some)).await;
        if waited.is_err() {
            tracing::error!(pid = self.pid, "app process did not exit after SIGKILL");
        }
    }
}

/// Copies a stream into the log line by line. Lines are bounded by [`LOG_LINE_BYTES_MAX`]:
/// a longer run without a newline is logged in pieces, so an app cannot make hostd buffer
/// without end.
fn pump(stream: Option<impl AsyncRead + Unpin + Send + 'static>, log: Arc<AppLog>, name: &'static str) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match (&mut reader).take(LOG_LINE_BYTES_MAX as u64).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => log.line(name, &String::from_utf8_lossy(&line)),
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
