//! The fast lane: the public listener's common request, served on pingora's HTTP sessions and
//! connection pool without pingora's proxy machinery.
//!
//! pingora's proxy runs each request through a chain of phases and modules, with the client
//! and host sides as two tasks joined by a channel; measured, that machinery costs more CPU per
//! request than reading, forwarding and answering does (docs/notes.md, "Request path speed").
//! Most requests to an app need none of it: a `GET` or `HEAD` with no body and no upgrade, to
//! an app that is not moving. [`FastLane`] reads each HTTP/1.1 request header itself and serves
//! such a request in one straight sequence: the same admission, headers, retries and metrics
//! as [`PublicProxy`], then header out, header back, body back.
//!
//! Every other request — HTTP/2 clients, bodies, WebSockets, moving apps, the LB's pages and
//! API, refusals — goes to the pingora proxy, which decides it from scratch: the lane gives
//! back the bytes its header read took ([`crate::rewind`]), so the proxy reads the request as
//! if the lane had never looked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as HostSession;
use pingora::protocols::http::v1::server::HttpSession as ClientSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use tokio::sync::Notify;

use crate::public::{host_of, PublicProxy, CONNECT_RETRIES_MAX, CONNECT_RETRY_BACKOFF_MS_MIN};
use crate::rewind::Rewind;
use crate::sessions;

/// Informational (1xx) answers skipped before an app's real answer; more is a broken host.
const INFORMATIONAL_RESPONSES_MAX: u32 = 8;

/// How an app request failed, for the client's answer and the metrics.
#[derive(Debug)]
enum Failure {
    /// Nothing usable came from the host: answer with this status (502, 504).
    Host(u16),
    /// The answer was under way, or the client went away: the connection just closes.
    Broken,
}

/// The public listener's HTTP app: serves the common request itself and hands every other one
/// to `P`, the pingora proxy around the same [`PublicProxy`].
pub struct FastLane<P> {
    proxy: Arc<P>,
    public: PublicProxy,
    connector: Connector,
    /// Set when the service stops: a connection waiting for its next request closes.
    stopping: AtomicBool,
    stop: Notify,
}

impl<P> FastLane<P> {
    /// A lane in front of `proxy`, deciding and serving with `public`'s routes and limits, its
    /// host connections pooled as `conf` says.
    pub fn new(proxy: P, public: PublicProxy, conf: &ServerConf) -> Self {
        let connector = Connector::new(Some(ConnectorOptions::from_server_conf(conf)));
        Self { proxy: Arc::new(proxy), public, connector, stopping: AtomicBool::new(false), stop: Notify::new() }
    }

    /// Resolves once the service is stopping.
    async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

#[async_trait]
impl<P: HttpServerApp + Send + Sync + 'static> HttpServerApp for FastLane<P> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let ServerSession::H1(mut client) = session else {
            return self.proxy.process_new_http(session, shutdown).await;
        };
        let Some(rewind) = Rewind::of(client.stream()) else {
            return self.proxy.process_new_http(ServerSession::H1(client), shutdown).await;
        };
        rewind.record();
        let keepalive = (client.get_keepalive_timeout(), client.get_keepalive_reuses_remaining());
        let read = tokio::select! {
            biased;
            read = client.read_request() => read,
            () = self.stopped() => return None,
        };
        match read {
            Ok(Some(_)) => sessions::header_read(),
            // Malformed: the proxy reads it again and answers as it always does.
            Err(error) if error.etype() == &ErrorType::InvalidHTTPHeader => {
                return self.hand_on(client, keepalive, shutdown).await;
            }
            Ok(None) | Err(_) => return None,
        }
        let host = lowercase(host_of(client.req_header()));
        let Some(route) = self.public.fast_route(client.req_header(), &host) else {
            return self.hand_on(client, keepalive, shutdown).await;
        };
        let (app, ingress) = (route.app.to_owned(), route.ingress);
        Rewind::of(client.stream()).expect("checked above").stop();
        let mut client = ServerSession::H1(client);
        if *shutdown.borrow() {
            client.set_keepalive(None);
        }
        self.serve(client, app, ingress).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.proxy.http_cleanup().await
    }

    async fn process_custom_session(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.proxy.clone().process_custom_session(stream, shutdown).await
    }
}

