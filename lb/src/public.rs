//! The public listener: `Host: <app>.<domain>` → the app's host, or the LB's own pages.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use steady_proto::name::{app_from_host, is_apex};
use steady_proto::wire::HEADER_APP;

use crate::config::HostProtocol;
use crate::edge::{self, EdgeLimits};
use crate::gateway::{ApiCtx, Gateway, Listener};
use crate::limits::{Limited, Limits};
use crate::metrics::{LimitLabels, Metrics, RequestCounters, RequestLabels};
use crate::pages;
use crate::probe::Prober;
use crate::routing::{Route, Routes};
use crate::sessions;
use crate::upstream;

/// Per-request state: where the request goes.
#[derive(Default)]
pub struct RequestCtx {
    app: String,
    ingress: Option<std::net::SocketAddr>,
    started: Option<std::time::Instant>,
    /// Connections to the host that failed for this request (nothing was sent on them).
    connect_failures: u32,
    /// Request body bytes passed on so far.
    body_bytes: u64,
    /// The request's place among its app's requests in flight.
    app_place: Option<pingora_limits::inflight::Guard>,
    /// Set for an API call to the apex domain (`/v1/...`): it goes through the gateway.
    api: Option<ApiCtx>,
}

/// Times a request whose connection to its host failed is tried again (100, 200, 400 ms apart).
pub(crate) const CONNECT_RETRIES_MAX: u32 = 3;
pub(crate) const CONNECT_RETRY_BACKOFF_MS_MIN: u64 = 100;

/// The public proxy. Cloning it shares its routes, limits and metrics (the
/// [`fastlane`](crate::fastlane) holds a clone).
#[derive(Clone)]
pub struct PublicProxy {
    routes: Arc<Routes>,
    domains: Vec<String>,
    metrics: Arc<Metrics>,
    prober: Prober,
    limits: EdgeLimits,
    rates: Arc<Limits>,
    upstream_read_timeout_ms: Option<u64>,
    host_protocol: HostProtocol,
    gateway: Arc<Gateway>,
}

impl PublicProxy {
    /// A proxy for apps under `domains`, routed by `routes`.
    pub fn new(
        routes: Arc<Routes>,
        domains: Vec<String>,
        limits: EdgeLimits,
        rates: Limits,
        metrics: Arc<Metrics>,
        gateway: Arc<Gateway>,
    ) -> Self {
        assert!(!domains.is_empty(), "the LB serves at least one domain");
        let prober = Prober::default();
        let host_protocol = HostProtocol::Http1;
        let rates = Arc::new(rates);
        Self { routes, domains, metrics, prober, limits, rates, upstream_read_timeout_ms: None, host_protocol, gateway }
    }

    /// Bounds each wait on a host (past it: 504).
    pub fn with_upstream_read_timeout_ms(self, timeout_ms: u64) -> Self {
        Self { upstream_read_timeout_ms: Some(timeout_ms), ..self }
    }

    /// Speaks `protocol` to hosts for app traffic (upgrades stay on HTTP/1.1).
    pub fn with_host_protocol(self, protocol: HostProtocol) -> Self {
        Self { host_protocol: protocol, ..self }
    }
}

impl PublicProxy {
    /// Answers 429 for `limited` (the request goes nowhere).
    async fn too_many(&self, session: &mut ServerSession, limited: Limited) -> pingora::Result<bool> {
        let body = self.too_many_body(limited);
        pages::respond_with(session, 429, "application/json", &[("retry-after", "1")], body).await?;
        Ok(true)
    }

    /// Counts a request refused for `limited` and returns the body of its 429 answer.
    pub(crate) fn too_many_body(&self, limited: Limited) -> String {
        self.metrics.limited.get_or_create(&LimitLabels { limit: limited.label() }).inc();
        let message = match limited {
            Limited::ClientRate => "too many requests from this address; slow down",
            Limited::AppInFlight => "this app has too many requests in flight; try again in a moment",
        };
        serde_json::json!({ "code": limited.label(), "message": message }).to_string()
    }
}

/// Where the fast lane sends a request it may serve: the app and its host's ingress.
pub(crate) struct FastRoute<'a> {
    pub app: &'a str,
    pub ingress: std::net::SocketAddr,
}

