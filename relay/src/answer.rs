//! The answer side of a lane: the upstream's response header, rewritten for the client, and
//! where its body ends, so that the body passes through as it comes and the upstream
//! connection goes back to the pool only when the answer ended where its framing said.

use thiserror::Error;

/// Headers read in one upstream answer; more is a broken upstream (502).
pub const ANSWER_HEADERS_MAX: usize = 128;

/// Bytes of one chunk-size line or trailer line in a chunked body; past it the answer is
/// broken off (an upstream sends a handful of hex digits).
const CHUNK_LINE_BYTES_MAX: usize = 4096;

/// Bytes of a chunked body's trailer section.
const TRAILER_BYTES_MAX: usize = 16 * 1024;

/// Headers that describe the upstream's connection, not the answer; the client gets its own.
const HOP_BY_HOP: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "upgrade", "te"];

/// Why an upstream's answer cannot be passed on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AnswerError {
    /// The header does not parse as HTTP/1.x, or says something the lane refuses.
    #[error("upstream answer is malformed: {0}")]
    Malformed(&'static str),
    /// The chunked body's framing is broken.
    #[error("upstream's chunked body is malformed: {0}")]
    Chunked(&'static str),
}

/// Where an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked: ends with the zero-size chunk and its trailer.
    Chunked,
    /// Neither: the body ends when the upstream closes (the client connection closes after it).
    UntilClose,
}

/// An upstream answer's header, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Not complete yet.
    Partial,
    /// An informational (1xx) answer of this many bytes: skipped, the real one follows.
    Informational(usize),
    /// The real answer.
    Final(FinalHead),
}

/// The real answer's header: its status, its size and where its body ends.
#[derive(Debug, PartialEq, Eq)]
pub struct FinalHead {
    pub status: u16,
    /// Bytes of the header in the upstream's bytes, blank line included.
    pub header_bytes: usize,
    pub framing: Framing,
    /// The upstream may take another request on this connection afterwards.
    pub upstream_keeps: bool,
    /// The client connection closes after this answer.
    pub client_closes: bool,
}

