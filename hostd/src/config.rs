//! Command-line configuration of `steady-hostd`, with defaults and limits in one place.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Most files a bundle may hold.
pub const BUNDLE_FILES_MAX: usize = 2_000;
/// Most bytes a bundle may unpack to.
pub const BUNDLE_UNPACKED_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// Size at which an app's log is rotated (one older file is kept).
pub const LOG_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Longest log line kept; longer lines are cut and marked.
pub const LOG_LINE_BYTES_MAX: usize = 16 * 1024;
/// Longest a request whose app process died under it waits for hostd to see the exit before
/// the request is sent once more to a new process (idempotent requests without a body only).
pub const EXIT_SEEN_WAIT_MS: u64 = 500;
/// Unexpected exits in a row (no request answered between them) after which an app is
/// declared crash-looping.
pub const CRASH_LOOP_THRESHOLD: u32 = 3;
/// First pause before a crash-looping app may start again; doubles with each further crash.
pub const CRASH_BACKOFF_MS_MIN: u64 = 1_000;
/// Longest pause before a crash-looping app may start again.
pub const CRASH_BACKOFF_MS_MAX: u64 = 60_000;
/// A process that lived this long before dying resets the crash count.
pub const CRASH_RESET_AFTER_MS: u64 = 10_000;
/// How often idle apps and expired temporary apps are looked for, at most.
pub const HOUSEKEEPING_INTERVAL_MS_MAX: u64 = 1_000;
/// Most sandboxes kept warm.
pub const WARM_SANDBOXES_MAX: usize = 64;
/// Unix socket paths are limited to 108 bytes by the kernel; the data directory must leave room.
pub const SOCKET_PATH_BYTES_MAX: usize = 107;

/// `steady-hostd`: runs apps in sandboxes and forwards their traffic.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
pub struct Config {
    /// Stable identity of this host, kept across restarts.
    #[arg(long, env = "STEADY_HOST_ID")]
    pub id: String,
    /// Data directory: database, bundles, app data and logs. One hostd at a time: it holds
    /// `hostd.lock` there, and at start ends sandboxes an earlier run left running in it.
    #[arg(long, default_value = ".steady/host")]
    pub data: PathBuf,
    /// Address for app traffic from the load balancers (`:0` picks a free port).
    #[arg(long, default_value = "127.0.0.2:8090")]
    pub ingress: SocketAddr,
    /// Address of the control API (deploys, app lists).
    #[arg(long, default_value = "127.0.0.2:8091")]
    pub api: SocketAddr,
    /// Slicer API base address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:8082", env = "STEADY_SLICER")]
    pub slicer: String,
    /// The Bun binary apps run with.
    #[arg(long, default_value = "bun", env = "STEADY_BUN")]
    pub bun: PathBuf,
    /// The bubblewrap binary that sandboxes apps.
    #[arg(long, default_value = "bwrap", env = "STEADY_BWRAP")]
    pub bwrap: PathBuf,
    /// The Litestream binary that replicates app databases.
    #[arg(long, default_value = "litestream", env = "STEADY_LITESTREAM")]
    pub litestream: PathBuf,
    /// Directory of the cluster's blob store (bundles and database replicas), shared by the
    /// hosts of one machine; default `<data>/storage`. Ignored with `--storage-config`.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// YAML file describing the blob store (`kind: local` with `path`, or `kind: s3` with
    /// `bucket`, `prefix`, `region`, `endpoint`, `path_style`, credentials).
    #[arg(long)]
    pub storage_config: Option<PathBuf>,
    /// File holding the cluster's key for app environment variables (`steady env`): 64 hex
    /// digits, the same file on every host, readable only by hostd. Without it apps have no
    /// variables of their own and `steady env` is refused.
    #[arg(long)]
    pub secrets_key_file: Option<PathBuf>,
    /// How often this host tells the slicer it is alive (the slicer's `--host-timeout-ms`
    /// should be several of these).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub heartbeat_ms: u64,
    /// Once registered and listening, write the bound addresses as JSON to this file.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Largest bundle upload accepted, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub bundle_size_max_bytes: usize,
    /// How long an app may take from spawn to listening before its start fails.
    #[arg(long, default_value_t = 10_000)]
    pub start_timeout_ms: u64,
    /// Most requests that may wait for one app to start; more get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub start_queue_max: usize,
    /// How long a request for an app on its way to this host (a live move, or the adoption of
    /// a dead host's app) is held before it gets 503 with Retry-After.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..=120_000))]
    pub move_hold_ms: u64,
    /// An app with no request for this long is stopped; its next request starts it again.
    #[arg(long, default_value_t = 300_000)]
    pub idle_timeout_ms: u64,
    /// Most app processes running at once; beyond it the least recently used idle apps sleep.
    #[arg(long, default_value_t = 200)]
    pub awake_max: usize,
    /// Most requests one app handles at once; more get 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub app_concurrency_max: usize,
    /// Largest request body forwarded to an app, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub request_body_max_bytes: u64,
    /// Most connections the ingress keeps open at once (from LBs and other hosts); past it
    /// the listener stops accepting until one closes. Default: 16384, or as many as the open
    /// files limit covers (hostd raises its soft limit to the hard one; each connection is
    /// counted with a connection to an app); a value the limit does not cover is refused.
    /// An HTTP/2 connection's requests in flight past its first count as one connection each
    /// (past the bound: 503).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ingress_connections_max: Option<u64>,
    /// Memory limit of each app process (kernel-enforced where cgroups are available).
    #[arg(long, default_value_t = 256)]
    pub app_memory_max_mib: u64,
    /// Most processes (and threads) each app may have.
    #[arg(long, default_value_t = 64)]
    pub app_pids_max: u64,
    /// Sandboxes kept started and waiting for an app, so a wake skips the spawn (0 turns it off).
    #[arg(long, default_value_t = 2)]
    pub warm_sandboxes: usize,
    /// CPU limit of each app, in percent of one core.
    #[arg(long, default_value_t = 100)]
    pub app_cpu_max_percent: u64,
}