impl PublicProxy {
    /// Whether the [`fastlane`](crate::fastlane) serves any request: only while hosts are
    /// reached over HTTP/1.1 (with h2c, every request takes the proxy).
    pub(crate) fn lane_open(&self) -> bool {
        self.host_protocol == HostProtocol::Http1
    }

    /// The limits every request header is held to.
    pub(crate) fn edge_limits(&self) -> &EdgeLimits {
        &self.limits
    }

    /// `Some` when a request for `host` (lower case) is one the [`fastlane`](crate::fastlane)
    /// serves, the lane having checked the request itself (a bodiless `GET` or `HEAD` within
    /// the edge limits): a known app that is not moving. Everything else (pages, the API,
    /// unknown apps, moves) goes to the pingora proxy. Looks only, changes nothing: a request
    /// it declines is decided again by [`ProxyHttp::request_filter`] from scratch.
    pub(crate) fn lane_route<'a>(&self, host: &'a str) -> Option<FastRoute<'a>> {
        if !self.lane_open() {
            return None;
        }
        let app = self.domains.iter().find_map(|d| app_from_host(host, d))?;
        let routes = self.routes.current();
        match routes.route(app)? {
            Route::Host(to) if routes.version != 0 => Some(FastRoute { app, ingress: to.ingress }),
            _ => None,
        }
    }

    /// Admits a request for `app` from `client` under the rate and in-flight limits: its place
    /// among the app's requests in flight, or the limit it hit.
    pub(crate) fn admit(
        &self,
        client: Option<std::net::IpAddr>,
        app: &str,
    ) -> Result<pingora_limits::inflight::Guard, Limited> {
        if let Some(client) = client {
            self.rates.admit_client(client)?;
        }
        self.rates.admit_app(app)
    }

    /// The headers an app request carries to its host: internal and hop-by-hop ones stripped,
    /// the app named, the forwarding headers set for `client` and the scheme (`tls`).
    fn app_request(
        request: &mut RequestHeader,
        app: &str,
        client: Option<std::net::SocketAddr>,
        tls: bool,
    ) -> pingora::Result<()> {
        upstream::strip_internal_headers(request);
        upstream::strip_hop_by_hop(request);
        request.insert_header(HEADER_APP, app)?;
        upstream::set_forwarded(request, client, if tls { "https" } else { "http" })
    }

    /// The metrics of this proxy.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a finished request of `app` ("" when none was chosen) that started at
    /// `started`, answered with `status` (`None`: no answer was written).
    fn log(&self, app: String, started: std::time::Instant, status: Option<u16>, failed: bool) {
        self.finished(started, failed);
        let app = if app.is_empty() { "-".to_owned() } else { app };
        self.metrics.requests.get_or_create(&RequestLabels { app, status: Metrics::status_class(status) }).inc();
    }

    /// [`PublicProxy::log`] through a connection's counter handles (the fast lane's).
    pub(crate) fn log_with(
        &self,
        counters: &mut RequestCounters,
        app: &str,
        started: std::time::Instant,
        status: Option<u16>,
        failed: bool,
    ) {
        self.finished(started, failed);
        self.metrics.count_request(counters, if app.is_empty() { "-" } else { app }, status);
    }

    /// The metrics every finished request moves besides its count.
    fn finished(&self, started: std::time::Instant, failed: bool) {
        self.metrics.in_flight.dec();
        self.metrics.duration_seconds.observe(started.elapsed().as_secs_f64());
        if failed {
            self.metrics.upstream_errors.inc();
        }
    }
}

/// The host a request names: the authority of its target (HTTP/2's `:authority`, an absolute
/// URI's) when it has one, else its `Host` header (the edge checks refuse the two disagreeing).
fn host_of(request: &RequestHeader) -> &str {
    request
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers.get("host").and_then(|v| v.to_str().ok()))
        .unwrap_or_default()
}

