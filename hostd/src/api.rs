//! The host's control API: deploys, rollbacks, versions, status, logs, request logs,
//! deletion, and an app's contents: the sources of its versions, its environment variables and
//! SQL on its database. Reached through the LB's private port, which sends `/v1/apps/<name>…` here.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use steady_proto::wire::{AppEntry, DbQuery, DeployResult, HostEntry, Rollback, HEADER_TABLE_VERSION};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::apps::{Apps, DbError, DeployError, EnvError, SourcesError};
use crate::db::QueryError;
use crate::ingress::failure;
use crate::membership::MembershipError;
use crate::secrets::SecretsError;

/// Most log or request lines one request may ask for.
const TAIL_LINES_MAX: usize = 10_000;
/// Default number of lines for a tail.
const TAIL_LINES_DEFAULT: usize = 200;
/// Longest time-to-live of a temporary app.
pub const TTL_SECONDS_MAX: u64 = 7 * 24 * 3600;

#[derive(Clone)]
struct Api {
    apps: Arc<Apps>,
    builder: Arc<crate::build::Builder>,
    bundle_size_max_bytes: usize,
}

/// Builds the control router.
pub fn router(apps: Arc<Apps>, builder: Arc<crate::build::Builder>, bundle_size_max_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(list))
        .route("/v1/apps/{name}", get(status).delete(delete))
        .route("/v1/apps/{name}/deploy", post(deploy))
        .route("/v1/apps/{name}/rollback", post(rollback))
        .route("/v1/apps/{name}/sleep", post(sleep))
        .route("/v1/apps/{name}/backup", post(backup))
        .route("/v1/apps/{name}/restore", post(restore))
        .route("/v1/apps/{name}/versions", get(versions))
        .route("/v1/apps/{name}/logs", get(logs))
        .route("/v1/apps/{name}/requests", get(requests))
        .route("/v1/apps/{name}/source", get(source))
        .route("/v1/apps/{name}/env", get(env_list))
        .route("/v1/apps/{name}/env/{key}", put(env_set).delete(env_unset))
        .route("/v1/apps/{name}/db", post(db_query))
        .route("/v1/moves/{name}/arrive", post(move_arrive))
        .route("/v1/moves/{name}/depart", post(move_depart))
        .route("/v1/moves/{name}/start", post(move_start))
        .layer(DefaultBodyLimit::disable())
        .with_state(Api { apps, builder, bundle_size_max_bytes })
}

/// The answer refusing `name`, if it is not a valid app name.
fn check_name(name: &str) -> Option<Response> {
    steady_proto::name::validate(name).err().map(|e| failure(StatusCode::BAD_REQUEST, "bad_name", e.to_string()))
}

fn unknown(name: &str) -> Response {
    failure(StatusCode::NOT_FOUND, "unknown_app", format!("no app named {name:?}"))
}

fn internal(error: impl std::fmt::Display) -> Response {
    failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

async fn list(State(api): State<Api>) -> Response {
    match api.apps.list() {
        Ok(apps) => Json(serde_json::json!({ "apps": apps })).into_response(),
        Err(error) => internal(error),
    }
}

#[derive(Deserialize)]
struct DeployQuery {
    /// Makes the app temporary: collected with its data this many seconds from now.
    ttl_s: Option<u64>,
}

/// Sources to build on the host (`application/json` deploys, from the dashboard).
#[derive(Deserialize)]
struct SourceDeploy {
    files: std::collections::BTreeMap<String, String>,
}

async fn deploy(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<DeployQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    let expires_at_ms = match query.ttl_s {
        Some(ttl) if ttl == 0 || ttl > TTL_SECONDS_MAX => {
            let message = format!("ttl_s must be between 1 and {TTL_SECONDS_MAX} seconds");
            return failure(StatusCode::BAD_REQUEST, "bad_ttl", message);
        }
        Some(ttl) => Some(crate::now_ms() + ttl * 1000),
        None => None,
    };
    let limit = api.bundle_size_max_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        let message = format!("bundle is larger than the limit of {limit} bytes (or the upload broke off)");
        return failure(StatusCode::PAYLOAD_TOO_LARGE, "bundle_too_large", message);
    };
    let json =
        headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    let archive = if json {
        match build_sources(&api, &body).await {
            Ok(archive) => archive,
            Err(response) => return response,
        }
    } else {
        body.to_vec()
    };
    changed(&name, api.apps.deploy(&name, &archive, expires_at_ms).await, StatusCode::CREATED)
}

