//! Kernel-enforced limits for each app process: memory, process count and CPU, through
//! cgroups.
//!
//! cgroup v2 is used where `/sys/fs/cgroup` is a unified hierarchy; otherwise the v1
//! `memory`, `pids` and `cpu` controllers. Each app process gets its own group under
//! `steady/<host id>/`; the sandbox joins it between fork and exec (so everything it starts is
//! inside from the first instruction), and the group is removed after the process exits. Where
//! neither is writable, apps run without kernel limits and hostd says so at start and in
//! every app's status — a documented fallback, not a silent one.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// CPU period for quotas, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// Attempts to remove a group while its last processes are still exiting.
const REMOVE_ATTEMPTS_MAX: u32 = 50;
const REMOVE_RETRY_MS: u64 = 20;

/// Per-app limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes_max: u64,
    pub pids_max: u64,
    /// Share of one core, in percent (100 = one full core).
    pub cpu_percent_max: u64,
}

/// Where app groups are made.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// Unified hierarchy: one directory per group.
    V2 { base: PathBuf },
    /// Separate controller mounts: one directory per controller per group.
    V1 { memory: PathBuf, pids: PathBuf, cpu: PathBuf },
    /// No writable cgroups: apps run without kernel limits.
    Unavailable { reason: String },
}

/// Counters read back from an app's group after (or while) it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    pub oom_kills: u64,
    pub pids_max_hits: u64,
    pub cpu_throttled_periods: u64,
}

/// One app process's group.
#[derive(Debug)]
pub struct AppGroup {
    hierarchy: Hierarchy,
    /// `[v2 dir]` or `[memory, pids, cpu]` dirs.
    dirs: Vec<PathBuf>,
    /// The `cgroup.procs` files to join, prepared before fork (no allocation after it).
    procs_files: Vec<CString>,
}

static NEXT_GROUP: AtomicU64 = AtomicU64::new(1);

impl Hierarchy {
    /// Finds a writable hierarchy and prepares `steady/<instance>` in it. `instance` must be
    /// unique among the host daemons of this machine (several may share one in tests).
    pub fn detect(instance: &str) -> Self {
        let host_id = instance;
        let root = Path::new(CGROUP_ROOT);
        let attempt = if root.join("cgroup.controllers").exists() {
            prepare_v2(root, host_id)
        } else {
            prepare_v1(root, host_id)
        };
        let hierarchy = attempt.unwrap_or_else(|error| Hierarchy::Unavailable { reason: error.to_string() });
        hierarchy.remove_stale();
        hierarchy
    }

    /// Removes this host's groups and its base directories (hostd is stopping; its apps are).
    pub fn remove_all(&self) {
        self.remove_stale();
        let bases = match self {
            Hierarchy::V2 { base } => vec![base.clone()],
            Hierarchy::V1 { memory, pids, cpu } => vec![memory.clone(), pids.clone(), cpu.clone()],
            Hierarchy::Unavailable { .. } => Vec::new(),
        };
        for base in bases {
            let _ = std::fs::remove_dir(base);
        }
    }

    /// Removes groups an earlier run of this host left (their processes died with it).
    fn remove_stale(&self) {
        let bases = match self {
            Hierarchy::V2 { base } => vec![base.clone()],
            Hierarchy::V1 { memory, pids, cpu } => vec![memory.clone(), pids.clone(), cpu.clone()],
            Hierarchy::Unavailable { .. } => Vec::new(),
        };
        for base in bases {
            let children = std::fs::read_dir(&base).into_iter().flatten().flatten();
            for child in children.filter(|c| c.file_type().is_ok_and(|t| t.is_dir())) {
                if let Err(error) = std::fs::remove_dir(child.path()) {
                    tracing::warn!(%error, group = %child.path().display(), "a stale app cgroup is still busy");
                }
            }
        }
    }

    /// A short description for logs and status.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { base } => format!("cgroup v2 at {}", base.display()),
            Hierarchy::V1 { memory, .. } => format!("cgroup v1 ({} and its siblings)", memory.display()),
            Hierarchy::Unavailable { reason } => format!("no kernel limits (cgroups unavailable: {reason})"),
        }
    }

    /// Makes a group for one process of `app` with `limits`. `None` when unavailable.
    pub fn create(&self, app: &str, limits: Limits) -> io::Result<Option<AppGroup>> {
        assert!(limits.memory_bytes_max > 0 && limits.pids_max > 0 && limits.cpu_percent_max > 0);
        let name = format!("{app}-{}", NEXT_GROUP.fetch_add(1, Ordering::Relaxed));
        let quota_us = CPU_PERIOD_US * limits.cpu_percent_max / 100;
        let dirs = match self {
            Hierarchy::Unavailable { .. } => return Ok(None),
            Hierarchy::V2 { base } => {
                let dir = base.join(&name);
                std::fs::create_dir(&dir)?;
                write(&dir, "memory.max", limits.memory_bytes_max)?;
                write(&dir, "memory.swap.max", 0).ok();
                write(&dir, "pids.max", limits.pids_max)?;
                std::fs::write(dir.join("cpu.max"), format!("{quota_us} {CPU_PERIOD_US}"))?;
                vec![dir]
            }
            Hierarchy::V1 { memory, pids, cpu } => {
                let dirs = vec![memory.join(&name), pids.join(&name), cpu.join(&name)];
                for dir in &dirs {
                    std::fs::create_dir(dir)?;
                }
                write(&dirs[0], "memory.limit_in_bytes", limits.memory_bytes_max)?;
                write(&dirs[1], "pids.max", limits.pids_max)?;
                write(&dirs[2], "cpu.cfs_period_us", CPU_PERIOD_US)?;
                write(&dirs[2], "cpu.cfs_quota_us", quota_us)?;
                dirs
            }
        };
        let procs_files = dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other))
            .collect::<io::Result<_>>()?;
        Ok(Some(AppGroup { hierarchy: self.clone(), dirs, procs_files }))
    }
}

