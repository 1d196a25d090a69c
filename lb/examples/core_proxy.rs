//! experiment: pingora-core serial proxy
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

struct Core {
    peer: HttpPeer,
    connector: Connector,
}

impl Core {
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
    let listen = args.next().unwrap();
    let upstream: std::net::SocketAddr = args.next().unwrap().parse().unwrap();
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
