//! The floor under `steady-lb`: pingora proxying every request to one fixed upstream with no
//! filters of ours (no routing, limits, headers, metrics or header deadline), on the same
//! allocator and thread count. `steady-lb`'s cost per request minus this one is what steady's
//! own code adds; this one against nginx is what the engine costs (docs/notes.md, "Request
//! path speed").
//!
//! ```sh
//! cargo build --release -p steady-lb --example bare_proxy
//! target/release/examples/bare_proxy 127.0.0.1:9000 127.0.0.1:3000   # listen, upstream
//! ```

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Worker threads, as the proxies bench gives every proxy.
const THREADS: usize = 2;

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next().and_then(|a| a.parse().ok())) else {
        eprintln!("usage: bare_proxy <listen host:port> <upstream host:port>");
        std::process::exit(2);
    };
    let conf = ServerConf { threads: THREADS, upstream_keepalive_pool_size: 1024, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    proxy.threads = Some(THREADS);
    server.add_service(proxy);
    server.run_forever();
}
