//! The host's control API: deploys, app lists and logs. Reached through the LB's private port.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use steady_proto::wire::HEADER_TABLE_VERSION;

use crate::apps::{Apps, DeployError};
use crate::ingress::failure;
use crate::membership::MembershipError;

/// Most log lines one request may ask for.
const LOG_LINES_MAX: usize = 10_000;

#[derive(Clone)]
struct Api {
    apps: Arc<Apps>,
    bundle_size_max_bytes: usize,
}

/// Builds the control router.
pub fn router(apps: Arc<Apps>, bundle_size_max_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/apps", get(list))
        .route("/v1/apps/{name}/deploy", post(deploy))
        .route("/v1/apps/{name}/logs", get(logs))
        .layer(DefaultBodyLimit::disable())
        .with_state(Api {
            apps,
            bundle_size_max_bytes,
        })
}

async fn list(State(api): State<Api>) -> Response {
    match api.apps.list() {
        Ok(apps) => Json(serde_json::json!({ "apps": apps })).into_response(),
        Err(error) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        ),
    }
}

async fn deploy(State(api): State<Api>, Path(name): Path<String>, body: Body) -> Response {
    if let Err(error) = steady_proto::name::validate(&name) {
        return failure(StatusCode::BAD_REQUEST, "bad_name", error.to_string());
    }
    let limit = api.bundle_size_max_bytes;
    let archive = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let message = format!(
                "bundle is larger than the limit of {limit} bytes (or the upload broke off)"
            );
            return failure(StatusCode::PAYLOAD_TOO_LARGE, "bundle_too_large", message);
        }
    };
    match api.apps.deploy(&name, &archive).await {
        Ok((result, table_version)) => {
            let mut response = (StatusCode::CREATED, Json(result)).into_response();
            response
                .headers_mut()
                .insert(HEADER_TABLE_VERSION, HeaderValue::from(table_version));
            response
        }
        Err(error) => deploy_failure(&name, error),
    }
}

fn deploy_failure(name: &str, error: DeployError) -> Response {
    tracing::warn!(app = %name, %error, "deploy failed");
    let message = error.to_string();
    match error {
        DeployError::Bundle(_) => failure(StatusCode::BAD_REQUEST, "bad_bundle", message),
        DeployError::Start { log, .. } => {
            let body =
                serde_json::json!({ "code": "start_failed", "message": message, "log": log });
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        DeployError::Membership(MembershipError::NotOwner(_)) => {
            failure(StatusCode::CONFLICT, "not_owner", message)
        }
        DeployError::Membership(_) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "slicer_unavailable",
            message,
        ),
        DeployError::Store(_) | DeployError::Io(_) => {
            failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
        }
    }
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
}

async fn logs(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    if let Err(error) = steady_proto::name::validate(&name) {
        return failure(StatusCode::BAD_REQUEST, "bad_name", error.to_string());
    }
    let count = query.tail.unwrap_or(200).min(LOG_LINES_MAX);
    match api.apps.log_tail(&name, count) {
        Ok(Some(lines)) => {
            let mut text = lines.join("\n");
            text.push('\n');
            ([("content-type", "text/plain; charset=utf-8")], text).into_response()
        }
        Ok(None) => failure(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("no app named {name:?}"),
        ),
        Err(error) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        ),
    }
}
