//! The private listener: the whole API (see [`crate::gateway`]: `/v1/apps/<name>[/<action>]`
//! goes to the host that holds the app, the rest to the slicer), and the LB's own `/metrics`
//! and `/readyz` ([`crate::readiness`]), which need no token (the private network is trusted
//! to scrape them).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::gateway::{ApiCtx, Gateway, Listener};
use crate::pages;
use crate::readiness::Readiness;
use crate::routing::Routes;
use crate::upstream;

/// The private API proxy: the whole API through the [`Gateway`], plus the LB's own metrics
/// and readiness.
pub struct PrivateProxy {
    routes: Arc<Routes>,
    metrics: Arc<crate::metrics::Metrics>,
    gateway: Arc<Gateway>,
    in_flight: crate::drain::InFlight,
    readiness: Arc<Readiness>,
}

impl PrivateProxy {
    /// A proxy that sends API calls through `gateway` and says it is ready per `readiness`.
    pub fn new(
        routes: Arc<Routes>,
        metrics: Arc<crate::metrics::Metrics>,
        gateway: Arc<Gateway>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self { routes, metrics, gateway, in_flight: crate::drain::InFlight::default(), readiness }
    }

    /// Counts this proxy's calls in `in_flight` (which a stopping LB waits for).
    pub fn with_in_flight(self, in_flight: crate::drain::InFlight) -> Self {
        Self { in_flight, ..self }
    }
}

#[async_trait]
impl ProxyHttp for PrivateProxy {
    type CTX = ApiCtx;

    fn new_ctx(&self) -> ApiCtx {
        ApiCtx::counted(self.in_flight.enter())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ApiCtx) -> pingora::Result<bool> {
        let path = session.req_header().uri.path();
        if path == "/metrics" {
            self.metrics.table_version.set(self.routes.current().version as i64);
            let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            pages::respond(session, 200, content_type, self.metrics.encode()).await?;
            return Ok(true);
        }
        if path == "/readyz" {
            let version = self.routes.current().version;
            let (status, body) = match self.readiness.check(version).await {
                Ok(()) => (200, format!("ready: table version {version}\n")),
                Err(why) => (503, format!("{why}\n")),
            };
            pages::respond(session, status, "text/plain; charset=utf-8", body).await?;
            return Ok(true);
        }
        self.gateway.admit(session, ctx, Listener::Private).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut ApiCtx) -> pingora::Result<Box<HttpPeer>> {
        Ok(upstream::peer(self.gateway.upstream(ctx)?, None))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut ApiCtx,
    ) -> pingora::Result<()> {
        self.gateway.upstream_request(session, request, ctx, "http")
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut ApiCtx,
    ) -> pingora::Result<()> {
        self.gateway.response(response, ctx).await
    }
}