/// Parses the answer header at the start of `bytes` (to a `HEAD` request when `head`) and, for
/// the real answer, writes the client's header into `out` (cleared first): the upstream's status
/// and headers as HTTP/1.1 without its hop-by-hop ones, plus `connection: close` when the
/// client's connection ends with it (`close`, or a body that only the upstream's close ends).
pub fn parse_head(bytes: &[u8], head: bool, close: bool, out: &mut Vec<u8>) -> Result<Head, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; ANSWER_HEADERS_MAX];
    let mut answer = httparse::Response::new(&mut headers);
    let header_bytes = match answer.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(_) => return Err(AnswerError::Malformed("not an HTTP/1.x answer")),
    };
    let (Some(status), Some(version)) = (answer.code, answer.version) else {
        return Err(AnswerError::Malformed("no status"));
    };
    if status < 100 {
        // Three digits, but no status (RFC 9110 §15): a host that sends one is broken.
        return Err(AnswerError::Malformed("a status under 100"));
    }
    if status == 101 {
        return Err(AnswerError::Malformed("101 to a request without an upgrade"));
    }
    if (100..200).contains(&status) {
        return Ok(Head::Informational(header_bytes));
    }
    let framing = framing(answer.headers, status, head)?;
    let connection = |h: &&httparse::Header| h.name.eq_ignore_ascii_case("connection");
    let names = |token: &[u8]| answer.headers.iter().filter(connection).any(|h| has_token(h.value, token));
    let has_connection = answer.headers.iter().any(|h| connection(&h));
    let upstream_closes = has_connection && names(b"close");
    let upstream_keeps = version == 1 && !upstream_closes && framing != Framing::UntilClose;
    let client_closes = close || framing == Framing::UntilClose;
    out.clear();
    let reason = answer.reason.unwrap_or_default();
    for part in [b"HTTP/1.1 ", status_digits(status).as_slice(), b" ", reason.as_bytes(), b"\r\n"] {
        out.extend_from_slice(part);
    }
    for header in answer.headers.iter() {
        let named_by_connection = has_connection && names(header.name.as_bytes());
        if HOP_BY_HOP.iter().any(|n| header.name.eq_ignore_ascii_case(n)) || named_by_connection {
            continue;
        }
        for part in [header.name.as_bytes(), b": ", header.value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    if client_closes {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Head::Final(FinalHead { status, header_bytes, framing, upstream_keeps, client_closes }))
}

/// Whether the comma-separated header `value` lists `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A status code's three digits.
fn status_digits(status: u16) -> [u8; 3] {
    assert!((100..1000).contains(&status), "httparse reads three-digit statuses");
    [b'0' + (status / 100) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]
}

/// Where the body of an answer with `headers` and `status` (to a `HEAD` request when `head`)
/// ends (RFC 9112 §6.3).
fn framing(headers: &[httparse::Header], status: u16, head: bool) -> Result<Framing, AnswerError> {
    if head || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding decides; a later header's last coding is the last of all.
            let last = header.value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = content_length(header.value).ok_or(AnswerError::Malformed("Content-Length is not a number"))?;
            if length.is_some_and(|known| known != value) {
                return Err(AnswerError::Malformed("conflicting Content-Length headers"));
            }
            length = Some(value);
        }
    }
    match (chunked, length) {
        // Both would let the client and the LB disagree on where the answer ends.
        (Some(_), Some(_)) => Err(AnswerError::Malformed("both Content-Length and Transfer-Encoding")),
        (Some(true), None) => Ok(Framing::Chunked),
        (Some(false), None) | (None, None) => Ok(Framing::UntilClose),
        (None, Some(length)) => Ok(Framing::Length(length)),
    }
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6). Rust's integer parser also takes a
/// leading `+`, which a client reading the same header may refuse or read otherwise, so the
/// digits are checked first. (httparse leaves no CR or LF in a value, so `trim_ascii` trims
/// spaces and tabs only.)
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Follows a chunked body as it passes through, to find where it ends.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current size or trailer line so far.
    line_bytes: usize,
    /// Bytes of the trailer section so far.
    trailer_bytes: usize,
    /// Data bytes so far (the body without its framing).
    data_bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, and whether an extension (`;...`) started.
    #[default]
    SizeStart,
    Size {
        size: u64,
        extension: bool,
    },
    /// Data bytes of the current chunk still to come.
    Data(u64),
    /// The CR LF after a chunk's data.
    DataEnd {
        cr_seen: bool,
    },
    /// In the trailer section: whether the current line is empty so far.
    Trailer {
        line_empty: bool,
    },
    Done,
}

