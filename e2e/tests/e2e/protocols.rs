//! What a web app speaks, through both hops (LB → host daemon → app): WebSockets both ways,
//! server-sent events as they are sent, and large uploads streamed with bounded memory.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use steady_e2e::{eventually, write_app, Cluster};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const ECHO_APP: &str = r#"export default {
  fetch(request, env, ctx) {
    if (ctx.upgrade(request)) return;
    return new Response("websockets only", { status: 400 });
  },
  websocket: {
    open(ws) { ws.send("welcome"); },
    message(ws, message) { ws.send(`echo: ${message}`); },
  },
};
"#;

#[test]
fn a_websocket_carries_messages_both_ways_through_the_lb() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "echo", ECHO_APP);
    cluster.deploy(&app, "echo");
    assert_eq!(cluster.get("echo", "/").status, 400, "a plain request is the app's to refuse");
    assert_websocket_echoes(cluster.public);
    assert_eq!(cluster.get("echo", "/").status, 400, "the app serves on after the socket closed");
}

/// Opens a WebSocket to the echo app through `lb` and exchanges a few messages.
fn assert_websocket_echoes(lb: std::net::SocketAddr) {
    let mut request = format!("ws://{lb}/chat").into_client_request().expect("request");
    request.headers_mut().insert("host", "echo.localhost".parse().expect("header"));
    let stream = TcpStream::connect(lb).expect("connect to the LB");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let (mut socket, response) = tungstenite::client(request, stream).expect("WebSocket handshake");
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(socket.read().expect("first message"), Message::text("welcome"), "the app speaks first");
    for i in 0..3 {
        socket.send(Message::text(format!("hello {i}"))).expect("send");
        assert_eq!(socket.read().expect("echo"), Message::text(format!("echo: hello {i}")));
    }
    socket.close(None).expect("close");
}

/// Sends four events 400 ms apart.
pub const EVENTS_APP: &str = r#"export default {
  fetch() {
    let next = 0;
    const stream = new ReadableStream({
      async pull(controller) {
        if (next === 4) return controller.close();
        if (next > 0) await Bun.sleep(400);
        controller.enqueue(new TextEncoder().encode(`data: ${next++}\n\n`));
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  },
};
"#;

#[test]
fn server_sent_events_arrive_one_by_one_as_sent() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "events", EVENTS_APP);
    cluster.deploy(&app, "events");
    assert_events_arrive_one_by_one(cluster.public);
}

/// Reads the events app's stream through `lb` and checks its events came as sent.
fn assert_events_arrive_one_by_one(lb: std::net::SocketAddr) {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let mut response =
        http.get(format!("http://{lb}/")).header("host", "events.localhost").send().expect("the stream starts");
    assert_eq!(response.status().as_u16(), 200);
    let (mut text, mut arrivals) = (String::new(), Vec::new());
    let mut buffer = [0u8; 1024];
    loop {
        let read = response.read(&mut buffer).expect("read the stream");
        if read == 0 {
            break;
        }
        text.push_str(std::str::from_utf8(&buffer[..read]).expect("utf-8"));
        while arrivals.len() < text.matches("\n\n").count() {
            arrivals.push(Instant::now());
        }
    }
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    // Sent 400 ms apart: had a hop buffered the stream, they would all arrive at the end.
    let spread = arrivals[3].duration_since(arrivals[0]);
    assert!(spread >= Duration::from_millis(800), "events arrived together ({spread:?} apart)");
}

const COUNT_BYTES_APP: &str = r#"export default {
  async fetch(request) {
    let bytes = 0;
    for await (const chunk of request.body ?? []) bytes += chunk.length;
    return new Response(String(bytes));
  },
};
"#;

/// A body of `size_bytes` made as it is read, so the client holds none of it.
struct Generated {
    left_bytes: u64,
}

impl Read for Generated {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = buffer.len().min(usize::try_from(self.left_bytes).unwrap_or(usize::MAX));
        buffer[..count].fill(b'x');
        self.left_bytes -= count as u64;
        Ok(count)
    }
}

