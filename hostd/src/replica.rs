//! Replication of every running app's SQLite databases by one Litestream daemon per host.
//!
//! hostd starts `litestream replicate` with a generated configuration (no databases, a control
//! socket) in a clean, explicit environment, and restarts it with a backoff if it dies. When an
//! app starts, hostd registers each SQLite file in its data directory (the magic header decides,
//! not the name) over the control socket; new files are picked up by [`Replicator::rescan`].
//! When the process ends, before its data directory moves, hostd asks for a final sync and
//! unregisters the files, so a planned stop loses no acknowledged write. Which databases an app
//! has is written to a manifest next to its replicas; a host that lacks the data restores every
//! database the manifest names, checks each with `PRAGMA integrity_check`, and only then puts
//! the directory in place — a replica that is missing or bad is an error, never an empty start.
//!
//! While an app is attached, hostd also measures how far each of its databases is behind its
//! replica (the `app_replication_lag_seconds` metric): it polls Litestream's local position
//! over the control socket and looks for those transactions in the replica storage ([`lag`]).

mod lag;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::log::AppLog;

/// How often Litestream ships new transactions of a database registered over its control
/// socket (its fixed default for such databases): a write acknowledged longer ago than this
/// survives the loss of the host.
pub const SYNC_INTERVAL_MS: u64 = 1_000;
/// SQLite files start with these 16 bytes.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Most database files replicated per app.
pub const DATABASES_PER_APP_MAX: usize = 16;
/// Most directory entries looked at when searching an app's data for databases.
const DATA_ENTRIES_SCANNED_MAX: usize = 1_000;
/// How long hostd waits for the daemon's control socket after spawning it.
const DAEMON_START_TIMEOUT_MS: u64 = 10_000;
/// Longest control call (a final sync to a slow S3 included); Litestream gets the same bound
/// in seconds, so it gives up on its side first.
const CONTROL_TIMEOUT_MS: u64 = 12_000;
const CONTROL_TIMEOUT_S: u64 = 10;
/// Pauses between restarts of a dying daemon: doubling from the first to the last.
const RESTART_BACKOFF_MS_MIN: u64 = 200;
const RESTART_BACKOFF_MS_MAX: u64 = 30_000;
/// Longest a restore may take before it is abandoned.
const RESTORE_TIMEOUT_MS: u64 = 600_000;
/// Bytes of a failing command's output kept for its error.
const OUTPUT_BYTES_MAX: usize = 4 * 1024;
/// Name of the manifest listing an app's databases, next to their replicas.
pub const MANIFEST_NAME: &str = "manifest.json";
/// How often hostd reads Litestream's local position of every attached database.
const LAG_POLL_INTERVAL_MS: u64 = 250;
/// Longest read of a position or of the sync times (they are in Litestream's memory).
const LAG_CALL_TIMEOUT_MS: u64 = 1_000;
/// Largest answer to a position read (`{"txid": N}`).
const TXID_ANSWER_BYTES_MAX: usize = 1024;
/// Largest answer to a listing of every registered database (about 200 bytes each).
const LIST_ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// Where replicas go.
#[derive(Debug, Clone)]
pub enum ReplicaTarget {
    /// A directory (the embedded default): `<root>/replicas/<app>/<database>/`.
    File { root: PathBuf },
    /// An S3-compatible bucket: `s3://<bucket>/<prefix>replicas/<app>/<database>`.
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: String,
        path_style: bool,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
    },
}

impl ReplicaTarget {
    /// The replica target inside the blob store `config` describes (replicas live beside the
    /// bundles, under `replicas/`).
    pub fn from_config(config: &steady_blob::BlobConfig) -> Self {
        match config {
            steady_blob::BlobConfig::Local(local) => ReplicaTarget::File { root: local.path.clone() },
            steady_blob::BlobConfig::S3(s3) => ReplicaTarget::S3 {
                bucket: s3.bucket.clone(),
                prefix: match s3.prefix.as_str() {
                    "" => String::new(),
                    prefix if prefix.ends_with('/') => prefix.to_owned(),
                    prefix => format!("{prefix}/"),
                },
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                path_style: s3.path_style,
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.clone(),
            },
        }
    }

