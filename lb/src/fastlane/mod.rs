//! The fast lane: the public listener's common request, served straight from the client's
//! bytes to a pooled host connection and back, without pingora's HTTP machinery.
//!
//! pingora's proxy runs each request through a chain of phases and modules, with the client
//! and host sides as two tasks joined by a channel, over HTTP sessions that build header maps
//! and a connection pool that spawns a watcher task per idle connection; measured, that
//! machinery costs several times what reading, forwarding and answering a request does
//! (docs/notes.md, "Request path speed"). Most requests to an app need none of it: a `GET` or
//! `HEAD` with no body and no upgrade, to an app that is not moving. [`FastLane`] owns every
//! plain HTTP/1.1 public connection, reads each request header into its own buffer and parses
//! it in place ([`request`]); such a request gets the same admission, headers, retries and
//! metrics as [`PublicProxy`] gives it, goes to the host on a pooled connection, and the
//! answer comes back as the host sends it, its end found from its framing (the relaying
//! itself is `steady_relay`'s, shared with hostd's ingress lane).
//!
//! Every other request — bodies, WebSockets, HTTP/1.0, moving apps, the LB's pages and API,
//! refusals, malformed input — goes to the pingora proxy on a session that starts with the
//! bytes the lane read, so the proxy reads the request as if the lane had never looked; the
//! connection comes back to the lane after the proxy's answer. Connections that negotiated
//! HTTP/2 go to the proxy whole.

pub mod request;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::v1::server::HttpSession as ClientSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use steady_relay::answer::FinalHead;
use steady_relay::exchange::{self, Asked, AttemptError, Buffers, READ_BYTES};
use steady_relay::hangup;
use steady_relay::pool::{IdlePool, PoolBounds};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::UPSTREAM_CONNECT_TIMEOUT_MS;
use crate::drain::InFlight;
use crate::limits::Limited;
use crate::metrics::RequestCounters;
use crate::public::{PublicProxy, CONNECT_RETRIES_MAX, CONNECT_RETRY_BACKOFF_MS_MIN};
use crate::sessions::{with_h2c_preface, H2Connections, STOP_SETTLE_MS};
use request::{Forwarding, Parsed, LANE_HEADERS_MAX};

/// Stop signals connections are spread over.
const STOP_SHARDS: usize = 16;

/// Idle connections each worker's lane keeps to hosts (`crate::workers`: one lane per worker
/// thread): enough per host for every request of a busy client-side burst to find one again
/// (with 256 per host, 1,024 client connections on two workers opened 900 host connections a
/// second as the load wavered; docs/notes.md "Connections"), closed well before a host
/// daemon's ingress would close them. Counted in the LB's budget of open files
/// (`crate::connections`).
pub const HOST_POOL: PoolBounds = PoolBounds { idle_per_upstream_max: 1024, idle_total_max: 2048, idle_ms_max: 30_000 };

/// How long one write to a client may wait for the client to read; a client that stops reading
/// an answer loses its connection after this.
const CLIENT_WRITE_TIMEOUT_MS: u64 = 60_000;

/// Idle seconds pingora's proxy keeps a handed-on connection waiting for its next request
/// (pingora's own default); the lane's header deadline bounds it further once it is back.
const PROXY_KEEPALIVE_S: u64 = 60;

/// How often each worker's timer tick fires ([`FastLane::keep_timer_near`]): under every
/// deadline the lane sets per request with the default flags (the shortest, the header
/// deadline, is 15 s), at the price of one wake-up a second on an idle worker.
const TIMER_TICK_MS: u64 = 1_000;

/// The fast lane's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct LaneTimeouts {
    /// A request header must arrive whole within this, from the moment the connection is ready
    /// for it (so it also bounds an idle keep-alive connection), as in [`crate::sessions`].
    pub header_read_ms: u64,
    /// Each wait on a host (past it: 504 before the answer started, a cut answer after).
    pub upstream_read_ms: u64,
}

/// How an app request failed, for the client's answer and the metrics.
#[derive(Debug)]
enum Failure {
    /// Nothing usable came from the host: answer with this status (502, 504).
    Host(u16),
    /// The answer was under way (its status, if its header went out), or the client went away:
    /// the connection just closes.
    Broken(Option<u16>),
    /// The client hung up before the host answered: the host connection was dropped (the host
    /// sees the request abandoned) and the client's closes.
    ClientGone,
}

