//! Processes that outlived whoever should have ended them, and the one-hostd-per-directory
//! claim that makes finding them safe.
//!
//! A sandbox is two `bwrap` processes: the outer one, hostd's child, and the inner one, pid 1
//! of the sandbox's pid namespace, which starts Bun. The inner one dies with the outer one
//! through `--die-with-parent`, but bwrap sets that up only partway through its start: an
//! outer `bwrap` killed (or a hostd that dies) within its first few milliseconds can leave the
//! inner one running, reparented to init, and with it whatever it started (measured in
//! docs/notes.md "Sandboxes that outlive hostd"). Both `bwrap` processes carry hostd's
//! argument list, which names the sandbox's directory, so they are found by scanning `/proc`
//! for it ([`kill_processes_naming`]); killing the inner one ends its whole pid namespace.
//!
//! hostd scans at start for anything under its data directory (an earlier run's), and after
//! a sandbox that ended before its Bun was up (the window above). That is safe only while one
//! hostd uses a data directory, which [`claim`] makes sure of.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most `/proc` entries one scan looks at (the kernel's largest pid space).
const PROC_ENTRIES_MAX: usize = 1 << 22;
/// Bytes of a process's argument list read; hostd's `bwrap` arguments take about 2 KiB.
const CMDLINE_BYTES_MAX: u64 = 64 * 1024;
/// How long killed processes get to be gone before the scan reports them stuck.
const GONE_WAIT_MS: u64 = 5_000;
const GONE_POLL_MS: u64 = 5;
/// The file in a data directory its hostd holds locked.
pub const LOCK_FILE: &str = "hostd.lock";

/// Why a data directory cannot be used, or its leftovers not ended.
#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    #[error("another steady-hostd uses the data directory {dir} (pid {holder}); one directory serves one host")]
    Claimed { dir: PathBuf, holder: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "processes of an earlier sandbox under {dir} did not end within {GONE_WAIT_MS} ms of SIGKILL: pids {pids:?}"
    )]
    Stuck { dir: PathBuf, pids: Vec<i32> },
}

/// Holds a data directory for this process until dropped (or the process ends).
#[derive(Debug)]
pub struct Claim {
    _file: std::fs::File,
}

/// Claims `data` for this hostd: an exclusive lock on its [`LOCK_FILE`], which names our pid.
/// Fails when another live process holds it; a crashed holder's lock is gone with it.
pub fn claim(data: &Path) -> Result<Claim, LeftoverError> {
    let path = data.join(LOCK_FILE);
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| LeftoverError::Io { what, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("opening"))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io("locking")(error));
        }
        let mut holder = String::new();
        let _ = (&mut file).take(32).read_to_string(&mut holder);
        let holder = holder.trim().to_owned();
        return Err(LeftoverError::Claimed { dir: data.to_owned(), holder });
    }
    file.set_len(0).map_err(io("writing"))?;
    std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes()).map_err(io("writing"))?;
    Ok(Claim { _file: file })
}

/// Finds this user's `bwrap` processes whose arguments name `dir` or a path under it,
/// SIGKILLs them and waits (bounded) until they are gone; returns how many there were.
pub fn kill_processes_naming(dir: &Path) -> Result<usize, LeftoverError> {
    let pids = processes_naming(dir)?;
    for &pid in &pids {
        assert!(pid > 1, "never signal init");
        // SAFETY: kill(2) on a pid just found; one that exited meanwhile fails with ESRCH.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_millis(GONE_WAIT_MS);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&pid| is_running(pid)).collect();
        if left.is_empty() {
            return Ok(pids.len());
        }
        if Instant::now() >= deadline {
            return Err(LeftoverError::Stuck { dir: dir.to_owned(), pids: left });
        }
        std::thread::sleep(Duration::from_millis(GONE_POLL_MS));
    }
}

/// Between fork and exec, in the child: asks for SIGKILL when the parent (`parent`, its pid
/// read before the fork) ends, and fails if it already has, since then the signal never comes.
/// Only async-signal-safe calls.
pub fn die_with_parent(parent: i32) -> std::io::Result<()> {
    // SAFETY: prctl(2) and getppid(2) touch only this process.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// This user's `bwrap` processes with an argument that is `dir` or a path under it.
fn processes_naming(dir: &Path) -> Result<Vec<i32>, LeftoverError> {
    let entries =
        std::fs::read_dir("/proc").map_err(|source| LeftoverError::Io { what: "listing /proc".into(), source })?;
    // SAFETY: geteuid(2) cannot fail.
    let uid = unsafe { libc::geteuid() };
    let me = std::process::id() as i32;
    let dir = dir.as_os_str().as_bytes();
    let mut found = Vec::new();
    for entry in entries.take(PROC_ENTRIES_MAX).flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        if pid <= 1 || pid == me {
            continue;
        }
        let path = entry.path();
        // Processes that exit mid-scan make these reads fail: they are skipped, not errors.
        let ours = std::fs::metadata(&path).is_ok_and(|m| m.uid() == uid);
        if !ours || std::fs::read(path.join("comm")).ok().as_deref() != Some(b"bwrap\n") {
            continue;
        }
        let Ok(file) = std::fs::File::open(path.join("cmdline")) else { continue };
        let mut cmdline = Vec::new();
        if file.take(CMDLINE_BYTES_MAX).read_to_end(&mut cmdline).is_err() {
            continue;
        }
        if cmdline.split(|&b| b == 0).any(|arg| names(arg, dir)) && is_running(pid) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// Is `arg` the path `dir` or a path under it?
fn names(arg: &[u8], dir: &[u8]) -> bool {
    arg.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// Is `pid` alive (not gone, not a zombie waiting for its parent)?
fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name's closing parenthesis, which the name may contain.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else { return false };
    !matches!(stat.get(close + 2), Some(b'Z' | b'X' | b'x') | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_names_the_directory_or_what_is_under_it_and_nothing_else() {
        assert!(names(b"/data/sandboxes/7", b"/data/sandboxes/7"));
        assert!(names(b"/data/sandboxes/7/app", b"/data/sandboxes/7"));
        assert!(!names(b"/data/sandboxes/70/app", b"/data/sandboxes/7"));
        assert!(!names(b"/data/sandboxes", b"/data/sandboxes/7"));
        assert!(!names(b"--ro-bind", b"/data/sandboxes/7"));
    }

    #[test]
    fn a_second_claim_on_a_directory_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = claim(dir.path()).expect("the first claim");
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let refused = claim(dir.path()).expect_err("a second claim");
        let message = refused.to_string();
        assert!(message.contains(&std::process::id().to_string()), "{message}");
        assert!(message.contains("another steady-hostd"), "{message}");
        drop(first);
        claim(dir.path()).expect("a claim after the holder let go");
    }

    #[test]
    fn this_process_is_running_and_a_pid_that_is_not_is_not() {
        assert!(is_running(std::process::id() as i32));
        assert!(!is_running(i32::MAX));
    }
}
