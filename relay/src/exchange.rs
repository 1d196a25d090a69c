//! One request over one upstream connection: its header out, the answer's header back
//! ([`attempt`]), then the answer's body on to the client as it comes ([`relay`]).
//!
//! Both steps work on the caller's buffers ([`Buffers`]), kept from request to request, so a
//! request allocates nothing here once the buffers have grown to fit.

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::answer::{self, BodyEnd, FinalHead, Framing, Head};

/// Bytes a read from either side asks for at once.
pub const READ_BYTES: usize = 16 * 1024;

/// Bytes of an upstream answer's header (and any 1xx before it); past it the upstream is
/// broken.
pub const ANSWER_HEADER_BYTES_MAX: usize = 64 * 1024;

/// Informational (1xx) answers skipped before the real one; more is a broken upstream.
pub const INFORMATIONAL_RESPONSES_MAX: u32 = 8;

/// A connection's buffers, reused by each of its requests.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Bytes read from the upstream.
    pub answer: BytesMut,
    /// The header being written: the request's (to the upstream), then the answer's (to the
    /// client).
    pub out: Vec<u8>,
}

/// How one attempt at an upstream failed.
#[derive(Debug, PartialEq, Eq)]
pub enum AttemptError {
    /// The connection closed before any byte of an answer: a pooled one the upstream had
    /// closed, or a process that died under the request.
    ClosedUnanswered,
    /// The upstream did not answer within the read timeout.
    TimedOut,
    /// Anything else the upstream did wrong.
    Broken,
}

/// What one request is, as far as its answer is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// A `HEAD` request: its answer has no body whatever its headers say.
    pub head: bool,
    /// The client's connection closes after this answer.
    pub close: bool,
}

/// Waits on an upstream: each read must complete within this, or never times out (`None`).
pub type ReadTimeout = Option<Duration>;

/// One attempt: the request header (in `buffers.out`) out, the answer's header (past any 1xx)
/// back. On success `buffers.out` holds the client's answer header and `buffers.answer` the
/// upstream's bytes from its header on.
pub async fn attempt<U: AsyncRead + AsyncWrite + Unpin>(
    upstream: &mut U,
    buffers: &mut Buffers,
    asked: Asked,
    read_timeout: ReadTimeout,
) -> Result<FinalHead, AttemptError> {
    let Buffers { answer, out } = buffers;
    match within(read_timeout, upstream.write_all(out)).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Err(AttemptError::TimedOut),
        Err(_) => return Err(AttemptError::ClosedUnanswered),
    }
    answer.clear();
    let mut informational = 0;
    loop {
        match answer::parse_head(answer, asked.head, asked.close, out) {
            Ok(Head::Final(head)) => return Ok(head),
            Ok(Head::Informational(bytes)) => {
                informational += 1;
                if informational > INFORMATIONAL_RESPONSES_MAX {
                    return Err(AttemptError::Broken);
                }
                answer.advance(bytes);
                continue;
            }
            Ok(Head::Partial) if answer.len() < ANSWER_HEADER_BYTES_MAX => {}
            Ok(Head::Partial) | Err(_) => return Err(AttemptError::Broken),
        }
        answer.reserve(READ_BYTES);
        match read_within(read_timeout, upstream.read_buf(answer)).await {
            Ok(0) | Err(ReadError::Io) if answer.is_empty() && informational == 0 => {
                return Err(AttemptError::ClosedUnanswered)
            }
            Ok(0) | Err(ReadError::Io) => return Err(AttemptError::Broken),
            Ok(_) => {}
            Err(ReadError::TimedOut) => return Err(AttemptError::TimedOut),
        }
    }
}

/// How an answer's relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// The upstream connection can take another request (the answer ended where its framing
    /// said, and the upstream did not ask to close).
    pub upstream_keeps: bool,
    /// The body's data bytes passed on (without chunked framing).
    pub body_bytes: u64,
}

/// The answer broke off: the upstream failed or closed mid-body, or the client stopped
/// reading; the client connection must close. Holds the body bytes passed on by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenOff(pub u64);

/// Passes the answer's header (in `buffers.out`) and body on to the client as they come.
pub async fn relay<U, C>(
    upstream: &mut U,
    client: &mut C,
    buffers: &mut Buffers,
    head: &FinalHead,
    read_timeout: ReadTimeout,
    client_write_timeout: Duration,
) -> Result<Relayed, BrokenOff>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let Buffers { answer, out } = buffers;
    answer.advance(head.header_bytes);
    let mut body = BodyEnd::new(head.framing);
    let broken = |body: &BodyEnd| BrokenOff(body.data_bytes());
    let taken = body.take(answer).map_err(|_| broken(&body))?;
    // Bytes past the answer's end mean the upstream and the lane disagree on framing.
    let mut overran = taken < answer.len();
    out.extend_from_slice(&answer[..taken]);
    write_client(client, out, client_write_timeout).await.map_err(|_| broken(&body))?;
    while !body.ended() {
        answer.clear();
        answer.reserve(READ_BYTES);
        match read_within(read_timeout, upstream.read_buf(answer)).await {
            Ok(0) if head.framing == Framing::UntilClose => break,
            Ok(0) | Err(_) => return Err(broken(&body)),
            Ok(_) => {}
        }
        let taken = body.take(answer).map_err(|_| broken(&body))?;
        overran |= taken < answer.len();
        write_client(client, &answer[..taken], client_write_timeout).await.map_err(|_| broken(&body))?;
    }
    Ok(Relayed { upstream_keeps: head.upstream_keeps && !overran, body_bytes: body.data_bytes() })
}

