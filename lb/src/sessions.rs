//! What wraps every HTTP session on the public listeners: a total deadline for reading a
//! request's header, and the part of a graceful stop pingora leaves open.
//!
//! **Header deadline.** pingora bounds each read of a request header (60 s) but not their sum, so a client that
//! trickles a byte every few seconds would hold its connection forever. pingora has no hook
//! before or during its header read, so [`PublicSessions`] wraps the proxy as an HTTP app:
//! each request's processing runs with a flag in a task-local, the proxy's first filter sets
//! the flag once the header is parsed ([`header_read`]), and if the deadline passes before
//! that, the wrapper drops the request's future, which closes the connection (as nginx does
//! for `client_header_timeout`). The deadline runs from the moment the connection is ready
//! for a request: the accept (after the TLS handshake), or the end of the previous response on
//! a keep-alive connection — so it also bounds how long an idle keep-alive connection stays
//! open (HAProxy's `timeout http-request` does the same when no keep-alive timeout is set).
//!
//! **Stop.** When a stop is broadcast, pingora wakes every connection waiting for a request
//! header and drops it — including one accepted a moment before whose request is still on its
//! way (a TLS handshake finishing, say). [`PublicSessions`] passes that wake-up on only
//! [`STOP_SETTLE_MS`] later, so such a request is still read and served, and counts each
//! session in [`InFlight`] so the drain waits for it.
//!
//! **HTTP/2.** A client that negotiated `h2` by ALPN is served by pingora's HTTP/2 server, one
//! session per stream. Its request headers come whole in one frame sequence, bounded in size
//! by pingora's defaults, so the deadline that matters is the connection's: pingora waits for
//! the client's preface without a bound, and its idle timeout (when one is set) starts only
//! after that handshake. So the public listener ([`crate::fastlane::FastLane`]) closes an HTTP/2 connection
//! that has not opened a stream within the header deadline ([`H2Arrivals`] tells it one
//! did), and an HTTP/2 connection with nothing in flight for that long is closed by pingora
//! (its `h2_idle_timeout`, set to the same deadline), as an idle HTTP/1.1 one is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{SocketDigest, Stream};
use pingora::server::ShutdownWatch;

use crate::drain::InFlight;

/// How long after a stop is broadcast connections still get to deliver a request header. Far
/// longer than a handshake on a healthy connection; short enough not to delay a stop.
pub const STOP_SETTLE_MS: u64 = 500;

tokio::task_local! {
    /// Set once the header of the request being processed on this task has been read.
    static HEADER_READ: Arc<AtomicBool>;
    /// Whether the connection being handed to pingora on this task opened with HTTP/2's
    /// preface over plain TCP.
    static H2C_PREFACE: bool;
}

/// Runs `connection` (pingora's handling of a new connection) knowing whether it opened with
/// HTTP/2's preface over plain TCP: only then does pingora take it for HTTP/2 without ALPN.
/// pingora's own check reads 24 bytes with no deadline, which a short HTTP/1.0 request or a
/// silent client would never send, so it is not asked of any other connection.
pub async fn with_h2c_preface<F: std::future::Future>(preface_seen: bool, connection: F) -> F::Output {
    H2C_PREFACE.scope(preface_seen, connection).await
}

/// Tells the deadline around this request that its header has been read in full. Called from
/// the proxy's first filter; outside a [`PublicSessions`] it does nothing.
pub fn header_read() {
    let _ = HEADER_READ.try_with(|read| read.store(true, Ordering::Release));
}

/// HTTP/2 connections of one public service waiting for their first stream, by socket (see
/// "HTTP/2" above).
#[derive(Debug, Default)]
pub struct H2Arrivals {
    /// The address of each connection's socket digest (shared by the connection and its
    /// streams, and kept alive by the [`H2Expected`] that registered it) → whether a stream
    /// arrived.
    waiting: Mutex<HashMap<usize, Arc<AtomicBool>>>,
}

