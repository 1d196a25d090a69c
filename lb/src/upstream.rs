//! How the LB talks to hosts and the slicer: peers and the headers it sets on the way in.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use steady_proto::wire::INTERNAL_HEADER_PREFIX;

use crate::config::UPSTREAM_CONNECT_TIMEOUT_MS;

/// A plain-HTTP peer at a socket address (no DNS on the hot path). `read_timeout_ms` bounds
/// each wait for the upstream (headers, or the next piece of a streamed body).
pub fn peer(addr: SocketAddr, read_timeout_ms: Option<u64>) -> Box<HttpPeer> {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS));
    peer.options.read_timeout = read_timeout_ms.map(Duration::from_millis);
    Box::new(peer)
}

/// Concurrent requests on one h2c connection to a host; more open another connection.
pub const H2C_STREAMS_PER_CONNECTION_MAX: usize = 128;

/// [`peer`] speaking HTTP/2 with prior knowledge (h2c): a host daemon's ingress accepts both.
pub fn h2c_peer(addr: SocketAddr, read_timeout_ms: Option<u64>) -> Box<HttpPeer> {
    let mut peer = peer(addr, read_timeout_ms);
    peer.options.set_http_version(2, 2);
    peer.options.max_h2_streams = H2C_STREAMS_PER_CONNECTION_MAX;
    peer
}

/// Removes every `x-steady-*` header a client sent: only the LB may set them.
pub fn strip_internal_headers(request: &mut RequestHeader) {
    let internal: Vec<_> =
        request.headers.keys().filter(|name| name.as_str().starts_with(INTERNAL_HEADER_PREFIX)).cloned().collect();
    for name in internal {
        request.remove_header(&name);
    }
}

// Hop-by-hop headers of the client's connection that never go on (RFC 9110 §7.6.1): the
// lanes' list. `Connection` and `Upgrade` stay: pingora and the hosts need them for WebSockets.
use steady_relay::head::HOP_BY_HOP;

/// Removes hop-by-hop headers, and the headers the client's `Connection` names (except the
/// connection options `close`, `keep-alive` and `upgrade`).
pub fn strip_hop_by_hop(request: &mut RequestHeader) {
    // Most requests carry none of them: one pass over the names is cheaper than a removal
    // (two map lookups) per listed name, on every proxied request.
    let any = request.headers.keys().any(|name| name == "connection" || HOP_BY_HOP.contains(&name.as_str()));
    if !any {
        return;
    }
    let named: Vec<String> = request
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty() && !matches!(name.as_str(), "close" | "keep-alive" | "upgrade"))
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        request.remove_header(name);
    }
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` for the client this LB saw and the
/// scheme it came in on (`http` or `https`). The LB is the edge: whatever a client claimed in
/// these headers is replaced, not appended to. On every proxied request, so it builds the one
/// `Forwarded` value in a single buffer and reuses the Host value as it is.
pub fn set_forwarded(request: &mut RequestHeader, client: Option<SocketAddr>, proto: &str) -> pingora::Result<()> {
    use std::fmt::Write;
    assert!(matches!(proto, "http" | "https"), "a scheme the LB listens with");
    // A HeaderValue shares the parsed request's bytes: no copy.
    let host = request.headers.get("host").cloned();
    // `insert_header` replaces every value a client sent; a header the LB has no value for is
    // removed instead, so no claim of the client's goes on.
    if client.is_none() {
        request.remove_header("x-forwarded-for");
    }
    if host.is_none() {
        request.remove_header("x-forwarded-host");
    }
    // `for="[<39 bytes of IPv6>]";host="<253 + 6>";proto=https`: one allocation of this size.
    let mut forwarded = String::with_capacity(FORWARDED_BYTES_TYPICAL);
    if let Some(client) = client {
        let ip = client.ip();
        let mut ip_text = String::with_capacity(IP_TEXT_BYTES_MAX);
        let _ = write!(ip_text, "{ip}");
        forwarded.push_str(if ip.is_ipv6() { "for=\"[" } else { "for=" });
        forwarded.push_str(&ip_text);
        forwarded.push_str(if ip.is_ipv6() { "]\";" } else { ";" });
        request.insert_header("x-forwarded-for", ip_text)?;
    }
    if let Some(host) = host {
        // The LB's edge check let only host names with an optional port through.
        forwarded.push_str("host=\"");
        forwarded.push_str(host.to_str().unwrap_or_default());
        forwarded.push_str("\";");
        request.insert_header("x-forwarded-host", host)?;
    }
    forwarded.push_str("proto=");
    forwarded.push_str(proto);
    let proto_value = HeaderValue::from_static(if proto == "https" { "https" } else { "http" });
    request.insert_header("x-forwarded-proto", proto_value)?;
    request.insert_header("forwarded", forwarded)?;
    Ok(())
}

/// Longest text of an IP address (an IPv6 address with an embedded IPv4 one).
const IP_TEXT_BYTES_MAX: usize = 45;
/// Room for a `Forwarded` value with an IPv6 client and a longish host name.
const FORWARDED_BYTES_TYPICAL: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_say_what_this_lb_saw_and_nothing_a_client_claimed() {
        let mut request = RequestHeader::build("GET", b"/", None).expect("request");
        request.insert_header("host", "a.steady.page").expect("header");
        request.insert_header("x-forwarded-for", "6.6.6.6").expect("header");
        request.append_header("x-forwarded-for", "7.7.7.7").expect("header");
        request.insert_header("forwarded", "for=6.6.6.6").expect("header");
        request.append_header("forwarded", "for=7.7.7.7").expect("header");
        request.insert_header("connection", "keep-alive, x-secret").expect("header");
        request.insert_header("x-secret", "1").expect("header");
        request.insert_header("proxy-authorization", "Basic eA==").expect("header");
        strip_hop_by_hop(&mut request);
        set_forwarded(&mut request, Some("10.1.2.3:5555".parse().expect("address")), "http").expect("headers");
        let header = |name: &str| request.headers.get(name).map(|v| v.to_str().expect("text").to_owned());
        assert_eq!(header("x-forwarded-for").as_deref(), Some("10.1.2.3"));
        assert_eq!(header("x-forwarded-host").as_deref(), Some("a.steady.page"));
        assert_eq!(header("forwarded").as_deref(), Some("for=10.1.2.3;host=\"a.steady.page\";proto=http"));
        assert_eq!(header("x-secret"), None);
        assert_eq!(header("proxy-authorization"), None);
        for name in ["x-forwarded-for", "forwarded"] {
            assert_eq!(request.headers.get_all(name).iter().count(), 1, "every claimed {name} value is replaced");
        }
    }

    #[test]
    fn without_a_client_address_no_claimed_one_goes_on() {
        let mut request = RequestHeader::build("GET", b"/", None).expect("request");
        request.insert_header("x-forwarded-for", "6.6.6.6").expect("header");
        request.insert_header("x-forwarded-host", "evil.example").expect("header");
        set_forwarded(&mut request, None, "https").expect("headers");
        assert!(request.headers.get("x-forwarded-for").is_none());
        assert!(request.headers.get("x-forwarded-host").is_none(), "no Host, so no forwarded host");
        assert_eq!(request.headers.get("forwarded").and_then(|v| v.to_str().ok()), Some("proto=https"));
    }
}