impl<P: HttpServerApp + Send + Sync + 'static> FastLane<P> {
    /// Gives the request to the proxy: a new session on the same connection that starts with
    /// the bytes this one read, and the same keep-alive settings.
    async fn hand_on(
        self: &Arc<Self>,
        client: ClientSessionV1,
        (keepalive, reuses): (Option<u64>, Option<u32>),
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = Rewind::of(client.stream()).and_then(Rewind::give_back);
        let Some(read) = read else {
            // More than a header the LB accepts, with room to spare: nothing to hand on.
            let mut client = ServerSession::H1(client);
            client.set_keepalive(None);
            let body = serde_json::json!({ "code": "header_too_large", "message": "request header too large" });
            let _ = crate::pages::respond(&mut client, 431, "application/json", body.to_string()).await;
            return None;
        };
        let mut fresh = ClientSessionV1::new(client.into_inner());
        fresh.set_server_keepalive(keepalive);
        fresh.set_keepalive_reuses_remaining(reuses);
        fresh.set_pipelined_prefix(read);
        self.proxy.process_new_http(ServerSession::H1(fresh), shutdown).await
    }

    /// Serves an admitted app request to its host and back; returns the client connection when
    /// it can carry another request.
    async fn serve(&self, mut client: ServerSession, app: String, ingress: SocketAddr) -> Option<ReusedHttpStream> {
        let started = Instant::now();
        self.public.metrics().in_flight.inc();
        let address = client.client_addr().and_then(|a| a.as_inet()).copied();
        let place = match self.public.admit(address.map(|a| a.ip()), &app) {
            Ok(place) => place,
            Err(limited) => {
                let answered = self.public.too_many(&mut client, limited).await.is_ok();
                self.public.log(app, started, answered.then_some(429), false);
                return finish(client).await;
            }
        };
        let outcome = self.exchange(&mut client, &app, ingress, address).await;
        drop(place);
        let status = client.response_written().map(|r| r.status.as_u16());
        match outcome {
            Ok(()) => {
                self.public.log(app, started, status, false);
                finish(client).await
            }
            Err(Failure::Host(code)) => {
                let answered = client.respond_error(code).await.is_ok();
                self.public.log(app, started, answered.then_some(code), true);
                None
            }
            Err(Failure::Broken) => {
                self.public.log(app, started, status, true);
                None
            }
        }
    }

    /// Sends the request to the host and its answer back to the client.
    async fn exchange(
        &self,
        client: &mut ServerSession,
        app: &str,
        ingress: SocketAddr,
        address: Option<SocketAddr>,
    ) -> Result<(), Failure> {
        let peer = self.public.app_peer(ingress);
        let mut host = self.ask(client, &peer, app, address).await?;
        let mut response = Box::new(host.resp_header().ok_or(Failure::Host(502))?.clone());
        keep_alive_capable(&mut response, client.req_header());
        client.write_response_header(response).await.map_err(|_| Failure::Broken)?;
        loop {
            match host.read_body_bytes().await {
                Ok(Some(piece)) => client.write_response_body(piece, false).await.map_err(|_| Failure::Broken)?,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%app, %error, "host broke off an answer");
                    return Err(Failure::Broken);
                }
            }
        }
        self.connector.release_http_session(host, &*peer, None).await;
        Ok(())
    }

    /// Sends the request header and reads the answer's header, over a pooled connection or a
    /// new one. A request goes again when nothing reached the host (a failed connect, up to
    /// [`CONNECT_RETRIES_MAX`] times) or when a pooled connection the host had closed got no
    /// answer (once; the lane serves only `GET` and `HEAD`, which may be repeated).
    async fn ask(
        &self,
        client: &ServerSession,
        peer: &HttpPeer,
        app: &str,
        address: Option<SocketAddr>,
    ) -> Result<HostSession, Failure> {
        let tls = client.digest().is_some_and(|digest| digest.ssl_digest.is_some());
        let (mut connect_failures, mut stale_retried) = (0u32, false);
        loop {
            let (mut host, reused) = match self.connector.get_http_session(peer).await {
                Ok(connection) => connection,
                Err(error) => {
                    connect_failures += 1;
                    if connect_failures > CONNECT_RETRIES_MAX {
                        tracing::debug!(%app, %error, "host unreachable");
                        return Err(Failure::Host(502));
                    }
                    self.public.metrics().connect_retries.inc();
                    let backoff_ms = CONNECT_RETRY_BACKOFF_MS_MIN << (connect_failures - 1);
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    continue;
                }
            };
            host.read_timeout = peer.options.read_timeout;
            host.write_timeout = peer.options.write_timeout;
            let request = host_request(client.req_header(), app, address, tls).map_err(|_| Failure::Host(502))?;
            match send(&mut host, request).await {
                Ok(()) => return Ok(host),
                Err(error) if reused && !stale_retried && closed_unanswered(&error) => {
                    tracing::debug!(%app, %error, "pooled host connection was closed; asking again");
                    stale_retried = true;
                }
                Err(error) => {
                    tracing::debug!(%app, %error, "host failed");
                    let code = if error.etype() == &ErrorType::ReadTimedout { 504 } else { 502 };
                    return Err(Failure::Host(code));
                }
            }
        }
    }
}

