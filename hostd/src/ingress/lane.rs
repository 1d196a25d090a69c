//! The ingress lane: the common request from a load balancer, served straight from its bytes
//! to a pooled connection on the app's socket and back, without an HTTP framework.
//!
//! The LB's own lane sends hosts nothing but bodiless `GET` and `HEAD` requests over
//! connections of their own, and such a request needs none of axum and hyper's machinery
//! (header maps, a body stream, a client connection task): measured, that machinery cost
//! about as much as the kernel's work for the two hops. [`serve`] owns every ingress
//! connection, reads each request header into its own buffer and parses it in place; a
//! request the lane serves ([`decide`]) wakes its app as the full path does
//! ([`super::wake_or_redirect`]), goes to the app's socket on a pooled connection
//! (`steady_relay`), and its answer passes back as the app sends it, then is logged.
//!
//! Every other request — bodies, upgrades, probes, HTTP/2, requests forwarded between hosts,
//! an app that another host has, anything malformed or over a limit — goes to the axum router
//! on a connection that starts with the bytes the lane read; that connection stays with it.
//! The LB sends such requests over its proxy's connections, apart from the lane's, so the
//! lane's connections stay with the lane.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo};
use steady_proto::wire::{RequestRecord, HEADER_APP, HEADER_FORWARDED_BY, HEADER_PROBE, INTERNAL_HEADER_PREFIX};
use steady_relay::answer::FinalHead;
use steady_relay::exchange::{self, Asked, AttemptError, Buffers, READ_BYTES};
use steady_relay::pool::{IdlePool, PoolBounds};
use steady_relay::{hangup, head};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{watch, Semaphore};

use super::{wake_or_redirect, Redirect, LOGGED_PATH_BYTES_MAX};
use crate::apps::{Apps, Lease};

/// Headers the lane parses in one request; a request with more goes to the router.
pub const LANE_HEADERS_MAX: usize = 64;

/// Bytes of a request header the lane reads before it hands the request to the router (which
/// refuses it).
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// How long a connection may wait for the whole of its next request header. The LBs close
/// their idle host connections well before this (30 s); it bounds what anything else leaves
/// open.
pub const HEADER_WAIT_MS: u64 = 120_000;

/// How long one write to an LB may wait for it to read.
const CLIENT_WRITE_TIMEOUT_MS: u64 = 60_000;

/// Bytes of an error answer hostd writes itself (a JSON line).
const ERROR_BODY_BYTES_MAX: usize = 16 * 1024;

/// Status logged for a request whose client hung up before the app answered (nginx's number
/// for it; nothing is sent).
const STATUS_CLIENT_GONE: u16 = 499;

/// Idle connections kept to apps' sockets across all apps, unless one app may keep more.
pub const APP_IDLE_TOTAL_MAX: usize = 1024;

/// How long an idle app connection is kept: under Bun's own idle timeout (10 s), so a
/// borrowed one is rarely found closed.
pub const APP_IDLE_MS_MAX: u64 = 5_000;

/// The lane's bounds on idle app connections when each app keeps at most `per_app_max`.
///
/// `per_app_max` should be the app's concurrency limit: every request in flight holds a
/// connection of its own, and a pool that keeps fewer than that closes the surplus each time
/// the load dips and opens new ones when it rises again (at 256 busy connections and a bound
/// of 64, a quarter of all requests paid a connect and a close on both sides).
pub fn app_pool_bounds(per_app_max: usize) -> PoolBounds {
    assert!(per_app_max > 0, "a pool that keeps nothing");
    PoolBounds {
        idle_per_upstream_max: per_app_max,
        idle_total_max: per_app_max.max(APP_IDLE_TOTAL_MAX),
        idle_ms_max: APP_IDLE_MS_MAX,
    }
}

/// What the lane made of the bytes at the start of a connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'b> {
    /// The header is not complete yet.
    Partial,
    /// A request the lane serves.
    Serve(LaneRequest<'b>),
    /// Anything else: the router decides it from the same bytes.
    HandOn,
}

/// A request the lane serves, borrowed from the bytes read.
#[derive(Debug, PartialEq, Eq)]
pub struct LaneRequest<'b> {
    /// The app the LB named.
    pub app: &'b str,
    /// `GET` or `HEAD`.
    pub method: &'b str,
    /// The origin-form target.
    pub target: &'b str,
    /// The LB asked to close the connection after this request.
    pub close: bool,
    /// Bytes of the request header, blank line included.
    pub header_bytes: usize,
}

