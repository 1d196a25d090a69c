//! Live moves: takes each app from the host that holds it to its slice's owner, a bounded
//! number at a time, and survives a slicer crash at any step.
//!
//! A move is not a stored object of its own: the table already says everything. An app whose
//! live holder is not its slice's owner needs a move; `moving_to` says one has begun. So a
//! slicer killed mid-move reads the same pending moves back from its database and drives each
//! again from the top — every step is idempotent on the hosts:
//!
//! 1. record the move as started (`moving_to`): LBs begin probing the old holder;
//! 2. `arrive` on the new host: it fetches the bundle and from now on holds the app's requests;
//! 3. `depart` on the old host: it forwards new requests to the new host, drains in-flight
//!    ones, stops the app with a final sync to the replica and forgets it;
//! 4. `start` on the new host: it restores the data from the replica, starts the app and
//!    serves the requests it held;
//! 5. record the move as done: the new host holds the app.
//!
//! Between 3 and 4 the app runs nowhere; at no point does it run on two hosts. A move whose
//! target died while the holder owns the slice again goes back home: steps 2 and 4 on the
//! holder itself, without 3 (see [`pending`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use steady_proto::wire::{AppEntry, HostEntry, RoutingTable};

use crate::api::Slicer;

/// How many finished moves `GET /v1/moves` remembers.
const HISTORY_MAX: usize = 1024;
/// Bound on the arrive and start calls (a bundle fetch; a restore and a start).
const PREPARE_TIMEOUT_MS: u64 = 60_000;
/// Bound on the depart call (a drain of at most 5 s, then a final sync).
const DEPART_TIMEOUT_MS: u64 = 30_000;
/// How often pending moves are looked at when the table does not change.
const ROUND_MS: u64 = 250;
const RETRY_MS_MIN: u64 = 200;
const RETRY_MS_MAX: u64 = 10_000;

/// One move the table asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub app: AppEntry,
    pub from: HostEntry,
    pub to: HostEntry,
}

/// The moves `table` asks for: apps held by a live host that is not their slice's owner, in
/// name order. An app whose holder is gone is not moved but adopted by the owner.
///
/// A move that has begun is finished even when the slice's owner has turned back to the
/// holder meanwhile (a drain undone, the target dead): the holder may already have handed the
/// app over (step 3). Toward a live target it goes on (a later move brings the app back);
/// with the target gone it starts again at home, a move from the holder to itself, in which
/// the holder takes the app back as a new host would (restoring its data from the replica).
pub fn pending(table: &RoutingTable) -> Vec<Move> {
    table
        .apps
        .iter()
        .filter_map(|app| {
            let from = table.host(&app.host_id)?;
            let owner = table.owner_of(&app.name)?;
            let to = match app.moving_to.as_deref() {
                _ if owner.id != from.id => owner,
                None => return None,
                Some(target) => table.host(target).unwrap_or(from),
            };
            Some(Move { app: app.clone(), from: from.clone(), to: to.clone() })
        })
        .collect()
}

/// Limits on how fast the mover works, so a big change does not stampede the hosts.
#[derive(Debug, Clone, Copy)]
pub struct MoverConfig {
    /// Moves under way at once, over the whole cluster.
    pub concurrent_max: usize,
    /// New moves begun per second at most.
    pub starts_per_second: u32,
}

/// A finished move, as `GET /v1/moves` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct MoveRecord {
    pub app: String,
    pub from: String,
    pub to: String,
    /// From the old host's depart call to the new host serving: the app answered nowhere
    /// (its requests were held) for at most this long.
    pub downtime_ms: u64,
    /// From the move's first step to its last.
    pub total_ms: u64,
    pub finished_at_ms: u64,
}

/// What the mover has done and is doing; shared with the API and the metrics.
#[derive(Default)]
pub struct MoveLog {
    history: Mutex<VecDeque<MoveRecord>>,
    in_flight: Mutex<HashSet<String>>,
    /// Moves that failed a step (retried later), by app: when to try again and the backoff.
    retry: Mutex<HashMap<String, (Instant, u64)>>,
    pub(crate) pending: std::sync::atomic::AtomicUsize,
    pub(crate) done_total: std::sync::atomic::AtomicU64,
    pub(crate) failed_total: std::sync::atomic::AtomicU64,
}

impl MoveLog {
    /// The last finished moves, oldest first.
    pub fn history(&self) -> Vec<MoveRecord> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Moves under way now.
    pub fn in_flight(&self) -> Vec<String> {
        let mut names: Vec<String> = self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        names.sort();
        names
    }

    fn finished(&self, record: MoveRecord) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY_MAX {
            history.pop_front();
        }
        history.push_back(record);
    }
}

