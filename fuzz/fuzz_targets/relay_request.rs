//! Any bytes as a client's request header: what a lane takes as its own kind of request is a
//! bodiless GET or HEAD in origin form, and the header it writes on to the next hop parses
//! back to the same request line and the client's headers in order, less exactly the
//! connection's fields — so nothing a client sends can add a header or a request.

#![no_main]

use libfuzzer_sys::fuzz_target;
use steady_relay::head::{bodiless, is_hop_by_hop, write_request};

/// Headers read in one request here: more than the lanes read (64).
const HEADERS_MAX: usize = 100;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(data) else { return };
    let Some(lane) = bodiless(&request) else { return };
    assert!(matches!(lane.method, "GET" | "HEAD") && lane.target.starts_with('/'));
    let headers = request.headers;
    for header in headers.iter() {
        let name = header.name.to_ascii_lowercase();
        assert!(!["transfer-encoding", "upgrade", "expect"].contains(&name.as_str()), "{name} in a lane request");
        assert!(name != "content-length" || header.value == b"0", "a body in a lane request");
    }
    let kept = |h: &httparse::Header| !is_hop_by_hop(h.name, headers, lane.has_connection);
    let mut out = Vec::new();
    write_request(&mut out, lane.method, lane.target, headers, kept);
    out.extend_from_slice(b"\r\n");

    let mut written = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut next_hop = httparse::Request::new(&mut written);
    assert_eq!(next_hop.parse(&out), Ok(httparse::Status::Complete(out.len())), "one whole header");
    assert_eq!((next_hop.method, next_hop.path, next_hop.version), (Some(lane.method), Some(lane.target), Some(1)));
    let expected: Vec<_> = headers.iter().filter(|h| kept(h)).map(|h| (h.name, h.value)).collect();
    let seen: Vec<_> = next_hop.headers.iter().map(|h| (h.name, h.value)).collect();
    assert_eq!(seen, expected);
    assert!(!seen.iter().any(|(name, _)| name.eq_ignore_ascii_case("connection")));
});
