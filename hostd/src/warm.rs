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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Set by [`WarmPool::drain`]: hostd is stopping, and nothing is spawned any more.
    stopping: AtomicBool,
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
            stopping: AtomicBool::new(false),
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

    /// Sandboxes waiting for an app right now (alive ones: a dead one waits for nothing).
    pub fn warm_count(&self) -> usize {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|s| s.is_alive()).count()
    }

    /// Runs until hostd stops: keeps `target` sandboxes warm, one spawn at a time, and replaces
    /// one that dies while it waits (killed, or out of memory) at once rather than at the next
    /// wake.
    pub async fn keep_warm(&self) {
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            self.drop_dead();
            while self.warm_count() < self.target && !self.stopping.load(Ordering::Acquire) {
                match self.spawn().await {
                    Ok(sandbox) => {
                        tracing::debug!(pid = sandbox.pid(), boot_ms = sandbox.boot_ms, "sandbox warm");
                        // Checked under the lock `drain` sets it under: nothing joins a drained pool.
                        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
                        if self.stopping.load(Ordering::Acquire) {
                            drop(ready);
                            sandbox.kill_and_wait().await;
                            return;
                        }
                        ready.push_back(sandbox);
                    }
                    // hostd's stop ends a sandbox still starting (steady_hostd::leftovers): no news.
                    Err(_) if self.stopping.load(Ordering::Acquire) => return,
                    Err(error) => {
                        tracing::error!(%error, "starting a warm sandbox failed");
                        tokio::time::sleep(Duration::from_millis(REFILL_RETRY_MS)).await;
                    }
                }
            }
            let exits: Vec<_> =
                self.ready.lock().unwrap_or_else(|p| p.into_inner()).iter().map(Sandbox::exit_watch).collect();
            tokio::select! {
                () = self.refill.notified() => {}
                () = any_exit(exits) => {}
            }
        }
    }

    /// Takes the sandboxes that died while waiting out of the pool.
    fn drop_dead(&self) {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).retain(|sandbox| {
            let alive = sandbox.is_alive();
            if !alive {
                tracing::warn!(pid = sandbox.pid(), "a warm sandbox died while waiting");
            }
            alive
        });
    }

    /// Stops every warm sandbox, and spawns no more (hostd is stopping).
    pub async fn drain(&self) {
        let sandboxes: Vec<Sandbox> = {
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping.store(true, Ordering::Release);
            ready.drain(..).collect()
        };
        self.refill.notify_one();
        for sandbox in sandboxes {
            sandbox.kill_and_wait().await;
        }
    }
}

/// Resolves once any of `exits` says its sandbox exited; never, for none.
async fn any_exit(exits: Vec<tokio::sync::watch::Receiver<Option<String>>>) {
    if exits.is_empty() {
        return std::future::pending().await;
    }
    let waits = exits.into_iter().map(|mut exited| {
        Box::pin(async move {
            // A watch closed without an exit (its watcher ended with the runtime) wakes no one:
            // waking on it would spin, the sandbox still counted alive.
            if exited.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    });
    futures::future::select_all(waits).await;
}
