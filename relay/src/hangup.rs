//! Noticing a client that hangs up while its request waits on the upstream.
//!
//! Between sending a request on and the upstream's answer, nothing is read from the client,
//! so a client that closes would be noticed only when its answer is written, which may be
//! long after (a slow app, a long poll). [`watch`] reads the client meanwhile: its end of
//! stream (or an error) means the client is gone, and the caller drops the upstream
//! connection, which tells the upstream in turn. A client that closes only its sending side
//! and waits for the answer is taken for gone too, as nginx does by default.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes a client may send (pipelined requests) while its request waits, the bound both lanes
/// give [`watch`]: past them the client is not read, and so a hang-up not noticed, until the
/// answer is out.
pub const PENDING_BYTES_MAX: usize = 64 * 1024;

/// Bytes [`watch`] makes room for in one read.
const WATCH_READ_BYTES: usize = 4096;

/// Resolves when `client` closes or fails. Bytes it sends meanwhile (a pipelined request)
/// are kept in `pending`; once it holds `pending_bytes_max`, the client is no longer read
/// (and so no longer watched) until the caller reads it again.
pub async fn watch<C: AsyncRead + Unpin + ?Sized>(client: &mut C, pending: &mut BytesMut, pending_bytes_max: usize) {
    while pending.len() < pending_bytes_max {
        // A small read at a time: most clients send nothing while they wait, and a waiting
        // connection should not hold more than its buffer already has.
        pending.reserve(WATCH_READ_BYTES.min(pending_bytes_max - pending.len()));
        match client.read_buf(pending).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_closed_client_is_gone_and_what_it_sent_first_is_kept() {
        let (mut client, mut lane) = tokio::io::duplex(1024);
        client.write_all(b"GET /next HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let mut pending = BytesMut::new();
        watch(&mut lane, &mut pending, 4096).await;
        assert_eq!(&pending[..], b"GET /next HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn an_open_client_is_watched_until_its_pending_bytes_reach_the_bound() {
        let (mut client, mut lane) = tokio::io::duplex(1024);
        client.write_all(&[b'x'; 100]).await.unwrap();
        let mut pending = BytesMut::new();
        let watched = tokio::time::timeout(Duration::from_millis(100), watch(&mut lane, &mut pending, 64)).await;
        assert!(watched.is_err(), "an open client is not gone");
        assert!(pending.len() >= 64 && pending.len() <= 100, "{}", pending.len());
        drop(client);
        let watched = tokio::time::timeout(Duration::from_millis(100), watch(&mut lane, &mut pending, 64)).await;
        assert!(watched.is_err(), "past the bound the client is not read");
    }
}