/// Parses the request header at the start of `bytes`; when the lane serves it, writes the
/// header the app gets into `out` (the LB's, without `x-steady-*` and hop-by-hop headers).
pub fn decide<'b>(bytes: &'b [u8], out: &mut Vec<u8>) -> Decision<'b> {
    let mut headers = [httparse::EMPTY_HEADER; LANE_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let header_bytes = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if bytes.len() <= HEADER_BYTES_MAX => return Decision::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Decision::HandOn,
    };
    let Some(head::Bodiless { method, target, close, has_connection }) = head::bodiless(&request) else {
        return Decision::HandOn;
    };
    let headers = request.headers;
    // Probes and requests forwarded between hosts are the router's.
    let routers = [HEADER_PROBE, HEADER_FORWARDED_BY];
    if headers.iter().any(|h| routers.iter().any(|n| h.name.eq_ignore_ascii_case(n))) {
        return Decision::HandOn;
    }
    let mut apps = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(HEADER_APP)).map(|h| h.value);
    let app = match (apps.next().map(std::str::from_utf8), apps.next()) {
        (Some(Ok(app)), None) if !app.is_empty() => app,
        _ => return Decision::HandOn,
    };
    let keep = |h: &httparse::Header| {
        !head::starts_with_ignore_case(h.name, INTERNAL_HEADER_PREFIX)
            && !head::is_hop_by_hop(h.name, headers, has_connection)
    };
    head::write_request(out, method, target, headers, keep);
    out.extend_from_slice(b"\r\n");
    Decision::Serve(LaneRequest { app, method, target, close, header_bytes })
}

/// The ingress listener's bounds (`--request-body-max-bytes`, `--ingress-connections-max`,
/// `--app-concurrency-max`).
#[derive(Debug, Clone, Copy)]
pub struct IngressLimits {
    /// Largest request body the router forwards (larger: 413).
    pub body_max_bytes: u64,
    /// Connections open at once; past it the listener stops accepting until one closes (the
    /// rest wait in the kernel's backlog).
    pub connections_max: usize,
    /// Idle connections kept to one app's socket: its concurrency limit, so that a steady
    /// load never closes one only to open another.
    pub app_idle_connections_max: usize,
}

/// Serves the ingress listener until `stop` turns true, then waits for the connections it
/// accepted to finish what they are doing.
pub fn serve(
    listener: TcpListener,
    apps: Arc<Apps>,
    limits: IngressLimits,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    assert!(limits.connections_max > 0, "an ingress that accepts nothing");
    let router = super::router(apps.clone(), limits.body_max_bytes, limits.app_idle_connections_max);
    let pool = IdlePool::new(app_pool_bounds(limits.app_idle_connections_max));
    let lane = Arc::new(Lane { router, apps, pool });
    tokio::spawn(lane.accept(listener, limits.connections_max, stop))
}

struct Lane {
    apps: Arc<Apps>,
    /// Where every request the lane does not serve goes.
    router: axum::Router,
    pool: IdlePool<PathBuf, UnixStream>,
}

/// What one connection keeps from request to request.
#[derive(Default)]
struct Connection {
    /// Bytes read from the LB and not yet used.
    client_bytes: BytesMut,
    buffers: Buffers,
    /// What the log needs of the request being served.
    log: Logged,
}

/// The app, method and (cut) path of the request being served, kept in buffers that live as
/// long as the connection.
#[derive(Default)]
struct Logged {
    app: String,
    method: String,
    path: String,
}

/// A request the lane took on.
struct Taken {
    asked: Asked,
    header_bytes: usize,
    at_ms: u64,
    started: Instant,
}

