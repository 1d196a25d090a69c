//! A total deadline for reading a request's header on the public listeners.
//!
//! pingora bounds each read of a request header (60 s) but not their sum, so a client that
//! trickles a byte every few seconds would hold its connection forever. pingora has no hook
//! before or during its header read, so [`HeaderDeadline`] wraps the proxy as an HTTP app:
//! each request's processing runs with a flag in a task-local, the proxy's first filter sets
//! the flag once the header is parsed ([`header_read`]), and if the deadline passes before
//! that, the wrapper drops the request's future, which closes the connection (as nginx does
//! for `client_header_timeout`). The deadline runs from the moment the connection is ready
//! for a request: the accept (after the TLS handshake), or the end of the previous response on
//! a keep-alive connection — so it also bounds how long an idle keep-alive connection stays
//! open (HAProxy's `timeout http-request` does the same when no keep-alive timeout is set).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

tokio::task_local! {
    /// Set once the header of the request being processed on this task has been read.
    static HEADER_READ: Arc<AtomicBool>;
}

/// Tells the deadline around this request that its header has been read in full. Called from
/// the proxy's first filter; outside a [`HeaderDeadline`] it does nothing.
pub fn header_read() {
    let _ = HEADER_READ.try_with(|read| read.store(true, Ordering::Release));
}

/// An HTTP app (`A`, the pingora proxy) whose requests must arrive whole within `timeout`.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> HeaderDeadline<A> {
    /// Wraps `inner`; each request header must be read within `timeout_ms`.
    pub fn new(inner: A, timeout_ms: u64) -> Self {
        assert!(timeout_ms > 0, "a header deadline of zero would refuse every request");
        Self { inner: Arc::new(inner), timeout: Duration::from_millis(timeout_ms) }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeaderDeadline<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = Arc::new(AtomicBool::new(false));
        let request = HEADER_READ.scope(read.clone(), self.inner.process_new_http(session, shutdown));
        tokio::pin!(request);
        tokio::select! {
            done = &mut request => return done,
            () = tokio::time::sleep(self.timeout) => {}
        }
        if read.load(Ordering::Acquire) {
            // The header came in time; the rest of the request has its own bounds.
            return request.await;
        }
        tracing::debug!(timeout_ms = self.timeout.as_millis() as u64, "request header not read in time; closing");
        None
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
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