impl Chunked {
    /// Takes the next `bytes` of the body; returns how many of them belong to it (all of them
    /// unless it ended inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, AnswerError> {
        let mut at = 0;
        while at < bytes.len() && self.state != ChunkState::Done {
            if let ChunkState::Data(left) = self.state {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                self.data_bytes += take;
                self.state =
                    if take == left { ChunkState::DataEnd { cr_seen: false } } else { ChunkState::Data(left - take) };
                continue;
            }
            self.step(bytes[at])?;
            at += 1;
        }
        Ok(at)
    }

    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Data bytes so far, without the chunks' framing.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Takes one framing byte.
    fn step(&mut self, byte: u8) -> Result<(), AnswerError> {
        self.line_bytes += 1;
        if self.line_bytes > CHUNK_LINE_BYTES_MAX {
            return Err(AnswerError::Chunked("line too long"));
        }
        self.state = match (self.state, byte) {
            (ChunkState::SizeStart, _) => match hex(byte) {
                Some(digit) => ChunkState::Size { size: digit, extension: false },
                None => return Err(AnswerError::Chunked("no chunk size")),
            },
            (ChunkState::Size { size, extension: false }, _) if hex(byte).is_some() => {
                let size = size.checked_mul(16).and_then(|s| s.checked_add(hex(byte).unwrap_or_default()));
                ChunkState::Size { size: size.ok_or(AnswerError::Chunked("chunk size overflows"))?, extension: false }
            }
            (ChunkState::Size { size, .. }, b'\n') => {
                self.line_bytes = 0;
                match size {
                    0 => ChunkState::Trailer { line_empty: true },
                    size => ChunkState::Data(size),
                }
            }
            (ChunkState::Size { size, .. }, b'\r' | b';' | b' ' | b'\t') => ChunkState::Size { size, extension: true },
            (ChunkState::Size { size, extension: true }, _) => ChunkState::Size { size, extension: true },
            (ChunkState::Size { .. }, _) => return Err(AnswerError::Chunked("bad chunk size")),
            (ChunkState::DataEnd { cr_seen: false }, b'\r') => ChunkState::DataEnd { cr_seen: true },
            (ChunkState::DataEnd { .. }, b'\n') => {
                self.line_bytes = 0;
                ChunkState::SizeStart
            }
            (ChunkState::DataEnd { .. }, _) => return Err(AnswerError::Chunked("no CR LF after chunk data")),
            (ChunkState::Trailer { line_empty }, b'\n') => {
                self.line_bytes = 0;
                if line_empty {
                    ChunkState::Done
                } else {
                    ChunkState::Trailer { line_empty: true }
                }
            }
            (ChunkState::Trailer { line_empty }, b'\r') => ChunkState::Trailer { line_empty },
            (ChunkState::Trailer { .. }, _) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > TRAILER_BYTES_MAX {
                    return Err(AnswerError::Chunked("trailer too large"));
                }
                ChunkState::Trailer { line_empty: false }
            }
            (ChunkState::Data(_) | ChunkState::Done, _) => unreachable!("data and the end take no framing bytes"),
        };
        Ok(())
    }
}

/// Follows an answer's body to its end.
#[derive(Debug)]
pub enum BodyEnd {
    /// Bytes of a known length still to come (of `total`).
    Left {
        left: u64,
        total: u64,
    },
    Chunked(Chunked),
    /// The upstream's close ends it; the count is the bytes so far.
    UntilClose(u64),
}

impl BodyEnd {
    /// Follows a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyEnd::Left { left: 0, total: 0 },
            Framing::Length(length) => BodyEnd::Left { left: length, total: length },
            Framing::Chunked => BodyEnd::Chunked(Chunked::default()),
            Framing::UntilClose => BodyEnd::UntilClose(0),
        }
    }

    /// How many of `bytes` (the next ones from the upstream) belong to the body.
    pub fn take(&mut self, bytes: &[u8]) -> Result<usize, AnswerError> {
        match self {
            BodyEnd::Left { left, .. } => {
                let taken = (*left).min(bytes.len() as u64);
                *left -= taken;
                Ok(taken as usize)
            }
            BodyEnd::Chunked(chunked) => chunked.feed(bytes),
            BodyEnd::UntilClose(so_far) => {
                *so_far += bytes.len() as u64;
                Ok(bytes.len())
            }
        }
    }

    /// Whether the body has ended (a body that the upstream's close ends never has).
    pub fn ended(&self) -> bool {
        match self {
            BodyEnd::Left { left, .. } => *left == 0,
            BodyEnd::Chunked(chunked) => chunked.done(),
            BodyEnd::UntilClose(_) => false,
        }
    }

    /// The body's data bytes so far, without chunked framing.
    pub fn data_bytes(&self) -> u64 {
        match self {
            BodyEnd::Left { left, total } => total - left,
            BodyEnd::Chunked(chunked) => chunked.data_bytes(),
            BodyEnd::UntilClose(so_far) => *so_far,
        }
    }
}

