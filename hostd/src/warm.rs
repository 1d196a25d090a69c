//! Sandboxes started ahead of need, so a sleeping app's first request skips the spawn.
//!
//! Starting bwrap and booting Bun costs about two thirds of a cold start and does not depend
//! on the app. The pool keeps `warm_sandboxes` of them running and waiting
//! ([`crate::process::Sandbox`]); a wake takes one and hands it the app, and the pool starts a
//! replacement once that app listens (not before, so the replacement does not compete with the
//! cold start for the CPU). With an empty pool (a storm of wakes, or `--warm-sandboxes 0`) a
//! wake spawns its sandbox itself: the same path, only slower.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::cgroup::{Hierarchy, Limits};
use crate::process::{Sandbox, StartError};
use crate::sandbox::Spec;

/// Pause before retrying after a warm sandbox failed to start.
const REFILL_RETRY_MS: u64 = 1_000;

/// What every sandbox of this host is made of.
pub struct SandboxFactory {
    pub bwrap: PathBuf,
    pub bun: PathBuf,
    pub runner: PathBuf,
    /// Directory under which each sandbox gets its own directory.
    pub root: PathBuf,
    pub cgroups: Hierarchy,
    pub limits: Limits,
    pub boot_timeout_ms: u64,
}

/// The pool of warm sandboxes.
pub struct WarmPool {
    factory: SandboxFactory,
    target: usize,
    ready: Mutex<VecDeque<Sandbox>>,
    refill: tokio::sync::Notify,
    next_id: AtomicU64,
}

impl WarmPool {
    /// A pool that keeps `target` sandboxes warm once [`WarmPool::keep_warm`] runs.
    pub fn new(factory: SandboxFactory, target: usize) -> Self {
        Self {
            factory,
            target,
            ready: Mutex::new(VecDeque::new()),
            refill: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The kernel limits sandboxes run under, for status and logs.
    pub fn cgroups(&self) -> &Hierarchy {
        &self.factory.cgroups
    }

    /// A sandbox ready for an app: a warm one if there is one, else one spawned now.
    pub async fn take(&self) -> Result<Sandbox, StartError> {
        loop {
            let warm = self.ready.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            match warm {
                Some(sandbox) if sandbox.is_alive() => return Ok(sandbox),
                Some(dead) => tracing::warn!(pid = dead.pid(), "a warm sandbox died while waiting"),
                None => {
                    let mut sandbox = self.spawn().await?;
                    sandbox.booted_on_demand = true;
                    return Ok(sandbox);
                }
            }
        }
    }

    /// Asks the pool to top itself up (call once the app that took a sandbox listens).
    pub fn replenish(&self) {
        self.refill.notify_one();
    }

    async fn spawn(&self) -> Result<Sandbox, StartError> {
        let factory = &self.factory;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let spec = Spec {
            bwrap: factory.bwrap.clone(),
            bun: factory.bun.clone(),
            runner: factory.runner.clone(),
            sandbox_dir: factory.root.join(id.to_string()),
        };
        let group = factory.cgroups.create("sandbox", factory.limits).map_err(StartError::Spawn)?;
        Sandbox::spawn(&spec, group, factory.boot_timeout_ms).await
    }

    /// Sandboxes waiting for an app right now.
    pub fn warm_count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs forever: keeps `target` sandboxes warm, one spawn at a time.
    pub async fn keep_warm(&self) {
        loop {
            while self.warm_count() < self.target {
                match self.spawn().await {
                    Ok(sandbox) => {
                        tracing::debug!(pid = sandbox.pid(), boot_ms = sandbox.boot_ms, "sandbox warm");
                        self.ready.lock().unwrap_or_else(|p| p.into_inner()).push_back(sandbox);
                    }
                    Err(error) => {
                        tracing::error!(%error, "starting a warm sandbox failed");
                        tokio::time::sleep(Duration::from_millis(REFILL_RETRY_MS)).await;
                    }
                }
            }
            self.refill.notified().await;
        }
    }

    /// Stops every warm sandbox (hostd is stopping).
    pub async fn drain(&self) {
        let sandboxes: Vec<Sandbox> = self.ready.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for sandbox in sandboxes {
            sandbox.kill_and_wait().await;
        }
    }
}
