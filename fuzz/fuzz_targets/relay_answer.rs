//! Any bytes as a host's answer to a lane, taken in pieces of any size: parsing the header and
//! following the body never panic, the header the client gets is one whole HTTP/1.1 header
//! with the host's status and without its connection's fields, a `Content-Length` framing
//! rests on digits only, and the body's end never takes a byte past where it ends.

#![no_main]

use libfuzzer_sys::fuzz_target;
use steady_relay::answer::{parse_head, BodyEnd, Framing, Head, ANSWER_HEADERS_MAX};

/// Fields of the host's connection that never reach the client.
const HOP_BY_HOP: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "upgrade", "te"];

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the request (HEAD or not), whether the client closes, and the
    // size of the pieces the body arrives in.
    let Some((&choice, answer)) = data.split_first() else { return };
    let (head, close, piece_bytes) = (choice & 1 == 1, choice & 2 == 2, usize::from(choice >> 2) + 1);
    let mut out = Vec::new();
    let Ok(Head::Final(parsed)) = parse_head(answer, head, close, &mut out) else { return };
    assert!(parsed.header_bytes <= answer.len());

    let mut headers = [httparse::EMPTY_HEADER; ANSWER_HEADERS_MAX + 1];
    let mut client = httparse::Response::new(&mut headers);
    assert_eq!(client.parse(&out), Ok(httparse::Status::Complete(out.len())), "one whole header");
    assert_eq!((client.version, client.code), (Some(1), Some(parsed.status)));
    let connection = client.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection"));
    assert!(connection.clone().all(|h| h.value == b"close"), "only the LB's own connection field");
    assert_eq!(connection.count(), usize::from(parsed.client_closes));
    for name in &HOP_BY_HOP[1..] {
        assert!(!client.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name)), "{name} passed on");
    }
    if parsed.framing == Framing::UntilClose {
        assert!(parsed.client_closes && !parsed.upstream_keeps, "only a close ends such a body");
    }
    if let Framing::Length(length) = parsed.framing {
        let declared = client.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length"));
        for header in declared {
            let digits = header.value.trim_ascii();
            assert!(digits.iter().all(u8::is_ascii_digit), "{:?}", String::from_utf8_lossy(header.value));
            assert_eq!(std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()), Some(length));
        }
    }

    let mut body = BodyEnd::new(parsed.framing);
    let mut taken_bytes = 0usize;
    for piece in answer[parsed.header_bytes..].chunks(piece_bytes) {
        if body.ended() {
            break;
        }
        let Ok(taken) = body.take(piece) else { return };
        assert!(taken <= piece.len());
        taken_bytes += taken;
        assert!(taken == piece.len() || body.ended(), "a body stops short only where it ends");
    }
    assert!(body.data_bytes() <= taken_bytes as u64, "data is never more than the bytes taken");
});
