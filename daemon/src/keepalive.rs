//! Honest keep-alive for the daemons' HTTP APIs.
//!
//! When a handler answers without reading the request's body to its end (a 413 after the
//! first bytes over a limit, a 400 on a bad name, a 405), the HTTP server closes the
//! connection after the response, since the unread rest would be taken for the next request.
//! But it says so only when it knows before the response head goes out, which is a race. A
//! peer that pools connections (the LB) may then send its next request into a connection that
//! is being closed, and must fail it when it is not idempotent (a deploy gets a 502).
//! [`announce_close`] settles the race: a response to a request whose body was not read to
//! its end always carries `Connection: close`, so no peer puts that connection back in a pool.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// `router` with every response to a request whose body was left unread marked
/// `Connection: close`.
pub fn announce_close<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    router.layer(axum::middleware::from_fn(close_unless_read))
}

async fn close_unless_read(request: Request, next: Next) -> Response {
    use http_body::Body as _;
    let (parts, body) = request.into_parts();
    // HTTP/2 ends a stream, never the connection, on an unread body.
    if body.is_end_stream() || parts.version >= axum::http::Version::HTTP_2 {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let watched = Body::new(Watched { inner: body, read: read.clone() });
    let mut response = next.run(Request::from_parts(parts, watched)).await;
    if !read.load(Ordering::Acquire) {
        let close = axum::http::HeaderValue::from_static("close");
        response.headers_mut().insert(axum::http::header::CONNECTION, close);
    }
    response
}

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use axum::routing::put;

    use super::*;

    /// A real server with two routes: one reads its body, one ignores it.
    async fn server() -> std::net::SocketAddr {
        let router = axum::Router::new()
            .route("/read", put(|body: Bytes| async move { format!("{} bytes\n", body.len()) }))
            .route("/ignore", put(|| async { (axum::http::StatusCode::BAD_REQUEST, "no\n") }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, announce_close(router)).await.unwrap() });
        addr
    }

    /// Sends `PUT path` with `body_bytes` of body and returns the response head, lowercased.
    fn put_head(stream: &mut TcpStream, path: &str, body_bytes: usize) -> String {
        let head = format!("PUT {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {body_bytes}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer and close before taking all of an ignored body.
        let _ = stream.write_all(&vec![b'x'; body_bytes]);
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "the server closed before answering: {:?}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&response).to_ascii_lowercase()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_response_to_a_request_whose_body_was_not_read_says_the_connection_closes() {
        let addr = server().await;
        tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let ignored = put_head(&mut stream, "/ignore", 1 << 20);
            assert!(ignored.starts_with("http/1.1 400"), "{ignored}");
            assert!(ignored.contains("connection: close"), "an unread body closes the connection: {ignored}");

            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            for _ in 0..2 {
                let read = put_head(&mut stream, "/read", 1 << 20);
                assert!(read.starts_with("http/1.1 200"), "{read}");
                assert!(!read.contains("connection: close"), "a read body keeps the connection: {read}");
            }
            let empty = put_head(&mut stream, "/ignore", 0);
            assert!(!empty.contains("connection: close"), "no body, nothing unread: {empty}");
        })
        .await
        .unwrap();
    }
}
