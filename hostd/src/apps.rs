//! The apps of this host: wake on demand, sleep when idle, supervise crashes, deploy and roll
//! back versions, collect temporary apps.
//!
//! Each app has a slot holding at most one serving process. A request for an app that is not
//! running starts it while later requests wait on the slot (bounded: `start_queue_max`
//! waiters, each for at most `start_timeout_ms`), so concurrent first requests start it once.
//! A deploy or rollback starts the chosen version beside the old one and swaps only once the
//! new one listens. A process that dies unexpectedly is restarted by the next request; after
//! [`CRASH_LOOP_THRESHOLD`] exits in a row with no request answered between them, the app is
//! crash-looping and refuses requests for a doubling pause, which its log says. (An app killed
//! now and then while it serves — by an operator, by chaos — is not looping.)

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steady_proto::wire::{AppStatus, DeployResult, HEADER_CRON};

use crate::bundle::{self, BundleError, Limits};
use crate::cgroup::Hierarchy;
use crate::config::{
    Config, BUNDLE_FILES_MAX, BUNDLE_UNPACKED_BYTES_MAX, CRASH_BACKOFF_MS_MAX, CRASH_BACKOFF_MS_MIN,
    CRASH_LOOP_THRESHOLD, CRASH_RESET_AFTER_MS, EXIT_SEEN_WAIT_MS, HOUSEKEEPING_INTERVAL_MS_MAX,
};
use crate::log::{AppLog, RequestLog};
use crate::membership::{Membership, MembershipError};
use crate::process::{AppProcess, Assignment, StartError};
use crate::replica::Replicator;
use crate::schedule::{self, Schedule};
mod env;
mod moves;
mod query;
mod sources;

pub use env::EnvError;
pub use moves::{Elsewhere, HELD_REQUESTS_MAX};
pub use query::DbError;
pub use sources::SourcesError;

use crate::store::{Current, Outcome, Store, StoreError};
use crate::warm::{SandboxFactory, WarmPool};

/// The latest tick of `schedule` after `last_tick_ms` and at or before `now_ms`, if any.
fn latest_tick(schedule: &Schedule, last_tick_ms: u64, now_ms: u64) -> Option<u64> {
    let mut tick = schedule.next_after(last_tick_ms).filter(|&t| t <= now_ms)?;
    // Bounded: after a long outage, jump to the last tick without visiting every one.
    for _ in 0..CRON_CATCH_UP_STEPS_MAX {
        match schedule.next_after(tick) {
            Some(next) if next <= now_ms => tick = next,
            _ => return Some(tick),
        }
    }
    schedule.next_after(now_ms.saturating_sub(CRON_LATE_MS_MAX)).filter(|&t| t <= now_ms).or(Some(tick))
}

/// Directory (under the data directory) holding one directory per sandbox.
pub const SANDBOXES_DIR: &str = "sandboxes";
/// Longest one routing-table watch waits at the slicer.
const TABLE_WAIT_MS: u64 = 20_000;
/// Pause after a failed table watch.
const TABLE_RETRY_MS: u64 = 1_000;
/// How often running apps' data directories are searched for new databases to replicate.
const DATABASE_SCAN_INTERVAL_MS: u64 = 250;
/// Longest a deploy waits for the old process's in-flight requests before stopping it.
const DEPLOY_DRAIN_MS_MAX: u64 = 5_000;
/// Largest data directory copied for a new version's trial.
const TRIAL_COPY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest a trial request may take.
const TRIAL_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Most files walked when measuring or copying an app's data.
const DATA_FILES_MAX: usize = 10_000;

/// Sends `GET /` to the app on `socket`; any answer below 500 passes.
async fn check_answers(socket: &std::path::Path, app: &str) -> Result<(), String> {
    let request = axum::http::Request::get("/")
        .header("host", format!("{app}.trial"))
        .body(axum::body::Body::empty())
        .expect("static request");
    let timeout = Duration::from_millis(TRIAL_REQUEST_TIMEOUT_MS);
    match tokio::time::timeout(timeout, crate::ingress::send(socket, request)).await {
        Ok(Ok(response)) if response.status().as_u16() < 500 => Ok(()),
        Ok(Ok(response)) => Err(format!("GET / answered {}", response.status())),
        Ok(Err(error)) => Err(format!("GET / failed: {error}")),
        Err(_) => Err(format!("GET / did not answer within {TRIAL_REQUEST_TIMEOUT_MS} ms")),
    }
}