fn write(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    std::fs::write(dir.join(file), value.to_string())
}

fn prepare_v2(root: &Path, host_id: &str) -> io::Result<Hierarchy> {
    let steady = root.join("steady");
    let base = steady.join(host_id);
    std::fs::create_dir_all(&base)?;
    // Controllers must be enabled for children at every level down to the app groups.
    for dir in [root, steady.as_path(), base.as_path()] {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
    }
    Ok(Hierarchy::V2 { base })
}

fn prepare_v1(root: &Path, host_id: &str) -> io::Result<Hierarchy> {
    let base = |controller: &str| root.join(controller).join("steady").join(host_id);
    let (memory, pids, cpu) = (base("memory"), base("pids"), base("cpu"));
    for dir in [&memory, &pids, &cpu] {
        std::fs::create_dir_all(dir)?;
    }
    // A v1 memory group only limits its children hierarchically with use_hierarchy set.
    let _ = std::fs::write(root.join("memory/steady/memory.use_hierarchy"), "1");
    Ok(Hierarchy::V1 { memory, pids, cpu })
}

impl AppGroup {
    /// Joins the calling process to this group. Called between fork and exec: only
    /// async-signal-safe system calls, on paths prepared before the fork.
    pub fn join_self(&self) -> io::Result<()> {
        for path in &self.procs_files {
            // SAFETY: open/write/close on a NUL-terminated path that outlives the call.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Memory in use by the group now.
    pub fn memory_bytes(&self) -> Option<u64> {
        let file = match self.hierarchy {
            Hierarchy::V2 { .. } => self.dirs[0].join("memory.current"),
            _ => self.dirs[0].join("memory.usage_in_bytes"),
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// CPU time the group's processes used, in seconds: the group's own counter (v2), or the
    /// user and system time of the processes in it and of their waited-for children (v1,
    /// where the cpu controller keeps no usage). `None` where it cannot be read.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if let Hierarchy::V2 { .. } = self.hierarchy {
            let usage_us: f64 = counter(&self.dirs[0].join("cpu.stat"), "usage_usec") as f64;
            return Some(usage_us / 1e6);
        }
        // SAFETY: sysconf has no preconditions.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let procs = std::fs::read_to_string(self.dirs[0].join("cgroup.procs")).ok()?;
        let ticks: u64 = procs.lines().take(PROCS_READ_MAX).filter_map(|pid| process_ticks(pid.trim())).sum();
        Some(ticks as f64 / ticks_per_s)
    }

    /// The group's limit counters.
    pub fn events(&self) -> Events {
        let (memory, pids, cpu) = match self.hierarchy {
            Hierarchy::V2 { .. } => {
                (self.dirs[0].join("memory.events"), self.dirs[0].join("pids.events"), self.dirs[0].join("cpu.stat"))
            }
            _ => (
                self.dirs[0].join("memory.oom_control"),
                self.dirs[1].join("pids.events"),
                self.dirs[2].join("cpu.stat"),
            ),
        };
        Events {
            oom_kills: counter(&memory, "oom_kill"),
            pids_max_hits: counter(&pids, "max"),
            cpu_throttled_periods: counter(&cpu, "nr_throttled"),
        }
    }

    /// Removes the group, waiting (bounded) for its last processes to be gone.
    pub async fn remove(&self) {
        for dir in &self.dirs {
            for attempt in 1..=REMOVE_ATTEMPTS_MAX {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(error) if attempt == REMOVE_ATTEMPTS_MAX => {
                        tracing::warn!(%error, dir = %dir.display(), "could not remove an app's cgroup");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(REMOVE_RETRY_MS)).await,
                }
            }
        }
    }
}

/// The value after `key` in a `key value` per line file; 0 when absent.
fn counter(file: &Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Most processes of one group read for its CPU time (the pids limit is far lower).
const PROCS_READ_MAX: usize = 4_096;

/// utime + stime + cutime + cstime of a process, in clock ticks, from `/proc/<pid>/stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // Field 14 of the whole line is index 11 here (state is field 3, index 0).
    fields.get(11..15)?.iter().map(|f| f.parse::<u64>().ok()).sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_read_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(super::counter(&file, "oom_kill"), 2);
        assert_eq!(super::counter(&file, "max"), 7);
        assert_eq!(super::counter(&file, "missing"), 0);
        assert_eq!(super::counter(&dir.path().join("absent"), "max"), 0);
    }
}