    /// The Litestream replica URL of one database of `app`.
    pub fn url(&self, app: &str, database: &str) -> String {
        match self {
            ReplicaTarget::File { root } => {
                format!("file://{}", root.join("replicas").join(app).join(database).display())
            }
            ReplicaTarget::S3 { bucket, prefix, endpoint, region, path_style, .. } => {
                let mut url = format!("s3://{bucket}/{prefix}replicas/{app}/{database}?region={region}");
                if let Some(endpoint) = endpoint {
                    url += &format!("&endpoint={endpoint}");
                }
                if *path_style {
                    url += "&forcePathStyle=true";
                }
                url
            }
        }
    }

    /// The blob-store key prefix under which Litestream puts the Level-0 objects of one
    /// database, one per transaction (`<first>-<last>.ltx`, 16 hex digits each). Its layout
    /// differs by backend: `ltx/0/` in a directory, `0000/` in a bucket.
    pub fn level0_prefix(&self, app: &str, database: &str) -> String {
        let level = match self {
            ReplicaTarget::File { .. } => "ltx/0",
            ReplicaTarget::S3 { .. } => "0000",
        };
        format!("replicas/{app}/{database}/{level}/")
    }

    /// The environment Litestream needs for this target (credentials), on top of a clean one.
    fn environment(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PATH", "/usr/bin:/bin".to_owned()), ("HOME", "/nonexistent".to_owned())];
        if let ReplicaTarget::S3 { access_key_id: Some(key), secret_access_key: Some(secret), .. } = self {
            env.extend([("LITESTREAM_ACCESS_KEY_ID", key.clone()), ("LITESTREAM_SECRET_ACCESS_KEY", secret.clone())]);
        }
        env
    }
}

