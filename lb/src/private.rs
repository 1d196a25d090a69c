//! The private listener: the API. `/v1/apps/<name>[/<action>]` goes to the host that holds the
//! app (or, for a new app, the owner of its slice); everything else under `/v1` goes to the slicer. `/readyz` is answered by the LB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use steady_proto::wire::{HEADER_TABLE_VERSION, HEADER_URL};

use crate::config::DEPLOY_TABLE_WAIT_MS;
use crate::pages;
use crate::routing::Routes;
use crate::upstream;

/// Per-request state: the chosen upstream.
#[derive(Default)]
pub struct ApiCtx {
    upstream: Option<SocketAddr>,
    app: Option<String>,
    /// The call's place among all requests a stopping LB waits for (a deploy answer is one).
    _in_flight: Option<crate::drain::InFlightGuard>,
}

/// The private API proxy.
pub struct PrivateProxy {
    routes: Arc<Routes>,
    metrics: Arc<crate::metrics::Metrics>,
    slicer: SocketAddr,
    /// Public base of app URLs: `http://{app}.<domain>[:port]` is built from these.
    url_domain: String,
    url_port_suffix: String,
    in_flight: crate::drain::InFlight,
}

impl PrivateProxy {
    /// A proxy that sends app calls by `routes` and the rest to `slicer`. App URLs it reports
    /// are under `domain` on the public listener `public`.
    pub fn new(
        routes: Arc<Routes>,
        metrics: Arc<crate::metrics::Metrics>,
        slicer: SocketAddr,
        domain: &str,
        public: SocketAddr,
    ) -> Self {
        let url_port_suffix = if public.port() == 80 { String::new() } else { format!(":{}", public.port()) };
        let in_flight = crate::drain::InFlight::default();
        Self { routes, metrics, slicer, url_domain: domain.to_owned(), url_port_suffix, in_flight }
    }

    /// Counts this proxy's calls in `in_flight` (which a stopping LB waits for).
    pub fn with_in_flight(self, in_flight: crate::drain::InFlight) -> Self {
        Self { in_flight, ..self }
    }
}

/// The app named by a per-app call: `/v1/apps/<name>` or `/v1/apps/<name>/<more>`.
fn app_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/apps/")?;
    let name = rest.split_once('/').map_or(rest, |(name, _)| name);
    (!name.is_empty()).then_some(name)
}

#[async_trait]
impl ProxyHttp for PrivateProxy {
    type CTX = ApiCtx;

    fn new_ctx(&self) -> ApiCtx {
        ApiCtx { _in_flight: Some(self.in_flight.enter()), ..ApiCtx::default() }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ApiCtx) -> pingora::Result<bool> {
        let path = session.req_header().uri.path().to_owned();
        if path == "/metrics" {
            self.metrics.table_version.set(self.routes.current().version as i64);
            let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            pages::respond(session, 200, content_type, self.metrics.encode()).await?;
            return Ok(true);
        }
        if path == "/readyz" {
            let version = self.routes.current().version;
            let (status, body) = if version > 0 {
                (200, format!("ready: table version {version}\n"))
            } else {
                (503, "no routing table yet\n".into())
            };
            pages::respond(session, status, "text/plain; charset=utf-8", body).await?;
            return Ok(true);
        }
        let Some(app) = app_of_path(&path) else {
            ctx.upstream = Some(self.slicer);
            return Ok(false);
        };
        if let Err(error) = steady_proto::name::validate(app) {
            let body = serde_json::json!({ "code": "bad_name", "message": error.to_string() }).to_string();
            pages::respond(session, 400, "application/json", body).await?;
            return Ok(true);
        }
        match self.routes.current().api_host(app) {
            Some(owner) => {
                ctx.upstream = Some(owner.api);
                ctx.app = Some(app.to_owned());
            }
            None => {
                let body =
                    serde_json::json!({ "code": "no_hosts", "message": "no host is registered to run apps yet" })
                        .to_string();
                pages::respond(session, 503, "application/json", body).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut ApiCtx) -> pingora::Result<Box<HttpPeer>> {
        let addr = ctx.upstream.ok_or_else(|| pingora::Error::new_str("no upstream chosen"))?;
        Ok(upstream::peer(addr, None))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut ApiCtx,
    ) -> pingora::Result<()> {
        upstream::strip_internal_headers(request);
        upstream::strip_hop_by_hop(request);
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        upstream::set_forwarded(request, client, "http")
    }

    /// A deploy answer names the table version that includes the app; hold it until this LB
    /// has that table, so the URL the CLI prints works at once.
    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut ApiCtx,
    ) -> pingora::Result<()> {
        let wanted =
            response.headers.get(HEADER_TABLE_VERSION).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if let Some(version) = wanted {
            if !self.routes.wait_for(version, Duration::from_millis(DEPLOY_TABLE_WAIT_MS)).await {
                tracing::warn!(version, "deploy answered before this LB saw its table");
            }
            if let Some(app) = &ctx.app {
                response
                    .insert_header(HEADER_URL, format!("http://{app}.{}{}/", self.url_domain, self.url_port_suffix))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_app_paths_name_the_app() {
        use super::app_of_path;
        assert_eq!(app_of_path("/v1/apps/hello/deploy"), Some("hello"));
        assert_eq!(app_of_path("/v1/apps/hello/logs"), Some("hello"));
        assert_eq!(app_of_path("/v1/apps"), None);
        assert_eq!(app_of_path("/v1/apps/hello"), Some("hello"));
        assert_eq!(app_of_path("/v1/apps/"), None);
        assert_eq!(app_of_path("/v1/hosts"), None);
    }
}