/// A request the lane admitted to serve (its app's name is in [`Connection::app`]).
struct Admitted {
    ingress: SocketAddr,
    /// When the lane took the request on (the clock is read once per request).
    started: std::time::Instant,
    head: bool,
    close: bool,
}

/// How HTTP/2's connection preface starts: what a client speaking HTTP/2 over plain TCP sends
/// first (RFC 9113 §3.3); the rest of the preface (`SM\r\n\r\n`) may come later.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// What the lane made of the bytes at the start of its buffer.
enum Next {
    Serve(Admitted),
    HandOn,
}

/// What one client connection keeps from request to request.
struct Connection {
    /// Which stop signal this connection waits on.
    shard: usize,
    /// The client's address (for the limits).
    client: Option<SocketAddr>,
    /// The forwarding headers for this connection's requests.
    forwarding: Forwarding,
    /// The app of the request being served.
    app: String,
    /// Handles on the request counters of the app last served.
    counters: RequestCounters,
    /// Bytes read from the client and not yet used.
    client_bytes: BytesMut,
    /// The host's answer and the headers being written.
    buffers: Buffers,
}

/// The public listener's connection app: serves the common request itself and hands every
/// other one to `A`, pingora's proxy around the same [`PublicProxy`] (with its session
/// wrapper, [`crate::sessions::PublicSessions`]).
pub struct FastLane<A> {
    inner: Arc<A>,
    public: PublicProxy,
    pool: IdlePool<SocketAddr, TcpStream>,
    header_timeout: Duration,
    upstream_read_timeout: Duration,
    in_flight: InFlight,
    /// Set when the service stops: a connection waiting for its next request closes.
    stopping: AtomicBool,
    /// One signal per shard of connections: every connection waiting for a request registers
    /// with one, and a single signal's lock, taken twice per request, would be shared by all.
    stop: [Notify; STOP_SHARDS],
    /// Connections served so far (for the shard of each).
    connections: AtomicUsize,
    /// Where `inner` notes the HTTP/2 streams it is given (see [`crate::sessions`], "HTTP/2").
    h2_connections: Arc<H2Connections>,
    /// Starts the worker's timer tick with its first connection.
    tick_started: std::sync::Once,
}

impl<A> FastLane<A> {
    /// A lane in front of `inner`, deciding and serving with `public`'s routes and limits,
    /// counting its connections in `in_flight` for the drain; `h2_connections` is where `inner`
    /// notes the HTTP/2 streams it is given.
    pub fn new(
        inner: A,
        public: PublicProxy,
        timeouts: LaneTimeouts,
        in_flight: InFlight,
        h2_connections: Arc<H2Connections>,
    ) -> Self {
        assert!(timeouts.header_read_ms > 0 && timeouts.upstream_read_ms > 0, "zero timeouts refuse everything");
        Self {
            inner: Arc::new(inner),
            public,
            pool: IdlePool::new(HOST_POOL),
            header_timeout: Duration::from_millis(timeouts.header_read_ms),
            upstream_read_timeout: Duration::from_millis(timeouts.upstream_read_ms),
            in_flight,
            stopping: AtomicBool::new(false),
            stop: std::array::from_fn(|_| Notify::new()),
            connections: AtomicUsize::new(0),
            h2_connections,
            tick_started: std::sync::Once::new(),
        }
    }