/// Builds `{ "files": { path: text } }` into a bundle; a failure is the answer to send.
async fn build_sources(api: &Api, body: &[u8]) -> Result<Vec<u8>, Response> {
    use crate::build::BuildError;
    let sources: SourceDeploy = serde_json::from_slice(body).map_err(|error| {
        let message = format!("expected {{\"files\": {{\"index.ts\": \"...\"}}}}: {error}");
        failure(StatusCode::BAD_REQUEST, "bad_sources", message)
    })?;
    api.builder.build(&sources.files).await.map_err(|error| {
        let message = error.to_string();
        match error {
            BuildError::BadSources(_) => failure(StatusCode::BAD_REQUEST, "bad_sources", message),
            BuildError::Failed { log } => {
                let body = serde_json::json!({ "code": "build_failed", "message": message, "log": log });
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
            BuildError::Timeout => failure(StatusCode::UNPROCESSABLE_ENTITY, "build_timeout", message),
            BuildError::Io(_) => internal(message),
        }
    })
}

async fn rollback(State(api): State<Api>, Path(name): Path<String>, body: Option<Json<Rollback>>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    let target = body.map(|Json(b)| b.version).unwrap_or_default();
    changed(&name, api.apps.rollback(&name, target).await, StatusCode::OK)
}

/// The answer to a deploy or rollback: the result and the table version the LB waits for.
fn changed(name: &str, outcome: Result<(DeployResult, u64), DeployError>, status: StatusCode) -> Response {
    match outcome {
        Ok((result, table_version)) => {
            let mut response = (status, Json(result)).into_response();
            response.headers_mut().insert(HEADER_TABLE_VERSION, HeaderValue::from(table_version));
            response
        }
        Err(error) => deploy_failure(name, error),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let text = api.apps.render_metrics();
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

fn deploy_failure(name: &str, error: DeployError) -> Response {
    tracing::warn!(app = %name, %error, "deploy failed");
    let message = error.to_string();
    match error {
        DeployError::Bundle(_) => failure(StatusCode::BAD_REQUEST, "bad_bundle", message),
        DeployError::Start { log, .. } => {
            let body = serde_json::json!({ "code": "start_failed", "message": message, "log": log });
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        DeployError::Unknown(_) => failure(StatusCode::NOT_FOUND, "unknown_app", message),
        DeployError::Trial { log, .. } => {
            let body = serde_json::json!({ "code": "trial_failed", "message": message, "log": log });
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        DeployError::BadSchedule { .. } => failure(StatusCode::BAD_REQUEST, "bad_schedule", message),
        DeployError::NoSuchVersion(_) => failure(StatusCode::NOT_FOUND, "unknown_version", message),
        DeployError::Membership(MembershipError::NotOwner(_)) => failure(StatusCode::CONFLICT, "not_owner", message),
        DeployError::Membership(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "slicer_unavailable", message),
        DeployError::Storage(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", message),
        DeployError::Data(crate::replica::ReplicaError::NoStateAt { .. }) => {
            failure(StatusCode::UNPROCESSABLE_ENTITY, "no_state_at", message)
        }
        DeployError::Data(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "data_unavailable", message),
        DeployError::Store(_) | DeployError::Io(_) => internal(message),
    }
}

async fn status(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.status(&name).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => unknown(&name),
        Err(error) => internal(error),
    }
}

/// Stops the app's process now (its next request wakes it): for operators and benchmarks.
async fn sleep(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.sleep_now(&name).await {
        Ok(Some(stopped)) => Json(serde_json::json!({ "stopped": stopped })).into_response(),
        Ok(None) => unknown(&name),
        Err(error) => internal(error),
    }
}

async fn backup(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.backup(&name).await {
        Ok(Some(answer)) => Json(answer).into_response(),
        Ok(None) => unknown(&name),
        Err(error) => deploy_failure(&name, error),
    }
}

#[derive(serde::Deserialize)]
struct RestoreQuery {
    /// RFC 3339 time to restore to; the latest replicated state when absent.
    at: Option<String>,
}

async fn restore(State(api): State<Api>, Path(name): Path<String>, Query(query): Query<RestoreQuery>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    if let Some(at) = &query.at {
        if chrono::DateTime::parse_from_rfc3339(at).is_err() {
            let message = format!("{at:?} is not an RFC 3339 time such as 2026-11-23T09:30:00Z");
            return failure(StatusCode::BAD_REQUEST, "bad_time", message);
        }
    }
    match api.apps.restore(&name, query.at.as_deref()).await {
        Ok(Some(answer)) => Json(answer).into_response(),
        Ok(None) => unknown(&name),
        Err(error) => deploy_failure(&name, error),
    }
}

async fn versions(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.versions(&name) {
        Ok(Some(versions)) => Json(serde_json::json!({ "versions": versions })).into_response(),
        Ok(None) => unknown(&name),
        Err(error) => internal(error),
    }
}

async fn delete(State(api): State<Api>, Path(name): Path<String>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.delete(&name).await {
        Ok(true) => Json(serde_json::json!({ "deleted": name })).into_response(),
        Ok(false) => unknown(&name),
        Err(error) => deploy_failure(&name, error),
    }
}

#[derive(Deserialize)]
struct TailQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The last lines of the app's log as text; with `follow=true` the answer stays open and new
/// lines are streamed as they are written.
async fn logs(State(api): State<Api>, Path(name): Path<String>, Query(query): Query<TailQuery>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    let log = match api.apps.log(&name) {
        Ok(Some(log)) => log,
        Ok(None) => return unknown(&name),
        Err(error) => return internal(error),
    };
    let count = query.tail.unwrap_or(TAIL_LINES_DEFAULT).min(TAIL_LINES_MAX);
    let follower = if query.follow {
        match log.follow() {
            Some(follower) => Some(follower),
            None => {
                return failure(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_followers",
                    "too many clients follow this log".into(),
                )
            }
        }
    } else {
        None
    };
    let mut text: String = log.tail(count).into_iter().map(|l| l + "\n").collect();
    if follower.is_none() {
        text.shrink_to_fit();
        return ([("content-type", "text/plain; charset=utf-8")], text).into_response();
    }
    let head = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(text) });
    let live = BroadcastStream::new(follower.expect("checked above")).map(|item| {
        Ok(match item {
            Ok(line) => format!("{line}\n"),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                format!("[{missed} lines skipped: reader too slow]\n")
            }
        })
    });
    let headers = [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")];
    (headers, Body::from_stream(head.chain(live))).into_response()
}

async fn requests(State(api): State<Api>, Path(name): Path<String>, Query(query): Query<TailQuery>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    let count = query.tail.unwrap_or(TAIL_LINES_DEFAULT).min(TAIL_LINES_MAX);
    match api.apps.request_log(&name) {
        Ok(Some(log)) => Json(serde_json::json!({ "requests": log.tail(count) })).into_response(),
        Ok(None) => unknown(&name),
        Err(error) => internal(error),
    }
}

/// The step answer of a move: 204, or why the step failed (the slicer retries it).
fn step_answer(name: &str, step: &str, outcome: Result<(), DeployError>) -> Response {
    match outcome {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            tracing::warn!(app = %name, step, %error, "move step failed");
            failure(StatusCode::SERVICE_UNAVAILABLE, "move_step_failed", error.to_string())
        }
    }
}

/// The answer refusing a move step whose app record names another app than its path.
fn check_move_entry(name: &str, entry: &AppEntry) -> Option<Response> {
    if let Some(response) = check_name(name) {
        return Some(response);
    }
    (entry.name != name).then(|| failure(StatusCode::BAD_REQUEST, "bad_move", "the body names another app".into()))
}

/// Move step: this host is the app's new host; fetch its bundle and hold its requests.
async fn move_arrive(State(api): State<Api>, Path(name): Path<String>, Json(entry): Json<AppEntry>) -> Response {
    if let Some(response) = check_move_entry(&name, &entry) {
        return response;
    }
    step_answer(&name, "arrive", api.apps.arrive(&entry).await)
}

/// Move step: this host is the app's old host; hand it over to `to`.
async fn move_depart(State(api): State<Api>, Path(name): Path<String>, Json(to): Json<HostEntry>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    step_answer(&name, "depart", api.apps.depart(&name, &to).await)
}

/// Move step: start the arrived app here and serve what was held.
async fn move_start(State(api): State<Api>, Path(name): Path<String>, Json(entry): Json<AppEntry>) -> Response {
    if let Some(response) = check_move_entry(&name, &entry) {
        return response;
    }
    step_answer(&name, "start", api.apps.start_arrived(&entry).await)
}

#[derive(Deserialize)]
struct SourceQuery {
    /// The version whose sources to give; the current one when absent.
    version: Option<u64>,
}

/// The source files a version was deployed with, as a tar archive (paths relative to the
/// app's folder).
async fn source(State(api): State<Api>, Path(name): Path<String>, Query(query): Query<SourceQuery>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.sources(&name, query.version).await {
        Ok((_, archive)) => ([("content-type", "application/x-tar")], archive).into_response(),
        Err(error) => {
            let message = error.to_string();
            match error {
                SourcesError::Unknown(_) => unknown(&name),
                SourcesError::NoSuchVersion { .. } => failure(StatusCode::NOT_FOUND, "unknown_version", message),
                SourcesError::NoSources { .. } => failure(StatusCode::NOT_FOUND, "no_sources", message),
                SourcesError::Failed(error) => deploy_failure(&name, error),
            }
        }
    }
}

#[derive(Deserialize)]
struct EnvQuery {
    /// Include the values, not only the names.
    #[serde(default)]
    reveal: bool,
}

fn env_failure(name: &str, error: EnvError) -> Response {
    let message = error.to_string();
    match error {
        EnvError::Unknown(_) => unknown(name),
        // Not 503: the CLI reads 502-504 as "unreachable", and this is the host's configuration.
        EnvError::Secrets(SecretsError::NoKey) => failure(StatusCode::NOT_IMPLEMENTED, "no_secrets_key", message),
        EnvError::Secrets(SecretsError::Invalid(_) | SecretsError::TooManyKeys | SecretsError::TooLarge) => {
            failure(StatusCode::BAD_REQUEST, "bad_env", message)
        }
        EnvError::Secrets(SecretsError::Storage(_)) => {
            failure(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", message)
        }
        EnvError::Secrets(_) | EnvError::Host(_) => {
            tracing::error!(app = %name, %message, "environment variables");
            internal(message)
        }
    }
}

/// The names of an app's variables (`?reveal=true`: with their values).
async fn env_list(State(api): State<Api>, Path(name): Path<String>, Query(query): Query<EnvQuery>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.env_list(&name, query.reveal).await {
        Ok(list) => Json(list).into_response(),
        Err(error) => env_failure(&name, error),
    }
}

/// Sets one variable; the body is its value (UTF-8 text).
async fn env_set(State(api): State<Api>, Path((name, key)): Path<(String, String)>, body: Body) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    let limit = steady_proto::env::ENV_VALUE_BYTES_MAX;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let message = format!("the value is longer than {limit} bytes (or the upload broke off)");
        return failure(StatusCode::PAYLOAD_TOO_LARGE, "bad_env", message);
    };
    let Ok(value) = std::str::from_utf8(&bytes) else {
        return failure(StatusCode::BAD_REQUEST, "bad_env", "the value must be UTF-8 text".into());
    };
    match api.apps.env_change(&name, &key, Some(value)).await {
        Ok(change) => Json(change).into_response(),
        Err(error) => env_failure(&name, error),
    }
}

async fn env_unset(State(api): State<Api>, Path((name, key)): Path<(String, String)>) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    match api.apps.env_change(&name, &key, None).await {
        Ok(change) => Json(change).into_response(),
        Err(error) => env_failure(&name, error),
    }
}