fn rss_bytes(pid: u32) -> u64 {
    steady_e2e::rss_bytes(pid).unwrap_or(0)
}

#[test]
fn a_100_mb_upload_streams_through_with_bounded_memory() {
    const SIZE_BYTES: u64 = 100 * 1024 * 1024;
    let cluster = Cluster::start_with(1, &["--request-body-max-bytes", "209715200"]);
    let app = write_app(cluster.dir.path(), "sink", COUNT_BYTES_APP);
    cluster.deploy(&app, "sink");
    let pids = [cluster.lb.pid(), cluster.hosts[0].daemon.pid()];
    let before: Vec<u64> = pids.iter().map(|p| rss_bytes(*p)).collect();
    let peak = std::sync::Mutex::new(before.clone());
    let done = std::sync::atomic::AtomicBool::new(false);
    let answer = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut peak = peak.lock().expect("peak");
                for (max, pid) in peak.iter_mut().zip(pids) {
                    *max = (*max).max(rss_bytes(pid));
                }
                drop(peak);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
        let body = reqwest::blocking::Body::sized(Generated { left_bytes: SIZE_BYTES }, SIZE_BYTES);
        let answer = http
            .post(format!("http://{}/upload", cluster.public))
            .header("host", "sink.localhost")
            .body(body)
            .send()
            .and_then(|r| Ok((r.status().as_u16(), r.text()?)));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        answer.expect("the upload is answered")
    });
    assert_eq!(answer, (200, SIZE_BYTES.to_string()), "the app saw every byte");
    let peak = peak.into_inner().expect("peak");
    for ((name, before), peak) in ["LB", "host daemon"].iter().zip(before).zip(peak) {
        let growth_mib = peak.saturating_sub(before) / (1024 * 1024);
        assert!(growth_mib < 32, "the {name} grew by {growth_mib} MiB for a 100 MiB upload");
    }
    eventually("the app to answer again", || (cluster.get("sink", "/").status == 200).then_some(()));
}

/// An LB speaking HTTP/2 to hosts (`--host-protocol h2c`) carries what HTTP/1.1 does: events
/// one by one, a request body to its last byte, headers both ways, and WebSockets (which
/// stay on HTTP/1.1 to the host).
#[test]
fn h2c_to_hosts_carries_events_uploads_and_websockets() {
    let mut cluster = Cluster::start(1);
    for (name, source) in [("events", EVENTS_APP), ("sink", COUNT_BYTES_APP), ("echo", ECHO_APP)] {
        let app = write_app(cluster.dir.path(), name, source);
        cluster.deploy(&app, name);
    }
    let index = cluster.add_lb_with(&["--host-protocol", "h2c"]);
    let lb = cluster.more_lbs[index].public;
    assert_events_arrive_one_by_one(lb);
    const SIZE_BYTES: u64 = 20 * 1024 * 1024;
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let body = reqwest::blocking::Body::sized(Generated { left_bytes: SIZE_BYTES }, SIZE_BYTES);
    let answer = http
        .post(format!("http://{lb}/upload?x=1"))
        .header("host", "sink.localhost")
        .body(body)
        .send()
        .and_then(|r| Ok((r.status().as_u16(), r.text()?)))
        .expect("the upload is answered");
    assert_eq!(answer, (200, SIZE_BYTES.to_string()), "the app saw every byte");
    assert_websocket_echoes(lb);
    let requests = cluster.steady(&["requests", "sink", "--json"]);
    assert!(String::from_utf8_lossy(&requests.stdout).contains("/upload"), "the host logged the request");
}

/// Answers with what it got: method, body and the connection's request count.
const MIRROR_APP: &str = r#"let served = 0;
export default {
  async fetch(request) {
    served++;
    return Response.json({ served, method: request.method, body: await request.text() });
  },
};
"#;

/// A cluster serving the mirror app, and a raw connection to its LB.
fn mirror_connection() -> (Cluster, TcpStream) {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "mirror", MIRROR_APP);
    cluster.deploy(&app, "mirror");
    let stream = TcpStream::connect(cluster.public).expect("connect to the LB");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    (cluster, stream)
}