impl Lane {
    async fn accept(self: Arc<Self>, listener: TcpListener, connections_max: usize, mut stop: watch::Receiver<bool>) {
        // Every connection task holds a sender; the stop waits until all are dropped.
        let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        let places = Arc::new(Semaphore::new(connections_max));
        let mut saturated = false;
        loop {
            let Some(place) = place(&places, &mut saturated, &mut stop).await else { break };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stopped(&mut stop) => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: give connections time to close.
                    tracing::warn!(%error, "accepting an ingress connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (lane, stop, open) = (self.clone(), stop.clone(), open.clone());
            let places = places.clone();
            tokio::spawn(async move {
                lane.connection(stream, stop, places).await;
                drop((open, place));
            });
        }
        drop(open);
        let _ = all_closed.recv().await;
    }

    /// Serves one connection until it closes, or hands it to the router (whose HTTP/2 requests
    /// share the ingress's `places`).
    async fn connection(&self, mut stream: TcpStream, mut stop: watch::Receiver<bool>, places: Arc<Semaphore>) {
        // Headers go out in one write each; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let mut conn = Connection { client_bytes: BytesMut::with_capacity(READ_BYTES), ..Default::default() };
        let handed_on = loop {
            let Some(taken) = self.next_request(&mut stream, &mut conn, &mut stop).await else { return };
            let Some(taken) = taken else { break conn.client_bytes };
            match self.serve(&mut stream, &mut conn, taken).await {
                Served::Keep => {}
                Served::Close => return,
                Served::HandOn => break conn.client_bytes,
            }
        };
        self.hand_on(stream, handed_on.freeze(), stop, places).await
    }

    /// Reads until the buffer starts with a whole request header and decides it: `None` when
    /// the connection is done, `Some(None)` to hand it on.
    async fn next_request(
        &self,
        stream: &mut TcpStream,
        conn: &mut Connection,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Option<Taken>> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(HEADER_WAIT_MS);
        loop {
            let stopping = stop.has_changed().is_err() || *stop.borrow_and_update();
            if !conn.client_bytes.is_empty() {
                let Connection { client_bytes, buffers, log, .. } = conn;
                match decide(client_bytes, &mut buffers.out) {
                    Decision::Partial => {}
                    Decision::HandOn => return Some(None),
                    Decision::Serve(request) => return Some(Some(take(log, &request, stopping))),
                }
            } else if stopping {
                return None;
            }
            conn.client_bytes.reserve(READ_BYTES);
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, stream.read_buf(&mut conn.client_bytes)) => read,
                // An idle connection closes at the stop; one with part of a request reads on.
                () = stopped(stop), if conn.client_bytes.is_empty() => return None,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(timeout_ms = HEADER_WAIT_MS, "ingress request header not read in time; closing");
                    return None;
                }
            }
        }
    }

    /// Serves a request the lane took on (its header for the app in `conn.buffers.out`).
    async fn serve(&self, stream: &mut TcpStream, conn: &mut Connection, taken: Taken) -> Served {
        let mut lease = match wake_or_redirect(&self.apps, &conn.log.app).await {
            Ok(lease) => lease,
            // The router forwards it to the app's new host.
            Err(Redirect::Forward(_)) => return Served::HandOn,
            Err(Redirect::Answer(answer)) => {
                conn.client_bytes.advance(taken.header_bytes);
                let written = write_answer(stream, answer, taken.asked).await;
                return if written && !taken.asked.close { Served::Keep } else { Served::Close };
            }
        };
        conn.client_bytes.advance(taken.header_bytes);
        let asked = tokio::select! {
            biased;
            asked = self.ask(&mut conn.buffers, &conn.log.app, &mut lease, taken.asked) => Some(asked),
            // Dropping the app connection tells the app (its request's signal aborts).
            () = hangup::watch(stream, &mut conn.client_bytes, hangup::PENDING_BYTES_MAX) => None,
        };
        let (status, body_bytes, served) = match asked {
            None => {
                tracing::debug!(app = %conn.log.app, "client hung up before the app answered");
                (STATUS_CLIENT_GONE, 0, Served::Close)
            }
            Some(Ok((mut app, head))) => {
                if head.status < 500 {
                    self.apps.note_answered(&lease);
                }
                let write_timeout = Duration::from_millis(CLIENT_WRITE_TIMEOUT_MS);
                match exchange::relay(&mut app, stream, &mut conn.buffers, &head, None, write_timeout).await {
                    Ok(relayed) => {
                        if relayed.upstream_keeps {
                            self.pool.give(lease.socket.as_path(), app, taken.started);
                        }
                        let served = if head.client_closes { Served::Close } else { Served::Keep };
                        (head.status, relayed.body_bytes, served)
                    }
                    Err(broken) => (head.status, broken.0, Served::Close),
                }
            }
            Some(Err(error)) => {
                tracing::warn!(app = %conn.log.app, %error, "forwarding to app failed");
                let message = format!("app {:?} did not answer: {error}", conn.log.app);
                let answer = super::failure(axum::http::StatusCode::BAD_GATEWAY, "app_unreachable", message);
                let written = write_answer(stream, answer, taken.asked).await;
                (502, 0, if written && !taken.asked.close { Served::Keep } else { Served::Close })
            }
        };
        let record = RequestRecord {
            at_ms: taken.at_ms,
            method: conn.log.method.clone(),
            path: conn.log.path.clone(),
            status,
            duration_ms: taken.started.elapsed().as_millis() as u64,
            bytes: body_bytes,
        };
        lease.requests().record(&record);
        served
    }

    /// Sends the request header (in `buffers.out`) to `app_name` and reads its answer's
    /// header, over a pooled connection or a new one. A pooled connection the app had closed
    /// is replaced by a new one; a process that died under the request is replaced by a new
    /// one (once: the lane serves only `GET` and `HEAD`, which may be repeated).
    async fn ask(
        &self,
        buffers: &mut Buffers,
        app_name: &str,
        lease: &mut Lease,
        asked: Asked,
    ) -> Result<(UnixStream, FinalHead), String> {
        let (mut stale_retried, mut woke_again) = (false, false);
        loop {
            let pooled = if stale_retried { None } else { self.pool.take(lease.socket.as_path(), Instant::now()) };
            let connected = match pooled {
                Some(app) => Ok((app, true)),
                None => UnixStream::connect(&lease.socket).await.map(|app| (app, false)).map_err(|e| e.to_string()),
            };
            let failure = match connected {
                Ok((mut app, reused)) => match exchange::attempt(&mut app, buffers, asked, None).await {
                    Ok(head) => return Ok((app, head)),
                    Err(AttemptError::ClosedUnanswered) if reused && !stale_retried => {
                        stale_retried = true;
                        continue;
                    }
                    Err(error) => format!("{error:?}"),
                },
                Err(error) => error,
            };
            stale_retried = true;
            if woke_again {
                return Err(failure);
            }
            // The process may have died under the request (killed, crashed).
            let Some(again) = self.apps.wake_again(app_name, lease).await else { return Err(failure) };
            *lease = again;
            woke_again = true;
            self.apps.metrics.requests_resent.inc();
        }
    }

    /// Gives the connection to the router, the bytes already read first; the router keeps it
    /// until it closes (or the stop drains it).
    async fn hand_on(&self, stream: TcpStream, read: Bytes, mut stop: watch::Receiver<bool>, places: Arc<Semaphore>) {
        let io = TokioIo::new(Rewind { read, stream });
        let streams = super::streams::ConnectionStreams::new(places);
        let router = Arc::new(hyper_util::service::TowerToHyperService::new(self.router.clone()));
        let service = hyper::service::service_fn(move |request| {
            let (router, streams) = (router.clone(), streams.clone());
            async move { super::streams::serve(&*router, &streams, request).await }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = stopped(&mut stop) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = served {
            tracing::debug!(%error, "ingress connection ended with an error");
        }
    }
}

/// A place among the open connections' bounded places, waiting for one to close when
/// there is none; `None` when the host stops first. `saturated` remembers a spell at the
/// bound, so it is logged once, not once per connection.
async fn place(
    places: &Arc<Semaphore>,
    saturated: &mut bool,
    stop: &mut watch::Receiver<bool>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(place) = places.clone().try_acquire_owned() {
        *saturated = false;
        return Some(place);
    }
    if !*saturated {
        tracing::warn!("ingress connections at their bound (--ingress-connections-max); waiting for one to close");
        *saturated = true;
    }
    tokio::select! {
        place = places.clone().acquire_owned() => Some(place.expect("the semaphore is never closed")),
        () = stopped(stop) => None,
    }
}

/// Resolves once the host is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The value's guard must not live across an await (it is not Send).
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// How a served request leaves its connection.
enum Served {
    Keep,
    Close,
    /// Not served after all: the router takes the connection, request included.
    HandOn,
}

/// Takes on the request at the start of `conn.client_bytes` (its bytes stay until the lane
/// knows it serves it), closing the connection after it when the host is stopping.
fn take(log: &mut Logged, request: &LaneRequest, stopping: bool) -> Taken {
    let mut path_end = request.target.find('?').unwrap_or(request.target.len()).min(LOGGED_PATH_BYTES_MAX);
    while !request.target.is_char_boundary(path_end) {
        path_end -= 1;
    }
    for (field, value) in [(&mut log.app, request.app), (&mut log.method, request.method)] {
        field.clear();
        field.push_str(value);
    }
    log.path.clear();
    log.path.push_str(&request.target[..path_end]);
    Taken {
        asked: Asked { head: request.method == "HEAD", close: request.close || stopping },
        header_bytes: request.header_bytes,
        at_ms: crate::now_ms(),
        started: Instant::now(),
    }
}

/// Writes an answer hostd made itself (a JSON error), closing the connection after it when
/// asked; whether it was written.
async fn write_answer(stream: &mut TcpStream, answer: Response, asked: Asked) -> bool {
    let (parts, body) = answer.into_parts();
    let body = axum::body::to_bytes(body, ERROR_BODY_BYTES_MAX).await.unwrap_or_default();
    let status = parts.status;
    let mut out = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("Error"));
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(&format!("content-length: {}\r\n", body.len()));
    out.push_str(if asked.close { "connection: close\r\n\r\n" } else { "\r\n" });
    let mut bytes = out.into_bytes();
    if !asked.head {
        bytes.extend_from_slice(&body);
    }
    let limit = Duration::from_millis(CLIENT_WRITE_TIMEOUT_MS);
    exchange::write_client(stream, &bytes, limit).await.is_ok()
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let count = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(count));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(bytes: &[u8]) -> (Decision<'_>, String) {
        let mut out = Vec::new();
        let decision = decide(bytes, &mut out);
        (decision, String::from_utf8(out).expect("text"))
    }

    #[test]
    fn a_bodiless_get_goes_to_the_app_without_internal_and_hop_by_hop_headers() {
        let bytes = b"GET /p?q=1 HTTP/1.1\r\nHost: a.steady.page\r\nx-steady-app: a\r\nConnection: X-Hop\r\n\
            X-Hop: 1\r\nX-Steady-Cron: * * * * *\r\nx-forwarded-for: 10.0.0.1\r\nContent-Length: 0\r\n\r\nGET";
        let (served, out) = decision(bytes);
        let expected =
            LaneRequest { app: "a", method: "GET", target: "/p?q=1", close: false, header_bytes: bytes.len() - 3 };
        assert_eq!(served, Decision::Serve(expected));
        assert_eq!(
            out,
            "GET /p?q=1 HTTP/1.1\r\nHost: a.steady.page\r\nx-forwarded-for: 10.0.0.1\r\nContent-Length: 0\r\n\r\n"
        );
        let (head, out) = decision(b"HEAD / HTTP/1.1\r\nx-steady-app: b\r\nconnection: close\r\n\r\n");
        assert!(matches!(head, Decision::Serve(LaneRequest { app: "b", method: "HEAD", close: true, .. })));
        assert_eq!(out, "HEAD / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn everything_else_goes_to_the_router() {
        assert_eq!(decision(b"GET / HTTP/1.1\r\nx-steady-app: a\r\n").0, Decision::Partial);
        for bytes in [
            &b"POST / HTTP/1.1\r\nx-steady-app: a\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"GET / HTTP/1.1\r\nx-steady-app: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-steady-app: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-steady-app: a\r\nx-steady-probe: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-steady-app: a\r\nx-steady-forwarded-by: host-2\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-steady-app: a\r\nx-steady-app: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nx-steady-app: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert_eq!(decision(bytes).0, Decision::HandOn, "{}", String::from_utf8_lossy(bytes));
        }
        let endless = format!("GET / HTTP/1.1\r\nx-steady-app: a\r\nX: {}", "a".repeat(HEADER_BYTES_MAX));
        assert_eq!(decision(endless.as_bytes()).0, Decision::HandOn);
    }

    #[tokio::test]
    async fn an_app_keeps_as_many_idle_connections_as_it_may_have_requests_in_flight() {
        // A burst at the app's concurrency limit, all answered: every connection it opened is
        // kept for the next burst rather than closed and opened again.
        let concurrency_max = 256;
        let pool = IdlePool::new(app_pool_bounds(concurrency_max));
        let socket = PathBuf::from("/run/app.sock");
        let started = Instant::now();
        let mut peers = Vec::new();
        for _ in 0..concurrency_max + 1 {
            let (ours, theirs) = UnixStream::pair().expect("socket pair");
            pool.give(socket.as_path(), ours, started);
            peers.push(theirs);
        }
        assert_eq!(pool.idle_count(), concurrency_max);
        // An app whose limit is past the total keeps its own share still.
        assert_eq!(app_pool_bounds(APP_IDLE_TOTAL_MAX * 2).idle_total_max, APP_IDLE_TOTAL_MAX * 2);
    }
}
