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
//!
//! **Places.** An HTTP/2 connection holds one place among the listener's connections
//! ([`crate::connections`]) like any other, and its first stream in flight rides on it; each
//! further stream in flight takes a place of its own, since it may hold a host connection of
//! its own. A stream that finds none is answered `503` with `retry-after` and goes nowhere, so
//! idle HTTP/2 connections never starve their own first requests, and busy ones cannot
//! open more host connections than the open files budget counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{SocketDigest, Stream};
use pingora::server::ShutdownWatch;

use crate::connections::{Slot, Slots, STREAM_REFUSAL_BODY};
use crate::drain::InFlight;
use crate::pages;

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

/// The HTTP/2 connections of one public service, by socket: whether each has opened a stream
/// yet (see "HTTP/2" above) and how many it has in flight (see "Places").
#[derive(Debug, Default)]
pub struct H2Connections {
    /// The address of each connection's socket digest (shared by the connection and its
    /// streams, and kept alive by the [`H2Connection`] that registered it) → its state.
    open: Mutex<HashMap<usize, Arc<H2State>>>,
}

/// One HTTP/2 connection's streams.
#[derive(Debug, Default)]
struct H2State {
    arrived: AtomicBool,
    /// Streams being served now.
    streams: AtomicUsize,
}

impl H2Connections {
    /// Registers the connection whose socket is `socket`, until the returned guard drops.
    pub fn open(self: &Arc<Self>, socket: Arc<SocketDigest>) -> H2Connection {
        let state = Arc::new(H2State::default());
        let key = Arc::as_ptr(&socket) as usize;
        let previous = self.lock().insert(key, state.clone());
        assert!(previous.is_none(), "one socket digest registered twice");
        H2Connection { connections: self.clone(), socket, state }
    }

    /// The state of the connection whose socket is `socket`, if it is registered.
    fn state(&self, socket: &Arc<SocketDigest>) -> Option<Arc<H2State>> {
        self.lock().get(&(Arc::as_ptr(socket) as usize)).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<H2State>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One HTTP/2 connection's registration in [`H2Connections`], for as long as it is open.
#[derive(Debug)]
pub struct H2Connection {
    connections: Arc<H2Connections>,
    /// Held so that the digest's address, the key, is not reused while registered.
    socket: Arc<SocketDigest>,
    state: Arc<H2State>,
}

impl H2Connection {
    /// Has a stream arrived on the connection?
    pub fn arrived(&self) -> bool {
        self.state.arrived.load(Ordering::Acquire)
    }
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        self.connections.lock().remove(&(Arc::as_ptr(&self.socket) as usize));
    }
}

/// An HTTP/2 stream's share of the connection bound: the first stream in flight on a
/// connection rides on the connection's own place, every further one holds a place of its own.
struct StreamPlace {
    state: Arc<H2State>,
    _slot: Option<Slot>,
}

impl StreamPlace {
    /// A place for one more stream of the connection in `state`, unless `slots` are all taken.
    fn take(state: Arc<H2State>, slots: &Arc<Slots>) -> Option<Self> {
        state.arrived.store(true, Ordering::Release);
        let before = state.streams.fetch_add(1, Ordering::AcqRel);
        let slot = if before == 0 { None } else { slots.take() };
        if before > 0 && slot.is_none() {
            state.streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self { state, _slot: slot })
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let before = self.state.streams.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a stream given back twice");
    }
}

/// An HTTP app (`A`, the pingora proxy) whose requests must arrive whole within a deadline
/// and whose sessions a stopping LB waits for.
pub struct PublicSessions<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    in_flight: InFlight,
    h2_connections: Arc<H2Connections>,
    /// The listener's connection places, which HTTP/2 streams share (see "Places").
    slots: Arc<Slots>,
    /// `inner`'s options with HTTP/2 over plain TCP allowed ([`with_h2c_preface`]).
    h2c_options: HttpServerOptions,
}

impl<A: HttpServerApp> PublicSessions<A> {
    /// Wraps `inner`; each request header must be read within `header_timeout_ms`, each
    /// session counts in `in_flight` while it lasts, and HTTP/2 streams past a connection's
    /// first take places in `slots`.
    pub fn new(inner: A, header_timeout_ms: u64, in_flight: InFlight, slots: Arc<Slots>) -> Self {
        assert!(header_timeout_ms > 0, "a header deadline of zero would refuse every request");
        let mut h2c_options = inner.server_options().cloned().unwrap_or_default();
        h2c_options.h2c = true;
        Self {
            inner: Arc::new(inner),
            header_timeout: Duration::from_millis(header_timeout_ms),
            in_flight,
            h2_connections: Arc::default(),
            slots,
            h2c_options,
        }
    }

    /// Where the listener registers the HTTP/2 connections it hands to this app, which notes
    /// their streams there.
    pub fn h2_connections(&self) -> Arc<H2Connections> {
        self.h2_connections.clone()
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
        let mut session = session;
        let socket = session.is_http2().then(|| session.digest().and_then(|d| d.socket_digest.as_ref())).flatten();
        let _place = match socket.and_then(|socket| self.h2_connections.state(socket)) {
            Some(state) => match StreamPlace::take(state, &self.slots) {
                Some(place) => Some(place),
                None => {
                    self.slots.warn_refused();
                    let headers = [("retry-after", "1")];
                    let _ =
                        pages::respond_with(&mut session, 503, "application/json", &headers, STREAM_REFUSAL_BODY).await;
                    return None;
                }
            },
            None => None,
        };
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

    #[test]
    fn a_connections_first_stream_rides_on_its_place_and_further_ones_take_their_own() {
        use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
        let slots = Slots::new(3, "a test bound", Gauge::default(), Counter::default());
        let _connection = slots.take().expect("the connection's own place");
        let state = Arc::new(H2State::default());
        let first = StreamPlace::take(state.clone(), &slots).expect("the first stream");
        assert_eq!(slots.open(), 1, "the first stream takes no place");
        let second = StreamPlace::take(state.clone(), &slots).expect("a second stream");
        let _third = StreamPlace::take(state.clone(), &slots).expect("a third stream");
        assert_eq!(slots.open(), 3);
        assert!(StreamPlace::take(state.clone(), &slots).is_none(), "a fourth past the bound");
        assert_eq!(state.streams.load(Ordering::Acquire), 3, "a refused stream is not counted");
        drop(second);
        assert_eq!(slots.open(), 2);
        drop(first);
        assert_eq!(state.streams.load(Ordering::Acquire), 1);
        assert!(state.arrived.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn the_flag_is_seen_only_inside_its_scope() {
        header_read(); // outside any scope: nothing to set, no panic
        let read = Arc::new(AtomicBool::new(false));
        HEADER_READ.scope(read.clone(), async { header_read() }).await;
        assert!(read.load(Ordering::Acquire));
    }
}
