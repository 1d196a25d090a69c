//! App traffic from the load balancers: find the app, wake it if needed, forward the request
//! over the app's Unix socket and stream the answer back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use steady_proto::wire::{ApiError, HEADER_APP};

use crate::apps::{Apps, WakeError};

/// Seconds a client is told to wait after a 503 for an app that could not be woken.
const RETRY_AFTER_SECONDS: &str = "1";

/// The ingress router: every path is app traffic.
pub fn router(apps: Arc<Apps>) -> axum::Router {
    axum::Router::new().fallback(forward).with_state(apps)
}

async fn forward(State(apps): State<Arc<Apps>>, mut request: Request) -> Response {
    let Some(app) = request.headers_mut().remove(HEADER_APP) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "no_app",
            "request carries no app header".into(),
        );
    };
    let app = app.to_str().unwrap_or_default().to_owned();
    let socket = match apps.wake(&app).await {
        Ok(socket) => socket,
        Err(error) => return wake_failure(error),
    };
    match send(&socket, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%app, %error, "forwarding to app failed");
            failure(
                StatusCode::BAD_GATEWAY,
                "app_unreachable",
                format!("app {app:?} did not answer: {error}"),
            )
        }
    }
}

async fn send(
    socket: &std::path::Path,
    request: Request,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "app connection ended with an error");
        }
    });
    let response = sender.send_request(request).await?;
    Ok(response.map(Body::new))
}

fn wake_failure(error: WakeError) -> Response {
    let message = error.to_string();
    match error {
        WakeError::Unknown(_) => failure(StatusCode::NOT_FOUND, "unknown_app", message),
        WakeError::QueueFull(_) | WakeError::Deadline(_) | WakeError::Start { .. } => {
            let mut response = failure(StatusCode::SERVICE_UNAVAILABLE, "app_unavailable", message);
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static(RETRY_AFTER_SECONDS));
            response
        }
        WakeError::Store(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

/// A JSON error answer in the API's shape.
pub fn failure(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(ApiError {
            code: code.into(),
            message,
        }),
    )
        .into_response()
}
