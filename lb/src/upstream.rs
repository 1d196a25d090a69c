//! How the LB talks to hosts and the slicer: peers and the headers it sets on the way in.

use std::net::SocketAddr;
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use steady_proto::wire::INTERNAL_HEADER_PREFIX;

use crate::config::UPSTREAM_CONNECT_TIMEOUT_MS;

/// A plain-HTTP peer at a socket address (no DNS on the hot path).
pub fn peer(addr: SocketAddr) -> Box<HttpPeer> {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS));
    Box::new(peer)
}

/// Removes every `x-steady-*` header a client sent: only the LB may set them.
pub fn strip_internal_headers(request: &mut RequestHeader) {
    let internal: Vec<_> =
        request.headers.keys().filter(|name| name.as_str().starts_with(INTERNAL_HEADER_PREFIX)).cloned().collect();
    for name in internal {
        request.remove_header(&name);
    }
}

/// Sets `X-Forwarded-For` (appending the client) and `X-Forwarded-Proto`.
pub fn set_forwarded(request: &mut RequestHeader, client: Option<SocketAddr>) -> pingora::Result<()> {
    if let Some(client) = client {
        let ip = client.ip().to_string();
        let value = match request.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        request.insert_header("x-forwarded-for", value)?;
    }
    request.insert_header("x-forwarded-proto", "http")?;
    Ok(())
}
