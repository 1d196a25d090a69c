//! Request headers from parsed bytes: the comma-separated tokens of a header value and the
//! request line and headers written on for an upstream, without the ones that stop here.

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never go on to the next hop, besides
/// `Connection` and the ones it names. `Upgrade` is not among them: a proxy that carries
/// WebSockets passes it on (the lanes hand every request with one to their full proxy).
pub const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer"];

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|token| token.trim_ascii()).filter(|token| !token.is_empty())
}

/// Whether `name` starts with `prefix`, in any case.
pub fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether `name` is `Connection`, a hop-by-hop header, or named by one of the request's
/// `Connection` headers (looked for only when `has_connection`: most requests have none).
pub fn is_hop_by_hop(name: &str, headers: &[httparse::Header], has_connection: bool) -> bool {
    if name.eq_ignore_ascii_case("connection") || HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n)) {
        return true;
    }
    has_connection
        && headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| tokens(h.value))
            .any(|token| token.eq_ignore_ascii_case(name.as_bytes()))
}

/// A bodiless `GET` or `HEAD` over HTTP/1.1 with an origin-form target: the only kind of
/// request the lanes serve themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bodiless<'b> {
    pub method: &'b str,
    /// The origin-form target (`/path?query`).
    pub target: &'b str,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// Whether a `Connection` header may name headers to drop (most requests have none).
    pub has_connection: bool,
}

impl Bodiless<'_> {
    /// A `HEAD` request: its answer has no body whatever its headers say.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// The parsed `request` as a [`Bodiless`] one, or `None` for anything a lane hands on:
/// another method or version, an absolute target, a body (`Content-Length` other than 0,
/// `Transfer-Encoding`), an `Upgrade` or an `Expect`.
pub fn bodiless<'b>(request: &httparse::Request<'_, 'b>) -> Option<Bodiless<'b>> {
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        return None;
    };
    if !matches!(method, "GET" | "HEAD") || !target.starts_with('/') {
        return None;
    }
    let (mut close, mut has_connection) = (false, false);
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            if header.value != b"0" {
                return None;
            }
        } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            has_connection = true;
            close |= tokens(header.value).any(|token| token.eq_ignore_ascii_case(b"close"));
        }
    }
    Some(Bodiless { method, target, close, has_connection })
}

/// Writes `method target HTTP/1.1` and the headers `keep` admits into `out` (cleared first),
/// without the blank line that ends the header: the caller adds its own headers, then it.
pub fn write_request<'b>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[httparse::Header<'b>],
    keep: impl Fn(&httparse::Header<'b>) -> bool,
) {
    out.clear();
    for part in [method.as_bytes(), b" ", target.as_bytes(), b" HTTP/1.1\r\n"] {
        out.extend_from_slice(part);
    }
    for header in headers.iter().filter(|h| keep(h)) {
        for part in [header.name.as_bytes(), b": ", header.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_the_headers_it_names_are_hop_by_hop() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut headers);
        let bytes = b"GET / HTTP/1.1\r\nConnection: keep-alive, , X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nA: b\r\n\r\n";
        request.parse(bytes).expect("parses");
        let headers = request.headers;
        for name in ["Connection", "x-hop", "TE", "Keep-Alive"] {
            assert!(is_hop_by_hop(name, headers, true), "{name}");
        }
        assert!(!is_hop_by_hop("A", headers, true));
        assert!(!is_hop_by_hop("X-Hop", headers, false), "named headers are looked for only when asked");
        let mut out = b"old".to_vec();
        write_request(&mut out, "GET", "/x", headers, |h| !is_hop_by_hop(h.name, headers, true));
        assert_eq!(String::from_utf8(out).expect("text"), "GET /x HTTP/1.1\r\nA: b\r\n");
    }

    fn parsed_bodiless(bytes: &[u8]) -> Option<(bool, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(bytes).expect("parses");
        bodiless(&request).map(|b| (b.close, b.has_connection))
    }

    #[test]
    fn only_bodiless_gets_and_heads_in_origin_form_over_http_1_1_qualify() {
        assert_eq!(parsed_bodiless(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Some((false, false)));
        assert_eq!(parsed_bodiless(b"HEAD /x HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"), Some((true, true)));
        for bytes in [
            &b"POST / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(parsed_bodiless(bytes), None, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn prefixes_match_in_any_case() {
        assert!(starts_with_ignore_case("X-Steady-App", "x-steady-"));
        assert!(!starts_with_ignore_case("x-stead", "x-steady-"));
    }
}
