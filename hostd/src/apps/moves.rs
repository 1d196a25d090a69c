//! This host's side of a live move (the slicer's `mover` drives the steps).
//!
//! The new host *arrives* (fetches the bundle, holds the app's requests), the old host
//! *departs* (forwards new requests to the new host, drains, stops the app, seals the replica,
//! forgets the app), then the new host *starts* it (restores from the replica, serves what it
//! held). A request that reaches a host which does not have the app is held, forwarded once,
//! or refused, never served by a second copy: see [`Apps::elsewhere`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use steady_proto::wire::{AppEntry, HostEntry};

use super::{Apps, DeployError};

/// How long a host forwards an app's requests after it left (stale LB tables converge much
/// sooner; this only bounds the memory).
const FORWARD_KEEP_MS: u64 = 120_000;
/// Bound on remembered departures and expected arrivals.
const MARKERS_MAX: usize = 65_536;
/// How long an arrival marker lasts without the move's `start` (a slicer that died mid-move
/// and never came back); the requests it holds end with 503 before that anyway.
const EXPECTED_KEEP_MS: u64 = 600_000;
/// Requests held for apps on their way here, over all apps.
pub const HELD_REQUESTS_MAX: usize = 4_096;
/// Longest single wait of a held request before it looks at the app again.
const HOLD_RECHECK_MS: u64 = 250;

/// Where a request for an app that is not (or no longer) here should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elsewhere {
    /// The app is on its way here: hold the request until it arrives.
    Hold,
    /// Another host has the app: forward the request there (once).
    Forward(SocketAddr),
    /// No host is known to have it.
    Unknown,
}

/// In-memory move markers of this host.
#[derive(Default)]
pub(super) struct MoveState {
    /// Apps that left this host, and the new host's ingress.
    departed: std::sync::Mutex<HashMap<String, (SocketAddr, Instant)>>,
    /// Apps announced by `arrive` and not started yet.
    expected: std::sync::Mutex<HashMap<String, Instant>>,
    /// Told whenever an app arrives or the table changes, so held requests look again.
    pub(super) arrivals: tokio::sync::Notify,
    held: AtomicUsize,
}

fn insert_bounded<V>(map: &mut HashMap<String, V>, key: &str, value: V, expired: impl Fn(&V) -> bool) {
    if map.len() >= MARKERS_MAX {
        map.retain(|_, v| !expired(v));
    }
    if map.len() < MARKERS_MAX || map.contains_key(key) {
        map.insert(key.to_owned(), value);
    } else {
        tracing::error!(app = key, "too many move markers; this one is not kept");
    }
}

impl MoveState {
    pub(super) fn departed_to(&self, name: &str) -> Option<SocketAddr> {
        let departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        departed.get(name).filter(|(_, at)| at.elapsed() < Duration::from_millis(FORWARD_KEEP_MS)).map(|(a, _)| *a)
    }

    fn depart(&self, name: &str, to: SocketAddr) {
        let mut departed = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        let expired = |(_, at): &(SocketAddr, Instant)| at.elapsed() >= Duration::from_millis(FORWARD_KEEP_MS);
        insert_bounded(&mut departed, name, (to, Instant::now()), expired);
    }

    fn stay(&self, name: &str) {
        self.departed.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    fn expect(&self, name: &str) {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        insert_bounded(&mut expected, name, Instant::now(), |at| {
            at.elapsed() >= Duration::from_millis(EXPECTED_KEEP_MS)
        });
        drop(expected);
        self.stay(name);
    }

    fn expecting(&self, name: &str) -> bool {
        let expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        expected.get(name).is_some_and(|at| at.elapsed() < Duration::from_millis(EXPECTED_KEEP_MS))
    }

    fn arrived(&self, name: &str) {
        self.expected.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.arrivals.notify_waiters();
    }
}

/// A place among the held requests; given back on drop.
pub struct HeldPlace<'a>(&'a AtomicUsize);