/// Why a step of a move failed (the move is retried).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{step} on host {host}: {message}")]
    Host { step: &'static str, host: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Runs forever: begins pending moves within the limits and drives each to its end.
pub async fn run(slicer: Arc<Slicer>, config: MoverConfig) {
    assert!(config.concurrent_max > 0 && config.starts_per_second > 0);
    let http = reqwest::Client::builder().build().expect("static client config");
    let mut changes = slicer.subscribe();
    let start_gap = Duration::from_millis(1000 / u64::from(config.starts_per_second));
    loop {
        let table = slicer.current_table();
        let moves = pending(&table);
        let log = &slicer.moves;
        log.pending.store(moves.len(), std::sync::atomic::Ordering::Relaxed);
        for planned in moves {
            {
                let mut in_flight = log.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let waiting = log.retry.lock().unwrap_or_else(|p| p.into_inner()).get(&planned.app.name).copied();
                if in_flight.len() >= config.concurrent_max
                    || in_flight.contains(&planned.app.name)
                    || waiting.is_some_and(|(at, _)| at > Instant::now())
                {
                    continue;
                }
                in_flight.insert(planned.app.name.clone());
            }
            tokio::spawn(drive_logged(slicer.clone(), http.clone(), planned));
            tokio::time::sleep(start_gap).await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(ROUND_MS), changes.changed()).await;
    }
}

async fn drive_logged(slicer: Arc<Slicer>, http: reqwest::Client, planned: Move) {
    let name = planned.app.name.clone();
    let span = tracing::info_span!("move", app = %name, from = %planned.from.id, to = %planned.to.id);
    let outcome = tracing::Instrument::instrument(drive(&slicer, &http, planned), span.clone()).await;
    let log = &slicer.moves;
    let mut retry = log.retry.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(record) => {
            retry.remove(&name);
            span.in_scope(|| tracing::info!(downtime_ms = record.downtime_ms, total_ms = record.total_ms, "moved"));
            log.done_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log.finished(record);
        }
        Err(error) => {
            let backoff_ms = retry.get(&name).map_or(RETRY_MS_MIN, |(_, ms)| (ms * 2).min(RETRY_MS_MAX));
            retry.insert(name.clone(), (Instant::now() + Duration::from_millis(backoff_ms), backoff_ms));
            span.in_scope(|| tracing::warn!(%error, backoff_ms, "move step failed; will try again"));
            log.failed_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    drop(retry);
    log.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
}

async fn drive(slicer: &Slicer, http: &reqwest::Client, planned: Move) -> Result<MoveRecord, StepError> {
    let Move { app, from, to } = planned;
    let began = Instant::now();
    slicer.change(|store| store.move_started(&app.name, &from.id, &to.id))?;
    let entry = AppEntry { moving_to: Some(to.id.clone()), ..app.clone() };
    call(http, "arrive", &to, &app.name, &entry, PREPARE_TIMEOUT_MS).await?;
    let departed = Instant::now();
    // Back home (see `pending`): the holder has already let the app go, or still serves it.
    if from.id != to.id {
        call(http, "depart", &from, &app.name, &to, DEPART_TIMEOUT_MS).await?;
    }
    call(http, "start", &to, &app.name, &entry, PREPARE_TIMEOUT_MS).await?;
    let downtime_ms = departed.elapsed().as_millis() as u64;
    let now_ms = crate::api::now_ms();
    slicer.change(|store| store.move_done(&app.name, &from.id, &to.id, now_ms))?;
    Ok(MoveRecord {
        app: app.name,
        from: from.id,
        to: to.id,
        downtime_ms,
        total_ms: began.elapsed().as_millis() as u64,
        finished_at_ms: now_ms,
    })
}

/// `POST http://<host api>/v1/moves/<app>/<step>` with `body`; any answer but 2xx fails.
async fn call(
    http: &reqwest::Client,
    step: &'static str,
    host: &HostEntry,
    app: &str,
    body: &impl Serialize,
    timeout_ms: u64,
) -> Result<(), StepError> {
    let url = format!("http://{}/v1/moves/{app}/{step}", host.api_addr);
    let fail = |message: String| StepError::Host { step, host: host.id.clone(), message };
    let request = http.post(&url).json(body).timeout(Duration::from_millis(timeout_ms));
    let response = request.send().await.map_err(|e| fail(e.to_string()))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    Err(fail(format!("HTTP {status}: {}", text.chars().take(512).collect::<String>())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use steady_proto::slice::SLICE_COUNT;

    fn host(id: &str) -> HostEntry {
        HostEntry { id: id.into(), ingress_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into(), draining: false }
    }

    fn app(name: &str, holder: &str) -> AppEntry {
        AppEntry {
            name: name.into(),
            host_id: holder.into(),
            version: 1,
            updated_at_ms: 0,
            bundle: None,
            expires_at_ms: None,
            moving_to: None,
        }
    }

    #[test]
    fn moves_are_apps_whose_live_holder_does_not_own_their_slice() {
        let mut table = RoutingTable::empty();
        table.hosts = vec![host("a"), host("b")];
        table.slices = vec![1; SLICE_COUNT as usize];
        table.apps = vec![app("one", "a"), app("three", "gone"), app("two", "b")];
        let moves = pending(&table);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!((moves[0].app.name.as_str(), moves[0].from.id.as_str(), moves[0].to.id.as_str()), ("one", "a", "b"));
    }

    #[test]
    fn a_begun_move_is_finished_when_the_owner_turns_back_to_the_holder_even_if_its_target_died() {
        let mut table = RoutingTable::empty();
        table.hosts = vec![host("a"), host("b")];
        table.slices = vec![0; SLICE_COUNT as usize];
        let begun = |to: &str| AppEntry { moving_to: Some(to.into()), ..app("one", "a") };
        table.apps = vec![begun("b")];
        let moves = pending(&table);
        assert_eq!(moves.len(), 1, "a owns the slice again, but a may have let the app go: {moves:?}");
        assert_eq!((moves[0].from.id.as_str(), moves[0].to.id.as_str()), ("a", "b"));
        table.apps = vec![begun("gone")];
        let moves = pending(&table);
        assert_eq!(moves.len(), 1, "the target died: the app starts again at home: {moves:?}");
        assert_eq!((moves[0].from.id.as_str(), moves[0].to.id.as_str()), ("a", "a"));
        table.apps = vec![begun("a")];
        assert_eq!(pending(&table).len(), 1, "a move back home under way goes on");
        table.apps = vec![app("one", "a")];
        assert!(pending(&table).is_empty(), "nothing begun, the holder owns it");
    }
}