/// The mirror app's JSON answer.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("the app's JSON")
}

/// Reads one response with a `Content-Length` from a keep-alive connection: status and body.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        assert!(bytes.len() < 64 * 1024, "a response header this long is not the LB's");
        stream.read_exact(&mut byte).expect("a response header");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Most requests to an app take the LB's fast lane; a request with a body, a malformed one or
/// one for a page goes through the full proxy. On one keep-alive connection they alternate,
/// and a body sent in the same packet as its header arrives whole.
#[test]
fn one_connection_carries_fast_and_full_proxy_requests_alike() {
    use std::io::Write;
    let (_cluster, mut stream) = mirror_connection();
    let body = "x".repeat(3000);
    let requests = [
        "GET / HTTP/1.1\r\nHost: mirror.localhost\r\n\r\n".to_owned(),
        format!("POST / HTTP/1.1\r\nHost: mirror.localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        "HEAD / HTTP/1.1\r\nHost: mirror.localhost\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: nothing-here.localhost\r\n\r\n".to_owned(),
        "GET /again HTTP/1.1\r\nHost: MIRROR.localhost\r\n\r\n".to_owned(),
    ];
    for (i, request) in requests.iter().enumerate() {
        // One write each: the header read takes the body with it.
        stream.write_all(request.as_bytes()).expect("send");
        let (status, text) = if request.starts_with("HEAD") {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).expect("a HEAD answer");
                head.push(byte[0]);
            }
            (String::from_utf8_lossy(&head).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), String::new())
        } else {
            read_response(&mut stream)
        };
        match i {
            0 => assert_eq!((status, json(&text)["method"].as_str()), (200, Some("GET")), "{text}"),
            1 => {
                assert_eq!(status, 200, "{text}");
                assert_eq!(json(&text)["body"].as_str().map(str::len), Some(body.len()), "the body arrived whole");
            }
            2 => assert_eq!(status, 200),
            3 => assert_eq!(status, 404, "the LB's own page for an unknown app"),
            _ => assert_eq!((status, json(&text)["served"].as_u64()), (200, Some(4)), "{text}"),
        }
    }
    // A malformed request on the same connection is answered and the connection closed.
    stream.write_all(b"GARBAGE\r\n\r\n").expect("send");
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
}

/// Requests sent back to back without waiting (pipelined) are answered in order, one answer
/// each, and a request that asks to close the connection gets the last answer before it
/// closes.
#[test]
fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
    use std::io::Write;
    let (_cluster, mut stream) = mirror_connection();
    let line = "GET /a HTTP/1.1\r\nHost: mirror.localhost\r\n\r\n\
                GET /b HTTP/1.1\r\nHost: mirror.localhost\r\n\r\n\
                GET /c HTTP/1.1\r\nHost: mirror.localhost\r\n\r\n";
    stream.write_all(line.as_bytes()).expect("send");
    let served: Vec<u64> = (0..3)
        .map(|_| {
            let (status, text) = read_response(&mut stream);
            assert_eq!(status, 200, "{text}");
            json(&text)["served"].as_u64().expect("a count")
        })
        .collect();
    assert_eq!(served, [1, 2, 3], "one answer per request, in order");
    let closing = "GET /d HTTP/1.1\r\nHost: mirror.localhost\r\nConnection: close\r\n\r\n\
                   GET /e HTTP/1.1\r\nHost: mirror.localhost\r\n\r\n";
    stream.write_all(closing.as_bytes()).expect("send");
    let mut rest = String::new();
    stream.read_to_string(&mut rest).expect("the LB closes after the answer");
    assert_eq!(rest.matches("HTTP/1.1 ").count(), 1, "nothing after a request that closes: {rest}");
    assert!(rest.to_ascii_lowercase().contains("connection: close"), "{rest}");
    assert_eq!(json(rest.split("\r\n\r\n").nth(1).expect("a body"))["served"].as_u64(), Some(4), "{rest}");
}

