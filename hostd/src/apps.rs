//! The apps of this host: start on demand, deploy new versions, stop everything.
//!
//! Each app has a slot holding at most one serving process. A request for an app that is not
//! running starts it while later requests wait on the slot (bounded: `start_queue_max`
//! waiters, each for at most `start_timeout_ms`), so concurrent first requests start it once.
//! A deploy starts the new version beside the old one and swaps only once the new one listens.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steady_proto::wire::DeployResult;

use crate::blob::BlobStore;
use crate::bundle::{self, BundleError, Limits};
use crate::config::{Config, BUNDLE_FILES_MAX, BUNDLE_UNPACKED_BYTES_MAX};
use crate::log::AppLog;
use crate::membership::{Membership, MembershipError};
use crate::process::{AppProcess, StartError};
use crate::sandbox::Spec;
use crate::store::{Current, Outcome, Store, StoreError};

/// Lines of the app's log returned with a failed start.
const FAILED_START_LOG_LINES: usize = 30;

/// Why a request could not be given a running app.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("no app named {0:?} on this host")]
    Unknown(String),
    #[error("too many requests are waiting for {0:?} to start")]
    QueueFull(String),
    #[error("{0:?} did not start in time")]
    Deadline(String),
    #[error("{app:?} failed to start: {error}")]
    Start { app: String, error: StartError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a deploy failed. Nothing changed for the serving version in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("version {version} failed to start: {error}")]
    Start {
        version: u64,
        error: StartError,
        log: Vec<String>,
    },
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing bundle: {0}")]
    Io(#[from] std::io::Error),
}

