//! The API gateway, shared by the private listener (all of the API) and the apex domain on
//! the public listener (the user part, for the dashboard): it classifies each call, asks the
//! slicer who is calling and whether they may ([`steady_proto::wire::Authorize`]), then sends
//! the call to the app's host or to the slicer with the caller's owner and role in headers.
//!
//! Admin calls exist only on the private listener, and an admin token is refused on the public
//! one, so no admin power crosses the public address. Anonymous callers may only run temporary
//! apps, a bounded number per client address and minute.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pingora::http::{Method, RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora_limits::rate::Rate;
use steady_proto::wire::{
    Access, Authorize, Principal, Role, HEADER_NEW_TOKEN, HEADER_OWNER, HEADER_ROLE, HEADER_TABLE_VERSION, HEADER_URL,
};

use crate::config::DEPLOY_TABLE_WAIT_MS;
use crate::pages;
use crate::routing::Routes;
use crate::upstream;

/// Longest the slicer may take to answer an authorization.
const AUTHORIZE_TIMEOUT_MS: u64 = 5_000;
/// Default anonymous runs one client address may start per minute.
pub const ANONYMOUS_RUNS_PER_MINUTE_MAX: u32 = 10;
/// Longest bearer token read from a request (tokens are 53 bytes).
const TOKEN_BYTES_MAX: usize = 256;

/// Which listener a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Private,
    Public,
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The host that holds the call's app (or, for a new app, its slice's owner).
    Host,
    Slicer,
    /// Answered by the gateway: who the token belongs to.
    Whoami,
}

/// A classified API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub access: Access,
    pub app: Option<&'a str>,
    pub target: Target,
    /// For a run: the temporary app's time to live, from the query.
    pub ttl_s: Option<u64>,
}

/// Per-request state of an API call.
#[derive(Default)]
pub struct ApiCtx {
    upstream: Option<SocketAddr>,
    app: Option<String>,
    principal: Option<Principal>,
    /// The call's place among all requests a stopping LB waits for (a deploy answer is one).
    _in_flight: Option<crate::drain::InFlightGuard>,
}

impl ApiCtx {
    /// State for a call counted among those a stopping LB waits for.
    pub fn counted(guard: crate::drain::InFlightGuard) -> Self {
        Self { _in_flight: Some(guard), ..Self::default() }
    }
}

/// The gateway: routes, the slicer's address and the anonymous-run limit.
pub struct Gateway {
    routes: Arc<Routes>,
    slicer: SocketAddr,
    http: reqwest::Client,
    anonymous_runs: Rate,
    anonymous_runs_per_minute_max: u32,
    /// Public base of app URLs: `<scheme>://{app}.<domain>[:port]` is built from these.
    url_scheme: &'static str,
    url_domain: String,
    url_port_suffix: String,
}

/// Classifies `method path?query`; `None` for what the gateway never forwards.
pub fn classify<'a>(method: &Method, path: &'a str, query: Option<&str>) -> Option<Call<'a>> {
    let call = |access, app, target| Some(Call { access, app, target, ttl_s: None });
    if path == "/v1/whoami" {
        return call(Access::Account, None, Target::Whoami);
    }
    if path == "/v1/apps" && method == Method::GET {
        return call(Access::Account, None, Target::Slicer);
    }
    if path == "/v1/tokens" || path.starts_with("/v1/tokens/") {
        return call(Access::Account, None, Target::Slicer);
    }
    if path.starts_with("/v1/auth/") {
        return None;
    }
    let Some(rest) = path.strip_prefix("/v1/apps/") else {
        return call(Access::Admin, None, Target::Slicer);
    };
    let (app, action) = rest.split_once('/').unwrap_or((rest, ""));
    if app.is_empty() {
        return None;
    }
    let access = match (method, action) {
        (&Method::POST, "deploy") => match ttl_of(query) {
            Some(ttl_s) => return Some(Call { access: Access::Run, app: Some(app), target: Target::Host, ttl_s }),
            None => Access::Deploy,
        },
        (&Method::GET | &Method::HEAD, _) => Access::Read,
        _ => Access::Write,
    };
    call(access, Some(app), Target::Host)
}

/// `Some(ttl)` when the query asks for a temporary app (`ttl_s=N`; an unparsable value is
/// still a run, which the host refuses with its own message).
fn ttl_of(query: Option<&str>) -> Option<Option<u64>> {
    let value = query?.split('&').find_map(|pair| pair.strip_prefix("ttl_s="))?;
    Some(value.parse().ok())
}

/// The bearer token of a request: `Ok(None)` without an `Authorization` header.
fn bearer(request: &RequestHeader) -> Result<Option<String>, ()> {
    let Some(value) = request.headers.get("authorization") else { return Ok(None) };
    let text = value.to_str().map_err(drop)?;
    let token = text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")).ok_or(())?.trim();
    if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
        return Err(());
    }
    Ok(Some(token.to_owned()))
}

