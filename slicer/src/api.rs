//! The slicer's HTTP API (`/v1/...`): host registration, app records and the table watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use steady_proto::wire::{ApiError, AppDeployed, Heartbeat, RegisterHost, RoutingTable, TableVersion};
use tokio::sync::watch;

use crate::config::WATCH_WAIT_MS_MAX;
use crate::store::{Store, StoreError};

/// Shared state of the API: the store and a channel that always holds the newest table.
pub struct Slicer {
    store: Mutex<Store>,
    table: watch::Sender<Arc<RoutingTable>>,
    /// When each host was last heard from (registration or heartbeat); in memory, so a
    /// restarted slicer gives every host a full timeout before declaring it dead.
    heartbeats: Mutex<HashMap<String, Instant>>,
    started: Instant,
    /// What the mover has done and is doing.
    pub(crate) moves: crate::mover::MoveLog,
    /// The load of each app, from heartbeats.
    pub(crate) loads: crate::balance::Loads,
}

impl Slicer {
    /// Wraps an opened store and publishes its current table.
    pub fn new(store: Store) -> Result<Arc<Self>, StoreError> {
        let table = Arc::new(store.table()?);
        let (sender, _) = watch::channel(table);
        let (heartbeats, started) = (Mutex::new(HashMap::new()), Instant::now());
        let moves = crate::mover::MoveLog::default();
        let loads = crate::balance::Loads::default();
        Ok(Arc::new(Self { store: Mutex::new(store), table: sender, heartbeats, started, moves, loads }))
    }

    /// The newest table.
    pub fn current_table(&self) -> Arc<RoutingTable> {
        self.table.borrow().clone()
    }

