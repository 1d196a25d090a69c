//! App traffic from the load balancers: find the app, wake it if needed, forward the request
//! over the app's Unix socket (a pooled keep-alive connection, [`pool`]), stream the answer
//! back and write the request log.
//!
//! [`serve`] runs the listener: the common request (a bodiless `GET` or `HEAD`) is served by
//! the [`lane`] straight from its bytes; every other one by the axum [`router`] below.

pub mod lane;
mod pool;
mod streams;

pub use lane::{serve, IngressLimits};

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use steady_proto::wire::{
    ApiError, RequestRecord, HEADER_APP, HEADER_FORWARDED_BY, HEADER_PROBE, INTERNAL_HEADER_PREFIX,
};

use crate::apps::{Apps, Elsewhere, Lease, WakeError};
use crate::metrics::DropReason;
use pool::{AppConnections, Lent};

/// Seconds a client is told to wait after a 503 for an app that could not be woken.
const RETRY_AFTER_SECONDS: u64 = 1;
/// Bound on connecting to another host's ingress when forwarding.
const FORWARD_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Longest path kept in the request log.
const LOGGED_PATH_BYTES_MAX: usize = 512;

/// The ingress router: every path is app traffic. Bodies above `body_max_bytes` are refused.
pub fn router(apps: Arc<Apps>, body_max_bytes: u64, app_idle_connections_max: usize) -> axum::Router {
    let bounds = lane::app_pool_bounds(app_idle_connections_max);
    let connections = Arc::new(AppConnections::new(bounds.idle_per_upstream_max, bounds.idle_total_max));
    axum::Router::new().fallback(forward).with_state(Ingress { apps, connections, body_max_bytes })
}

#[derive(Clone)]
struct Ingress {
    apps: Arc<Apps>,
    /// Idle connections to the apps, shared by every request.
    connections: Arc<AppConnections>,
    body_max_bytes: u64,
}

async fn forward(State(ingress): State<Ingress>, request: Request) -> Response {
    let declared = request.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > ingress.body_max_bytes) {
        let message = format!("request body is larger than the limit of {} bytes", ingress.body_max_bytes);
        return failure(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message);
    }
    // A body without a declared length is cut off at the limit: the app sees it end in error.
    let limit = usize::try_from(ingress.body_max_bytes).unwrap_or(usize::MAX);
    let request = request.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
    forward_to_app(&ingress.apps, &ingress.connections, request).await
}

/// Makes a request that came over HTTP/2 (an LB speaking h2c) an HTTP/1.1 one for the app's
/// socket: the origin-form target, and the `:authority` as `Host` when the client sent none.
fn as_http1(request: &mut Request) {
    if request.version() == axum::http::Version::HTTP_11 {
        return;
    }
    *request.version_mut() = axum::http::Version::HTTP_11;
    if let Some(authority) = request.uri().authority() {
        if !request.headers().contains_key(axum::http::header::HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(axum::http::header::HOST, host);
            }
        }
    }
    if let Some(target) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = target.into();
    }
}

async fn forward_to_app(apps: &Apps, connections: &Arc<AppConnections>, mut request: Request) -> Response {
    let Some(app) = request.headers_mut().remove(HEADER_APP) else {
        return failure(StatusCode::BAD_REQUEST, "no_app", "request carries no app header".into());
    };
    let app = app.to_str().unwrap_or_default().to_owned();
    if request.headers().contains_key(HEADER_PROBE) {
        let status = if apps.serves_here(&app) { StatusCode::OK } else { StatusCode::NOT_FOUND };
        return status.into_response();
    }
    let forwarded = request.headers().contains_key(HEADER_FORWARDED_BY);
    strip_internal_headers(&mut request);
    as_http1(&mut request);
    let lease = match wake_or_redirect(apps, &app).await {
        Ok(lease) => lease,
        Err(Redirect::Forward(to)) if !forwarded => return forward_to_host(apps, &app, to, request).await,
        Err(Redirect::Forward(_)) => return moving(&app),
        Err(Redirect::Answer(response)) => return response,
    };
    let again = resendable(&request);
    // A WebSocket (or any `Upgrade`): once the app answers 101, the two connections are joined.
    let client_upgrade = wants_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
    let mut completion = Completion::new(lease, &request);
    let mut sent = match client_upgrade {
        // An upgraded connection is never reused: it gets a connection of its own.
        Some(_) => send(&completion.lease.socket, request).await,
        None => match connections.send(&completion.lease.socket, request).await {
            Ok((response, lent)) => {
                completion.connection = Some((connections.clone(), lent));
                Ok(response.map(Body::new))
            }
            Err(error) => Err(error),
        },
    };
    if let (Some(again), true) = (again, sent.is_err()) {
        // The process may have died under the request (killed, crashed): an idempotent
        // request without a body goes once more to a new process.
        if let Some(lease) = apps.wake_again(&app, &completion.lease).await {
            completion.lease = lease;
            apps.metrics.requests_resent.inc();
            sent = send(&completion.lease.socket, again).await;
        }
    }
    match sent {
        Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some() => {
            completion.status = 101;
            let (client, app_side) = (client_upgrade.expect("checked"), hyper::upgrade::on(&mut response));
            // The lease lives as long as the tunnel: an app with an open socket does not sleep.
            tokio::spawn(async move {
                let _completion = completion;
                tunnel(client, app_side).await;
            });
            response
        }
        Ok(response) => {
            completion.status = response.status().as_u16();
            if completion.status < 500 {
                apps.note_answered(&completion.lease);
            }
            let (parts, body) = response.into_parts();
            let counted = body.into_data_stream().map(move |chunk| {
                // Borrow the whole value so the closure owns `completion` (not a copy of one
                // field): it must live, holding the lease, until the body is done.
                let completion = &mut completion;
                if let Ok(bytes) = &chunk {
                    completion.bytes += bytes.len() as u64;
                }
                chunk
            });
            Response::from_parts(parts, Body::from_stream(counted))
        }
        Err(error) => {
            tracing::warn!(%app, %error, "forwarding to app failed");
            completion.status = 502;
            failure(StatusCode::BAD_GATEWAY, "app_unreachable", format!("app {app:?} did not answer: {error}"))
        }
    }
}