async fn refuse(session: &mut Session, status: u16, code: &str, message: &str) -> pingora::Result<bool> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    pages::respond(session, status, "application/json", body).await?;
    Ok(true)
}

impl Gateway {
    /// A gateway to `slicer` and the hosts `routes` names. App URLs it reports are under
    /// `domain` on the public listener `public`, or over https on the TLS listener and under
    /// the domain `tls` names.
    pub fn new(
        routes: Arc<Routes>,
        slicer: SocketAddr,
        domain: &str,
        public: SocketAddr,
        tls: Option<(SocketAddr, &str)>,
        anonymous_runs_per_minute_max: u32,
    ) -> Self {
        assert!(anonymous_runs_per_minute_max > 0);
        // Apps' URLs name the TLS listener (`tls`: its address and a domain it has a
        // certificate for) when there is one: that is where a user should go.
        let (url_scheme, domain, port, default_port) = match tls {
            Some((listen, tls_domain)) => ("https", tls_domain, listen.port(), 443),
            None => ("http", domain, public.port(), 80),
        };
        let url_port_suffix = if port == default_port { String::new() } else { format!(":{port}") };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(AUTHORIZE_TIMEOUT_MS))
            .build()
            .expect("an HTTP client with a timeout");
        Self {
            routes,
            slicer,
            http,
            anonymous_runs: Rate::new(Duration::from_secs(60)),
            anonymous_runs_per_minute_max,
            url_scheme,
            url_domain: domain.to_owned(),
            url_port_suffix,
        }
    }

    /// Checks and routes an API call; `Ok(true)` when it was answered here (refused, or whoami).
    pub async fn admit(&self, session: &mut Session, ctx: &mut ApiCtx, listener: Listener) -> pingora::Result<bool> {
        let request = session.req_header();
        let (method, path, query) = (request.method.clone(), request.uri.path().to_owned(), request.uri.query());
        let query = query.map(str::to_owned);
        let Some(call) = classify(&method, &path, query.as_deref()) else {
            return refuse(session, 404, "not_found", "no such API call").await;
        };
        if listener == Listener::Public && call.access == Access::Admin {
            return refuse(session, 404, "not_found", "no such API call on this address").await;
        }
        if let Some(app) = call.app {
            if let Err(error) = steady_proto::name::validate(app) {
                return refuse(session, 400, "bad_name", &error.to_string()).await;
            }
        }
        let Ok(token) = bearer(session.req_header()) else {
            return refuse(session, 401, "bad_token", "the Authorization header must be `Bearer <token>`").await;
        };
        if token.is_none() && call.access == Access::Run {
            let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
            if !self.admit_anonymous_run(client) {
                let message = "too many anonymous runs from this address; wait a minute or sign in (`steady login`)";
                let body = serde_json::json!({ "code": "anonymous_limit", "message": message }).to_string();
                pages::respond_with(session, 429, "application/json", &[("retry-after", "60")], body).await?;
                return Ok(true);
            }
        }
        let ask = Authorize { token, access: call.access, app: call.app.map(str::to_owned), ttl_s: call.ttl_s };
        let principal = match self.authorize(&ask).await {
            Ok(principal) => principal,
            Err((status, body)) => {
                pages::respond(session, status, "application/json", body).await?;
                return Ok(true);
            }
        };
        if listener == Listener::Public && principal.role == Role::Admin {
            let message = "admin tokens are only accepted on the private API address";
            return refuse(session, 403, "admin_only_private", message).await;
        }
        self.route(session, ctx, call, principal).await
    }

    /// Picks the upstream of an admitted call (or answers whoami).
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut ApiCtx,
        call: Call<'_>,
        principal: Principal,
    ) -> pingora::Result<bool> {
        match call.target {
            Target::Whoami => {
                let body = serde_json::json!({
                    "owner": principal.owner, "role": principal.role, "token_id": principal.token_id,
                });
                pages::respond(session, 200, "application/json", body.to_string()).await?;
                return Ok(true);
            }
            Target::Slicer => ctx.upstream = Some(self.slicer),
            Target::Host => {
                let app = call.app.expect("per-app calls name their app");
                let Some(host) = self.routes.current().api_host(app) else {
                    return refuse(session, 503, "no_hosts", "no host is registered to run apps yet").await;
                };
                ctx.upstream = Some(host.api);
                ctx.app = Some(app.to_owned());
            }
        }
        ctx.principal = Some(principal);
        Ok(false)
    }

    fn admit_anonymous_run(&self, client: Option<IpAddr>) -> bool {
        let Some(client) = client else { return true };
        self.anonymous_runs.observe(&client, 1) <= self.anonymous_runs_per_minute_max as isize
    }

    /// The slicer's decision: the principal, or the status and body to answer with.
    async fn authorize(&self, ask: &Authorize) -> Result<Principal, (u16, String)> {
        let url = format!("http://{}/v1/auth/authorize", self.slicer);
        let unavailable = |error: &dyn std::fmt::Display| {
            tracing::warn!(%error, "authorization failed: the slicer did not answer");
            let message = "the platform cannot check tokens right now (its slicer is unreachable); try again";
            (503, serde_json::json!({ "code": "slicer_unavailable", "message": message }).to_string())
        };
        let response = self.http.post(url).json(ask).send().await.map_err(|e| unavailable(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| unavailable(&e))?;
        if status != 200 {
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        serde_json::from_slice(&body).map_err(|e| unavailable(&e))
    }

    /// The upstream an admitted call goes to.
    pub fn upstream(&self, ctx: &ApiCtx) -> pingora::Result<SocketAddr> {
        ctx.upstream.ok_or_else(|| pingora::Error::new_str("no upstream chosen"))
    }

    /// Strips what a client must not send on, and says who is calling (`proto`: the scheme the
    /// call came in with).
    pub fn upstream_request(
        &self,
        session: &Session,
        request: &mut RequestHeader,
        ctx: &ApiCtx,
        proto: &str,
    ) -> pingora::Result<()> {
        upstream::strip_internal_headers(request);
        upstream::strip_hop_by_hop(request);
        request.remove_header("authorization");
        if let Some(principal) = &ctx.principal {
            request.insert_header(HEADER_OWNER, principal.owner.as_str())?;
            request.insert_header(HEADER_ROLE, principal.role.as_str())?;
        }
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        upstream::set_forwarded(request, client, proto)
    }

    /// A deploy answer names the table version that includes the app; it is held until this LB
    /// has that table, so the URL the CLI prints works at once. Every per-app answer carries
    /// the app's URL, and an anonymous run's answer its new token.
    pub async fn response(&self, response: &mut ResponseHeader, ctx: &ApiCtx) -> pingora::Result<()> {
        let wanted =
            response.headers.get(HEADER_TABLE_VERSION).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if let Some(version) = wanted {
            if !self.routes.wait_for(version, Duration::from_millis(DEPLOY_TABLE_WAIT_MS)).await {
                tracing::warn!(version, "deploy answered before this LB saw its table");
            }
        }
        if let Some(app) = &ctx.app {
            let url = format!("{}://{app}.{}{}/", self.url_scheme, self.url_domain, self.url_port_suffix);
            response.insert_header(HEADER_URL, url)?;
        }
        if let Some(token) = ctx.principal.as_ref().and_then(|p| p.new_token.as_deref()) {
            response.insert_header(HEADER_NEW_TOKEN, token)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class<'a>(method: Method, path: &'a str, query: Option<&str>) -> Option<(Access, Option<&'a str>, Target)> {
        classify(&method, path, query).map(|c| (c.access, c.app, c.target))
    }

    #[test]
    fn calls_are_classified_by_method_and_path() {
        use Access::*;
        assert_eq!(class(Method::GET, "/v1/apps", None), Some((Account, None, Target::Slicer)));
        assert_eq!(class(Method::GET, "/v1/whoami", None), Some((Account, None, Target::Whoami)));
        assert_eq!(class(Method::POST, "/v1/tokens", None), Some((Account, None, Target::Slicer)));
        assert_eq!(class(Method::DELETE, "/v1/tokens/tok_1", None), Some((Account, None, Target::Slicer)));
        assert_eq!(class(Method::GET, "/v1/hosts", None), Some((Admin, None, Target::Slicer)));
        assert_eq!(class(Method::POST, "/v1/hosts/h1/drain", None), Some((Admin, None, Target::Slicer)));
        assert_eq!(class(Method::GET, "/v1/apps/a/logs", None), Some((Read, Some("a"), Target::Host)));
        assert_eq!(class(Method::GET, "/v1/apps/a", None), Some((Read, Some("a"), Target::Host)));
        assert_eq!(class(Method::DELETE, "/v1/apps/a", None), Some((Write, Some("a"), Target::Host)));
        assert_eq!(class(Method::POST, "/v1/apps/a/rollback", None), Some((Write, Some("a"), Target::Host)));
        assert_eq!(class(Method::POST, "/v1/apps/a/deploy", None), Some((Deploy, Some("a"), Target::Host)));
        assert_eq!(class(Method::POST, "/v1/apps/a/deploy", Some("ttl_s=60")), Some((Run, Some("a"), Target::Host)));
        assert_eq!(class(Method::POST, "/v1/auth/authorize", None), None);
        assert_eq!(class(Method::GET, "/v1/apps/", None), None);
        assert_eq!(classify(&Method::POST, "/v1/apps/a/deploy", Some("x=1&ttl_s=90")).unwrap().ttl_s, Some(90));
    }

    #[test]
    fn bearer_tokens_are_read_and_bad_headers_refused() {
        let mut request = RequestHeader::build("GET", b"/v1/apps", None).unwrap();
        assert_eq!(bearer(&request), Ok(None));
        request.insert_header("authorization", "Bearer stdy_abc").unwrap();
        assert_eq!(bearer(&request), Ok(Some("stdy_abc".into())));
        request.insert_header("authorization", "Basic dXNlcg==").unwrap();
        assert_eq!(bearer(&request), Err(()));
    }
}