/// hostd's ingress serves what the LBs send it on one keep-alive connection: pipelined
/// requests in order, its own error answers (a `HEAD` one without a body) without closing,
/// then a request with a body and what follows it; the requests are in the app's log at once.
#[test]
fn the_ingress_serves_pipelined_requests_its_own_errors_and_bodies_on_one_connection() {
    use std::io::Write;
    let (cluster, _) = mirror_connection();
    let mut stream = TcpStream::connect(cluster.hosts[0].ingress).expect("connect to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let get =
        |path: &str, app: &str| format!("GET {path} HTTP/1.1\r\nHost: {app}.localhost\r\nx-steady-app: {app}\r\n\r\n");
    stream.write_all(format!("{}{}", get("/a", "mirror"), get("/b", "mirror")).as_bytes()).expect("send");
    for expected in [1, 2] {
        let (status, text) = read_response(&mut stream);
        assert_eq!((status, json(&text)["served"].as_u64()), (200, Some(expected)), "{text}");
    }
    stream.write_all(get("/", "nothing-here").as_bytes()).expect("send");
    let (status, text) = read_response(&mut stream);
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("unknown_app"), "{text}");
    let head = "HEAD / HTTP/1.1\r\nHost: x.localhost\r\nx-steady-app: nothing-here\r\n\r\n";
    stream.write_all(format!("{head}{}", get("/c", "mirror")).as_bytes()).expect("send");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("the HEAD answer");
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
    let (status, text) = read_response(&mut stream);
    assert_eq!((status, json(&text)["served"].as_u64()), (200, Some(3)), "no body after the HEAD answer: {text}");
    let post = "POST /d HTTP/1.1\r\nHost: mirror.localhost\r\nx-steady-app: mirror\r\nContent-Length: 5\r\n\r\nhello";
    stream.write_all(format!("{post}{}", get("/e", "mirror")).as_bytes()).expect("send");
    let (status, text) = read_response(&mut stream);
    assert_eq!((status, json(&text)["body"].as_str()), (200, Some("hello")), "{text}");
    let (status, text) = read_response(&mut stream);
    assert_eq!((status, json(&text)["served"].as_u64()), (200, Some(5)), "{text}");
    let requests = cluster.steady(&["requests", "mirror", "--json"]);
    let requests = String::from_utf8_lossy(&requests.stdout);
    for path in ["\"/a\"", "\"/b\"", "\"/c\"", "\"/d\"", "\"/e\""] {
        assert!(requests.contains(path), "{path} is in the request log: {requests}");
    }
}

/// hostd's ingress keeps at most `--ingress-connections-max` connections open: one more waits
/// unanswered until another closes, then it is served.
#[test]
fn the_ingress_keeps_at_most_its_connections_open_and_serves_the_next_when_one_closes() {
    use std::io::Write;
    let cluster = Cluster::start_with(1, &["--ingress-connections-max", "2"]);
    let ingress = cluster.hosts[0].ingress;
    let request = b"GET / HTTP/1.1\r\nHost: x.localhost\r\nx-steady-app: nothing-here\r\n\r\n";
    let ask = |stream: &mut TcpStream| {
        stream.write_all(request).expect("send");
        read_response(stream).0
    };
    let mut open: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(ingress).expect("connect to the ingress");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            assert_eq!(ask(&mut stream), 404, "answered by hostd itself");
            stream
        })
        .collect();
    // The kernel completes the handshake; hostd does not take the connection yet.
    let mut waiting = TcpStream::connect(ingress).expect("connect to the ingress");
    waiting.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    waiting.write_all(request).expect("send");
    let mut byte = [0u8; 1];
    let unanswered = waiting.read(&mut byte).expect_err("no answer past the bound");
    assert!(matches!(unanswered.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    drop(open.pop());
    waiting.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert_eq!(read_response(&mut waiting).0, 404, "served once a place is free");
    assert_eq!(ask(&mut open[0]), 404, "the first connection still serves");
}