/// Writes `bytes` to the client and flushes them, within `limit`.
pub async fn write_client<C: AsyncWrite + Unpin>(client: &mut C, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    within(Some(limit), write).await
}

/// Runs a write within `limit`. A write the socket takes at once (nearly all of them) starts
/// no timer: the clock is read and a timer set only once it has to wait.
pub async fn within<F: Future<Output = std::io::Result<()>>>(limit: ReadTimeout, write: F) -> std::io::Result<()> {
    let mut write = std::pin::pin!(write);
    let at_once = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(done) = at_once {
        return done;
    }
    match limit {
        Some(limit) => timeout(limit, write).await.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?,
        None => write.await,
    }
}

/// Why a read from an upstream gave no bytes.
enum ReadError {
    Io,
    TimedOut,
}

async fn read_within<F: Future<Output = std::io::Result<usize>>>(
    limit: ReadTimeout,
    read: F,
) -> Result<usize, ReadError> {
    let read = match limit {
        Some(limit) => timeout(limit, read).await.map_err(|_| ReadError::TimedOut)?,
        None => read.await,
    };
    read.map_err(|_| ReadError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers with `script` once it has read a request header.
    async fn upstream_answering(script: &'static [u8]) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Vec<u8>>) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut read = Vec::new();
            while !read.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if theirs.read(&mut byte).await.expect("read") == 0 {
                    break;
                }
                read.push(byte[0]);
            }
            theirs.write_all(script).await.expect("write");
            read
        });
        (ours, task)
    }

    fn buffers_with(request: &[u8]) -> Buffers {
        Buffers { answer: BytesMut::new(), out: request.to_vec() }
    }

    const PLAIN: Asked = Asked { head: false, close: false };

    #[tokio::test]
    async fn an_answer_passes_on_after_an_early_hint_and_the_connection_stays_usable() {
        let script = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\
            Keep-Alive: timeout=5\r\n\r\nhello";
        let (mut upstream, asked) = upstream_answering(script).await;
        let mut buffers = buffers_with(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let head = attempt(&mut upstream, &mut buffers, PLAIN, None).await.expect("an answer");
        assert_eq!(head.status, 200);
        assert_eq!(asked.await.expect("upstream"), b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let mut client = Vec::new();
        let relayed = relay(&mut upstream, &mut client, &mut buffers, &head, None, Duration::from_secs(1)).await;
        assert_eq!(relayed, Ok(Relayed { upstream_keeps: true, body_bytes: 5 }));
        assert_eq!(String::from_utf8(client).expect("text"), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    }

    #[tokio::test]
    async fn an_upstream_that_closes_unanswered_or_mid_body_is_told_apart() {
        let (mut closed, _) = upstream_answering(b"").await;
        let mut buffers = buffers_with(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(attempt(&mut closed, &mut buffers, PLAIN, None).await, Err(AttemptError::ClosedUnanswered));
        let (mut cut, _) = upstream_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhel").await;
        let mut buffers = buffers_with(b"GET / HTTP/1.1\r\n\r\n");
        let head = attempt(&mut cut, &mut buffers, PLAIN, None).await.expect("a header");
        let mut client = Vec::new();
        let relayed = relay(&mut cut, &mut client, &mut buffers, &head, None, Duration::from_secs(1)).await;
        assert_eq!(relayed, Err(BrokenOff(3)));
    }

    #[tokio::test]
    async fn bytes_past_the_answers_end_keep_the_connection_out_of_the_pool() {
        let (mut upstream, _) = upstream_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA").await;
        let mut buffers = buffers_with(b"GET / HTTP/1.1\r\n\r\n");
        let head = attempt(&mut upstream, &mut buffers, PLAIN, None).await.expect("a header");
        let mut client = Vec::new();
        let relayed = relay(&mut upstream, &mut client, &mut buffers, &head, None, Duration::from_secs(1)).await;
        assert_eq!(relayed, Ok(Relayed { upstream_keeps: false, body_bytes: 2 }));
        assert!(client.ends_with(b"\r\n\r\nhi"));
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out() {
        let (mut upstream, _keep_open) = tokio::io::duplex(1024);
        let mut buffers = buffers_with(b"GET / HTTP/1.1\r\n\r\n");
        let limit = Some(Duration::from_millis(50));
        assert_eq!(attempt(&mut upstream, &mut buffers, PLAIN, limit).await, Err(AttemptError::TimedOut));
    }
}