/// The request header for the host: the client's, with the app's headers set
/// ([`PublicProxy::app_request`]), as HTTP/1.1 on a connection that stays open (the client's
/// `Connection` options were for its own connection; the lane carries no upgrades).
fn host_request(
    request: &RequestHeader,
    app: &str,
    client: Option<SocketAddr>,
    tls: bool,
) -> pingora::Result<Box<RequestHeader>> {
    let mut request = Box::new(request.clone());
    PublicProxy::app_request(&mut request, app, client, tls)?;
    request.remove_header("connection");
    request.set_version(http::Version::HTTP_11);
    Ok(request)
}

/// `text` in lower case, copied only when it has upper-case letters (hosts rarely do).
fn lowercase(text: &str) -> std::borrow::Cow<'_, str> {
    match text.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(text.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(text),
    }
}

/// Writes the request header to the host and reads its answer's header (past any 1xx).
async fn send(host: &mut HostSession, request: Box<RequestHeader>) -> pingora::Result<()> {
    host.write_request_header(request).await?;
    host.finish_body().await?;
    for _ in 0..INFORMATIONAL_RESPONSES_MAX {
        host.read_response().await?;
        let status = host.get_status().expect("a response header was just read");
        if !status.is_informational() {
            return Ok(());
        }
        if status.as_u16() == 101 {
            return pingora::Error::e_explain(ErrorType::InvalidHTTPHeader, "101 to a request without an upgrade");
        }
    }
    pingora::Error::e_explain(ErrorType::InvalidHTTPHeader, "too many informational answers")
}

/// Whether `error` is a pooled connection found closed: the host timed it out while idle,
/// before this request could be answered.
fn closed_unanswered(error: &pingora::Error) -> bool {
    matches!(error.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError)
}

/// An answer without a length is ended by closing its connection; sent on chunked instead, so
/// the client connection stays open (as pingora's proxy does).
fn keep_alive_capable(response: &mut ResponseHeader, request: &RequestHeader) {
    let no_body = request.method == pingora::http::Method::HEAD || matches!(response.status.as_u16(), 204 | 304);
    let headers = &response.headers;
    if no_body || headers.contains_key("content-length") || headers.contains_key("transfer-encoding") {
        return;
    }
    response.set_version(http::Version::HTTP_11);
    let _ = response.insert_header("transfer-encoding", "chunked");
}

/// Ends the request on the client connection; returns it when it can carry another.
async fn finish(client: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&client);
    let reusable = client.finish().await.ok()??;
    Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
}