impl Config {
    /// Resolves binaries on PATH and checks limits; an error here is a configuration error.
    pub fn validate(mut self) -> Result<Self, String> {
        self.bun = resolve_binary(&self.bun)?;
        self.bwrap = resolve_binary(&self.bwrap)?;
        self.litestream = resolve_binary(&self.litestream)?;
        if self.app_memory_max_mib < 32 || self.app_pids_max < 8 || self.app_cpu_max_percent == 0 {
            return Err("app limits too small: memory at least 32 MiB, at least 8 processes, CPU above 0 %".into());
        }
        if self.app_concurrency_max == 0 || self.request_body_max_bytes == 0 {
            return Err("--app-concurrency-max and --request-body-max-bytes must be above zero".into());
        }
        if self.awake_max == 0 {
            return Err("--awake-max must be above zero".into());
        }
        if self.id.is_empty() || self.id.len() > 64 {
            return Err("--id must be 1-64 characters".into());
        }
        if self.start_queue_max == 0 || self.start_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("--start-queue-max, --start-timeout-ms and --idle-timeout-ms must be above zero".into());
        }
        std::fs::create_dir_all(&self.data).map_err(|e| format!("creating {}: {e}", self.data.display()))?;
        self.data = self.data.canonicalize().map_err(|e| format!("{}: {e}", self.data.display()))?;
        if self.warm_sandboxes > WARM_SANDBOXES_MAX {
            return Err(format!("--warm-sandboxes must be at most {WARM_SANDBOXES_MAX}"));
        }
        // Socket paths are <data>/sandboxes/<n>/run/app.sock: leave 48 bytes for the tail.
        if self.data.as_os_str().len() + 48 > SOCKET_PATH_BYTES_MAX {
            return Err(format!("data directory path {} is too long for Unix socket paths", self.data.display()));
        }
        Ok(self)
    }
}

/// Finds `name` on PATH unless it is already a path; returns an absolute path.
pub fn resolve_binary(name: &std::path::Path) -> Result<PathBuf, String> {
    if name.components().count() > 1 {
        return name.canonicalize().map_err(|e| format!("{}: {e}", name.display()));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .and_then(|found| found.canonicalize().ok())
        .ok_or_else(|| format!("{} not found on PATH (run scripts/setup.sh)", name.display()))
}

/// Default bound on the ingress listener's open connections.
pub const INGRESS_CONNECTIONS_MAX: usize = 16_384;

/// Open files kept aside from ingress connections and the idle app connections: the API's
/// connections, app processes' pipes and logs, the store, replication.
pub const FILES_RESERVED: u64 = 4_096;

impl Config {
    /// The ingress connections the open files limit `open_files_max` covers: each with a
    /// connection to its app, beside the idle app connections (the lane's pool and the
    /// router's, bounded alike) and [`FILES_RESERVED`].
    pub fn ingress_budget(&self, open_files_max: u64) -> steady_daemon::files::Budget {
        let pooled_max = crate::ingress::lane::app_pool_bounds(self.app_concurrency_max).idle_total_max as u64;
        steady_daemon::files::Budget {
            open_files_max,
            fixed: 2 * pooled_max + FILES_RESERVED,
            flag: "--ingress-connections-max",
            default_max: INGRESS_CONNECTIONS_MAX,
        }
    }

    /// The blob store: `--storage-config`, else a local directory (`--storage-dir` or
    /// `<data>/storage`). Checked here so a bad file is a configuration error at start.
    pub fn storage(&self) -> Result<steady_blob::BlobConfig, String> {
        let Some(path) = &self.storage_config else {
            let dir = self.storage_dir.clone().unwrap_or_else(|| self.data.join("storage"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(steady_blob::BlobConfig::Local(steady_blob::LocalConfig { path: dir }));
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let config: steady_blob::BlobConfig =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// The per-app limits from the flags.
    pub fn app_limits(&self) -> crate::cgroup::Limits {
        crate::cgroup::Limits {
            memory_bytes_max: self.app_memory_max_mib * 1024 * 1024,
            pids_max: self.app_pids_max,
            cpu_percent_max: self.app_cpu_max_percent,
        }
    }
}