#[async_trait]
impl ProxyHttp for PublicProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> pingora::Result<()> {
        sessions::header_read();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        ctx.started = Some(std::time::Instant::now());
        self.metrics.in_flight.inc();
        if let Err(refusal) = edge::check(session.req_header(), &self.limits) {
            // Nothing of the request goes on; the connection closes rather than read its body.
            session.set_keepalive(None);
            let body = serde_json::json!({ "code": refusal.code, "message": refusal.message }).to_string();
            pages::respond(session, refusal.status, "application/json", body).await?;
            return Ok(true);
        }
        let host = host_of(session.req_header()).to_ascii_lowercase();
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Some(limited) = client.and_then(|ip| self.rates.admit_client(ip).err()) {
            return self.too_many(session, limited).await;
        }
        if self.domains.iter().any(|d| is_apex(&host, d)) {
            if session.req_header().uri.path().starts_with("/v1/") {
                let api = ctx.api.insert(ApiCtx::default());
                return self.gateway.admit(session, api, Listener::Public).await;
            }
            return crate::dashboard::respond(session).await;
        }
        let Some(app) = self.domains.iter().find_map(|d| app_from_host(&host, d)) else {
            pages::respond(session, 404, "text/html; charset=utf-8", pages::unknown_host()).await?;
            return Ok(true);
        };
        let routes = self.routes.current();
        if routes.version == 0 {
            // A fresh LB that has no table yet cannot tell an unknown app from a known one.
            pages::respond(session, 503, "text/html; charset=utf-8", pages::no_table()).await?;
            return Ok(true);
        }
        let Some(route) = routes.route(app) else {
            pages::respond(session, 404, "text/html; charset=utf-8", pages::unknown_app(app)).await?;
            return Ok(true);
        };
        let host = match route {
            Route::Host(host) => host,
            Route::Moving { from, to } => {
                if self.prober.serves(from.ingress, app, &self.metrics).await {
                    from
                } else {
                    to
                }
            }
        };
        match self.rates.admit_app(app) {
            Ok(place) => ctx.app_place = Some(place),
            Err(limited) => return self.too_many(session, limited).await,
        }
        ctx.app = app.to_owned();
        ctx.ingress = Some(host.ingress);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > self.limits.body_bytes_max {
            let message = format!("request body over the limit of {} bytes", self.limits.body_bytes_max);
            return pingora::Error::e_explain(pingora::ErrorType::HTTPStatus(413), message);
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        if let Some(api) = &ctx.api {
            // API calls wait as long as they need (a deploy's trial, a followed log).
            return Ok(upstream::peer(self.gateway.upstream(api)?, None));
        }
        let addr = ctx.ingress.ok_or_else(|| pingora::Error::new_str("no route chosen"))?;
        if ctx.connect_failures > 0 {
            // A host daemon restarting (a crash, an upgrade) is back within a few hundred ms.
            let backoff_ms = CONNECT_RETRY_BACKOFF_MS_MIN << (ctx.connect_failures - 1);
            tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
        }
        // An HTTP/2 stream cannot carry an HTTP/1.1 upgrade (WebSockets).
        Ok(match self.host_protocol {
            HostProtocol::H2c if !session.is_upgrade_req() => upstream::h2c_peer(addr, self.upstream_read_timeout_ms),
            _ => upstream::peer(addr, self.upstream_read_timeout_ms),
        })
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut error: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        // Nothing reached the host: any request may go again, after a short pause.
        ctx.connect_failures += 1;
        if ctx.connect_failures <= CONNECT_RETRIES_MAX {
            self.metrics.connect_retries.inc();
            error.set_retry(true);
        }
        error
    }

    async fn fail_to_proxy(&self, session: &mut Session, error: &pingora::Error, _ctx: &mut RequestCtx) -> FailToProxy {
        use pingora::{ErrorSource, ErrorType};
        let code = match (error.etype(), error.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (ErrorType::ReadTimedout, ErrorSource::Upstream) => 504,
            (_, ErrorSource::Upstream) => 502,
            (ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed, ErrorSource::Downstream) => 0,
            (_, ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if code > 0 {
            if let Err(error) = session.respond_error(code).await {
                tracing::debug!(%error, "could not answer the client");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let tls = session.digest().is_some_and(|digest| digest.ssl_digest.is_some());
        let proto = if tls { "https" } else { "http" };
        if let Some(api) = &ctx.api {
            return self.gateway.upstream_request(session, request, api, proto);
        }
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        Self::app_request(request, &ctx.app, client, tls)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        match &ctx.api {
            Some(api) => self.gateway.response(response, api).await,
            None => Ok(()),
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        let Some(started) = ctx.started else { return };
        let status = session.response_written().map(|r| r.status.as_u16());
        self.log(std::mem::take(&mut ctx.app), started, status, error.is_some());
    }
}
