//! The listeners' bounds on open client connections, and the open files they rest on.
//!
//! Every client connection holds a file descriptor, and every request passed on holds another
//! for its host connection. A process out of descriptors can neither accept nor reach a host,
//! so every client fails, not only the newest: a flood of connections (each within the header
//! deadline) would take the whole LB down. So the public listeners keep at most
//! `--connections-max` client connections open (the private listener
//! [`PRIVATE_CONNECTIONS_MAX`]), and the LB checks at start that its open files cover that
//! many twice over, the idle host connections and a reserve (`steady_daemon::files::Budget`).
//!
//! pingora's accept loop cannot be paused, so a connection past the bound is accepted and
//! refused at once ([`Capped`]): a plain one gets `503` with `retry-after`, one to the TLS
//! address is closed (its handshake, which comes after the connection has its place, is
//! [`crate::handshake`]'s). Refusing is bounded too: a refused connection lingers (its answer
//! sent, what the client sends meanwhile read and dropped, so the kernel does not reset the
//! connection before the client has read the answer) at most [`LINGER_MS`], and at most
//! [`LINGERING_MAX`] do at once; past that they are closed without an answer.
//!
//! An HTTP/2 connection may carry many requests at once (pingora allows 100 streams), each
//! holding a host connection of its own when hosts are reached over HTTP/1.1. So its requests
//! in flight past the first take places in the public [`Slots`] too
//! ([`crate::sessions`], "Places"), and one past the bound is answered `503`: the open files
//! budget of two descriptors per place holds whatever the clients speak.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handshake::TlsPort;

/// Default bound on open client connections (all public listeners and workers together).
pub const CONNECTIONS_MAX: usize = 16_384;

/// Bound on the private listener's open connections (operators' API calls, log streams and
/// scrapes); counted in the open files budget with a host connection each.
pub const PRIVATE_CONNECTIONS_MAX: usize = 1_024;

/// Open files kept aside for everything but client connections (public and private), their
/// host connections and the idle pools: the slicer watch, certificates, logs.
pub const FILES_RESERVED: u64 = 512;

/// Longest a refused connection stays open for its client to read the `503`.
pub const LINGER_MS: u64 = 250;

/// Refused connections lingering at once, at most; past it they are closed without an answer.
pub const LINGERING_MAX: usize = 256;

/// Bytes of a refused client's request read (and dropped) while it lingers, at most.
const LINGER_READ_BYTES_MAX: usize = 64 * 1024;