fn wants_upgrade(request: &Request) -> bool {
    let connection = request.headers().get("connection").and_then(|v| v.to_str().ok()).unwrap_or_default();
    request.headers().contains_key("upgrade") && connection.to_ascii_lowercase().contains("upgrade")
}

/// Copies bytes both ways between an upgraded client connection and the app's, until either
/// side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, app: hyper::upgrade::OnUpgrade) {
    let (client, app) = tokio::join!(client, app);
    let (Ok(client), Ok(app)) = (client, app) else {
        tracing::debug!("an upgrade did not complete");
        return;
    };
    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

/// A copy of `request` to send again if the app dies under it: only for idempotent methods
/// (RFC 9110 §9.2.2) without a body.
fn resendable(request: &Request) -> Option<Request> {
    let idempotent = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let headers = request.headers();
    let declared_empty = headers.get("content-length").is_none_or(|v| v.as_bytes() == b"0");
    if !idempotent || !declared_empty || headers.contains_key("transfer-encoding") {
        return None;
    }
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = headers.clone();
    Some(copy)
}

enum Redirect {
    /// Another host has the app.
    Forward(std::net::SocketAddr),
    /// This host answers itself (an error).
    Answer(Response),
}

/// A lease on the running app, waking it if needed. An app that is on its way here (a move,
/// an adoption) is waited for, within `--move-hold-ms` and a bound on held requests; an app
/// another host has is a [`Redirect::Forward`].
async fn wake_or_redirect(apps: &Apps, app: &str) -> Result<Lease, Redirect> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(apps.move_hold_ms());
    let mut place = None;
    loop {
        let arrivals = apps.arrivals();
        tokio::pin!(arrivals);
        arrivals.as_mut().enable();
        let error = match apps.wake(app).await {
            Ok(lease) => return Ok(lease),
            Err(error @ (WakeError::Unknown(_) | WakeError::Departed(_))) => error,
            Err(error) => {
                if let Some(reason) = drop_reason(&error) {
                    apps.metrics.drop_request(reason);
                }
                return Err(Redirect::Answer(wake_failure(error)));
            }
        };
        match apps.elsewhere(app) {
            Elsewhere::Forward(to) => return Err(Redirect::Forward(to)),
            Elsewhere::Unknown => return Err(Redirect::Answer(wake_failure(error))),
            Elsewhere::Hold if tokio::time::Instant::now() >= deadline => {
                apps.metrics.drop_request(DropReason::Moving);
                return Err(Redirect::Answer(moving(app)));
            }
            Elsewhere::Hold => {
                if place.is_none() {
                    place = Some(apps.hold_place().ok_or_else(|| {
                        apps.metrics.drop_request(DropReason::QueueFull);
                        let message = format!("too many requests are held for apps moving to this host ({app:?})");
                        Redirect::Answer(unavailable("queue_full", message))
                    })?);
                }
                apps.wait_for_arrivals(arrivals, deadline).await;
            }
        }
    }
}

/// Sends a request for an app that another host has to that host's ingress, marked so it is
/// not forwarded again.
async fn forward_to_host(apps: &Apps, app: &str, to: std::net::SocketAddr, mut request: Request) -> Response {
    let headers = request.headers_mut();
    headers.insert(HEADER_APP, HeaderValue::from_str(app).expect("app names are valid header values"));
    let me = HeaderValue::from_str(apps.host_id()).unwrap_or(HeaderValue::from_static("host"));
    headers.insert(HEADER_FORWARDED_BY, me);
    apps.metrics.forwarded.inc();
    match send_tcp(to, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%app, %to, %error, "forwarding to the app's new host failed");
            failure(StatusCode::BAD_GATEWAY, "host_unreachable", format!("the host of {app:?} did not answer: {error}"))
        }
    }
}

