//! The request side of the fast lane: which requests it serves, read straight from the bytes
//! the client sent, and the header it sends on to the host.
//!
//! The rules are the proxy's (`edge::check`, `PublicProxy::app_request`), applied to the
//! parsed bytes instead of pingora's header maps so that nothing is allocated per request.

use std::io::Write;
use std::net::SocketAddr;

use steady_proto::wire::{HEADER_APP, INTERNAL_HEADER_PREFIX};
use steady_relay::head;

use crate::edge::EdgeLimits;

/// Headers the lane parses in one request; a request with more goes to the proxy, which
/// applies the edge limit itself.
pub const LANE_HEADERS_MAX: usize = 64;

/// Headers the LB sets itself on the way to the host; a client's copies never go on.
const FORWARDING: [&str; 4] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"];

/// A request the lane may serve, borrowed from the bytes read.
#[derive(Debug)]
pub struct LaneRequest<'h, 'b> {
    /// `GET` or `HEAD`, as sent.
    pub method: &'b str,
    /// The origin-form request target (`/path?query`).
    pub target: &'b str,
    /// The `Host` header's value (a valid host name, maybe with a port; any case).
    pub host: &'b str,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// Bytes of the request header, up to and including its blank line.
    pub header_bytes: usize,
    headers: &'h [httparse::Header<'b>],
    /// Whether a `Connection` header may name headers to drop (most requests have none).
    has_connection: bool,
}

impl LaneRequest<'_, '_> {
    /// A `HEAD` request: its answer has no body whatever its headers say.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What the bytes read so far say about the next request.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// The header is not complete yet.
    Partial,
    /// A request the lane serves, if its app routes ([`crate::public::PublicProxy::lane_route`]).
    Serve(LaneRequest<'h, 'b>),
    /// Anything else (bodies, upgrades, HTTP/1.0, absolute targets, malformed or over a limit):
    /// the proxy decides it from the same bytes.
    HandOn,
}

/// Parses the request header at the start of `bytes` and says whether the lane serves it.
pub fn parse<'h, 'b>(
    bytes: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; LANE_HEADERS_MAX],
    limits: &EdgeLimits,
) -> Parsed<'h, 'b> {
    let mut request = httparse::Request::new(headers);
    let header_bytes = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if bytes.len() <= limits.header_bytes_max => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::HandOn,
    };
    let Some(head::Bodiless { method, target, close, has_connection }) = head::bodiless(&request) else {
        return Parsed::HandOn;
    };
    let headers: &'h [httparse::Header<'b>] = request.headers;
    let header_sum: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    let over_limits = target.len() > limits.uri_bytes_max
        || headers.len() > limits.header_count_max
        || header_sum > limits.header_bytes_max;
    if over_limits {
        return Parsed::HandOn;
    }
    let mut hosts = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).map(|h| h.value);
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) if steady_proto::name::valid_host(host) => host,
        _ => return Parsed::HandOn,
    };
    // valid_host admits ASCII only.
    let host = std::str::from_utf8(host).expect("a valid host is ASCII");
    Parsed::Serve(LaneRequest { method, target, host, close, header_bytes, headers, has_connection })
}

/// Whether the header `name` stays on the host's side of the LB: internal, hop-by-hop,
/// forwarding and `Connection`-named headers do not.
fn goes_on(name: &str, request: &LaneRequest) -> bool {
    !head::starts_with_ignore_case(name, INTERNAL_HEADER_PREFIX)
        && !FORWARDING.iter().any(|n| name.eq_ignore_ascii_case(n))
        && !head::is_hop_by_hop(name, request.headers, request.has_connection)
}

/// What the forwarding headers say about one client connection: written once per connection,
/// copied into each of its requests.
#[derive(Debug)]
pub struct Forwarding {
    /// `x-forwarded-for: <ip>\r\n`, or nothing without a client address.
    for_header: Vec<u8>,
    /// `for=<ip>;` (IPv6 quoted in brackets) for `Forwarded`, or nothing.
    for_param: Vec<u8>,
    /// `http` or `https`.
    proto: &'static str,
}

impl Forwarding {
    /// The forwarding facts of a connection from `client`, over TLS when `tls`.
    pub fn new(client: Option<SocketAddr>, tls: bool) -> Self {
        let (mut for_header, mut for_param) = (Vec::new(), Vec::new());
        // Writing into a Vec cannot fail.
        if let Some(ip) = client.map(|c| c.ip()) {
            let _ = write!(for_header, "x-forwarded-for: {ip}\r\n");
            let _ = match ip.is_ipv6() {
                true => write!(for_param, "for=\"[{ip}]\";"),
                false => write!(for_param, "for={ip};"),
            };
        }
        Self { for_header, for_param, proto: if tls { "https" } else { "http" } }
    }
}

