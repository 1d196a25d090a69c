//! The floor under the LB's fast lane: pingora's HTTP sessions and connection pool
//! (pingora-core, no proxy phases) forwarding every request to one fixed upstream in one
//! straight sequence — header out, header back, body back — with no routing, limits or headers
//! of ours. Against `bare_proxy` (the same upstream through pingora's proxy) it measures what
//! the proxy machinery costs; against `steady-lb` what steady's own work on the fast lane
//! costs (docs/notes.md, "Request path speed").
//!
//! ```sh
//! cargo build --release -p steady-lb --example core_proxy
//! target/release/examples/core_proxy 127.0.0.1:9000 127.0.0.1:3000   # listen, upstream
//! ```
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One upstream and the pool of connections to it.
struct Core {
    peer: HttpPeer,
    connector: Connector,
}

impl Core {
    /// Forwards the request just read and its answer; `None` when either side failed.
    async fn one(&self, session: &mut ServerSession) -> Option<()> {
        let req = Box::new(session.req_header().clone());
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await.ok()?;
        up.write_request_header(req).await.ok()?;
        while let Some(b) = session.read_request_body().await.ok()? {
            up.write_body(&b).await.ok()?;
        }
        up.finish_body().await.ok()?;
        up.read_response().await.ok()?;
        let resp = Box::new(up.resp_header()?.clone());
        session.write_response_header(resp).await.ok()?;
        while let Some(b) = up.read_body_bytes().await.ok()? {
            session.write_response_body(b, false).await.ok()?;
        }
        up.respect_keepalive();
        self.connector.release_http_session(up, &self.peer, None).await;
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for Core {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _s: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        self.one(&mut session).await?;
        let reusable = session.finish().await.ok()??;
        let (stream, _) = reusable.into_parts();
        Some(ReusedHttpStream::new(stream, None))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) =
        (args.next(), args.next().and_then(|a| a.parse::<std::net::SocketAddr>().ok()))
    else {
        eprintln!("usage: core_proxy <listen host:port> <upstream host:port>");
        std::process::exit(2);
    };
    let conf = ServerConf { threads: 2, upstream_keepalive_pool_size: 1024, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let app = Core { peer: HttpPeer::new(upstream, false, String::new()), connector: Connector::new(None) };
    let mut svc = pingora::services::listening::Service::new("core".into(), app);
    svc.add_tcp(&listen);
    svc.threads = Some(2);
    server.add_service(svc);
    server.run_forever();
}