/// The value of a hex digit.
fn hex(byte: u8) -> Option<u64> {
    (byte as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_head(bytes: &[u8], head: bool, close: bool) -> (FinalHead, String) {
        let mut out = Vec::new();
        match parse_head(bytes, head, close, &mut out).expect("a valid answer") {
            Head::Final(parsed) => (parsed, String::from_utf8(out).expect("text")),
            other => panic!("expected a final answer, got {other:?}"),
        }
    }

    #[test]
    fn a_length_answer_passes_on_without_the_upstreams_connection_headers() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
            Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\r\nhello";
        let (head, out) = final_head(bytes, false, false);
        assert_eq!(head.framing, Framing::Length(5));
        assert_eq!(head.header_bytes, bytes.len() - 5);
        assert!(head.upstream_keeps && !head.client_closes);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n\r\n");
    }

    #[test]
    fn framing_follows_the_rules_of_http_1_1() {
        let framing = |bytes: &[u8], head: bool| final_head(bytes, head, false).0.framing;
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false), Framing::Chunked);
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false), Framing::UntilClose);
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n", false), Framing::UntilClose);
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true), Framing::Empty);
        assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false), Framing::Empty);
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", false),
            Framing::Length(3)
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: \t 042 \r\n\r\n", false), Framing::Length(42));
        let (until_close, out) = final_head(b"HTTP/1.0 200 OK\r\n\r\n", false, false);
        assert!(!until_close.upstream_keeps && until_close.client_closes);
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        let (closing, _) =
            final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false, false);
        assert!(!closing.upstream_keeps && !closing.client_closes);
    }

    #[test]
    fn ambiguous_or_broken_answers_are_refused() {
        let mut out = Vec::new();
        for bytes in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 042 Forty-two\r\nContent-Length: 0\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse_head(bytes, false, false, &mut out).is_err(), "{}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(
            parse_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, false, &mut out),
            Ok(Head::Informational(40))
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out), Ok(Head::Partial));
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailer_in_any_split() {
        let body = b"5;name=v\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut chunked = Chunked::default();
            let first = chunked.feed(&body[..split]).expect("valid framing");
            assert_eq!(first, split);
            let mut rest = body[split..].to_vec();
            rest.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let second = chunked.feed(&rest).expect("valid framing");
            assert_eq!(split + second, body.len(), "split at {split}");
            assert!(chunked.done());
            assert_eq!(chunked.data_bytes(), 21, "hello and sixteen bytes");
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_counts_what_passed() {
        let mut body = BodyEnd::new(Framing::Length(7));
        assert_eq!(body.take(b"hell").expect("taken"), 4);
        assert!(!body.ended());
        assert_eq!(body.take(b"o w!HTTP/1.1").expect("taken"), 3);
        assert!(body.ended());
        assert_eq!(body.data_bytes(), 7);
        let mut until_close = BodyEnd::new(Framing::UntilClose);
        assert_eq!(until_close.take(b"abc").expect("taken"), 3);
        assert!(!until_close.ended());
        assert_eq!(until_close.data_bytes(), 3);
        assert!(BodyEnd::new(Framing::Empty).ended());
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for body in [&b"x\r\n"[..], b"5\r\nhelloXX", b"fffffffffffffffffff\r\n", b"5 ; ext\r\nhello\r\n0\r\n\r\n"] {
            let mut chunked = Chunked::default();
            let result = chunked.feed(body);
            if body.starts_with(b"5 ;") {
                assert_eq!(result, Ok(body.len()), "whitespace before an extension is tolerated");
                assert!(chunked.done());
            } else {
                assert!(result.is_err(), "{}", String::from_utf8_lossy(body));
            }
        }
        let mut endless = Chunked::default();
        assert!(endless.feed(&[b'1'; CHUNK_LINE_BYTES_MAX + 1]).is_err(), "a size line has a bound");
    }
}