    /// Keeps a timer of this worker's runtime due within [`TIMER_TICK_MS`] while the lane serves.
    ///
    /// tokio wakes its driver (a write to an eventfd, and one more pass of the event loop)
    /// whenever a timer is set that is due before the earliest one it knew of when it last
    /// waited. A connection waits on its client under the header deadline (15 s) and on its host
    /// under the upstream read timeout (120 s); when every connection of a worker was waiting on
    /// its host, each next header deadline was the earliest, and setting it woke the driver:
    /// about one request in five, measured (docs/notes.md, "Timer wake-ups"). With a tick always
    /// due sooner than any deadline the lane sets, setting one wakes nothing.
    fn keep_timer_near(self: &Arc<Self>)
    where
        A: Send + Sync + 'static,
    {
        let lane = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(TIMER_TICK_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match lane.upgrade() {
                    Some(lane) if !lane.stopping.load(Ordering::Acquire) => {}
                    _ => return,
                }
            }
        });
    }

    /// Resolves once the service is stopping; `shard` spreads waiting connections over the
    /// stop signals.
    async fn stopped(&self, shard: usize) {
        let notified = self.stop[shard % STOP_SHARDS].notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for FastLane<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.tick_started.call_once(|| self.keep_timer_near());
        match stream.selected_alpn_proto() {
            Some(ALPN::H2) => self.serve_h2(stream, false, shutdown).await,
            Some(ALPN::Custom(_)) => ServerApp::process_new(&self.inner, stream, shutdown).await,
            _ => self.run(stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        // Like the proxy's sessions (crate::sessions, "Stop"): a request on its way when the stop
        // is broadcast still gets read and served.
        let own = async {
            tokio::time::sleep(Duration::from_millis(STOP_SETTLE_MS)).await;
            self.stopping.store(true, Ordering::Release);
            self.stop.iter().for_each(Notify::notify_waiters);
        };
        tokio::join!(own, self.inner.http_cleanup());
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> FastLane<A> {
    /// Hands an HTTP/2 connection (by ALPN, or over plain TCP when `preface_seen`) to `inner`
    /// (pingora's HTTP/2 server), closing it if no stream arrives within the header deadline:
    /// pingora waits for a client's preface without a bound, and a connection that never asks
    /// for anything must not hold a worker's memory.
    async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        preface_seen: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let socket = stream.get_socket_digest();
        let connection = with_h2c_preface(preface_seen, ServerApp::process_new(&self.inner, stream, shutdown));
        let Some(socket) = socket else { return connection.await };
        // Registered for the connection's life: its streams share the connection bound.
        let registered = self.h2_connections.open(socket);
        tokio::pin!(connection);
        tokio::select! {
            done = &mut connection => return done,
            () = tokio::time::sleep(self.header_timeout) => {}
        }
        if registered.arrived() {
            return connection.await;
        }
        tracing::debug!(
            timeout_ms = self.header_timeout.as_millis() as u64,
            "no HTTP/2 stream opened in time; closing"
        );
        None
    }

    /// Serves one client connection until it closes, handing requests on as needed.
    async fn run(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let tls = stream.get_ssl_digest().is_some();
        let client = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let mut conn = Connection {
            shard: self.connections.fetch_add(1, Ordering::Relaxed),
            client,
            forwarding: Forwarding::new(client, tls),
            app: String::new(),
            counters: RequestCounters::default(),
            client_bytes: BytesMut::with_capacity(READ_BYTES),
            buffers: Buffers::default(),
        };
        let mut first = true;
        loop {
            let in_flight = self.in_flight.enter();
            let next = self.next_request(&mut stream, &mut conn).await?;
            match next {
                // A client speaking HTTP/2 without TLS ("prior knowledge") opens with its preface.
                Next::HandOn if first && conn.client_bytes.starts_with(H2_PREFACE_START) => {
                    // Its streams are counted one by one as they come (crate::sessions).
                    drop(in_flight);
                    let read = conn.client_bytes.split();
                    return self.serve_h2c(stream, &read, shutdown).await;
                }
                Next::HandOn => {
                    let read = conn.client_bytes.split();
                    stream = self.hand_on(stream, read, shutdown).await?;
                }
                Next::Serve(mut admitted) => {
                    admitted.close |= *shutdown.borrow();
                    if !self.serve(&mut stream, &mut conn, admitted).await {
                        return None;
                    }
                }
            }
            drop(in_flight);
            first = false;
        }
    }

    /// Hands a plain connection that opened with HTTP/2's preface to pingora's HTTP/2 server,
    /// the bytes already read given back to the stream first.
    async fn serve_h2c(self: &Arc<Self>, stream: Stream, read: &[u8], shutdown: &ShutdownWatch) -> Option<Stream> {
        // Only a plain TCP stream takes bytes back; over TLS, HTTP/2 is chosen by ALPN instead.
        let Ok(mut plain) = stream.into_any().downcast::<pingora::protocols::l4::stream::Stream>() else {
            tracing::debug!("an HTTP/2 preface on a TLS connection that did not negotiate h2; closing");
            return None;
        };
        plain.rewind(read);
        self.serve_h2(plain, true, shutdown).await
    }

    /// Reads until the buffer starts with a whole request header (within the header deadline,
    /// unless the service stops), then decides it; `None` when the connection is done.
    async fn next_request(&self, stream: &mut Stream, conn: &mut Connection) -> Option<Next> {
        let deadline = Instant::now() + self.header_timeout;
        loop {
            if !conn.client_bytes.is_empty() {
                if let Some(next) = self.decide(conn) {
                    return Some(next);
                }
            }
            conn.client_bytes.reserve(READ_BYTES);
            let read = tokio::select! {
                biased;
                read = timeout_at(deadline, stream.read_buf(&mut conn.client_bytes)) => read,
                () = self.stopped(conn.shard) => return None,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => {
                    let timeout_ms = self.header_timeout.as_millis() as u64;
                    tracing::debug!(timeout_ms, "request header not read in time; closing");
                    return None;
                }
            }
        }
    }

    /// Decides the request at the start of the client buffer: `None` while its header is
    /// incomplete. A request the lane serves leaves the buffer (what follows it stays), and its
    /// header for the host is in `conn.out`.
    fn decide(&self, conn: &mut Connection) -> Option<Next> {
        let mut headers = [httparse::EMPTY_HEADER; LANE_HEADERS_MAX];
        let (admitted, header_bytes) = match request::parse(&conn.client_bytes, &mut headers, self.public.edge_limits())
        {
            Parsed::Partial => return None,
            Parsed::HandOn => return Some(Next::HandOn),
            Parsed::Serve(request) => {
                let host = lowercase(request.host);
                let Some(route) = self.public.lane_route(&host) else { return Some(Next::HandOn) };
                request::write_host_request(&mut conn.buffers.out, &request, route.app, &conn.forwarding);
                conn.app.clear();
                conn.app.push_str(route.app);
                let admitted = Admitted {
                    ingress: route.ingress,
                    started: std::time::Instant::now(),
                    head: request.is_head(),
                    close: request.close,
                };
                (admitted, request.header_bytes)
            }
        };
        conn.client_bytes.advance(header_bytes);
        Some(Next::Serve(admitted))
    }

    /// Gives the request to the proxy on a session that starts with the bytes the lane read;
    /// returns the connection when the proxy is done with it and it can carry another request.
    async fn hand_on(self: &Arc<Self>, stream: Stream, read: BytesMut, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut session = ClientSessionV1::new(stream);
        session.set_server_keepalive((!*shutdown.borrow()).then_some(PROXY_KEEPALIVE_S));
        session.set_keepalive_reuses_remaining(self.inner.server_options().and_then(|o| o.keepalive_request_limit));
        session.set_pipelined_prefix(read);
        let reused = self.inner.process_new_http(ServerSession::H1(session), shutdown).await?;
        // The proxy leaves pipelining off, so it keeps no bytes of a next request: a session
        // that read past its request is not reused, and the stream comes back clean.
        let (stream, _settings) = reused.consume();
        Some(stream)
    }

    /// Serves an admitted request; returns whether the client connection can carry another.
    async fn serve(&self, stream: &mut Stream, conn: &mut Connection, admitted: Admitted) -> bool {
        let started = admitted.started;
        self.public.metrics().in_flight.inc();
        let place = match self.public.admit(conn.client.map(|a| a.ip()), &conn.app) {
            Ok(place) => place,
            Err(limited) => {
                let answered = self.too_many(stream, limited, admitted.close).await;
                self.public.log_with(&mut conn.counters, &conn.app, started, answered.then_some(429), false);
                return answered && !admitted.close;
            }
        };
        let outcome = self.exchange(stream, conn, &admitted).await;
        drop(place);
        let (status, failed, keep) = match outcome {
            Ok(head) => (Some(head.status), false, !head.client_closes),
            Err(Failure::Host(status)) => (write_error(stream, status).await.then_some(status), true, false),
            Err(Failure::Broken(status)) => (status, true, false),
            Err(Failure::ClientGone) => (None, false, false),
        };
        self.public.log_with(&mut conn.counters, &conn.app, started, status, failed);
        keep
    }

    /// Answers 429 for `limited`; whether the answer was written.
    async fn too_many(&self, stream: &mut Stream, limited: Limited, close: bool) -> bool {
        let body = self.public.too_many_body(limited);
        let mut answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             content-length: {}\r\n",
            body.len()
        );
        answer.push_str(if close { "connection: close\r\n\r\n" } else { "\r\n" });
        answer.push_str(&body);
        write_client(stream, answer.as_bytes()).await.is_ok()
    }

    /// Sends the request to the host and its answer back to the client; the answer's header.
    async fn exchange(
        &self,
        stream: &mut Stream,
        conn: &mut Connection,
        admitted: &Admitted,
    ) -> Result<FinalHead, Failure> {
        let asked = tokio::select! {
            biased;
            asked = self.ask(&mut conn.buffers, &conn.app, admitted) => asked,
            () = hangup::watch(&mut **stream, &mut conn.client_bytes, hangup::PENDING_BYTES_MAX) => {
                tracing::debug!(app = %conn.app, "client hung up before the answer; dropping the host connection");
                Err(Failure::ClientGone)
            }
        };
        let (mut host, head) = asked?;
        let client_write_timeout = Duration::from_millis(CLIENT_WRITE_TIMEOUT_MS);
        let read_timeout = Some(self.upstream_read_timeout);
        let relayed = exchange::relay(&mut host, stream, &mut conn.buffers, &head, read_timeout, client_write_timeout)
            .await
            .map_err(|_| Failure::Broken(Some(head.status)))?;
        if relayed.upstream_keeps {
            self.pool.give(&admitted.ingress, host, admitted.started);
        }
        Ok(head)
    }

    /// Sends the request header (in `buffers.out`) for `app` and reads the answer's header, over
    /// a pooled connection or a new one; on return `buffers.out` holds the client's answer
    /// header. A request goes again when nothing reached the host (a failed connect, up to
    /// [`CONNECT_RETRIES_MAX`] times) or when a pooled connection the host had closed got no
    /// answer (once, on a new connection; the lane serves only `GET` and `HEAD`, which may be
    /// repeated).
    async fn ask(
        &self,
        buffers: &mut Buffers,
        app: &str,
        admitted: &Admitted,
    ) -> Result<(TcpStream, FinalHead), Failure> {
        let (mut connect_failures, mut stale_retried) = (0u32, false);
        let asked = Asked { head: admitted.head, close: admitted.close };
        loop {
            // After a pooled connection turned out closed, the others may be too (a host that
            // restarted closes them all): the request goes again on a new one.
            let pooled = if stale_retried { None } else { self.pool.take(&admitted.ingress, admitted.started) };
            let (mut host, reused) = match pooled {
                Some(host) => (host, true),
                None => match connect(admitted.ingress).await {
                    Ok(host) => (host, false),
                    Err(error) => {
                        connect_failures += 1;
                        if connect_failures > CONNECT_RETRIES_MAX {
                            tracing::debug!(app, %error, "host unreachable");
                            return Err(Failure::Host(502));
                        }
                        self.public.metrics().connect_retries.inc();
                        let backoff_ms = CONNECT_RETRY_BACKOFF_MS_MIN << (connect_failures - 1);
                        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                        continue;
                    }
                },
            };
            match exchange::attempt(&mut host, buffers, asked, Some(self.upstream_read_timeout)).await {
                Ok(head) => return Ok((host, head)),
                Err(AttemptError::ClosedUnanswered) if reused && !stale_retried => {
                    tracing::debug!(app, "pooled host connection was closed; asking again");
                    stale_retried = true;
                }
                Err(AttemptError::TimedOut) => return Err(Failure::Host(504)),
                Err(error) => {
                    tracing::debug!(app, ?error, "host failed");
                    return Err(Failure::Host(502));
                }
            }
        }
    }
}

/// A new connection to a host, within the connect timeout.
async fn connect(host: SocketAddr) -> std::io::Result<TcpStream> {
    let connecting = timeout(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS), TcpStream::connect(host));
    let stream = connecting.await.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Headers go out in one write each; waiting to coalesce them only adds latency.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `bytes` to the client and flushes them, within [`CLIENT_WRITE_TIMEOUT_MS`].
async fn write_client(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    exchange::write_client(stream, bytes, Duration::from_millis(CLIENT_WRITE_TIMEOUT_MS)).await
}

/// Answers `status` with no body and closes; whether the answer was written.
async fn write_error(stream: &mut Stream, status: u16) -> bool {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\ncache-control: private, no-store\r\nconnection: close\r\n\r\n"
    );
    write_client(stream, answer.as_bytes()).await.is_ok()
}

/// `text` in lower case, copied only when it has upper-case letters (hosts rarely do).
fn lowercase(text: &str) -> std::borrow::Cow<'_, str> {
    match text.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(text.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(text),
    }
}