/// What went wrong with replication or a restore.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("litestream could not be started: {0}")]
    Spawn(std::io::Error),
    #[error("litestream's control socket did not answer within {0} ms")]
    NotReady(u64),
    #[error("litestream {call} failed: {message}")]
    Control { call: &'static str, message: String },
    #[error("reading the replica manifest of {app:?}: {message}")]
    Manifest { app: String, message: String },
    #[error("restoring {database:?} of {app:?} failed: {message}")]
    Restore { app: String, database: String, message: String },
    #[error("the replica of {database:?} of {app:?} holds no state as of {at} (it begins later); pick a later time")]
    NoStateAt { app: String, database: String, at: String },
    #[error("the restored {database:?} of {app:?} failed its integrity check: {message}")]
    Integrity { app: String, database: String, message: String },
    #[error("app data files: {0}")]
    Io(#[from] std::io::Error),
}

/// An app whose databases are being replicated.
struct Attached {
    data_dir: PathBuf,
    log: Arc<AppLog>,
    /// File names registered with the daemon.
    databases: BTreeSet<String>,
}

/// Which app's log a daemon output line goes to: by the data directory it names.
type LogRoutes = Arc<Mutex<Vec<(PathBuf, Arc<AppLog>)>>>;

/// One attached database whose replication lag is measured.
struct Measured {
    /// The database file, as registered with the daemon.
    path: PathBuf,
    /// Blob-store key prefix of the replica's Level-0 objects, one per transaction.
    level0_prefix: String,
    backlog: Mutex<lag::Backlog>,
}

/// Measured databases by app and file name; an app is here while it is attached.
type MeasuredApps = HashMap<String, BTreeMap<String, Arc<Measured>>>;

/// The host's Litestream daemon and the apps it replicates.
pub struct Replicator {
    litestream: PathBuf,
    /// Holds the generated configuration and the control socket.
    dir: PathBuf,
    target: ReplicaTarget,
    manifests: Arc<dyn steady_blob::BlobStore>,
    attached: tokio::sync::Mutex<HashMap<String, Attached>>,
    /// Attachments under way, by app.
    attaching: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Apps whose last detach synced every registered database, with those databases: their
    /// replica is complete for them until the app is attached again.
    sealed: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Output routing: data directory → the app's log (read by the output pump).
    logs: LogRoutes,
    daemon_pid: AtomicI32,
    /// The databases of attached apps whose lag is measured.
    measured: Mutex<MeasuredApps>,
}

impl Replicator {
    /// A replicator for the daemon binary `litestream`, keeping its files in `dir`.
    pub fn new(
        litestream: PathBuf,
        dir: PathBuf,
        target: ReplicaTarget,
        manifests: Arc<dyn steady_blob::BlobStore>,
    ) -> Self {
        Self {
            litestream,
            dir,
            target,
            manifests,
            attached: tokio::sync::Mutex::new(HashMap::new()),
            attaching: Mutex::new(HashMap::new()),
            sealed: Mutex::new(HashMap::new()),
            logs: Arc::new(Mutex::new(Vec::new())),
            daemon_pid: AtomicI32::new(0),
            measured: Mutex::new(HashMap::new()),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Starts the daemon, a task that restarts it whenever it dies, and the lag measurement.
    pub async fn start(self: &Arc<Self>) -> Result<(), ReplicaError> {
        std::fs::create_dir_all(&self.dir)?;
        let child = self.spawn().await?;
        tokio::spawn(self.clone().supervise(child));
        tokio::spawn(self.clone().measure_lag());
        Ok(())
    }

    async fn spawn(&self) -> Result<tokio::process::Child, ReplicaError> {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let config = format!(
            "socket:\n  enabled: true\n  path: {}\nlogging:\n  level: info\n  type: text\n  stderr: true\ndbs: []\n",
            serde_json::to_string(&socket).expect("paths serialise"),
        );
        let config_path = self.dir.join("litestream.yml");
        std::fs::write(&config_path, config)?;
        let mut command = tokio::process::Command::new(&self.litestream);
        command.args(["replicate", "-no-expand-env", "-config"]).arg(&config_path);
        command.env_clear().envs(self.target.environment()).stdin(Stdio::null()).stdout(Stdio::piped());
        command.stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
        let hostd = std::process::id() as i32;
        // SAFETY: die_with_parent makes only async-signal-safe calls.
        unsafe {
            command.pre_exec(move || crate::leftovers::die_with_parent(hostd));
        }
        let mut child = command.spawn().map_err(ReplicaError::Spawn)?;
        self.daemon_pid.store(child.id().unwrap_or(0) as i32, Ordering::Release);
        let (listening_sender, listening) = tokio::sync::oneshot::channel();
        self.pump(child.stderr.take(), Some(listening_sender));
        self.pump(child.stdout.take(), None);
        // Readiness by notification: the daemon logs that its control socket listens.
        match tokio::time::timeout(Duration::from_millis(DAEMON_START_TIMEOUT_MS), listening).await {
            Ok(Ok(())) => Ok(child),
            _ => {
                let _ = child.start_kill();
                Err(ReplicaError::NotReady(DAEMON_START_TIMEOUT_MS))
            }
        }
    }

    /// Copies the daemon's output into the log of the app each line is about (by its data
    /// directory), or into hostd's own log.
    fn pump(
        &self,
        stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
        mut listening: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let Some(stream) = stream else { return };
        let logs = self.logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("control socket listening") {
                    if let Some(sender) = listening.take() {
                        let _ = sender.send(());
                    }
                }
                let owner = logs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find_map(|(dir, log)| line.contains(dir.to_string_lossy().as_ref()).then(|| log.clone()));
                match owner {
                    Some(log) => log.line("litestream", &line),
                    None => tracing::info!(target: "litestream", "{line}"),
                }
            }
        });
    }

    async fn supervise(self: Arc<Self>, mut child: tokio::process::Child) {
        let mut backoff_ms = RESTART_BACKOFF_MS_MIN;
        loop {
            let status = child.wait().await;
            tracing::error!(?status, "litestream exited; restarting it");
            loop {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(RESTART_BACKOFF_MS_MAX);
                match self.spawn().await {
                    Ok(next) => {
                        child = next;
                        break;
                    }
                    Err(error) => tracing::error!(%error, backoff_ms, "litestream did not restart"),
                }
            }
            self.register_all_again().await;
            backoff_ms = RESTART_BACKOFF_MS_MIN;
        }
    }

    async fn register_all_again(&self) {
        let mut attached = self.attached.lock().await;
        for (app, entry) in attached.iter_mut() {
            let databases = std::mem::take(&mut entry.databases);
            for database in databases {
                if let Err(error) = self.register(app, entry, &database).await {
                    entry.log.line("steady", &format!("replication of {database} did not resume: {error}"));
                }
            }
            entry.log.line("steady", "replication resumed after litestream restarted");
        }
    }
}

