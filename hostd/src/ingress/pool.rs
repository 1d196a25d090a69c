//! Idle keep-alive connections to apps' Unix sockets, reused across requests.
//!
//! Opening a connection per request (connect, HTTP/1 handshake, a task for the connection)
//! cost more than the request itself for a small app. A connection goes back to the pool only
//! when its answer has been read to the end (the request's completion drops), and a request
//! takes it back only once hyper says it is ready for another; anything else (an upgrade, a
//! connection the app closed, one still busy) is dropped or opened fresh. Keyed by socket
//! path: a new process of an app listens on a new path or closes the old connections, so a
//! stale connection is never handed to a different process unnoticed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// App sockets with idle connections kept at once (the rest connect per request).
pub const SOCKETS_MAX: usize = 1024;
/// Longest a request waits for an idle connection to say it is ready before opening a new one.
const READY_WAIT_MS: u64 = 20;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The idle connections of every app socket on this host.
pub struct AppConnections {
    idle: Mutex<Idle>,
    /// Idle connections kept per app socket (the app's concurrency limit).
    idle_per_socket_max: usize,
    /// Idle connections kept over all sockets.
    idle_total_max: usize,
}

/// The idle connections by socket, and how many there are in all.
#[derive(Default)]
struct Idle {
    by_socket: HashMap<PathBuf, Vec<SendRequest<Body>>>,
    total: usize,
}

impl Idle {
    /// Drops the connections their apps closed, and the sockets left with none.
    fn forget_closed(&mut self) {
        self.by_socket.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        self.total = self.by_socket.values().map(Vec::len).sum();
    }
}

/// A connection lent to one request; give it back with [`AppConnections::give_back`] once its
/// answer has been read to the end.
pub struct Lent {
    socket: PathBuf,
    sender: SendRequest<Body>,
}

impl AppConnections {
    /// An empty pool that keeps at most `idle_per_socket_max` idle connections per app socket
    /// and `idle_total_max` in all (each is an open file of hostd's).
    pub fn new(idle_per_socket_max: usize, idle_total_max: usize) -> Self {
        assert!(idle_per_socket_max > 0, "a pool that keeps nothing");
        assert!(idle_per_socket_max <= idle_total_max, "one socket's share exceeds the whole");
        Self { idle: Mutex::default(), idle_per_socket_max, idle_total_max }
    }

    /// Sends `request` to the app on `socket` over an idle connection, or a new one when none is
    /// ready (or the idle one turns out closed before the request went out).
    pub async fn send(&self, socket: &Path, request: Request) -> Result<(hyper::Response<Incoming>, Lent), Error> {
        let mut request = request;
        let mut tries = 0;
        while let Some(mut sender) = self.take(socket) {
            // Bounded: each turn drops one idle connection, and there are at most this many.
            tries += 1;
            assert!(tries <= self.idle_per_socket_max, "more idle connections than the pool keeps");
            let ready = tokio::time::timeout(Duration::from_millis(READY_WAIT_MS), sender.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lent { socket: socket.to_owned(), sender })),
                Err(mut error) => match error.take_message() {
                    // Nothing was written: the app closed the connection while it was idle.
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        let mut sender = connect(socket).await?;
        let response = sender.send_request(request).await?;
        Ok((response, Lent { socket: socket.to_owned(), sender }))
    }

    /// Keeps `lent` for the next request to its socket, if it can take one and there is room.
    pub fn give_back(&self, lent: Lent) {
        if lent.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let full = |idle: &Idle| {
            idle.total >= self.idle_total_max
                || (idle.by_socket.len() >= SOCKETS_MAX && !idle.by_socket.contains_key(&lent.socket))
        };
        if full(&idle) {
            idle.forget_closed();
            if full(&idle) {
                return;
            }
        }
        let senders = idle.by_socket.entry(lent.socket).or_default();
        if senders.len() < self.idle_per_socket_max {
            senders.push(lent.sender);
            idle.total += 1;
        }
        debug_assert!(idle.total <= self.idle_total_max, "more idle connections than the pool keeps");
    }

    fn take(&self, socket: &Path) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.by_socket.get_mut(socket)?;
        let sender = senders.pop();
        if senders.is_empty() {
            idle.by_socket.remove(socket);
        }
        if sender.is_some() {
            idle.total -= 1;
        }
        sender
    }
}

/// Opens an HTTP/1.1 connection to the app on `socket` (no upgrades: a pooled connection is
/// only ever used for plain requests).
async fn connect(socket: &Path) -> Result<SendRequest<Body>, Error> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "app connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_reused_and_one_the_app_closed_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::from("hi")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let pool = AppConnections::new(8, 8);
        for _ in 0..3 {
            let (response, lent) = pool.send(&socket, Request::new(Body::empty())).await.expect("answer");
            http_body_util::BodyExt::collect(response.into_body()).await.expect("body");
            pool.give_back(lent);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for three requests");
        // A lent connection whose answer was dropped unread is not ready for another request.
        let (_unread, lent) = pool.send(&socket, Request::new(Body::empty())).await.expect("answer");
        pool.give_back(lent);
        let (response, _) = pool.send(&socket, Request::new(Body::empty())).await.expect("answer");
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_in_all_not_only_per_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sockets = Vec::new();
        for name in ["a.sock", "b.sock"] {
            let socket = dir.path().join(name);
            let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.expect("accept");
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_request| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::from("hi")))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            sockets.push(socket);
        }
        let pool = AppConnections::new(2, 3);
        // Two requests in flight on each socket, then all four connections given back.
        let mut lent = Vec::new();
        for socket in sockets.iter().chain(&sockets) {
            let (response, connection) = pool.send(socket, Request::new(Body::empty())).await.expect("answer");
            http_body_util::BodyExt::collect(response.into_body()).await.expect("body");
            lent.push(connection);
        }
        for connection in lent {
            pool.give_back(connection);
        }
        let idle = pool.idle.lock().unwrap();
        assert_eq!(idle.total, 3, "the fourth is closed, not kept");
        assert_eq!(idle.by_socket.values().map(Vec::len).sum::<usize>(), 3);
    }
}