struct Slot {
    name: String,
    log: Arc<AppLog>,
    serving: tokio::sync::Mutex<Option<AppProcess>>,
    /// Serialises deploys of one app.
    deploying: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// All apps on this host.
pub struct Apps {
    config: Config,
    runner: PathBuf,
    store: Mutex<Store>,
    blobs: BlobStore,
    membership: Membership,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Apps {
    /// Builds the manager; `runner` is the runner script on disk.
    pub fn new(
        config: Config,
        runner: PathBuf,
        store: Store,
        blobs: BlobStore,
        membership: Membership,
    ) -> Self {
        Self {
            config,
            runner,
            store: Mutex::new(store),
            blobs,
            membership,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This host's apps, for the API.
    pub fn list(&self) -> Result<Vec<crate::store::AppRow>, StoreError> {
        self.store().list()
    }

    /// The last `count` lines of an app's log, if the app exists here.
    pub fn log_tail(&self, name: &str, count: usize) -> Result<Option<Vec<String>>, WakeError> {
        if self.store().current(name)?.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.slot(name)
                .map_err(|e| WakeError::Start {
                    app: name.into(),
                    error: StartError::Spawn(e),
                })?
                .log
                .tail(count),
        ))
    }

    fn slot(&self, name: &str) -> std::io::Result<Arc<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(name) {
            return Ok(slot.clone());
        }
        let dir = self.app_dir(name);
        std::fs::create_dir_all(dir.join("data"))?;
        let log = Arc::new(AppLog::open(&dir.join("app.log"))?);
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            log,
            serving: tokio::sync::Mutex::new(None),
            deploying: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
        });
        slots.insert(name.to_owned(), slot.clone());
        Ok(slot)
    }

    fn app_dir(&self, name: &str) -> PathBuf {
        debug_assert!(steady_proto::name::validate(name).is_ok());
        self.config.data.join("apps").join(name)
    }

    fn spec(&self, name: &str, current: &Current) -> std::io::Result<Spec> {
        let socket_dir = self
            .config
            .data
            .join("run")
            .join(format!("{}-{}", current.app_id, current.version));
        std::fs::create_dir_all(&socket_dir)?;
        Ok(Spec {
            bwrap: self.config.bwrap.clone(),
            bun: self.config.bun.clone(),
            runner: self.runner.clone(),
            bundle_dir: self.config.data.join("bundles").join(&current.bundle),
            data_dir: self.app_dir(name).join("data"),
            socket_dir,
            env: vec![
                ("STEADY_APP".into(), name.into()),
                ("STEADY_VERSION".into(), current.version.to_string()),
            ],
        })
    }

    /// Returns the socket of `name`'s serving process, starting it first if needed.
    pub async fn wake(&self, name: &str) -> Result<PathBuf, WakeError> {
        let current = self
            .store()
            .current(name)?
            .ok_or_else(|| WakeError::Unknown(name.into()))?;
        let slot = self.slot(name).map_err(|e| WakeError::Start {
            app: name.into(),
            error: StartError::Spawn(e),
        })?;
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.start_queue_max {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(WakeError::QueueFull(name.into()));
        }
        let result = self.wake_slot(&slot, &current).await;
        slot.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }

    async fn wake_slot(&self, slot: &Slot, current: &Current) -> Result<PathBuf, WakeError> {
        let deadline = Duration::from_millis(self.config.start_timeout_ms);
        let mut serving = tokio::time::timeout(deadline, slot.serving.lock())
            .await
            .map_err(|_| WakeError::Deadline(slot.name.clone()))?;
        if let Some(process) = serving.as_ref().filter(|p| p.is_alive()) {
            return Ok(process.socket.clone());
        }
        let spec = self
            .spec(&slot.name, current)
            .map_err(|e| WakeError::Start {
                app: slot.name.clone(),
                error: StartError::Spawn(e),
            })?;
        let process = AppProcess::start(
            &spec,
            current.version,
            slot.log.clone(),
            self.config.start_timeout_ms,
        )
        .await
        .map_err(|error| WakeError::Start {
            app: slot.name.clone(),
            error,
        })?;
        tracing::info!(app = %slot.name, version = current.version, start_ms = process.start_ms, "app woke");
        let socket = process.socket.clone();
        *serving = Some(process);
        Ok(socket)
    }

    /// Deploys `archive` as the next version of `name`: store, unpack, start beside the old
    /// version, record with the slicer, swap. Returns the result and the table version.
    pub async fn deploy(
        &self,
        name: &str,
        archive: &[u8],
    ) -> Result<(DeployResult, u64), DeployError> {
        let digest = self.blobs.put(archive)?;
        let bundle_dir = self.config.data.join("bundles").join(&digest);
        if !bundle_dir.join(bundle::ENTRY_FILE).is_file() {
            let limits = Limits {
                files_max: BUNDLE_FILES_MAX,
                unpacked_bytes_max: BUNDLE_UNPACKED_BYTES_MAX,
            };
            bundle::unpack(archive, &bundle_dir, limits)?;
        }
        let slot = self.slot(name)?;
        let _one_deploy_at_a_time = slot.deploying.lock().await;
        let (app_id, version) = self.store().begin_version(name, &digest, crate::now_ms())?;
        let current = Current {
            app_id,
            version,
            bundle: digest.clone(),
        };
        let started = match self.spec(name, &current) {
            Ok(spec) => {
                AppProcess::start(
                    &spec,
                    version,
                    slot.log.clone(),
                    self.config.start_timeout_ms,
                )
                .await
            }
            Err(e) => Err(StartError::Spawn(e)),
        };
        let process = match started {
            Ok(process) => process,
            Err(error) => {
                self.store()
                    .finish_version(app_id, version, Outcome::Failed)?;
                slot.log.line(
                    "steady",
                    &format!("version {version} failed to start: {error}"),
                );
                return Err(DeployError::Start {
                    version,
                    error,
                    log: slot.log.tail(FAILED_START_LOG_LINES),
                });
            }
        };
        let table_version = match self.membership.app_deployed(name, version).await {
            Ok(table_version) => table_version,
            Err(error) => {
                process.stop().await;
                self.store()
                    .finish_version(app_id, version, Outcome::Failed)?;
                return Err(error.into());
            }
        };
        self.store()
            .finish_version(app_id, version, Outcome::Serving)?;
        let previous = slot.serving.lock().await.replace(process);
        if let Some(previous) = previous {
            previous.stop().await;
        }
        slot.log
            .line("steady", &format!("version {version} serving"));
        tracing::info!(app = %name, version, "deployed");
        let result = DeployResult {
            name: name.into(),
            version,
            host_id: self.config.id.clone(),
            bundle: format!("sha256:{digest}"),
        };
        Ok((result, table_version))
    }

    /// Stops every app process (hostd is shutting down).
    pub async fn stop_all(&self) {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            if let Some(process) = slot.serving.lock().await.take() {
                process.stop().await;
                slot.log.line(
                    "steady",
                    &format!("version {} stopped: host shutting down", process.version),
                );
            }
        }
    }
}
