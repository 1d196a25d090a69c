//! Edge checks on the public listener: what a request must look like before anything about it
//! reaches a host. Pure (unit-tested here, fuzzed with the Host parsing), called from the public
//! proxy's `request_filter` after pingora parsed the header (pingora itself refuses malformed
//! request lines and headers over 1 MiB with 400).

use pingora::http::RequestHeader;

/// Default bound on the request target (path and query).
pub const URI_BYTES_MAX: usize = 8 * 1024;
/// Default bound on the sum of header names and values.
pub const HEADER_BYTES_MAX: usize = 32 * 1024;
/// Default bound on the number of headers.
pub const HEADER_COUNT_MAX: usize = 100;
/// Default bound on a request body at the edge (each host has its own, lower, per-app bound).
pub const BODY_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// The bounds a request must keep.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Request target (path and query) length.
    pub uri_bytes_max: usize,
    /// Sum of header names and values.
    pub header_bytes_max: usize,
    pub header_count_max: usize,
    /// Request body, declared or streamed.
    pub body_bytes_max: u64,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            uri_bytes_max: URI_BYTES_MAX,
            header_bytes_max: HEADER_BYTES_MAX,
            header_count_max: HEADER_COUNT_MAX,
            body_bytes_max: BODY_BYTES_MAX,
        }
    }
}

/// Why a request is refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: String) -> Result<(), Refusal> {
    Err(Refusal { status, code, message })
}

/// Checks `request` against `limits` and HTTP's framing rules.
pub fn check(request: &RequestHeader, limits: &EdgeLimits) -> Result<(), Refusal> {
    let uri_bytes = request.raw_path().len();
    if uri_bytes > limits.uri_bytes_max {
        return refuse(
            414,
            "uri_too_long",
            format!("request target is {uri_bytes} bytes; the limit is {}", limits.uri_bytes_max),
        );
    }
    let count = request.headers.len();
    let header_bytes: usize = request.headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if count > limits.header_count_max || header_bytes > limits.header_bytes_max {
        let message = format!(
            "{count} headers of {header_bytes} bytes; the limits are {} headers and {} bytes",
            limits.header_count_max, limits.header_bytes_max
        );
        return refuse(431, "headers_too_large", message);
    }
    let hosts = request.headers.get_all("host").iter().count();
    if hosts > 1 {
        return refuse(400, "bad_host", "more than one Host header".into());
    }
    match request.headers.get("host") {
        Some(host) if !steady_proto::name::valid_host(host.as_bytes()) => {
            return refuse(400, "bad_host", "the Host header is not a host name".into());
        }
        // HTTP/1.1 requires a Host (RFC 9112 §3.2); an absolute target may carry it instead.
        None if request.version == pingora::http::Version::HTTP_11 && request.uri.authority().is_none() => {
            return refuse(400, "bad_host", "an HTTP/1.1 request needs a Host header".into());
        }
        _ => {}
    }
    // HTTP/2's `:authority` and an absolute target's authority name the host instead of Host
    // (RFC 9113 §8.3.1, RFC 9112 §3.2.2): it is checked like a Host, and a Host beside it must
    // agree, or the route and what the app is told could name different apps.
    if let Some(authority) = request.uri.authority().map(|a| a.as_str()) {
        if !steady_proto::name::valid_host(authority.as_bytes()) {
            return refuse(400, "bad_host", "the request target's authority is not a host name".into());
        }
        if request.headers.get("host").is_some_and(|host| !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes())) {
            return refuse(400, "bad_host", "the Host header and the request target name different hosts".into());
        }
    }
    let lengths: Vec<&[u8]> = request.headers.get_all("content-length").iter().map(|v| v.as_bytes()).collect();
    if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
        return refuse(400, "bad_length", "conflicting Content-Length headers".into());
    }
    if !lengths.is_empty() && request.headers.contains_key("transfer-encoding") {
        // Two framings at once is how requests are smuggled past proxies (RFC 9112 §6.1).
        return refuse(400, "bad_length", "both Content-Length and Transfer-Encoding".into());
    }
    if let Some(length) = lengths.first() {
        let declared = std::str::from_utf8(length).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let Some(declared) = declared else {
            return refuse(400, "bad_length", "Content-Length is not a number".into());
        };
        if declared > limits.body_bytes_max {
            let message = format!("request body is {declared} bytes; the limit is {}", limits.body_bytes_max);
            return refuse(413, "body_too_large", message);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", path.as_bytes(), None).expect("request");
        // An absolute target, as pingora's parser leaves it.
        request.set_uri(path.parse().expect("target"));
        if !headers.iter().any(|(name, _)| *name == "host" || *name == "no-host") {
            request.append_header("host", "a.steady.page").expect("header");
        }
        for (name, value) in headers.iter().filter(|(name, _)| *name != "no-host") {
            request.append_header(name.to_string(), *value).expect("header");
        }
        request
    }

    fn status(request: &RequestHeader) -> u16 {
        check(request, &EdgeLimits::default()).map_or_else(|r| r.status, |()| 200)
    }

    #[test]
    fn each_limit_has_its_status() {
        assert_eq!(status(&request("/", &[("host", "a.steady.page")])), 200);
        assert_eq!(status(&request(&format!("/{}", "a".repeat(9000)), &[])), 414);
        let big = "v".repeat(33 * 1024);
        assert_eq!(status(&request("/", &[("x-big", &big)])), 431);
        let many: Vec<(String, &str)> = (0..101).map(|i| (format!("x-{i}"), "v")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(status(&request("/", &many)), 431);
        assert_eq!(status(&request("/", &[("content-length", "99999999999")])), 413);
        assert_eq!(status(&request("/", &[("content-length", "1"), ("content-length", "2")])), 400);
        assert_eq!(status(&request("/", &[("content-length", "x")])), 400);
        assert_eq!(status(&request("/", &[("content-length", "4"), ("transfer-encoding", "chunked")])), 400);
        assert_eq!(status(&request("/", &[("host", "a.steady.page"), ("host", "b.steady.page")])), 400);
        assert_eq!(status(&request("/", &[("no-host", "")])), 400);
    }

    #[test]
    fn an_authority_names_the_host_and_a_host_beside_it_must_agree() {
        assert_eq!(status(&request("http://a.steady.page/", &[("no-host", "")])), 200);
        assert_eq!(status(&request("http://a.steady.page:8080/", &[("host", "A.steady.page:8080")])), 200);
        assert_eq!(status(&request("http://a.steady.page/", &[("host", "b.steady.page")])), 400);
        assert_eq!(status(&request("http://user@a.steady.page/", &[("no-host", "")])), 400);
    }
}