    /// A receiver that is told about every new table.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.table.subscribe()
    }

    fn heard_from(&self, host_id: &str) {
        self.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).insert(host_id.to_owned(), Instant::now());
    }

    /// Runs forever: declares hosts silent for longer than `timeout_ms` dead and removes
    /// them (never the last one).
    pub async fn expire_hosts(self: Arc<Self>, timeout_ms: u64) {
        let timeout = Duration::from_millis(timeout_ms);
        // A tenth of the timeout: a dead host is found at most 10 % after its timeout ends.
        let mut ticker = tokio::time::interval(timeout / 10);
        loop {
            ticker.tick().await;
            let table = self.table.borrow().clone();
            let silent: Vec<String> = {
                let heartbeats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
                let last = |id: &str| heartbeats.get(id).copied().unwrap_or(self.started);
                table.hosts.iter().filter(|h| last(&h.id).elapsed() > timeout).map(|h| h.id.clone()).collect()
            };
            for (index, host_id) in silent.iter().enumerate() {
                if table.hosts.len() - index <= 1 {
                    tracing::error!(host = %host_id, "the last host is silent; keeping it");
                    break;
                }
                match self.change(|store| store.remove_host(host_id)) {
                    Ok(version) => tracing::warn!(host = %host_id, ?version, timeout_ms, "host declared dead"),
                    Err(error) => tracing::error!(host = %host_id, %error, "removing a dead host failed"),
                }
            }
        }
    }

    /// Reads from the store (no new table).
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        read(&self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Applies a change to the store that the routing table does not show (tokens, claims).
    pub(crate) fn write<T, E>(&self, write: impl FnOnce(&mut Store) -> Result<T, E>) -> Result<T, E> {
        write(&mut self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Applies `change` to the store and republishes the table.
    pub(crate) fn change<T>(&self, change: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut store = self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = change(&mut store)?;
        let table = Arc::new(store.table()?);
        self.table.send_if_modified(|current| {
            let newer = table.version > current.version;
            if newer {
                *current = table;
            }
            newer
        });
        Ok(result)
    }
}

/// Builds the router.
pub fn router(slicer: Arc<Slicer>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/hosts/register", post(register_host))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{id}/heartbeat", post(heartbeat))
        .route("/v1/hosts/{id}/drain", post(drain_host))
        .route("/v1/hosts/{id}/undrain", post(undrain_host))
        .route("/v1/moves", get(list_moves))
        .route("/v1/history", get(history))
        .route("/v1/table", get(watch_table))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{name}", put(app_deployed).delete(app_deleted))
        .route("/v1/apps/{name}/release", post(app_released))
        .merge(crate::access::routes())
        .with_state(slicer)
}

pub(crate) struct Failure(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { code: self.1.into(), message: self.2 })).into_response()
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotOwner { .. } => Failure(StatusCode::CONFLICT, "not_owner", error.to_string()),
            StoreError::UnknownHost(_) => Failure(StatusCode::NOT_FOUND, "unknown_host", error.to_string()),
            StoreError::Moving { .. } => Failure(StatusCode::CONFLICT, "moving", error.to_string()),
            StoreError::LastHost(_) => Failure(StatusCode::CONFLICT, "last_host", error.to_string()),
            StoreError::StaleMove(_) => Failure(StatusCode::CONFLICT, "stale_move", error.to_string()),
            StoreError::Sqlite(_) => {
                tracing::error!(%error, "store failure");
                Failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn register_host(
    State(slicer): State<Arc<Slicer>>,
    Json(body): Json<RegisterHost>,
) -> Result<Json<RoutingTable>, Failure> {
    if body.host.id.is_empty() || body.host.id.len() > 64 {
        return Err(Failure(StatusCode::BAD_REQUEST, "bad_host", "host id must be 1-64 characters".into()));
    }
    let version = slicer.change(|store| store.register_host(&body.host, now_ms()))?;
    slicer.heard_from(&body.host.id);
    tracing::info!(host = %body.host.id, ingress = %body.host.ingress_addr, version, "host registered");
    Ok(Json(slicer.table.borrow().as_ref().clone()))
}

async fn heartbeat(
    State(slicer): State<Arc<Slicer>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<TableVersion>, Failure> {
    let table = slicer.table.borrow().clone();
    if !table.hosts.iter().any(|h| h.id == id) {
        let message = format!("host {id:?} is not registered (declared dead?); register again");
        return Err(Failure(StatusCode::NOT_FOUND, "unknown_host", message));
    }
    slicer.heard_from(&id);
    if !body.is_empty() {
        let load: Heartbeat = serde_json::from_slice(&body)
            .map_err(|e| Failure(StatusCode::BAD_REQUEST, "bad_heartbeat", format!("heartbeat body: {e}")))?;
        slicer.loads.report(load);
    }
    Ok(Json(TableVersion { version: table.version }))
}

async fn metrics(State(slicer): State<Arc<Slicer>>) -> impl IntoResponse {
    let table = slicer.table.borrow().clone();
    let text = crate::metrics::render(&table, &slicer.moves);
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

async fn drain_host(State(slicer): State<Arc<Slicer>>, Path(id): Path<String>) -> Result<Json<TableVersion>, Failure> {
    let version = slicer.change(|store| store.set_draining(&id, true))?;
    tracing::info!(host = %id, version, "host draining: its apps move to the others");
    Ok(Json(TableVersion { version }))
}

async fn undrain_host(
    State(slicer): State<Arc<Slicer>>,
    Path(id): Path<String>,
) -> Result<Json<TableVersion>, Failure> {
    let version = slicer.change(|store| store.set_draining(&id, false))?;
    tracing::info!(host = %id, version, "host takes apps again");
    Ok(Json(TableVersion { version }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// Every table version with when and why it was made, newest first (`?limit=`, default 100).
async fn history(
    State(slicer): State<Arc<Slicer>>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, Failure> {
    let store = slicer.store.lock().unwrap_or_else(|p| p.into_inner());
    let entries = store.history(query.limit.unwrap_or(100))?;
    Ok(Json(serde_json::json!({ "history": entries })))
}

/// Moves the table asks for, the ones under way, and the last finished ones with their times.
async fn list_moves(State(slicer): State<Arc<Slicer>>) -> Json<serde_json::Value> {
    let table = slicer.current_table();
    let pending: Vec<_> = crate::mover::pending(&table)
        .into_iter()
        .map(|m| {
            serde_json::json!({"app": m.app.name, "from": m.from.id, "to": m.to.id,
            "started": m.app.moving_to.as_deref() == Some(m.to.id.as_str())})
        })
        .collect();
    Json(serde_json::json!({
        "version": table.version,
        "pending": pending,
        "in_flight": slicer.moves.in_flight(),
        "recent": slicer.moves.history(),
    }))
}

async fn list_hosts(State(slicer): State<Arc<Slicer>>) -> Json<serde_json::Value> {
    let table = slicer.table.borrow().clone();
    let hosts: Vec<_> = table
        .hosts
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let slices = table.slices.iter().filter(|&&s| usize::from(s) == index).count();
            let apps = table.apps.iter().filter(|a| a.host_id == host.id).count();
            let moving_in = table.apps.iter().filter(|a| a.moving_to.as_deref() == Some(host.id.as_str())).count();
            serde_json::json!({"id": host.id, "ingress_addr": host.ingress_addr, "api_addr": host.api_addr,
                "draining": host.draining, "slices": slices, "apps": apps, "moving_in": moving_in})
        })
        .collect();
    Json(serde_json::json!({ "version": table.version, "hosts": hosts }))
}

#[derive(Deserialize)]
struct WatchQuery {
    /// Answer once the table is newer than this version (or the wait ends).
    after: Option<u64>,
    wait_ms: Option<u64>,
}

/// Long-poll: returns the table as soon as its version is above `after`, or the current table
/// after `wait_ms` (bounded by [`WATCH_WAIT_MS_MAX`]).
async fn watch_table(State(slicer): State<Arc<Slicer>>, Query(query): Query<WatchQuery>) -> Json<RoutingTable> {
    let mut receiver = slicer.table.subscribe();
    if let Some(after) = query.after {
        let wait = Duration::from_millis(query.wait_ms.unwrap_or(30_000).min(WATCH_WAIT_MS_MAX));
        let _ = tokio::time::timeout(wait, receiver.wait_for(|t| t.version > after)).await;
    }
    let table = receiver.borrow().as_ref().clone();
    Json(table)
}

/// Every app, with its owner; only the caller's own unless the LB says it is an admin (or the
/// call came straight to the slicer, on the private network).
async fn list_apps(
    State(slicer): State<Arc<Slicer>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, Failure> {
    let table = slicer.table.borrow().clone();
    let caller = crate::access::Caller::of(&headers);
    let claims = slicer.read(|store| store.claims())?;
    let mut apps = Vec::with_capacity(table.apps.len());
    for app in &table.apps {
        let owner = claims.get(&app.name).map_or(crate::identity::ADMIN_OWNER, String::as_str);
        if caller.sees_owner(owner) {
            let mut entry = serde_json::to_value(app).unwrap_or_default();
            entry["owner"] = owner.into();
            apps.push(entry);
        }
    }
    Ok(Json(serde_json::json!({ "apps": apps })))
}

async fn app_deployed(
    State(slicer): State<Arc<Slicer>>,
    Path(name): Path<String>,
    Json(body): Json<AppDeployed>,
) -> Result<Json<TableVersion>, Failure> {
    steady_proto::name::validate(&name).map_err(|e| Failure(StatusCode::BAD_REQUEST, "bad_name", e.to_string()))?;
    let version = slicer.change(|store| store.app_deployed(&name, &body, now_ms()))?;
    tracing::info!(app = %name, host = %body.host_id, app_version = body.version, version, "app recorded");
    Ok(Json(TableVersion { version }))
}

#[derive(Deserialize)]
struct DeleteQuery {
    host_id: String,
}

async fn app_released(
    State(slicer): State<Arc<Slicer>>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<TableVersion>, Failure> {
    let version = slicer.change(|store| store.app_released(&name, &query.host_id))?;
    tracing::info!(app = %name, host = %query.host_id, version, "app released for its new owner");
    Ok(Json(TableVersion { version }))
}

async fn app_deleted(
    State(slicer): State<Arc<Slicer>>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<TableVersion>, Failure> {
    let version = slicer.change(|store| store.app_deleted(&name, &query.host_id))?;
    tracing::info!(app = %name, host = %query.host_id, version, "app removed");
    Ok(Json(TableVersion { version }))
}