/// Total size of the regular files under `dir` (bounded walk).
fn directory_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            seen += 1;
            if seen > DATA_FILES_MAX {
                return Ok(u64::MAX);
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// Copies the regular files and directories under `from` to `to` (links are not followed).
fn copy_directory(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    crate::process::mirror_tree(from, to, &|from, to| std::fs::copy(from, to).map(drop))
}

/// How often schedules are checked.
const CRON_CHECK_INTERVAL_MS: u64 = 200;
/// A tick later than this (hostd was down) is skipped, not run.
const CRON_LATE_MS_MAX: u64 = 60_000;
/// Longest a cron handler may run.
const CRON_RUN_TIMEOUT_MS: u64 = 300_000;
/// Steps walked to find the latest due tick before jumping.
const CRON_CATCH_UP_STEPS_MAX: usize = 1_000;

/// Lines of the app's log returned with a failed start.
const FAILED_START_LOG_LINES: usize = 30;

/// Why a request could not be given a running app.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("no app named {0:?} on this host")]
    Unknown(String),
    #[error("{0:?} has left this host")]
    Departed(String),
    #[error("too many requests are waiting for {0:?} to start")]
    QueueFull(String),
    #[error("{0:?} is already handling as many requests as it may at once")]
    Busy(String),
    #[error("{0:?} did not start in time")]
    Deadline(String),
    #[error("{app:?} failed to start: {error}")]
    Start { app: String, error: StartError },
    #[error("{app:?} is crash-looping ({crashes} exits in a row); next start in {retry_after_s} s")]
    CrashLoop { app: String, crashes: u32, retry_after_s: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("app files: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a deploy or rollback failed. The serving version is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("version {version} failed to start: {error}")]
    Start { version: u64, error: StartError, log: Vec<String> },
    #[error("no app named {0:?} on this host")]
    Unknown(String),
    #[error("{0}")]
    NoSuchVersion(String),
    #[error("version {version} failed its trial against a copy of the data: {message}")]
    Trial { version: u64, message: String, log: Vec<String> },
    #[error("version {version} declares bad cron schedules: {message}")]
    BadSchedule { version: u64, message: String },
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing bundle: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store: {0}")]
    Storage(#[from] steady_blob::BlobError),
    #[error(transparent)]
    Data(#[from] crate::replica::ReplicaError),
}

/// Time constant of the request rate reported in heartbeats, in seconds.
const LOAD_SMOOTHING_S: f64 = 30.0;

/// Crash bookkeeping of one app.
#[derive(Default)]
struct Health {
    crashes: u32,
    retry_at: Option<Instant>,
}

struct Slot {
    name: String,
    log: Arc<AppLog>,
    requests: Arc<RequestLog>,
    serving: tokio::sync::Mutex<Option<AppProcess>>,
    /// Serialises deploys, rollbacks and deletion of one app.
    deploying: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
    /// Requests holding a lease; taken only under `serving`, so a holder of `serving` that
    /// sees zero knows no request uses the process.
    in_flight: AtomicUsize,
    /// Notified when `in_flight` drops to zero.
    drained: tokio::sync::Notify,
    last_active_ms: AtomicU64,
    requests_total: AtomicU64,
    last_start_ms: AtomicU64,
    last_start_duration_ms: AtomicU64,
    health: Mutex<Health>,
    /// The last failure to make the app's data ready, cleared by the next success.
    data_error: Mutex<Option<String>>,
    /// Schedules whose handler runs right now (a tick is skipped rather than overlapped).
    crons_running: Mutex<HashSet<String>>,
    /// The process (pid) and CPU seconds the metrics last counted for this app.
    cpu_counted: Mutex<(u32, f64)>,
}

/// A request's hold on a running app: while any lease is alive the app does not sleep.
pub struct Lease {
    /// Host-side path of the app's socket.
    pub socket: PathBuf,
    slot: Arc<Slot>,
}

impl Lease {
    /// The app's request log.
    pub fn requests(&self) -> &RequestLog {
        &self.slot.requests
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.last_active_ms.store(crate::now_ms(), Ordering::Release);
        if self.slot.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slot.drained.notify_waiters();
        }
    }
}

/// All apps on this host.
pub struct Apps {
    config: Config,
    store: Mutex<Store>,
    /// The cluster's blob store: bundles (content-addressed) and replica manifests.
    storage: Arc<dyn steady_blob::BlobStore>,
    replicator: Arc<Replicator>,
    membership: Membership,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    pool: WarmPool,
    /// The newest routing table this host has seen.
    table: Mutex<Option<Arc<steady_proto::wire::RoutingTable>>>,
    /// Prometheus metrics of this host.
    pub metrics: crate::metrics::Metrics,
    /// Signalled when a process starts, so the awake limit is enforced promptly.
    started: tokio::sync::Notify,
    /// Apps on their way here or gone from here in a live move.
    moves: moves::MoveState,
    /// Apps' environment variables, sealed in the blob store.
    secrets: crate::secrets::Secrets,
}

impl Apps {
    /// Builds the manager; `runner` is the runner script on disk.
    pub fn new(
        config: Config,
        runner: PathBuf,
        store: Store,
        storage: Arc<dyn steady_blob::BlobStore>,
        replicator: Arc<Replicator>,
        membership: Membership,
        secrets: crate::secrets::Secrets,
    ) -> Self {
        assert!(config.data.is_absolute(), "the data directory is canonical after validation");
        // Host ids are unique in a cluster, data directories on a machine: both name the groups.
        let data_hash = xxhash_rust::xxh3::xxh3_64(config.data.as_os_str().as_encoded_bytes());
        let cgroups = Hierarchy::detect(&format!("{}-{:08x}", config.id, data_hash as u32));
        tracing::info!(limits = %cgroups.describe(), "app limits");
        let factory = SandboxFactory {
            bwrap: config.bwrap.clone(),
            bun: config.bun.clone(),
            runner,
            root: config.data.join(SANDBOXES_DIR),
            cgroups,
            limits: config.app_limits(),
            boot_timeout_ms: config.start_timeout_ms,
        };
        let pool = WarmPool::new(factory, config.warm_sandboxes);
        Self {
            config,
            store: Mutex::new(store),
            storage,
            replicator,
            membership,
            slots: Mutex::new(HashMap::new()),
            pool,
            metrics: crate::metrics::Metrics::default(),
            table: Mutex::new(None),
            started: tokio::sync::Notify::new(),
            moves: moves::MoveState::default(),
            secrets,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This host's apps, for the API.
    pub fn list(&self) -> Result<Vec<crate::store::AppRow>, StoreError> {
        self.store().list()
    }

    /// Every version attempt of an app, or `None` if the app is not here.
    pub fn versions(&self, name: &str) -> Result<Option<Vec<crate::store::VersionRow>>, StoreError> {
        let versions = self.store().versions(name)?;
        Ok((!versions.is_empty()).then_some(versions))
    }

    /// The slot of an app that exists here (with a serving version), or `None`.
    fn existing_slot(&self, name: &str) -> Result<Option<Arc<Slot>>, WakeError> {
        if self.store().current(name)?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.slot(name)?))
    }

    /// The app's output log, if the app exists here.
    pub fn log(&self, name: &str) -> Result<Option<Arc<AppLog>>, WakeError> {
        Ok(self.existing_slot(name)?.map(|slot| slot.log.clone()))
    }

    /// The app's request log, if the app exists here.
    pub fn request_log(&self, name: &str) -> Result<Option<Arc<RequestLog>>, WakeError> {
        Ok(self.existing_slot(name)?.map(|slot| slot.requests.clone()))
    }

    /// The app's state, if it exists here.
    pub async fn status(&self, name: &str) -> Result<Option<AppStatus>, WakeError> {
        let Some(current) = self.store().current(name)? else {
            return Ok(None);
        };
        let expires_at_ms = self.store().expires_at(name)?;
        let slot = self.slot(name)?;
        let crashes = slot.health.lock().unwrap_or_else(|p| p.into_inner()).crashes;
        let looping = crashes >= CRASH_LOOP_THRESHOLD;
        let (state, pid, memory_bytes) = match slot.serving.try_lock() {
            Err(_) => ("starting", None, None),
            Ok(serving) => match serving.as_ref().filter(|p| p.is_alive()) {
                Some(process) => ("running", Some(process.pid()), process.memory_bytes()),
                None if looping => ("crash-loop", None, None),
                None => ("asleep", None, None),
            },
        };
        let data_error = slot.data_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let nonzero = |v: u64| (v > 0).then_some(v);
        Ok(Some(AppStatus {
            name: name.into(),
            host_id: self.config.id.clone(),
            version: current.version,
            state: state.into(),
            pid,
            last_start_ms: nonzero(slot.last_start_ms.load(Ordering::Acquire)),
            last_start_duration_ms: nonzero(slot.last_start_ms.load(Ordering::Acquire))
                .map(|_| slot.last_start_duration_ms.load(Ordering::Acquire)),
            requests_total: slot.requests_total.load(Ordering::Acquire),
            memory_bytes,
            limits: self.pool.cgroups().describe(),
            crashes,
            expires_at_ms,
            replica: Some(self.replicator.location(name)),
            data_error,
        }))
    }

    fn slot(&self, name: &str) -> std::io::Result<Arc<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(name) {
            return Ok(slot.clone());
        }
        let dir = self.app_dir(name);
        std::fs::create_dir_all(&dir)?;
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            log: Arc::new(AppLog::open(&dir.join("app.log"))?),
            requests: Arc::new(RequestLog::open(&dir.join("requests.log"))?),
            serving: tokio::sync::Mutex::new(None),
            deploying: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            last_active_ms: AtomicU64::new(crate::now_ms()),
            requests_total: AtomicU64::new(0),
            last_start_ms: AtomicU64::new(0),
            last_start_duration_ms: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            data_error: Mutex::new(None),
            crons_running: Mutex::new(HashSet::new()),
            cpu_counted: Mutex::new((0, 0.0)),
        });
        slots.insert(name.to_owned(), slot.clone());
        Ok(slot)
    }

    fn app_dir(&self, name: &str) -> PathBuf {
        debug_assert!(steady_proto::name::validate(name).is_ok());
        self.config.data.join("apps").join(name)
    }

    async fn start(&self, slot: &Slot, current: &Current) -> Result<AppProcess, StartError> {
        let process = self.start_in(slot, current, false).await?;
        slot.last_start_ms.store(crate::now_ms(), Ordering::Release);
        slot.last_start_duration_ms.store(process.start_ms, Ordering::Release);
        Ok(process)
    }

    /// Hands `current` to a sandbox; a trial runs on the copy of the data in `trial/`.
    async fn start_in(&self, slot: &Slot, current: &Current, trial: bool) -> Result<AppProcess, StartError> {
        if !trial {
            self.ensure_data(slot).await?;
        }
        // Read before a sandbox is taken: an app whose variables cannot be read does not start
        // without them.
        let secrets = self.secrets.load(&slot.name).await.map_err(|e| StartError::Data(e.to_string()))?;
        let mut env =
            vec![("STEADY_APP".into(), slot.name.clone()), ("STEADY_VERSION".into(), current.version.to_string())];
        env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let sandbox = self.pool.take().await?;
        let on_exit: Option<crate::process::ExitHook> = (!trial).then(|| {
            let (replicator, app) = (self.replicator.clone(), slot.name.clone());
            Box::new(move || {
                Box::pin(async move {
                    // Errors are in the app's log; the data stays on this host either way.
                    let _ = replicator.detach(&app).await;
                }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            }) as crate::process::ExitHook
        });
        let version = current.version;
        let assignment = Assignment {
            bundle_dir: self.config.data.join("bundles").join(&current.bundle),
            data_dir: self.app_dir(&slot.name).join(if trial { "trial" } else { "data" }),
            keep_data: !trial,
            env,
            version,
            log: slot.log.clone(),
            label: if trial { format!("version {version} (trial)") } else { format!("version {version}") },
            on_exit,
        };
        let started = sandbox.assign(assignment, self.config.start_timeout_ms).await;
        self.pool.replenish();
        let process = started?;
        if !trial {
            // Off the request's path: the app answers while its databases are registered.
            self.replicator.attach_soon(&slot.name, &process.data_dir(), slot.log.clone());
        }
        Ok(process)
    }

    /// Makes sure the app's data directory is in its place before a start (the caller holds
    /// `serving` and no process of the app runs): a host without it restores it from the
    /// replica. A failed restore is the start's error — the app never starts on empty data
    /// when a replica says it had some.
    async fn ensure_data(&self, slot: &Slot) -> Result<(), StartError> {
        let data_dir = self.app_dir(&slot.name).join("data");
        if data_dir.is_dir() {
            return Ok(());
        }
        let started = Instant::now();
        let restored = self.replicator.restore(&slot.name, &data_dir, None).await;
        *slot.data_error.lock().unwrap_or_else(|p| p.into_inner()) = restored.as_ref().err().map(|e| e.to_string());
        match restored {
            Ok(databases) if databases.is_empty() => Ok(()),
            Ok(databases) => {
                let ms = started.elapsed().as_millis();
                slot.log.line("steady", &format!("restored {} from the replica in {ms} ms", databases.join(", ")));
                Ok(())
            }
            Err(error) => {
                slot.log.line("steady", &format!("not started: {error}"));
                tracing::error!(app = %slot.name, %error, "restore failed");
                Err(StartError::Data(error.to_string()))
            }
        }
    }

    /// Runs forever: registers databases that running apps created since they started.
    pub async fn replicate_new_databases(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(DATABASE_SCAN_INTERVAL_MS));
        loop {
            ticker.tick().await;
            self.replicator.rescan().await;
        }
    }

    /// Runs forever: keeps the pool of warm sandboxes full.
    pub async fn keep_warm(self: Arc<Self>) {
        self.pool.keep_warm().await
    }

    /// Runs `target` against a copy of the app's data and asks it for `/`: a version that
    /// does not start, or answers 5xx, never touches the live data. Skipped when there is no
    /// data to protect, and (logged) when it is larger than [`TRIAL_COPY_BYTES_MAX`].
    async fn trial(&self, slot: &Slot, target: &Current) -> Result<(), String> {
        let version = target.version;
        let app_dir = self.app_dir(&slot.name);
        let copy = app_dir.join("trial");
        // The serving process (if any) holds the data while it runs; holding its slot keeps
        // the data where it is for the copy.
        let serving = slot.serving.lock().await;
        if serving.as_ref().is_none_or(|p| !p.is_alive()) {
            self.ensure_data(slot).await.map_err(|e| e.to_string())?;
        }
        let data = serving.as_ref().filter(|p| p.is_alive()).map_or_else(|| app_dir.join("data"), |p| p.data_dir());
        let size = directory_bytes(&data).map_err(|e| format!("measuring the data: {e}"))?;
        if size == 0 {
            return Ok(());
        }
        if size > TRIAL_COPY_BYTES_MAX {
            slot.log.line("steady", &format!("version {version} trial skipped: data is {size} bytes"));
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&copy);
        copy_directory(&data, &copy).map_err(|e| format!("copying the data: {e}"))?;
        drop(serving);
        let outcome = match self.start_in(slot, target, true).await {
            Ok(process) => {
                let checked = check_answers(&process.socket, &slot.name).await;
                process.stop().await;
                checked
            }
            Err(error) => Err(error.to_string()),
        };
        let _ = std::fs::remove_dir_all(&copy);
        match &outcome {
            Ok(()) => slot.log.line("steady", &format!("version {version} passed its trial on a copy of the data")),
            Err(message) => {
                slot.log.line("steady", &format!("version {version} failed its trial on a copy of the data: {message}"))
            }
        }
        outcome
    }

    /// Gives a request a running `name`, starting it first if needed.
    pub async fn wake(&self, name: &str) -> Result<Lease, WakeError> {
        if self.moves.departed_to(name).is_some() {
            return Err(WakeError::Departed(name.into()));
        }
        if let Some(lease) = self.lease_running(name)? {
            return Ok(lease);
        }
        let current = self.store().current(name)?.ok_or_else(|| WakeError::Unknown(name.into()))?;
        let slot = self.slot(name)?;
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.start_queue_max {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(WakeError::QueueFull(name.into()));
        }
        let result = self.wake_slot(&slot, &current).await;
        slot.waiting.fetch_sub(1, Ordering::AcqRel);
        let (socket, started) = result?;
        if started {
            self.started.notify_one();
        }
        slot.requests_total.fetch_add(1, Ordering::AcqRel);
        Ok(Lease { socket, slot })
    }

    /// A lease on `name`'s live process without asking the store, or `None` when that takes
    /// the slow path: no slot yet, no live process, or its `serving` lock held (a start, a
    /// deploy, a drain), so a queue on the lock keeps its bound. A live serving process always
    /// runs the current version (deploys and rollbacks record a version before they serve it;
    /// deletion takes the process out first), and SQLite re-plans the current-version query at
    /// each new app name bound to it, which cost more than the proxying (docs/notes.md).
    fn lease_running(&self, name: &str) -> Result<Option<Lease>, WakeError> {
        let Some(slot) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned() else {
            return Ok(None);
        };
        let Ok(serving) = slot.serving.try_lock() else { return Ok(None) };
        // As in `wake_slot`: the app may have left since the caller's check (a move's drain).
        if self.moves.departed_to(name).is_some() {
            return Err(WakeError::Departed(name.into()));
        }
        let Some(process) = serving.as_ref().filter(|p| p.is_alive()) else { return Ok(None) };
        self.enter(&slot)?;
        let socket = process.socket.clone();
        drop(serving);
        slot.requests_total.fetch_add(1, Ordering::AcqRel);
        Ok(Some(Lease { socket, slot }))
    }

    /// After a request to the process behind `lease` failed before any answer: once hostd has
    /// seen that process exit (killed or crashed under the request; waited for at most
    /// [`EXIT_SEEN_WAIT_MS`]), wakes the app again. `None` when the process lives on (the app
    /// itself dropped the connection) or the new start fails.
    pub async fn wake_again(&self, name: &str, lease: &Lease) -> Option<Lease> {
        let wait = Duration::from_millis(EXIT_SEEN_WAIT_MS);
        let mut exited = {
            let serving = tokio::time::timeout(wait, lease.slot.serving.lock()).await.ok()?;
            match serving.as_ref() {
                Some(process) if process.socket == lease.socket => process.exit_watch(),
                // Already replaced by a newer process.
                _ => None?,
            }
        };
        let gone = {
            let waited = tokio::time::timeout(wait, exited.wait_for(Option::is_some)).await;
            matches!(waited, Ok(Ok(_)))
        };
        if !gone {
            return None;
        }
        self.wake(name).await.ok()
    }

    /// The app behind `lease` answered a request: its exits so far were not a crash loop.
    pub fn note_answered(&self, lease: &Lease) {
        let mut health = lease.slot.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.crashes > 0 && health.retry_at.is_none_or(|at| at <= Instant::now()) {
            (health.crashes, health.retry_at) = (0, None);
        }
    }

    /// Takes a place among the app's in-flight requests (called holding `serving`).
    fn enter(&self, slot: &Slot) -> Result<(), WakeError> {
        if slot.in_flight.fetch_add(1, Ordering::AcqRel) >= self.config.app_concurrency_max {
            if slot.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                slot.drained.notify_waiters();
            }
            return Err(WakeError::Busy(slot.name.clone()));
        }
        Ok(())
    }

    /// The socket of the slot's live process, and whether this call started it. On success
    /// the caller holds a place in `in_flight` and must build a [`Lease`] to give it back.
    async fn wake_slot(&self, slot: &Slot, current: &Current) -> Result<(PathBuf, bool), WakeError> {
        let deadline = Duration::from_millis(self.config.start_timeout_ms);
        let mut serving = tokio::time::timeout(deadline, slot.serving.lock())
            .await
            .map_err(|_| WakeError::Deadline(slot.name.clone()))?;
        // The app may have left while this request waited for the lock (a move's drain).
        if self.moves.departed_to(&slot.name).is_some() {
            return Err(WakeError::Departed(slot.name.clone()));
        }
        if let Some(process) = serving.as_ref() {
            if process.is_alive() {
                self.enter(slot)?;
                return Ok((process.socket.clone(), false));
            }
            if process.crashed() {
                let lived_ms = process.spawned_at.elapsed().as_millis() as u64;
                self.note_crash(slot, lived_ms);
            }
            *serving = None;
        }
        self.refuse_while_looping(slot)?;
        match self.start(slot, current).await {
            Ok(process) => {
                tracing::info!(app = %slot.name, version = current.version, start_ms = process.start_ms, "app woke");
                self.metrics.cold_starts.inc();
                self.metrics.cold_start_seconds.observe(process.start_ms as f64 / 1000.0);
                let socket = process.socket.clone();
                *serving = Some(process);
                self.enter(slot)?;
                Ok((socket, true))
            }
            Err(error) => {
                // Missing data is the platform's trouble, not the app's: no crash-loop backoff.
                if !matches!(error, StartError::Data(_)) {
                    self.note_crash(slot, 0);
                }
                Err(WakeError::Start { app: slot.name.clone(), error })
            }
        }
    }

    /// Counts an unexpected exit; at the threshold, pauses starts with a doubling backoff.
    fn note_crash(&self, slot: &Slot, lived_ms: u64) {
        self.metrics.crashes.inc();
        let mut health = slot.health.lock().unwrap_or_else(|p| p.into_inner());
        health.crashes = if lived_ms >= CRASH_RESET_AFTER_MS { 1 } else { health.crashes + 1 };
        if health.crashes < CRASH_LOOP_THRESHOLD {
            return;
        }
        let doublings = (health.crashes - CRASH_LOOP_THRESHOLD).min(16);
        let pause_ms = (CRASH_BACKOFF_MS_MIN << doublings).min(CRASH_BACKOFF_MS_MAX);
        health.retry_at = Some(Instant::now() + Duration::from_millis(pause_ms));
        slot.log.line("steady", &format!("crash loop: {} exits in a row; next start in {pause_ms} ms", health.crashes));
        tracing::warn!(app = %slot.name, crashes = health.crashes, pause_ms, "app is crash-looping");
    }

    fn refuse_while_looping(&self, slot: &Slot) -> Result<(), WakeError> {
        let health = slot.health.lock().unwrap_or_else(|p| p.into_inner());
        match health.retry_at {
            Some(at) if at > Instant::now() => Err(WakeError::CrashLoop {
                app: slot.name.clone(),
                crashes: health.crashes,
                retry_after_s: (at - Instant::now()).as_secs() + 1,
            }),
            _ => Ok(()),
        }
    }

    /// Deploys `archive` as the next version of `name` (temporary until `expires_at_ms` if
    /// set): store, unpack, start beside the old version, record with the slicer, swap.
    /// Returns the result and the routing-table version that includes the app.
    pub async fn deploy(
        &self,
        name: &str,
        archive: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<(DeployResult, u64), DeployError> {
        // Validated before anything is stored: a bad bundle leaves no trace in the blob store.
        let digest = steady_blob::digest(archive);
        self.unpack(&digest, archive)?;
        self.storage.put(bytes::Bytes::copy_from_slice(archive)).await?;
        let slot = self.slot(name)?;
        let _one_change_at_a_time = slot.deploying.lock().await;
        let (app_id, version) = self.store().begin_version(name, &digest, crate::now_ms(), expires_at_ms)?;
        let target = Current { app_id, version, bundle: digest.clone() };
        let table_version = self.activate(&slot, &target, true).await?;
        tracing::info!(app = %name, version, "deployed");
        let result = DeployResult {
            name: name.into(),
            version,
            host_id: self.config.id.clone(),
            bundle: format!("sha256:{digest}"),
        };
        Ok((result, table_version))
    }

    /// Sets the gauges that describe the present (apps by state, the start queue, warm
    /// sandboxes, replication lag) and returns the metrics in the text exposition format.
    pub fn render_metrics(&self) -> String {
        use crate::metrics::{AppState, StateLabels};
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let (mut running, mut waiting) = (0i64, 0i64);
        for slot in &slots {
            let alive = slot.serving.try_lock().map_or(true, |s| s.as_ref().is_some_and(|p| p.is_alive()));
            running += i64::from(alive);
            waiting += slot.waiting.load(Ordering::Acquire) as i64;
            self.app_usage_metrics(slot);
        }
        let known = self.store().list().map(|apps| apps.len() as i64).unwrap_or(slots.len() as i64);
        self.metrics.apps.get_or_create(&StateLabels { state: AppState::Running }).set(running);
        self.metrics.apps.get_or_create(&StateLabels { state: AppState::Asleep }).set((known - running).max(0));
        self.metrics.start_queue_depth.set(waiting);
        self.metrics.held_requests.set(self.held_requests() as i64);
        self.metrics.warm_sandboxes.set(self.pool.warm_count() as i64);
        self.metrics.set_replication_lags(&self.replicator.lags());
        self.metrics.encode()
    }

    /// Sets the app's memory gauge and advances its CPU counter by what its process used since
    /// the last scrape (a new process starts from its own zero).
    fn app_usage_metrics(&self, slot: &Slot) {
        let labels = crate::metrics::AppLabels { app: slot.name.clone() };
        let usage = slot.serving.try_lock().ok().and_then(|serving| {
            let process = serving.as_ref().filter(|p| p.is_alive())?;
            Some((process.pid(), process.memory_bytes(), process.cpu_seconds()))
        });
        let Some((pid, memory, cpu)) = usage else {
            self.metrics.app_memory_bytes.remove(&labels);
            return;
        };
        if let Some(memory) = memory {
            self.metrics.app_memory_bytes.get_or_create(&labels).set(memory as i64);
        }
        if let Some(cpu) = cpu {
            let mut counted = slot.cpu_counted.lock().unwrap_or_else(|p| p.into_inner());
            let before = if counted.0 == pid { counted.1 } else { 0.0 };
            // The series exists (at 0) as soon as the app runs, and only ever grows.
            self.metrics.app_cpu_seconds.get_or_create(&labels).inc_by((cpu - before).max(0.0));
            *counted = (pid, cpu.max(before));
        }
    }

    /// Unpacks the bundle `digest` (once) into its read-only directory.
    fn unpack(&self, digest: &str, archive: &[u8]) -> Result<(), BundleError> {
        let bundle_dir = self.config.data.join("bundles").join(digest);
        if !bundle_dir.join(bundle::ENTRY_FILE).is_file() {
            let limits = Limits { files_max: BUNDLE_FILES_MAX, unpacked_bytes_max: BUNDLE_UNPACKED_BYTES_MAX };
            bundle::unpack(archive, &bundle_dir, limits)?;
        }
        Ok(())
    }

    /// Takes over the apps the routing table says this host holds but it does not have (its
    /// disk was replaced, or it is a new machine under this host's id): fetches each bundle
    /// from the blob store and records the version; the first start restores the data from
    /// the replica. Returns how many were adopted; failures are logged and skipped.
    /// Also takes over the apps of hosts the slicer declared dead whose slices it now owns,
    /// and records itself as their holder.
    pub async fn adopt(&self, table: &steady_proto::wire::RoutingTable) -> usize {
        let me = self.config.id.as_str();
        let live: HashSet<&str> = table.hosts.iter().map(|h| h.id.as_str()).collect();
        let local = self.local_names();
        let mine = |a: &&steady_proto::wire::AppEntry| {
            let owned = table.owner_of(&a.name).is_some_and(|o| o.id == me);
            let held_alive = live.contains(a.host_id.as_str());
            // A move under way between live hosts is the mover's, and an app that left this
            // host is not taken back from the table that still names this host.
            let moving = a.moving_to.is_some() && held_alive;
            !local.contains(&a.name)
                && !moving
                && self.moves.departed_to(&a.name).is_none()
                && (a.host_id == me || (owned && !held_alive))
        };
        let mut adopted = 0;
        for entry in table.apps.iter().filter(mine) {
            let Some(bundle) = &entry.bundle else { continue };
            match self.adopt_one(entry, bundle).await {
                Ok(true) => {
                    adopted += 1;
                    // Requests held for it go on now, not after the rest are adopted.
                    self.moves.arrivals.notify_waiters();
                }
                Ok(false) => continue,
                Err(error) => {
                    tracing::error!(app = %entry.name, %error, "adopting an app failed");
                    continue;
                }
            }
            if entry.host_id != me {
                let claimed = self.membership.app_deployed(&entry.name, entry.version, bundle, entry.expires_at_ms);
                if let Err(error) = claimed.await {
                    tracing::error!(app = %entry.name, %error, "recording an adopted app failed");
                }
            }
        }
        adopted
    }

    /// Lets go of apps the table says another live host holds now (this host was declared
    /// dead and came back): stops them and forgets them here, keeping their data directory
    /// aside (`data.released-<ms>`) — never serving a stale copy, never deleting.
    pub async fn release_stale(&self, table: &steady_proto::wire::RoutingTable) {
        let me = self.config.id.as_str();
        let live: HashSet<&str> = table.hosts.iter().map(|h| h.id.as_str()).collect();
        let local = self.local_names();
        let held_elsewhere = table.apps.iter().filter(|a| {
            a.host_id != me
                && a.moving_to.as_deref() != Some(me)
                && live.contains(a.host_id.as_str())
                && local.contains(&a.name)
        });
        for entry in held_elsewhere {
            if let Err(error) = self.release(&entry.name, &entry.host_id).await {
                tracing::error!(app = %entry.name, %error, "releasing an app another host holds failed");
            }
        }
    }

    /// The apps this host has, in one read of its database (a table change touches them all).
    fn local_names(&self) -> HashSet<String> {
        self.store().list().unwrap_or_default().into_iter().map(|app| app.name).collect()
    }

    /// Acts on a routing table: hand off, let go of and adopt apps as it says.
    /// Moves between live hosts are the slicer's to drive (see [`moves`]).
    pub async fn follow(&self, table: steady_proto::wire::RoutingTable) {
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(table.clone()));
        self.moves.arrivals.notify_waiters();
        self.release_stale(&table).await;
        let adopted = self.adopt(&table).await;
        if adopted > 0 {
            tracing::info!(version = table.version, adopted, "apps adopted from the routing table");
            self.moves.arrivals.notify_waiters();
        }
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), DeployError> {
        let slot = self.slot(name)?;
        let _one_change_at_a_time = slot.deploying.lock().await;
        if let Some(process) = slot.serving.lock().await.take() {
            process.stop().await;
        }
        let data = self.app_dir(name).join("data");
        if data.exists() {
            std::fs::rename(&data, self.app_dir(name).join(format!("data.released-{}", crate::now_ms())))?;
        }
        self.store().delete(name)?;
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.secrets.forget(name);
        slot.log.line("steady", &format!("released: host {holder} holds this app now; local data kept aside"));
        tracing::warn!(app = %name, holder, "app released to another host");
        Ok(())
    }

    /// Runs forever: heartbeats to the slicer (registering again when it no longer knows this
    /// host) and follows the routing table, adopting and releasing apps as it changes.
    pub async fn follow_cluster(self: Arc<Self>, mut version: u64) {
        let heartbeat = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(heartbeat.config.heartbeat_ms));
            let mut counted: HashMap<String, (u64, f64)> = HashMap::new();
            let mut last = Instant::now();
            loop {
                ticker.tick().await;
                let load = heartbeat.load(&mut counted, last.elapsed());
                last = Instant::now();
                match heartbeat.membership.heartbeat(&load).await {
                    Ok(true) => {}
                    Ok(false) => match heartbeat.membership.register().await {
                        Ok(table) => tracing::warn!(version = table.version, "registered again with the slicer"),
                        Err(error) => tracing::error!(%error, "registering again failed"),
                    },
                    Err(error) => tracing::warn!(%error, "heartbeat failed"),
                }
            }
        });
        loop {
            match self.membership.next_table(version, TABLE_WAIT_MS).await {
                Ok(Some(table)) => {
                    version = table.version;
                    self.follow(table).await;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "watching the routing table failed");
                    tokio::time::sleep(Duration::from_millis(TABLE_RETRY_MS)).await;
                }
            }
        }
    }

    /// This host's load for a heartbeat: each app's request rate, smoothed over about
    /// [`LOAD_SMOOTHING_S`] so that the slicer does not move apps on noise (`counted` keeps
    /// each app's request total and smoothed rate between calls), and the memory of the
    /// running ones.
    fn load(&self, counted: &mut HashMap<String, (u64, f64)>, since: Duration) -> steady_proto::wire::Heartbeat {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let seconds = since.as_secs_f64().max(0.001);
        let mut apps: Vec<steady_proto::wire::AppLoad> = slots
            .iter()
            .map(|slot| {
                let total = slot.requests_total.load(Ordering::Acquire);
                let (before, smoothed) = counted.get(&slot.name).copied().unwrap_or((total, 0.0));
                let now_per_s = total.saturating_sub(before) as f64 / seconds;
                let weight = 1.0 - (-seconds / LOAD_SMOOTHING_S).exp();
                let requests_per_s = smoothed + weight * (now_per_s - smoothed);
                counted.insert(slot.name.clone(), (total, requests_per_s));
                let memory_bytes = slot
                    .serving
                    .try_lock()
                    .ok()
                    .and_then(|s| s.as_ref().filter(|p| p.is_alive()).and_then(|p| p.memory_bytes()))
                    .unwrap_or(0);
                steady_proto::wire::AppLoad { name: slot.name.clone(), requests_per_s, memory_bytes }
            })
            .collect();
        counted.retain(|name, _| slots.iter().any(|s| s.name == *name));
        apps.sort_by(|a, b| b.requests_per_s.total_cmp(&a.requests_per_s));
        apps.truncate(steady_proto::wire::HEARTBEAT_APPS_MAX);
        steady_proto::wire::Heartbeat { apps }
    }

    async fn adopt_one(&self, entry: &steady_proto::wire::AppEntry, bundle: &str) -> Result<bool, DeployError> {
        if self.store().current(&entry.name)?.is_some() {
            return Ok(false);
        }
        let archive = self.storage.get(bundle).await?;
        self.unpack(bundle, &archive)?;
        // Its variables may have changed on the host that had it.
        self.secrets.forget(&entry.name);
        let now_ms = crate::now_ms();
        let adopted = self.store().adopt(&entry.name, entry.version, bundle, entry.expires_at_ms, now_ms)?;
        if adopted {
            let slot = self.slot(&entry.name)?;
            slot.log.line("steady", &format!("version {} adopted on host {}", entry.version, self.config.id));
            tracing::info!(app = %entry.name, version = entry.version, "app adopted");
        }
        Ok(adopted)
    }

    /// Makes an earlier ready version current again (the one before the current by default).
    /// The database is left as it is.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> Result<(DeployResult, u64), DeployError> {
        let current = self.store().current(name)?.ok_or_else(|| DeployError::Unknown(name.into()))?;
        let target = self.store().rollback_target(name, version)?.ok_or_else(|| {
            DeployError::NoSuchVersion(match version {
                Some(v) => format!("{name} has no ready version {v} to roll back to"),
                None => format!("{name} has no ready version before {}", current.version),
            })
        })?;
        let slot = self.slot(name)?;
        let _one_change_at_a_time = slot.deploying.lock().await;
        slot.log.line(
            "steady",
            &format!("rolling back from version {} to {} (database unchanged)", current.version, target.version),
        );
        let table_version = self.activate(&slot, &target, false).await?;
        let result = DeployResult {
            name: name.into(),
            version: target.version,
            host_id: self.config.id.clone(),
            bundle: format!("sha256:{}", target.bundle),
        };
        Ok((result, table_version))
    }

    /// Swaps the serving process for one of `target`: trial on a copy of the data, then (with
    /// new requests held) drain and stop the old process, start `target` on the data, record it
    /// with the slicer, make it current. Only one process ever holds an app's data. If `target`
    /// fails at any step the old version is started again. `new_attempt` says whether `target`
    /// is a version attempt to finish (a deploy) or an existing ready version (a rollback).
    async fn activate(&self, slot: &Slot, target: &Current, new_attempt: bool) -> Result<u64, DeployError> {
        let version = target.version;
        let fail = |error: DeployError| {
            self.metrics.deployed(crate::metrics::Outcome::Failed);
            if new_attempt {
                self.store().finish_version(target.app_id, version, Outcome::Failed)?;
            }
            Err(error)
        };
        if let Err(message) = self.trial(slot, target).await {
            let log = slot.log.tail(FAILED_START_LOG_LINES);
            return fail(DeployError::Trial { version, message, log });
        }
        let previous = self.store().current(&slot.name)?;
        let expires_at_ms = self.store().expires_at(&slot.name)?;
        let mut serving = slot.serving.lock().await;
        let was_running = self.retire(slot, &mut serving).await;
        let previous = previous.filter(|_| was_running);
        let process = match self.start(slot, target).await {
            Ok(process) => process,
            Err(error) => {
                slot.log.line("steady", &format!("version {version} failed to start: {error}"));
                let log = slot.log.tail(FAILED_START_LOG_LINES);
                self.resume(slot, &mut serving, previous).await;
                return fail(DeployError::Start { version, error, log });
            }
        };
        let checked = match schedule::parse_all(&process.schedules) {
            Ok(_) => {
                let recorded = self.membership.app_deployed(&slot.name, version, &target.bundle, expires_at_ms);
                recorded.await.map_err(DeployError::from)
            }
            Err(message) => {
                slot.log.line("steady", &format!("version {version} refused: {message}"));
                Err(DeployError::BadSchedule { version, message })
            }
        };
        let table_version = match checked {
            Ok(table_version) => table_version,
            Err(error) => {
                process.stop().await;
                self.resume(slot, &mut serving, previous).await;
                return fail(error);
            }
        };
        self.store().finish_version(target.app_id, version, Outcome::Ready)?;
        self.metrics.deployed(crate::metrics::Outcome::Serving);
        self.store().set_schedules(&slot.name, &process.schedules, crate::now_ms())?;
        *slot.health.lock().unwrap_or_else(|p| p.into_inner()) = Health::default();
        *serving = Some(process);
        drop(serving);
        slot.log.line("steady", &format!("version {version} serving"));
        self.started.notify_one();
        Ok(table_version)
    }

    /// Takes the serving process out of `serving` and stops it once its in-flight requests
    /// are done (waiting at most [`DEPLOY_DRAIN_MS_MAX`]). Returns whether one was running.
    /// The caller holds `serving`, so no new request reaches the old process meanwhile.
    async fn retire(&self, slot: &Slot, serving: &mut Option<AppProcess>) -> bool {
        {
            let Some(process) = serving.take().filter(|p| p.is_alive()) else { return false };
            let deadline = tokio::time::Instant::now() + Duration::from_millis(DEPLOY_DRAIN_MS_MAX);
            loop {
                let drained = slot.drained.notified();
                let in_flight = slot.in_flight.load(Ordering::Acquire);
                if in_flight == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, drained).await.is_err() {
                    let line = format!("version {} stopped with {in_flight} requests still in flight", process.version);
                    slot.log.line("steady", &line);
                    break;
                }
            }
            process.stop().await;
            true
        }
    }

    /// After a failed swap: starts `previous` again (if it was running) so the app keeps its
    /// last good version.
    async fn resume(&self, slot: &Slot, serving: &mut Option<AppProcess>, previous: Option<Current>) {
        let Some(previous) = previous else { return };
        match self.start(slot, &previous).await {
            Ok(process) => {
                slot.log.line("steady", &format!("version {} serving again", previous.version));
                *serving = Some(process);
            }
            Err(error) => {
                slot.log.line("steady", &format!("version {} did not start again: {error}", previous.version));
            }
        }
    }

    /// Ships every committed transaction of `name`'s databases to the replica now. Returns
    /// `None` if the app is not here; an asleep app's replica was completed when it stopped.
    pub async fn backup(&self, name: &str) -> Result<Option<serde_json::Value>, DeployError> {
        let Some(slot) = self.existing_slot(name).map_err(|e| DeployError::Io(std::io::Error::other(e)))? else {
            return Ok(None);
        };
        let serving = slot.serving.lock().await;
        let running = serving.as_ref().is_some_and(|p| p.is_alive());
        let synced = if running { self.replicator.sync_now(name).await? } else { 0 };
        drop(serving);
        let databases = self.replicator.manifest(name).await?.unwrap_or_default();
        slot.log.line("steady", &format!("backup: {synced} databases synced to the replica now"));
        Ok(Some(serde_json::json!({ "name": name, "running": running, "synced": synced, "databases": databases })))
    }

    /// Replaces `name`'s data with the replica as of `at` (RFC 3339; the latest when `None`).
    /// The app is stopped first; its current data is kept beside the new one
    /// (`data.before-restore-<ms>`), never deleted, and put back if the restore fails. The next
    /// request starts the app on the restored data.
    pub async fn restore(&self, name: &str, at: Option<&str>) -> Result<Option<serde_json::Value>, DeployError> {
        let Some(slot) = self.existing_slot(name).map_err(|e| DeployError::Io(std::io::Error::other(e)))? else {
            return Ok(None);
        };
        let _one_change_at_a_time = slot.deploying.lock().await;
        let mut serving = slot.serving.lock().await;
        self.retire(slot.as_ref(), &mut serving).await;
        let data = self.app_dir(name).join("data");
        let kept = format!("data.before-restore-{}", crate::now_ms());
        let aside = self.app_dir(name).join(&kept);
        let had_data = data.is_dir();
        if had_data {
            std::fs::rename(&data, &aside)?;
        }
        match self.replicator.restore(name, &data, at).await {
            Ok(databases) => {
                let when = at.unwrap_or("the latest replicated state");
                slot.log.line(
                    "steady",
                    &format!("restored {} as of {when}; earlier data kept in {kept}", databases.join(", ")),
                );
                Ok(Some(
                    serde_json::json!({ "name": name, "databases": databases, "at": at, "kept": had_data.then_some(kept) }),
                ))
            }
            Err(error) => {
                if had_data {
                    std::fs::rename(&aside, &data)?;
                }
                slot.log.line("steady", &format!("restore failed, data unchanged: {error}"));
                Err(error.into())
            }
        }
    }

    /// Stops and forgets `name`: its process, records, data and logs. Returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, DeployError> {
        if self.store().current(name)?.is_none() && self.store().versions(name)?.is_empty() {
            return Ok(false);
        }
        let slot = self.slot(name)?;
        let _one_change_at_a_time = slot.deploying.lock().await;
        self.membership.app_deleted(name).await?;
        if let Some(process) = slot.serving.lock().await.take() {
            process.stop().await;
        }
        self.store().delete(name)?;
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        std::fs::remove_dir_all(self.app_dir(name))?;
        let replicas = self.storage.list(&format!("replicas/{name}/")).await?;
        for key in &replicas {
            self.storage.delete_key(key).await?;
        }
        if let Err(error) = self.secrets.delete(name).await {
            tracing::warn!(app = %name, %error, "deleting the app's environment variables failed");
        }
        tracing::info!(app = %name, "deleted");
        Ok(true)
    }

    /// Runs forever: puts idle apps to sleep and collects expired temporary apps.
    pub async fn housekeeping(self: Arc<Self>) {
        let interval_ms = (self.config.idle_timeout_ms / 4).clamp(10, HOUSEKEEPING_INTERVAL_MS_MAX);
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.started.notified() => {}
            }
            self.sleep_idle().await;
            self.enforce_awake_max().await;
            self.collect_expired().await;
            self.flush_request_logs();
        }
    }

    /// Writes the request log lines waiting in memory (`log::RequestLog`), so that a quiet app's
    /// last requests reach its file within a housekeeping tick.
    fn flush_request_logs(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for slot in slots {
            slot.requests.flush();
        }
    }

    /// Keeps at most `awake_max` app processes: the least recently used idle ones sleep first.
    async fn enforce_awake_max(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut awake: Vec<(u64, Arc<Slot>)> = Vec::with_capacity(slots.len());
        for slot in slots {
            let running = slot.serving.try_lock().map_or(true, |s| s.as_ref().is_some_and(|p| p.is_alive()));
            if running {
                awake.push((slot.last_active_ms.load(Ordering::Acquire), slot));
            }
        }
        let excess = awake.len().saturating_sub(self.config.awake_max);
        if excess == 0 {
            return;
        }
        awake.sort_by_key(|(last_active_ms, _)| *last_active_ms);
        let mut evicted = 0;
        for (_, slot) in awake {
            if evicted == excess {
                break;
            }
            let busy = slot.in_flight.load(Ordering::Acquire) > 0 || slot.waiting.load(Ordering::Acquire) > 0;
            let Ok(mut serving) = slot.serving.try_lock() else { continue };
            if busy {
                continue;
            }
            if let Some(process) = serving.take_if(|p| p.is_alive()) {
                process.stop().await;
                slot.log
                    .line("steady", &format!("version {} asleep: host at its limit of awake apps", process.version));
                evicted += 1;
            }
        }
    }

    /// Puts `name` to sleep now, as the idle timer would. Returns whether a process was stopped;
    /// `None` if the app is not here.
    pub async fn sleep_now(&self, name: &str) -> Result<Option<bool>, WakeError> {
        let Some(slot) = self.existing_slot(name)? else { return Ok(None) };
        let mut serving = slot.serving.lock().await;
        let Some(process) = serving.take_if(|p| p.is_alive()) else { return Ok(Some(false)) };
        process.stop().await;
        slot.log.line("steady", &format!("version {} asleep: asked to sleep", process.version));
        Ok(Some(true))
    }

    async fn sleep_idle(&self) {
        let now_ms = crate::now_ms();
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for slot in slots {
            let idle_ms = now_ms.saturating_sub(slot.last_active_ms.load(Ordering::Acquire));
            let busy = slot.in_flight.load(Ordering::Acquire) > 0 || slot.waiting.load(Ordering::Acquire) > 0;
            if busy || idle_ms < self.config.idle_timeout_ms {
                continue;
            }
            let Ok(mut serving) = slot.serving.try_lock() else {
                continue;
            };
            if slot.in_flight.load(Ordering::Acquire) > 0 {
                continue;
            }
            if let Some(process) = serving.take_if(|p| p.is_alive()) {
                process.stop().await;
                slot.log.line("steady", &format!("version {} asleep after {idle_ms} ms idle", process.version));
                tracing::info!(app = %slot.name, idle_ms, "app asleep");
            }
        }
    }

    async fn collect_expired(&self) {
        let expired = match self.store().expired(crate::now_ms()) {
            Ok(expired) => expired,
            Err(error) => return tracing::error!(%error, "listing expired apps"),
        };
        for name in expired {
            match self.delete(&name).await {
                Ok(_) => tracing::info!(app = %name, "temporary app collected"),
                Err(error) => {
                    tracing::warn!(app = %name, %error, "collecting a temporary app failed; will retry")
                }
            }
        }
    }

    /// Runs forever: fires each app's cron schedules at their ticks, waking apps as needed.
    /// Each tick is recorded before its handler runs, so no tick runs twice, also across a
    /// deploy or a hostd restart; ticks missed by more than [`CRON_LATE_MS_MAX`] are skipped.
    pub async fn crons(self: Arc<Self>) {
        let mut parsed: HashMap<String, Schedule> = HashMap::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(CRON_CHECK_INTERVAL_MS));
        loop {
            ticker.tick().await;
            let rows = match self.store().schedules() {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::error!(%error, "reading schedules");
                    continue;
                }
            };
            let now_ms = crate::now_ms();
            for row in rows {
                if !parsed.contains_key(&row.expression) {
                    let Ok(schedule) = Schedule::parse(&row.expression) else { continue };
                    parsed.insert(row.expression.clone(), schedule);
                }
                let Some(tick_ms) = latest_tick(&parsed[&row.expression], row.last_tick_ms, now_ms) else { continue };
                if let Err(error) = self.store().mark_tick(&row.app, &row.expression, tick_ms) {
                    tracing::error!(%error, "recording a cron tick");
                    continue;
                }
                if now_ms - tick_ms > CRON_LATE_MS_MAX {
                    tracing::warn!(app = %row.app, expression = %row.expression, "cron tick missed while the host was down");
                    continue;
                }
                tokio::spawn(self.clone().run_cron(row.app, row.expression));
            }
        }
    }

    async fn run_cron(self: Arc<Self>, app: String, expression: String) {
        let lease = match self.wake(&app).await {
            Ok(lease) => lease,
            Err(error) => {
                if let Ok(slot) = self.slot(&app) {
                    slot.log.line("steady", &format!("cron {expression:?} could not run: {error}"));
                }
                return;
            }
        };
        let slot = lease.slot.clone();
        if !slot.crons_running.lock().unwrap_or_else(|p| p.into_inner()).insert(expression.clone()) {
            slot.log.line("steady", &format!("cron {expression:?} skipped a tick: the previous run is still going"));
            return;
        }
        let started = Instant::now();
        let request = axum::http::Request::post("/")
            .header("host", format!("{app}.cron"))
            .header(HEADER_CRON, expression.as_str())
            .body(axum::body::Body::empty())
            .expect("static request");
        let timeout = Duration::from_millis(CRON_RUN_TIMEOUT_MS);
        let outcome = tokio::time::timeout(timeout, crate::ingress::send(&lease.socket, request)).await;
        let ms = started.elapsed().as_millis();
        let line = match outcome {
            Ok(Ok(response)) if response.status().is_success() => format!("cron {expression:?} ran in {ms} ms"),
            Ok(Ok(response)) => format!("cron {expression:?} failed in {ms} ms (HTTP {})", response.status().as_u16()),
            Ok(Err(error)) => format!("cron {expression:?} failed in {ms} ms: {error}"),
            Err(_) => format!("cron {expression:?} timed out after {CRON_RUN_TIMEOUT_MS} ms"),
        };
        slot.log.line("steady", &line);
        slot.crons_running.lock().unwrap_or_else(|p| p.into_inner()).remove(&expression);
    }

    /// Stops every app process (hostd is shutting down).
    pub async fn stop_all(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for slot in slots {
            if let Some(process) = slot.serving.lock().await.take() {
                process.stop().await;
                slot.log.line("steady", &format!("version {} stopped: host shutting down", process.version));
            }
        }
        self.pool.drain().await;
        self.pool.cgroups().remove_all();
    }
}
