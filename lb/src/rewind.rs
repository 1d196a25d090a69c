//! A client connection that can give back what a request's header read took from it.
//!
//! The [`fastlane`](crate::fastlane) reads each request header itself to decide whether it can
//! serve the request; when it cannot, pingora's proxy must read the same request again.
//! pingora's HTTP/1 session keeps the bytes it read past the header (the start of a body)
//! private, so [`Rewind`] keeps its own copy of every byte read while a header is being read,
//! and the fast lane hands that copy to the proxy's session as bytes already read. The copy
//! is bounded ([`RECORD_BYTES_MAX`]); a header read that overflows it cannot be handed on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes kept while one request header is read: the largest header the LB accepts
/// ([`crate::edge::HEADER_BYTES_MAX`]) with room for the read that completes it.
pub const RECORD_BYTES_MAX: usize = 2 * crate::edge::HEADER_BYTES_MAX + 64 * 1024;

/// Room kept between requests; a larger record is freed once it is no longer needed.
const KEPT_CAPACITY_BYTES_MAX: usize = 4 * 1024;

/// What was recorded: the bytes, or that there were too many to keep.
#[derive(Debug, Default)]
struct Record {
    bytes: BytesMut,
    overflowed: bool,
}

/// A client connection that records what is read from it between [`Rewind::record`] and
/// [`Rewind::give_back`].
#[derive(Debug)]
pub struct Rewind {
    inner: Stream,
    /// Checked on every read, so reads outside a header read take no lock.
    recording: AtomicBool,
    record: Mutex<Record>,
}

impl Rewind {
    /// Wraps a client connection; nothing is recorded until [`Rewind::record`].
    pub fn new(inner: Stream) -> Self {
        Self { inner, recording: AtomicBool::new(false), record: Mutex::new(Record::default()) }
    }

    /// Starts recording what is read, forgetting any earlier record.
    pub fn record(&self) {
        let mut record = self.record.lock().expect("record lock");
        record.bytes.clear();
        record.overflowed = false;
        self.recording.store(true, Ordering::Release);
    }

    /// Stops recording. `Some(bytes)`: everything read since [`Rewind::record`]; `None` when
    /// that was more than [`RECORD_BYTES_MAX`].
    pub fn give_back(&self) -> Option<BytesMut> {
        self.recording.store(false, Ordering::Release);
        let mut record = self.record.lock().expect("record lock");
        let bytes = std::mem::take(&mut record.bytes);
        (!record.overflowed).then_some(bytes)
    }

    /// Stops recording and forgets what was kept (keeping a header's worth of room for the
    /// next request, so recording does not allocate per request).
    pub fn stop(&self) {
        if self.recording.swap(false, Ordering::AcqRel) {
            let mut record = self.record.lock().expect("record lock");
            if record.bytes.capacity() > KEPT_CAPACITY_BYTES_MAX {
                record.bytes = BytesMut::new();
            }
            record.bytes.clear();
        }
    }

    /// The [`Rewind`] under a connection, if it is one.
    pub fn of(stream: &Stream) -> Option<&Rewind> {
        stream.as_any().downcast_ref::<Rewind>()
    }

    fn keep(&mut self, read: &[u8]) {
        // A read has the connection to itself: no lock to take.
        let record = self.record.get_mut().expect("record lock");
        if record.overflowed || record.bytes.len() + read.len() > RECORD_BYTES_MAX {
            record.overflowed = true;
            record.bytes = BytesMut::new();
            return;
        }
        record.bytes.extend_from_slice(read);
    }
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && this.recording.load(Ordering::Acquire) {
            this.keep(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Rewind {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewind {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewind {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Rewind {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Rewind {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Rewind {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Rewind {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// A server app (`A`) whose every connection is a [`Rewind`].
pub struct Rewinding<A> {
    inner: Arc<A>,
}

impl<A> Rewinding<A> {
    /// Wraps `inner`.
    pub fn new(inner: A) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Rewinding<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.inner.process_new(Box::new(Rewind::new(stream)), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// A fake client connection for unit tests of the record (pure logic, no socket).
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connection whose reads return `reads`, one each.
    fn over(reads: &[&'static [u8]]) -> Rewind {
        let mut mock = tokio_test::io::Builder::new();
        for read in reads {
            mock.read(read);
        }
        Rewind::new(Box::new(mock.build()))
    }

    #[tokio::test]
    async fn reads_between_record_and_take_are_given_back() {
        let mut rewind = over(&[b"GET / HTTP/1.1\r\n\r\nbody", b"next"]);
        rewind.record();
        let mut buf = [0u8; 64];
        let n = rewind.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\nbody");
        assert_eq!(rewind.give_back().as_deref(), Some(&b"GET / HTTP/1.1\r\n\r\nbody"[..]));
        let n = rewind.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"next");
        assert_eq!(rewind.give_back().as_deref(), Some(&b""[..]), "nothing is kept once taken");
    }

    #[tokio::test]
    async fn a_record_over_the_bound_is_refused() {
        let mut rewind = over(&[b"x"]);
        rewind.record();
        rewind.keep(&vec![b'a'; RECORD_BYTES_MAX]);
        let mut buf = [0u8; 8];
        assert_eq!(rewind.read(&mut buf).await.expect("read"), 1);
        assert_eq!(rewind.give_back(), None);
    }
}