impl H2Arrivals {
    /// Starts waiting for a stream on the connection whose socket is `socket`; the wait ends
    /// when the returned guard drops.
    pub fn expect(self: &Arc<Self>, socket: Arc<SocketDigest>) -> H2Expected {
        let arrived = Arc::new(AtomicBool::new(false));
        let key = Arc::as_ptr(&socket) as usize;
        let previous = self.lock().insert(key, arrived.clone());
        assert!(previous.is_none(), "one socket digest registered twice");
        H2Expected { arrivals: self.clone(), socket, arrived }
    }

    /// Notes that a stream arrived on the connection whose socket is `socket`.
    fn arrived(&self, socket: &Arc<SocketDigest>) {
        if let Some(arrived) = self.lock().get(&(Arc::as_ptr(socket) as usize)) {
            arrived.store(true, Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<AtomicBool>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One HTTP/2 connection's wait for its first stream ([`H2Arrivals::expect`]).
#[derive(Debug)]
pub struct H2Expected {
    arrivals: Arc<H2Arrivals>,
    /// Held so that the digest's address, the key, is not reused while registered.
    socket: Arc<SocketDigest>,
    arrived: Arc<AtomicBool>,
}

impl H2Expected {
    /// Has a stream arrived on the connection?
    pub fn arrived(&self) -> bool {
        self.arrived.load(Ordering::Acquire)
    }
}

impl Drop for H2Expected {
    fn drop(&mut self) {
        self.arrivals.lock().remove(&(Arc::as_ptr(&self.socket) as usize));
    }
}

/// An HTTP app (`A`, the pingora proxy) whose requests must arrive whole within a deadline
/// and whose sessions a stopping LB waits for.
pub struct PublicSessions<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    in_flight: InFlight,
    h2_arrivals: Arc<H2Arrivals>,
    /// `inner`'s options with HTTP/2 over plain TCP allowed ([`with_h2c_preface`]).
    h2c_options: HttpServerOptions,
}

impl<A: HttpServerApp> PublicSessions<A> {
    /// Wraps `inner`; each request header must be read within `header_timeout_ms`, and each
    /// session counts in `in_flight` while it lasts.
    pub fn new(inner: A, header_timeout_ms: u64, in_flight: InFlight) -> Self {
        assert!(header_timeout_ms > 0, "a header deadline of zero would refuse every request");
        let mut h2c_options = inner.server_options().cloned().unwrap_or_default();
        h2c_options.h2c = true;
        Self {
            inner: Arc::new(inner),
            header_timeout: Duration::from_millis(header_timeout_ms),
            in_flight,
            h2_arrivals: Arc::default(),
            h2c_options,
        }
    }

    /// Where this app notes the HTTP/2 streams it is given, for the listener that waits on them.
    pub fn h2_arrivals(&self) -> Arc<H2Arrivals> {
        self.h2_arrivals.clone()
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for PublicSessions<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let _in_flight = self.in_flight.enter();
        if session.is_http2() {
            if let Some(socket) = session.digest().and_then(|d| d.socket_digest.as_ref()) {
                self.h2_arrivals.arrived(socket);
            }
        }
        let read = Arc::new(AtomicBool::new(false));
        let request = HEADER_READ.scope(read.clone(), self.inner.process_new_http(session, shutdown));
        tokio::pin!(request);
        tokio::select! {
            done = &mut request => return done,
            () = tokio::time::sleep(self.header_timeout) => {}
        }
        if read.load(Ordering::Acquire) {
            // The header came in time; the rest of the request has its own bounds.
            return request.await;
        }
        tracing::debug!(
            timeout_ms = self.header_timeout.as_millis() as u64,
            "request header not read in time; closing"
        );
        None
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        match H2C_PREFACE.try_with(|seen| *seen) {
            Ok(true) => Some(&self.h2c_options),
            _ => self.inner.server_options(),
        }
    }

    async fn http_cleanup(&self) {
        // pingora calls this when the stop is broadcast; see the module's "Stop".
        tokio::time::sleep(Duration::from_millis(STOP_SETTLE_MS)).await;
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.inner.clone().process_custom_session(stream, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_flag_is_seen_only_inside_its_scope() {
        header_read(); // outside any scope: nothing to set, no panic
        let read = Arc::new(AtomicBool::new(false));
        HEADER_READ.scope(read.clone(), async { header_read() }).await;
        assert!(read.load(Ordering::Acquire));
    }
}