impl Drop for HeldPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Apps {
    /// Where a request for `name` goes when this host cannot serve it itself.
    pub fn elsewhere(&self, name: &str) -> Elsewhere {
        if let Some(to) = self.moves.departed_to(name) {
            return Elsewhere::Forward(to);
        }
        if self.moves.expecting(name) {
            return Elsewhere::Hold;
        }
        let me = self.config.id.as_str();
        let Some(table) = self.table.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Elsewhere::Unknown;
        };
        let Some(app) = table.app(name) else { return Elsewhere::Unknown };
        match app.moving_to.as_deref().map(|to| (to, table.host(to))) {
            Some((to, _)) if to == me => return Elsewhere::Hold,
            // This host gave the app up (and may have restarted since): its new host holds it.
            Some((_, Some(target))) if app.host_id == me => {
                return target.ingress_addr.parse().map(Elsewhere::Forward).unwrap_or(Elsewhere::Unknown);
            }
            _ => {}
        }
        match table.host(&app.host_id) {
            Some(holder) if holder.id != me => {
                holder.ingress_addr.parse().map(Elsewhere::Forward).unwrap_or(Elsewhere::Unknown)
            }
            // Held by nobody alive (or by this host, which lost it): the owner adopts it.
            _ if table.owner_of(name).is_some_and(|o| o.id == me) => Elsewhere::Hold,
            _ => Elsewhere::Unknown,
        }
    }

    /// Whether this host would serve `name` now (the answer to an LB's probe): it has the app
    /// and has not begun to hand it over. Never wakes the app.
    pub fn serves_here(&self, name: &str) -> bool {
        self.moves.departed_to(name).is_none() && self.store().current(name).ok().flatten().is_some()
    }

    /// Takes a place among held requests, or `None` when as many as allowed are held.
    pub fn hold_place(&self) -> Option<HeldPlace<'_>> {
        if self.moves.held.fetch_add(1, Ordering::AcqRel) >= HELD_REQUESTS_MAX {
            self.moves.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(HeldPlace(&self.moves.held))
    }

    /// A future that completes at the next arrival or table change; enable it before looking
    /// at the app so no notification falls between the look and the wait.
    pub fn arrivals(&self) -> tokio::sync::futures::Notified<'_> {
        self.moves.arrivals.notified()
    }

    /// Waits for `arrivals` (see [`Apps::arrivals`]), at most until `deadline` and never longer
    /// than a short recheck interval.
    pub async fn wait_for_arrivals(
        &self,
        arrivals: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        deadline: tokio::time::Instant,
    ) {
        let recheck = tokio::time::Instant::now() + Duration::from_millis(HOLD_RECHECK_MS);
        let _ = tokio::time::timeout_at(deadline.min(recheck), arrivals).await;
    }

    /// Requests held now, for the metrics.
    pub fn held_requests(&self) -> usize {
        self.moves.held.load(Ordering::Acquire)
    }

    /// How long a request waits for an app on its way here.
    pub fn move_hold_ms(&self) -> u64 {
        self.config.move_hold_ms
    }

    /// This host's id.
    pub fn host_id(&self) -> &str {
        &self.config.id
    }

    /// Move step 2, on the new host: fetches the app's bundle and holds its requests from now
    /// on. Idempotent.
    pub async fn arrive(&self, entry: &AppEntry) -> Result<(), DeployError> {
        if self.store().current(&entry.name)?.is_some() {
            return Ok(());
        }
        let bundle = entry.bundle.as_deref().ok_or_else(|| DeployError::Unknown(entry.name.clone()))?;
        if !self.config.data.join("bundles").join(bundle).is_dir() {
            let archive = self.storage.get(bundle).await?;
            self.unpack(bundle, &archive)?;
        }
        // Its variables may have changed on the host it comes from since it was last here.
        self.secrets.forget(&entry.name);
        self.moves.expect(&entry.name);
        tracing::info!(app = %entry.name, "app arriving; its requests are held");
        Ok(())
    }

    /// Move step 3, on the old host: from now on forwards the app's new requests to `to`,
    /// lets in-flight ones finish (bounded), stops the app, seals its replica (every committed
    /// write is in it) and forgets the app, keeping its data aside. Idempotent. If the replica
    /// cannot be sealed the app stays here and serves again, and the step fails.
    pub async fn depart(&self, name: &str, to: &HostEntry) -> Result<(), DeployError> {
        let to_ingress: SocketAddr = to
            .ingress_addr
            .parse()
            .map_err(|e| DeployError::Io(std::io::Error::other(format!("ingress {:?}: {e}", to.ingress_addr))))?;
        if self.store().current(name)?.is_none() {
            self.moves.depart(name, to_ingress);
            return Ok(());
        }
        let began = Instant::now();
        let slot = self.slot(name)?;
        let _one_change_at_a_time = slot.deploying.lock().await;
        self.moves.depart(name, to_ingress);
        let mut serving = slot.serving.lock().await;
        self.retire(&slot, &mut serving).await;
        let data = self.app_dir(name).join("data");
        if let Err(error) = self.replicator.seal(name, &data, slot.log.clone()).await {
            self.moves.stay(name);
            slot.log
                .line("steady", &format!("move to host {} stopped: the replica could not be sealed: {error}", to.id));
            return Err(error.into());
        }
        drop(serving);
        if data.exists() {
            std::fs::rename(&data, self.app_dir(name).join(format!("data.moved-{}", crate::now_ms())))?;
        }
        self.store().delete(name)?;
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.secrets.forget(name);
        let ms = began.elapsed().as_millis();
        slot.log
            .line("steady", &format!("moved to host {}: stopped and sealed in {ms} ms; local data kept aside", to.id));
        tracing::info!(app = %name, to = %to.id, ms, "app departed");
        Ok(())
    }

    /// Move step 4, on the new host: records the app, restores its data from the replica,
    /// starts it and releases the requests held for it. Idempotent.
    pub async fn start_arrived(&self, entry: &AppEntry) -> Result<(), DeployError> {
        self.arrive(entry).await?;
        let bundle = entry.bundle.as_deref().ok_or_else(|| DeployError::Unknown(entry.name.clone()))?;
        let began = Instant::now();
        if self.store().adopt(&entry.name, entry.version, bundle, entry.expires_at_ms, crate::now_ms())? {
            let slot = self.slot(&entry.name)?;
            slot.log.line("steady", &format!("version {} arrived on host {}", entry.version, self.config.id));
        }
        let woken = self.wake(&entry.name).await;
        self.moves.arrived(&entry.name);
        let lease = woken.map_err(|e| DeployError::Io(std::io::Error::other(e.to_string())))?;
        drop(lease);
        tracing::info!(app = %entry.name, ms = began.elapsed().as_millis() as u64, "app arrived and serves");
        Ok(())
    }
}