/// Writes the header the host gets for `request` into `out` (cleared first): the client's
/// request line and headers as HTTP/1.1, without the ones that stop at the LB, with the app
/// named and the forwarding headers set for the connection — what
/// `PublicProxy::app_request` does to the proxy's requests.
pub fn write_host_request(out: &mut Vec<u8>, request: &LaneRequest, app: &str, forwarding: &Forwarding) {
    head::write_request(out, request.method, request.target, request.headers, |h| goes_on(h.name, request));
    let (host, proto) = (request.host.as_bytes(), forwarding.proto.as_bytes());
    let parts: [&[u8]; 17] = [
        HEADER_APP.as_bytes(),
        b": ",
        app.as_bytes(),
        b"\r\n",
        &forwarding.for_header,
        b"x-forwarded-host: ",
        host,
        b"\r\nx-forwarded-proto: ",
        proto,
        b"\r\nforwarded: ",
        &forwarding.for_param,
        b"host=\"",
        host,
        b"\";proto=",
        proto,
        b"\r\n",
        b"\r\n",
    ];
    parts.iter().for_each(|part| out.extend_from_slice(part));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(bytes: &[u8], check: impl FnOnce(&LaneRequest)) {
        let mut headers = [httparse::EMPTY_HEADER; LANE_HEADERS_MAX];
        match parse(bytes, &mut headers, &EdgeLimits::default()) {
            Parsed::Serve(request) => check(&request),
            other => panic!("expected a request the lane serves, got {other:?}"),
        }
    }

    fn decision(bytes: &[u8]) -> &'static str {
        let mut headers = [httparse::EMPTY_HEADER; LANE_HEADERS_MAX];
        match parse(bytes, &mut headers, &EdgeLimits::default()) {
            Parsed::Partial => "partial",
            Parsed::Serve(_) => "serve",
            Parsed::HandOn => "hand on",
        }
    }

    #[test]
    fn bodiless_gets_and_heads_are_served_and_everything_else_handed_on() {
        assert_eq!(decision(b"GET / HTTP/1.1\r\nHost: a.steady.page\r\n\r\n"), "serve");
        assert_eq!(decision(b"HEAD /x?y=1 HTTP/1.1\r\nHost: a.steady.page:8080\r\nContent-Length: 0\r\n\r\n"), "serve");
        assert_eq!(decision(b"GET / HTTP/1.1\r\nHost: a.steady.page\r\n"), "partial");
        for bytes in [
            &b"POST / HTTP/1.1\r\nHost: a.steady.page\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nContent-Length: 2\r\n\r\nhi",
            b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a.steady.page\r\n\r\n",
            b"GET http://a.steady.page/ HTTP/1.1\r\nHost: a.steady.page\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nHost: b.steady.page\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.steady.page@evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nX: a\r\n b\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert_eq!(decision(bytes), "hand on", "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn requests_over_the_edge_limits_are_handed_on() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a.steady.page\r\n\r\n", "a".repeat(9000));
        assert_eq!(decision(long_target.as_bytes()), "hand on");
        let many: String = (0..LANE_HEADERS_MAX).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a.steady.page\r\n{many}\r\n");
        assert_eq!(decision(many.as_bytes()), "hand on");
        // An endless header is handed on once it passes the limit (the proxy answers 431).
        let endless = format!("GET / HTTP/1.1\r\nHost: a.steady.page\r\nX: {}", "a".repeat(40 * 1024));
        assert_eq!(decision(endless.as_bytes()), "hand on");
    }

    #[test]
    fn the_host_gets_the_clients_headers_without_what_stops_at_the_lb() {
        let bytes =
            b"GET /p?q=1 HTTP/1.1\r\nHost: A.steady.page\r\nAccept: */*\r\nConnection: keep-alive, X-Secret\r\n\
            x-secret: 1\r\nProxy-Authorization: Basic eA==\r\nX-Steady-App: other\r\nX-Forwarded-For: 6.6.6.6\r\n\
            Forwarded: for=6.6.6.6\r\nTE: trailers\r\nCookie: c=1\r\n\r\n";
        serve(bytes, |request| {
            assert!(!request.close);
            assert_eq!(request.header_bytes, bytes.len());
            let mut out = Vec::new();
            let forwarding = Forwarding::new(Some("10.1.2.3:5555".parse().expect("address")), false);
            write_host_request(&mut out, request, "a", &forwarding);
            let expected = "GET /p?q=1 HTTP/1.1\r\nHost: A.steady.page\r\nAccept: */*\r\nCookie: c=1\r\n\
                x-steady-app: a\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-host: A.steady.page\r\n\
                x-forwarded-proto: http\r\nforwarded: for=10.1.2.3;host=\"A.steady.page\";proto=http\r\n\r\n";
            assert_eq!(String::from_utf8(out).expect("text"), expected);
        });
    }

    #[test]
    fn without_a_client_address_no_forwarded_for_goes_on() {
        serve(b"GET / HTTP/1.1\r\nHost: a.steady.page\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n", |request| {
            let mut out = Vec::new();
            write_host_request(&mut out, request, "a", &Forwarding::new(None, false));
            let text = String::from_utf8(out).expect("text");
            assert!(!text.contains("x-forwarded-for") && !text.contains("6.6.6.6"), "{text}");
            assert!(text.ends_with("forwarded: host=\"a.steady.page\";proto=http\r\n\r\n"), "{text}");
        });
    }

    #[test]
    fn forwarded_names_an_ipv6_client_in_brackets_and_tls_as_https() {
        serve(b"HEAD / HTTP/1.1\r\nhost: a.steady.page\r\nconnection: close\r\n\r\n", |request| {
            assert!(request.close && request.is_head());
            let mut out = Vec::new();
            write_host_request(
                &mut out,
                request,
                "a",
                &Forwarding::new(Some("[::1]:5555".parse().expect("address")), true),
            );
            let text = String::from_utf8(out).expect("text");
            assert!(text.starts_with("HEAD / HTTP/1.1\r\nhost: a.steady.page\r\nx-steady-app: a\r\n"), "{text}");
            assert!(text.contains("x-forwarded-for: ::1\r\n"), "{text}");
            assert!(text.contains("forwarded: for=\"[::1]\";host=\"a.steady.page\";proto=https\r\n"), "{text}");
            assert!(!text.to_ascii_lowercase().contains("connection"), "{text}");
        });
    }
}