/// Sends `request` to another host's ingress (HTTP/1.1, one connection: forwarding happens
/// only while tables converge during a move).
async fn send_tcp(
    to: std::net::SocketAddr,
    request: Request,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS),
        tokio::net::TcpStream::connect(to),
    )
    .await??;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "forwarding connection ended with an error");
        }
    });
    Ok(sender.send_request(request).await?.map(Body::new))
}

fn unavailable(code: &str, message: String) -> Response {
    let mut response = failure(StatusCode::SERVICE_UNAVAILABLE, code, message);
    response.headers_mut().insert("retry-after", HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

fn moving(app: &str) -> Response {
    unavailable("moving", format!("{app:?} is moving between hosts; try again in a moment"))
}

/// Follows one request to the end of its response body; on drop it releases the app's lease,
/// gives the connection back to the pool and writes the request log line, so streamed answers
/// are logged with their real size.
struct Completion {
    lease: Lease,
    /// The pooled connection the request went over, kept until its answer is read.
    connection: Option<(Arc<AppConnections>, Lent)>,
    at_ms: u64,
    started: Instant,
    method: String,
    path: String,
    status: u16,
    bytes: u64,
}

impl Completion {
    fn new(lease: Lease, request: &Request) -> Self {
        let mut path = request.uri().path().to_owned();
        if path.len() > LOGGED_PATH_BYTES_MAX {
            let mut end = LOGGED_PATH_BYTES_MAX;
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            path.truncate(end);
        }
        Self {
            lease,
            connection: None,
            at_ms: crate::now_ms(),
            started: Instant::now(),
            method: request.method().to_string(),
            path,
            status: 0,
            bytes: 0,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let record = RequestRecord {
            at_ms: self.at_ms,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status: self.status,
            duration_ms: self.started.elapsed().as_millis() as u64,
            bytes: self.bytes,
        };
        self.lease.requests().record(&record);
        if let Some((connections, lent)) = self.connection.take() {
            connections.give_back(lent);
        }
    }
}

/// Only hostd may talk to an app with `x-steady-*` headers (the cron trigger among them).
fn strip_internal_headers(request: &mut Request) {
    let internal: Vec<_> =
        request.headers().keys().filter(|k| k.as_str().starts_with(INTERNAL_HEADER_PREFIX)).cloned().collect();
    for name in internal {
        request.headers_mut().remove(name);
    }
}

/// Sends `request` to the app listening on `socket` (HTTP/1.1, one connection per request).
pub(crate) async fn send(
    socket: &std::path::Path,
    request: Request,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "app connection ended with an error");
        }
    });
    let response = sender.send_request(request).await?;
    Ok(response.map(Body::new))
}

/// The metric label of a request hostd answers itself (`None` for an unknown app or a fault).
fn drop_reason(error: &WakeError) -> Option<DropReason> {
    Some(match error {
        WakeError::QueueFull(_) => DropReason::QueueFull,
        WakeError::CrashLoop { .. } => DropReason::CrashLoop,
        WakeError::Busy(_) => DropReason::Busy,
        WakeError::Deadline(_) => DropReason::Deadline,
        WakeError::Start { error: crate::process::StartError::Data(_), .. } => DropReason::DataUnavailable,
        WakeError::Start { .. } => DropReason::StartFailed,
        WakeError::Unknown(_) | WakeError::Departed(_) | WakeError::Store(_) | WakeError::Io(_) => return None,
    })
}

fn wake_failure(error: WakeError) -> Response {
    let message = error.to_string();
    let unavailable = |code: &str, retry_after_s: u64| {
        let mut response = failure(StatusCode::SERVICE_UNAVAILABLE, code, message.clone());
        response.headers_mut().insert("retry-after", HeaderValue::from(retry_after_s));
        response
    };
    match error {
        WakeError::Unknown(_) => failure(StatusCode::NOT_FOUND, "unknown_app", message),
        WakeError::Departed(_) => unavailable("moving", RETRY_AFTER_SECONDS),
        WakeError::CrashLoop { retry_after_s, .. } => unavailable("crash_loop", retry_after_s),
        WakeError::QueueFull(_) => unavailable("queue_full", RETRY_AFTER_SECONDS),
        WakeError::Busy(_) => {
            let mut response = failure(StatusCode::TOO_MANY_REQUESTS, "app_busy", message);
            response.headers_mut().insert("retry-after", HeaderValue::from(RETRY_AFTER_SECONDS));
            response
        }
        WakeError::Start { error: crate::process::StartError::Data(_), .. } => {
            unavailable("data_unavailable", RETRY_AFTER_SECONDS)
        }
        WakeError::Deadline(_) | WakeError::Start { .. } => unavailable("app_unavailable", RETRY_AFTER_SECONDS),
        WakeError::Store(_) | WakeError::Io(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

/// A JSON error answer in the API's shape.
pub fn failure(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(ApiError { code: code.into(), message })).into_response()
}