/// The answer to a connection past the bound.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\ncache-control: private, no-store\r\nconnection: close\r\ncontent-length: 75\r\n\r\n\
{\"code\":\"connections_max\",\"message\":\"too many open connections; try again\"}";

/// The body of the `503` for an HTTP/2 stream past the bound.
pub const STREAM_REFUSAL_BODY: &str =
    "{\"code\":\"connections_max\",\"message\":\"too many open connections and HTTP/2 requests; try again\"}";

/// One listener's open client connections: the public one's are shared by every worker, the
/// private listener has its own.
#[derive(Debug)]
pub struct Slots {
    open: AtomicUsize,
    max: usize,
    /// The flag or constant that sets `max`, for the log.
    bound: &'static str,
    lingering: AtomicUsize,
    open_gauge: Gauge,
    refused: Counter,
    /// When the slots were made, and the second after it of the last refusal logged: a flood
    /// of refusals logs one line a second, not one per connection.
    made: Instant,
    warned_s: AtomicU64,
}

/// One open connection's place in [`Slots`]; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    /// Room for `max` connections (set by `bound`, named in the log), reported in `open_gauge`
    /// and (each refusal) `refused`.
    pub fn new(max: usize, bound: &'static str, open_gauge: Gauge, refused: Counter) -> Arc<Self> {
        assert!(max > 0, "a listener with no room refuses everyone");
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            bound,
            lingering: AtomicUsize::new(0),
            open_gauge,
            refused,
            made: Instant::now(),
            warned_s: AtomicU64::new(0),
        })
    }

    /// A place for one more connection, unless all are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let taken =
            self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < self.max).then_some(open + 1));
        match taken {
            Ok(_) => {
                self.open_gauge.inc();
                Some(Slot(self.clone()))
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Logs a refusal, at most once a second.
    pub(crate) fn warn_refused(&self) {
        let now_s = self.made.elapsed().as_secs() + 1;
        if self.warned_s.swap(now_s, Ordering::AcqRel) != now_s {
            tracing::warn!(
                open = self.open(),
                max = self.max,
                refused_total = self.refused.get(),
                "connections refused: {} reached",
                self.bound
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0.open.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a slot given back twice");
        self.0.open_gauge.dec();
    }
}

/// A listener's connection app that keeps `A` within the [`Slots`]: a connection that
/// finds no place is refused, the rest are `A`'s for as long as they stay open, those to the
/// TLS address once their handshake is done.
pub struct Capped<A> {
    inner: Arc<A>,
    slots: Arc<Slots>,
    tls: Option<Arc<TlsPort>>,
}

impl<A> Capped<A> {
    /// `inner`, with its connections counted in `slots`; connections to `tls`'s address are
    /// taken through its handshake first.
    pub fn new(inner: A, slots: Arc<Slots>, tls: Option<Arc<TlsPort>>) -> Self {
        Self { inner: Arc::new(inner), slots, tls }
    }

    /// Answers `503` and waits (bounded) for the client to read it; closes at once when too
    /// many refusals linger already.
    async fn refuse(&self, mut stream: Stream) {
        let lingering = &self.slots.lingering;
        if lingering.fetch_add(1, Ordering::AcqRel) >= LINGERING_MAX {
            lingering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let linger = async {
            // The request's header first: a client that gets its answer before it has sent its
            // request (hyper's, for one) takes the connection for broken, not refused.
            let mut read = Drained::default();
            while !read.header_seen && read.bytes < LINGER_READ_BYTES_MAX {
                if !read.more(&mut stream).await? {
                    return Ok(());
                }
            }
            stream.write_all(REFUSAL).await?;
            stream.flush().await?;
            stream.shutdown().await?;
            while read.bytes < LINGER_READ_BYTES_MAX && read.more(&mut stream).await? {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), linger).await;
        lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a refused connection's client has sent, read and dropped.
#[derive(Default)]
struct Drained {
    bytes: usize,
    /// The last bytes read, to spot a header's end across reads.
    tail: [u8; 3],
    header_seen: bool,
}

impl Drained {
    /// Reads and drops what comes next; `false` at the end of the stream.
    async fn more(&mut self, stream: &mut Stream) -> std::io::Result<bool> {
        let mut buffer = [0u8; 4096];
        let read = stream.read(&mut buffer).await?;
        let mut window = self.tail.to_vec();
        window.extend_from_slice(&buffer[..read]);
        self.header_seen |= window.windows(4).any(|w| w == b"\r\n\r\n");
        // The window starts with the three bytes kept last time, so it always has three.
        self.tail.copy_from_slice(&window[window.len() - 3..]);
        self.bytes += read;
        Ok(read > 0)
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let tls = self.tls.as_deref().filter(|port| port.arrived(&stream));
        let Some(_slot) = self.slots.take() else {
            self.slots.warn_refused();
            // Before a handshake there is nothing a TLS client could read.
            if tls.is_none() {
                self.refuse(stream).await;
            }
            return None;
        };
        let stream = match tls {
            Some(port) => port.handshake(stream).await?,
            None => stream,
        };
        // The connection keeps its place across every turn `A` takes with it.
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back_and_refusals_counted() {
        let (gauge, refused) = (Gauge::default(), Counter::default());
        let slots = Slots::new(2, "a test bound", gauge.clone(), refused.clone());
        let first = slots.take().expect("room for one");
        let second = slots.take().expect("room for two");
        assert!(slots.take().is_none(), "a third past the bound");
        assert_eq!((slots.open(), gauge.get(), refused.get()), (2, 2, 1));
        drop(first);
        let third = slots.take().expect("a place given back is taken again");
        drop((second, third));
        assert_eq!((slots.open(), gauge.get(), refused.get()), (0, 0, 1));
    }

    #[tokio::test]
    async fn a_header_end_split_across_reads_is_seen() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(accepted));
        let mut read = Drained::default();
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r").await.unwrap();
        assert!(read.more(&mut stream).await.unwrap());
        assert!(!read.header_seen, "one byte short of the end");
        client.write_all(b"\n").await.unwrap();
        assert!(read.more(&mut stream).await.unwrap());
        assert!(read.header_seen);
        assert_eq!(read.bytes, 27);
        drop(client);
        assert!(!read.more(&mut stream).await.unwrap(), "the end of the stream");
    }

    #[test]
    fn the_refusal_says_its_length_truly() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        serde_json::from_str::<serde_json::Value>(body).expect("a JSON body");
    }
}