/// One SQL statement on the app's database: `{sql, write, database}` → `{columns, rows, …}`.
async fn db_query(State(api): State<Api>, Path(name): Path<String>, body: Body) -> Response {
    if let Some(response) = check_name(&name) {
        return response;
    }
    // Room for the statement at its limit, JSON-quoted, and the other fields.
    let limit = 2 * crate::db::SQL_BYTES_MAX + 1024;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return failure(StatusCode::PAYLOAD_TOO_LARGE, "sql_too_long", format!("the query is over {limit} bytes"));
    };
    let query: DbQuery = match serde_json::from_slice(&bytes) {
        Ok(query) => query,
        Err(error) => {
            return failure(StatusCode::BAD_REQUEST, "bad_query", format!("expected {{sql, write}}: {error}"))
        }
    };
    match api.apps.db_query(&name, query).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => {
            let message = error.to_string();
            let (status, code) = match error {
                DbError::Unknown(_) => return unknown(&name),
                DbError::NoDatabase { .. } => (StatusCode::NOT_FOUND, "no_database"),
                DbError::NoSuchDatabase { .. } => (StatusCode::NOT_FOUND, "unknown_database"),
                DbError::Ambiguous { .. } => (StatusCode::BAD_REQUEST, "ambiguous_database"),
                // The app's state refuses the write (crash loop, moving): a conflict, not an outage.
                DbError::NotRunning(_) => (StatusCode::CONFLICT, "app_not_running"),
                DbError::Query(QueryError::Sql(_) | QueryError::NotOneStatement | QueryError::TooLong) => {
                    (StatusCode::BAD_REQUEST, "sql_error")
                }
                DbError::Query(QueryError::ReadOnly) => (StatusCode::BAD_REQUEST, "read_only"),
                DbError::Query(QueryError::Timeout) => (StatusCode::BAD_REQUEST, "query_timeout"),
                DbError::Host(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            failure(status, code, message)
        }
    }
}