impl Replicator {
    /// [`Replicator::attach`] in the background; [`Replicator::detach`] waits for it, so a
    /// process that ends at once is never left registered.
    pub fn attach_soon(self: &Arc<Self>, app: &str, data_dir: &Path, log: Arc<AppLog>) {
        let (this, app_name, data_dir) = (self.clone(), app.to_owned(), data_dir.to_owned());
        let task = tokio::spawn(async move { this.attach(&app_name, &data_dir, log).await });
        self.attaching.lock().unwrap_or_else(|p| p.into_inner()).insert(app.to_owned(), task);
    }

    /// Starts replicating the databases of `app`, whose data directory is now at `data_dir`.
    /// Errors are in the app's log; the app runs either way (its data is on the local disk).
    pub async fn attach(&self, app: &str, data_dir: &Path, log: Arc<AppLog>) {
        self.sealed.lock().unwrap_or_else(|p| p.into_inner()).remove(app);
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).push((data_dir.to_owned(), log.clone()));
        let mut attached = self.attached.lock().await;
        let entry = Attached { data_dir: data_dir.to_owned(), log, databases: BTreeSet::new() };
        let entry = attached.entry(app.to_owned()).or_insert(entry);
        self.register_new(app, entry).await;
    }

    /// Registers databases created since the app started (called periodically).
    pub async fn rescan(&self) {
        let mut attached = self.attached.lock().await;
        for (app, entry) in attached.iter_mut() {
            self.register_new(app, entry).await;
        }
    }

    async fn register_new(&self, app: &str, entry: &mut Attached) {
        let found = match databases_in(&entry.data_dir) {
            Ok(found) => found,
            Err(error) => return entry.log.line("steady", &format!("looking for databases to replicate: {error}")),
        };
        let new: Vec<String> = found.into_iter().filter(|d| !entry.databases.contains(d)).collect();
        if new.is_empty() {
            return;
        }
        if entry.databases.len() + new.len() > DATABASES_PER_APP_MAX {
            let line = format!("only {DATABASES_PER_APP_MAX} databases per app are replicated; the rest are not");
            entry.log.line("steady", &line);
        }
        for database in new.into_iter().take(DATABASES_PER_APP_MAX.saturating_sub(entry.databases.len())) {
            match self.register(app, entry, &database).await {
                Ok(()) => {
                    let target = self.target_label(app, &database);
                    entry.log.line("steady", &format!("replicating {database} to {target}"));
                    self.measure(app, entry, &database);
                }
                Err(error) => entry.log.line("steady", &format!("replication of {database} failed to start: {error}")),
            }
        }
        if let Err(error) = self.write_manifest(app, &entry.databases).await {
            entry.log.line("steady", &format!("writing the replica manifest failed: {error}"));
        }
    }

    /// Where the replicas of `app` live (for status): the replica URL without its settings.
    pub fn location(&self, app: &str) -> String {
        let url = self.target.url(app, "");
        url.split('?').next().unwrap_or(&url).trim_end_matches('/').to_owned()
    }

    fn target_label(&self, app: &str, database: &str) -> String {
        let url = self.target.url(app, database);
        url.split('?').next().unwrap_or(&url).to_owned()
    }

    async fn register(&self, app: &str, entry: &mut Attached, database: &str) -> Result<(), ReplicaError> {
        let path = entry.data_dir.join(database);
        let body = serde_json::json!({ "path": path, "replica_url": self.target.url(app, database) });
        self.control("register", body).await?;
        entry.databases.insert(database.to_owned());
        Ok(())
    }

    /// Ends replication of `app` before its data directory moves: a final sync of every
    /// database (all committed transactions reach the replica), then unregistering them.
    pub async fn detach(&self, app: &str) -> Result<(), ReplicaError> {
        let attaching = self.attaching.lock().unwrap_or_else(|p| p.into_inner()).remove(app);
        if let Some(task) = attaching {
            let _ = task.await;
        }
        let Some(entry) = self.attached.lock().await.remove(app) else { return Ok(()) };
        self.measured.lock().unwrap_or_else(|p| p.into_inner()).remove(app);
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).retain(|(dir, _)| *dir != entry.data_dir);
        let mut first_error = None;
        for database in &entry.databases {
            let path = entry.data_dir.join(database);
            let synced = self
                .control("sync", serde_json::json!({ "path": path, "wait": true, "timeout": CONTROL_TIMEOUT_S }))
                .await;
            let unregistered =
                self.control("unregister", serde_json::json!({ "path": path, "timeout": CONTROL_TIMEOUT_S })).await;
            match synced.and(unregistered) {
                Ok(answer) => {
                    let txid = answer.get("final_txid").cloned().unwrap_or_default();
                    entry.log.line("steady", &format!("{database} synced to its replica (txid {txid})"));
                }
                Err(error) => {
                    entry.log.line("steady", &format!("final sync of {database} failed: {error}"));
                    first_error.get_or_insert(error);
                }
            }
        }
        if first_error.is_none() {
            self.sealed.lock().unwrap_or_else(|p| p.into_inner()).insert(app.to_owned(), entry.databases.clone());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes sure the replica of `app` holds every committed transaction of the databases in
    /// `data_dir`, where no process of the app runs: registers each database, syncs it and
    /// unregisters it. Unlike [`Replicator::attach`] every failure is an error, because a move
    /// must not go on while the replica is behind. Returns the databases sealed.
    pub async fn seal(&self, app: &str, data_dir: &Path, log: Arc<AppLog>) -> Result<Vec<String>, ReplicaError> {
        self.detach(app).await?;
        if !data_dir.is_dir() {
            return Ok(Vec::new());
        }
        let found = databases_in(data_dir)?;
        let sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner()).remove(app);
        if sealed.is_some_and(|synced| found.iter().all(|d| synced.contains(d))) {
            // The app's last stop synced every one of them, and nothing has run since.
            return Ok(found);
        }
        let mut entry = Attached { data_dir: data_dir.to_owned(), log, databases: BTreeSet::new() };
        let mut registered = Ok(());
        for database in found.iter().take(DATABASES_PER_APP_MAX) {
            registered = self.register(app, &mut entry, database).await;
            if registered.is_err() {
                break;
            }
        }
        let manifest = match &registered {
            Ok(()) => self.write_manifest(app, &entry.databases).await,
            Err(_) => Ok(()),
        };
        let databases: Vec<String> = entry.databases.iter().cloned().collect();
        self.attached.lock().await.insert(app.to_owned(), entry);
        let detached = self.detach(app).await;
        registered.and(manifest).and(detached)?;
        Ok(databases)
    }

    /// Forces a sync of every database of a running `app` now; returns how many were synced.
    pub async fn sync_now(&self, app: &str) -> Result<usize, ReplicaError> {
        let attached = self.attached.lock().await;
        let Some(entry) = attached.get(app) else { return Ok(0) };
        for database in &entry.databases {
            let path = entry.data_dir.join(database);
            self.control("sync", serde_json::json!({ "path": path, "wait": true, "timeout": CONTROL_TIMEOUT_S }))
                .await?;
        }
        Ok(entry.databases.len())
    }

    /// One call on the daemon's control socket (HTTP with JSON bodies over a Unix socket).
    async fn control(&self, call: &'static str, body: serde_json::Value) -> Result<serde_json::Value, ReplicaError> {
        let request = axum::http::Request::post(format!("/{call}"))
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("static request");
        self.send_control(call, request, CONTROL_TIMEOUT_MS, OUTPUT_BYTES_MAX * 4).await
    }

    /// A read on the control socket: `GET <call>` (a path) with `query` pairs.
    async fn control_get(
        &self,
        call: &'static str,
        query: &[(&str, &str)],
        answer_bytes_max: usize,
    ) -> Result<serde_json::Value, ReplicaError> {
        let mut url = reqwest::Url::parse("http://localhost").expect("static URL");
        url.set_path(call);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let path_and_query = format!("{}{}", url.path(), url.query().map(|q| format!("?{q}")).unwrap_or_default());
        let request = axum::http::Request::get(path_and_query)
            .header("host", "localhost")
            .body(Body::empty())
            .map_err(|e| ReplicaError::Control { call, message: e.to_string() })?;
        self.send_control(call, request, LAG_CALL_TIMEOUT_MS, answer_bytes_max).await
    }

    /// Sends `request` and reads the whole answer, both within `timeout_ms`.
    async fn send_control(
        &self,
        call: &'static str,
        request: axum::http::Request<Body>,
        timeout_ms: u64,
        answer_bytes_max: usize,
    ) -> Result<serde_json::Value, ReplicaError> {
        let failed = |message: String| ReplicaError::Control { call, message };
        let socket = self.socket();
        let exchange = async {
            let response = crate::ingress::send(&socket, request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let limited = http_body_util::Limited::new(response.into_body(), answer_bytes_max);
            let bytes = limited.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(message)) => return Err(failed(message)),
            Err(_) => return Err(failed(format!("no answer within {timeout_ms} ms"))),
        };
        if !status.is_success() {
            let mut text = String::from_utf8_lossy(&bytes).trim().to_owned();
            text.truncate(text.floor_char_boundary(OUTPUT_BYTES_MAX));
            return Err(failed(format!("{status}: {text}")));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    fn manifest_key(app: &str) -> String {
        format!("replicas/{app}/{MANIFEST_NAME}")
    }

    async fn write_manifest(&self, app: &str, databases: &BTreeSet<String>) -> Result<(), ReplicaError> {
        let body = serde_json::to_vec(&serde_json::json!({ "databases": databases })).expect("strings serialise");
        let manifest = |message: String| ReplicaError::Manifest { app: app.into(), message };
        self.manifests.put_key(&Self::manifest_key(app), body.into()).await.map_err(|e| manifest(e.to_string()))
    }

    /// The databases the replica of `app` holds, per its manifest; `None` when it has none
    /// (an app that never wrote a database).
    pub async fn manifest(&self, app: &str) -> Result<Option<Vec<String>>, ReplicaError> {
        let manifest = |message: String| ReplicaError::Manifest { app: app.into(), message };
        let bytes = match self.manifests.get_key(&Self::manifest_key(app)).await {
            Ok(bytes) => bytes,
            Err(steady_blob::BlobError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(manifest(error.to_string())),
        };
        #[derive(serde::Deserialize)]
        struct Manifest {
            databases: Vec<String>,
        }
        let parsed: Manifest = serde_json::from_slice(&bytes).map_err(|e| manifest(e.to_string()))?;
        if parsed.databases.iter().any(|d| !is_database_name(d)) || parsed.databases.len() > DATABASES_PER_APP_MAX {
            return Err(manifest("it names files that cannot be databases of an app".into()));
        }
        Ok(Some(parsed.databases))
    }

    /// Builds `data_dir` (which must not exist) from the replicas of `app`, as of `at` (RFC
    /// 3339) when given. Each database is restored into a staging directory and checked;
    /// only a complete, checked directory is renamed into place. Returns the databases
    /// restored (empty for an app with no replica: `data_dir` is then created empty).
    pub async fn restore(&self, app: &str, data_dir: &Path, at: Option<&str>) -> Result<Vec<String>, ReplicaError> {
        assert!(!data_dir.exists(), "a restore never overwrites data");
        let staging = data_dir.with_extension("restoring");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        let databases = self.manifest(app).await?.unwrap_or_default();
        for database in &databases {
            let output = staging.join(database);
            self.restore_one(app, database, &output, at).await?;
            check_integrity(&output).map_err(|message| ReplicaError::Integrity {
                app: app.into(),
                database: database.clone(),
                message,
            })?;
        }
        std::fs::rename(&staging, data_dir)?;
        Ok(databases)
    }

    async fn restore_one(
        &self,
        app: &str,
        database: &str,
        output: &Path,
        at: Option<&str>,
    ) -> Result<(), ReplicaError> {
        let failed = |message: String| ReplicaError::Restore { app: app.into(), database: database.into(), message };
        let mut command = tokio::process::Command::new(&self.litestream);
        command.arg("restore").arg("-o").arg(output);
        if let Some(at) = at {
            command.args(["-timestamp", at]);
        }
        command.arg(self.target.url(app, database));
        command.env_clear().envs(self.target.environment()).stdin(Stdio::null()).kill_on_drop(true);
        let run = command.output();
        let result = tokio::time::timeout(Duration::from_millis(RESTORE_TIMEOUT_MS), run).await;
        let output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => return Err(failed(format!("running litestream: {error}"))),
            Err(_) => return Err(failed(format!("not done within {RESTORE_TIMEOUT_MS} ms"))),
        };
        if !output.status.success() {
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            // Litestream's words for a time before the replica's first snapshot.
            if let (Some(at), true) = (at, text.contains("timestamp does not exist")) {
                return Err(ReplicaError::NoStateAt { app: app.into(), database: database.into(), at: at.into() });
            }
            text.truncate(OUTPUT_BYTES_MAX);
            return Err(failed(format!("{}: {}", output.status, text.trim())));
        }
        Ok(())
    }

    /// Kills the daemon (hostd is stopping; apps were detached first).
    pub fn stop(&self) {
        let pid = self.daemon_pid.load(Ordering::Acquire);
        if pid > 1 {
            // SAFETY: kill(2) on the process group of the daemon this replicator started.
            unsafe {
                libc::kill(-pid, libc::SIGTERM);
            }
        }
    }
}

/// Replication lag: positions polled from the daemon, transactions looked for in the replica.
impl Replicator {
    /// Starts measuring the lag of a database of `app` just registered (a database whose name
    /// cannot be a blob-store key cannot be looked for, and is left out).
    fn measure(&self, app: &str, entry: &Attached, database: &str) {
        let level0_prefix = self.target.level0_prefix(app, database);
        if steady_blob::validate_prefix(&level0_prefix).is_err() {
            entry.log.line("steady", &format!("the replication lag of {database} is not measured (its name)"));
            return;
        }
        let measured = Measured {
            path: entry.data_dir.join(database),
            level0_prefix,
            backlog: Mutex::new(lag::Backlog::default()),
        };
        let mut apps = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        apps.entry(app.to_owned()).or_default().entry(database.to_owned()).or_insert_with(|| Arc::new(measured));
    }

    /// Each attached app with a measured database, and the longest lag among its databases:
    /// how long the oldest transaction its replica lacks has waited (zero when it lacks none).
    pub fn lags(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let apps = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        let lag_of = |measured: &Arc<Measured>| measured.backlog.lock().unwrap_or_else(|p| p.into_inner()).lag(now);
        apps.iter()
            .map(|(app, databases)| (app.clone(), databases.values().map(lag_of).max().unwrap_or_default()))
            .collect()
    }

    /// Runs forever: every [`LAG_POLL_INTERVAL_MS`], reads the local position of each measured
    /// database and starts the looks in the replica storage that are due (at most one under
    /// way per database, each bounded by [`lag::PROBE_TIMEOUT_MS`]).
    async fn measure_lag(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(LAG_POLL_INTERVAL_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let databases: Vec<Arc<Measured>> = {
                let apps = self.measured.lock().unwrap_or_else(|p| p.into_inner());
                apps.values().flat_map(|databases| databases.values().cloned()).collect()
            };
            if databases.is_empty() {
                continue;
            }
            let last_syncs = self.last_syncs().await;
            for measured in databases {
                let path = measured.path.to_string_lossy();
                let read = self.control_get("/txid", &[("path", &path)], TXID_ANSWER_BYTES_MAX).await;
                let Ok(answer) = read else { continue };
                let Some(txid) = answer.get("txid").and_then(serde_json::Value::as_u64) else { continue };
                let now = Instant::now();
                let probe = {
                    let mut backlog = measured.backlog.lock().unwrap_or_else(|p| p.into_inner());
                    backlog.observe_local(txid, now);
                    backlog.next_probe(now, last_syncs.get(&measured.path).map(String::as_str))
                };
                if let Some(probe) = probe {
                    tokio::spawn(self.clone().probe(measured, probe));
                }
            }
        }
    }

    /// When the daemon last synced each database to its replica (its own timestamps, used only
    /// to notice a new sync); empty when it does not say.
    async fn last_syncs(&self) -> HashMap<PathBuf, String> {
        let Ok(answer) = self.control_get("/list", &[], LIST_ANSWER_BYTES_MAX).await else { return HashMap::new() };
        let databases = answer.get("databases").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        databases
            .iter()
            .filter_map(|database| {
                let path = database.get("path")?.as_str()?;
                let synced_at = database.get("last_sync_at")?.as_str()?;
                Some((PathBuf::from(path), synced_at.to_owned()))
            })
            .collect()
    }

    /// Looks for the probe's transactions in the replica storage and records what it found; a
    /// storage that does not answer in time counts as not holding them.
    async fn probe(self: Arc<Self>, measured: Arc<Measured>, probe: lag::Probe) {
        let holds = |txid: u64| {
            let key = format!("{}{txid:016x}-{txid:016x}.ltx", measured.level0_prefix);
            let manifests = self.manifests.clone();
            async move { manifests.exists_key(&key).await.unwrap_or(false) }
        };
        let look = async {
            if holds(probe.newest_txid).await {
                return Some(probe.newest_txid);
            }
            match probe.oldest_txid {
                Some(oldest) if holds(oldest).await => Some(oldest),
                _ => None,
            }
        };
        let found = tokio::time::timeout(Duration::from_millis(lag::PROBE_TIMEOUT_MS), look).await.ok().flatten();
        measured.backlog.lock().unwrap_or_else(|p| p.into_inner()).probed(&probe, found);
    }
}

/// Whether `name` may be a database file of an app (no path, no SQLite side files).
fn is_database_name(name: &str) -> bool {
    let side_file = ["-wal", "-shm", "-journal"].iter().any(|s| name.ends_with(s));
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains('/') && name.len() <= 255;
    plain && !side_file && name != MANIFEST_NAME
}

/// The SQLite files directly in `dir` (by their header), sorted.
pub fn databases_in(dir: &Path) -> std::io::Result<Vec<String>> {
    use std::io::Read;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)?.take(DATA_ENTRIES_SCANNED_MAX) {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() || !is_database_name(&name) {
            continue;
        }
        let mut header = [0u8; 16];
        let is_sqlite = std::fs::File::open(entry.path()).and_then(|mut f| f.read_exact(&mut header)).is_ok()
            && &header == SQLITE_MAGIC;
        if is_sqlite {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

/// `PRAGMA integrity_check` on a restored file: `Ok` only when SQLite says "ok".
fn check_integrity(path: &Path) -> Result<(), String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = rusqlite::Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let verdict: String =
        connection.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_can_be_databases() {
        assert!(is_database_name("app.db"));
        assert!(is_database_name("data.sqlite3"));
        for bad in ["", ".app.db-litestream", "app.db-wal", "app.db-shm", "app.db-journal", "a/b.db"] {
            assert!(!is_database_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn databases_are_found_by_their_header_not_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let connection = rusqlite::Connection::open(dir.path().join("notes")).unwrap();
        connection.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
        std::fs::write(dir.path().join("fake.db"), "not a database at all").unwrap();
        std::fs::create_dir(dir.path().join("sub.db")).unwrap();
        assert_eq!(databases_in(dir.path()).unwrap(), ["notes"]);
        check_integrity(&dir.path().join("notes")).unwrap();
    }

    #[test]
    fn replica_urls_name_the_app_and_database() {
        let file = ReplicaTarget::File { root: "/srv/steady".into() };
        assert_eq!(file.url("hello", "app.db"), "file:///srv/steady/replicas/hello/app.db");
        assert_eq!(file.level0_prefix("hello", "app.db"), "replicas/hello/app.db/ltx/0/");
        let s3 = ReplicaTarget::S3 {
            bucket: "b".into(),
            prefix: "p/".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
        };
        assert_eq!(
            s3.url("hello", "app.db"),
            "s3://b/p/replicas/hello/app.db?region=us-east-1&endpoint=http://127.0.0.1:9000&forcePathStyle=true"
        );
        // The blob store adds its own prefix (`p/`), as Litestream does from the URL's path.
        assert_eq!(s3.level0_prefix("hello", "app.db"), "replicas/hello/app.db/0000/");
    }
}
