//! The LB's public listener against bad input, over raw sockets: each bad request gets its
//! status (or the connection closes), none reaches the app, and the LB serves others meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use steady_e2e::{write_app, Cluster};

/// Answers with the headers it got and how many requests it has served.
const HEADERS_APP: &str = r#"let served = 0;
export default {
  fetch(request) {
    served++;
    return Response.json({ served, headers: Object.fromEntries(request.headers) });
  },
};
"#;

/// Sends `bytes` on a fresh connection and reads until the LB closes it (bounded).
fn raw(lb: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(lb).expect("connect to the LB");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // The LB may answer and close before it read everything (a refused body): that is fine.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    while answer.len() < 1024 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn get(lb: SocketAddr, extra: &str) -> (u16, String) {
    let request = format!("GET / HTTP/1.1\r\nHost: headers.localhost\r\nConnection: close\r\n{extra}\r\n");
    raw(lb, request.as_bytes())
}

fn body_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or_default()).expect("the app's JSON")
}

#[test]
fn bad_requests_get_their_status_and_never_reach_the_app() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "headers", HEADERS_APP);
    cluster.deploy(&app, "headers");
    let lb = cluster.public;
    let (status, text) = get(lb, "");
    assert_eq!((status, body_json(&text)["served"].as_u64()), (200, Some(1)), "{text}");

    let big = "v".repeat(40 * 1024);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a 40 KiB header", format!("GET / HTTP/1.1\r\nHost: headers.localhost\r\nX-Big: {big}\r\n\r\n").into(), 431),
        (
            "a 10 KiB target",
            format!("GET /{} HTTP/1.1\r\nHost: headers.localhost\r\n\r\n", "a".repeat(10_240)).into(),
            414,
        ),
        (
            "a 10 GB body",
            b"POST / HTTP/1.1\r\nHost: headers.localhost\r\nContent-Length: 10000000000\r\n\r\nxx".to_vec(),
            413,
        ),
        ("a malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("a Host with a space", b"GET / HTTP/1.1\r\nHost: head ers.localhost\r\n\r\n".to_vec(), 400),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: headers.localhost\r\nHost: other.localhost\r\n\r\n".to_vec(),
            400,
        ),
        ("no Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n".to_vec(), 400),
        (
            "conflicting lengths",
            b"POST / HTTP/1.1\r\nHost: headers.localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            400,
        ),
        (
            "a folded header",
            b"GET / HTTP/1.1\r\nHost: headers.localhost\r\nX-A: 1\r\n Host: other.localhost\r\n\r\n".to_vec(),
            400,
        ),
        ("a NUL in a header", b"GET / HTTP/1.1\r\nHost: headers.localhost\r\nX-A: a\0b\r\n\r\n".to_vec(), 400),
    ];
    for (what, request, expected) in &cases {
        let started = Instant::now();
        let (status, text) = raw(lb, request);
        assert_eq!(status, *expected, "{what}: {}", text.lines().next().unwrap_or_default());
        assert!(started.elapsed() < Duration::from_secs(5), "{what} was answered only after {:?}", started.elapsed());
    }

    // Headers only the LB may set, and forwarding headers, are replaced whatever a client says.
    let spoof = "X-Steady-App: other\r\nX-Steady-Probe: 1\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n";
    let (status, text) = get(lb, spoof);
    assert_eq!(status, 200, "{text}");
    let seen = body_json(&text);
    assert_eq!(seen["served"], 2, "none of the bad requests reached the app");
    let headers = seen["headers"].as_object().expect("headers");
    assert!(headers.keys().all(|name| !name.starts_with("x-steady-")), "{headers:?}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], "headers.localhost");
    assert_eq!(headers["forwarded"], "for=127.0.0.1;host=\"headers.localhost\";proto=http");
}

#[test]
fn slow_clients_do_not_hold_up_others() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "headers", HEADERS_APP);
    cluster.deploy(&app, "headers");
    let lb = cluster.public;
    // 200 clients that send a header a byte at a time and never finish it.
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = TcpStream::connect(lb).expect("connect");
            stream.write_all(b"GET / HTTP/1.1\r\nHost: headers.localhost\r\nX-Slow: ").expect("partial header");
            stream
        })
        .collect();
    let mut served = 0;
    for round in 0..50 {
        for stream in &mut slow {
            let _ = stream.write_all(b"a");
        }
        let (status, text) = get(lb, "");
        assert_eq!(status, 200, "request {round} beside the slow clients: {text}");
        served += 1;
    }
    assert_eq!(served, 50);
    let (_, text) = get(lb, "");
    assert_eq!(body_json(&text)["served"], 51, "no slow client's request reached the app");
}

/// An app that answers after 1 s.
const SLOW_APP: &str = r#"export default { async fetch() { await Bun.sleep(1000); return new Response("slow"); } };"#;

fn statuses(lb: SocketAddr, app: &str, count: usize) -> Vec<(u16, Option<String>)> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                let http = &http;
                scope.spawn(move || {
                    let response = http.get(format!("http://{lb}/")).header("host", format!("{app}.localhost")).send();
                    let response = response.expect("an answer");
                    let retry =
                        response.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
                    (response.status().as_u16(), retry)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    })
}

#[test]
fn limits_answer_429_with_retry_after() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "slow", SLOW_APP);
    cluster.deploy(&app, "slow");
    let headers = write_app(cluster.dir.path(), "headers", HEADERS_APP);
    cluster.deploy(&headers, "headers");
    let index = cluster.add_lb_with(&["--app-in-flight-max", "2", "--client-requests-per-second-max", "40"]);
    let lb = cluster.more_lbs[index].public;

    // Six at once for an app allowed two in flight: two are served, the rest told to retry.
    let answers = statuses(lb, "slow", 6);
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(status, _)| *status == 429).collect();
    assert_eq!((served, limited.len()), (2, 4), "{answers:?}");
    assert!(limited.iter().all(|(_, retry)| retry.as_deref() == Some("1")), "{answers:?}");

    // A client sending 100 requests within a second gets 429 past its 40.
    let started = Instant::now();
    let quick: Vec<u16> = (0..100).map(|_| get(lb, "").0).collect();
    if started.elapsed() < Duration::from_millis(900) {
        let refused = quick.iter().filter(|s| **s == 429).count();
        assert!(refused >= 50, "only {refused} of 100 refused: {quick:?}");
    }
    assert!(quick.iter().all(|s| *s == 200 || *s == 429), "{quick:?}");
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", cluster.more_lbs[index].private))
        .and_then(|r| r.text())
        .expect("LB metrics");
    assert!(metrics.contains("steady_lb_requests_limited_total{limit=\"app_in_flight\"} 4"), "{metrics}");
}

/// An app whose `/hang` never answers.
const HANGING_APP: &str = r#"export default {
  fetch(request) {
    if (new URL(request.url).pathname === "/hang") return new Promise(() => {});
    return new Response("fine");
  },
};
"#;

#[test]
fn a_host_that_does_not_answer_in_time_is_a_504_and_the_api_is_not_on_the_public_port() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "hangs", HANGING_APP);
    cluster.deploy(&app, "hangs");
    let index = cluster.add_lb_with(&["--upstream-read-timeout-ms", "500"]);
    let lb = cluster.more_lbs[index].public;
    let request = |path: &str| {
        raw(lb, format!("GET {path} HTTP/1.1\r\nHost: hangs.localhost\r\nConnection: close\r\n\r\n").as_bytes())
    };
    let started = Instant::now();
    let (status, _) = request("/hang");
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(request("/").0, 200, "the app serves other requests");

    // The admin's view of the API lives on the private listener only: on the public one an
    // admin token is refused, and without a token nothing is listed.
    let admin = format!("Authorization: Bearer {}\r\n", cluster.admin_token);
    for host in ["localhost", "127.0.0.1"] {
        for auth in ["", admin.as_str()] {
            let request = format!("GET /v1/apps HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
            let (status, text) = raw(lb, request.as_bytes());
            assert!(!text.contains("\"hangs\""), "the public listener listed apps for Host {host}: {status}");
        }
    }
    let private = cluster.more_lbs[index].private;
    let request = |auth: &str| format!("GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    assert_eq!(raw(private, request("").as_bytes()).0, 401, "the API wants a token");
    let (status, text) = raw(private, request(&admin).as_bytes());
    assert_eq!(status, 200);
    assert!(text.contains("\"hangs\""), "{text}");
}

/// Trickles a request header a byte every 100 ms on a fresh connection until the LB closes it
/// (bounded: 20 s); returns how long the connection lived.
fn trickle_until_closed(lb: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(lb).expect("connect");
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: headers.localhost\r\nX-Slow: ").expect("partial header");
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut buffer = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(20) {
        if stream.write_all(b"a").is_err() {
            break;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => panic!("the LB answered a header it never got whole"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    started.elapsed()
}

#[test]
fn a_client_trickling_its_header_is_cut_off_at_the_header_deadline() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "headers", HEADERS_APP);
    cluster.deploy(&app, "headers");
    let index = cluster.add_lb_with(&["--header-read-timeout-ms", "2000"]);
    let lb = cluster.more_lbs[index].public;

    let (lived, served) = std::thread::scope(|scope| {
        let tricklers: Vec<_> = (0..8).map(|_| scope.spawn(move || trickle_until_closed(lb))).collect();
        // Others are served all along, on fresh connections.
        let mut served = 0;
        while tricklers.iter().any(|t| !t.is_finished()) && served < 10_000 {
            let (status, text) = get(lb, "");
            assert_eq!(status, 200, "a request beside the slow clients: {text}");
            served += 1;
        }
        let lived: Vec<Duration> = tricklers.into_iter().map(|t| t.join().expect("trickler")).collect();
        (lived, served)
    });
    eprintln!("header deadline 2 s: slow clients cut after {lived:?}; {served} other requests served meanwhile");
    for time in &lived {
        assert!(*time >= Duration::from_millis(1900), "cut before the deadline: {time:?}");
        assert!(*time < Duration::from_millis(4000), "cut long after the deadline: {time:?}");
    }
    assert!(served > 0);
    // A client that sends its header promptly still keeps its connection for several requests.
    let mut stream = TcpStream::connect(lb).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for _ in 0..3 {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: headers.localhost\r\n\r\n").expect("request");
        let mut buffer = [0u8; 4096];
        let read = stream.read(&mut buffer).expect("answer");
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buffer[..read]));
    }
}

/// `/wait` answers after a minute, unless its client hangs up first (then it logs so).
const WAITING_APP: &str = r#"export default {
  async fetch(request) {
    if (new URL(request.url).pathname === "/wait") {
      console.log("waiting");
      request.signal.addEventListener("abort", () => console.log("abandoned"));
      await Bun.sleep(60_000);
      return new Response("late");
    }
    return new Response("ok");
  },
};
"#;

#[test]
fn a_client_that_hangs_up_before_its_answer_lets_go_of_the_host_and_the_app() {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "waiting", WAITING_APP);
    cluster.deploy(&app, "waiting");
    assert_eq!(cluster.get("waiting", "/").status, 200);
    let lb = cluster.private.to_string();
    let in_flight = || crate::metrics::scrape(&lb, "steady_lb_requests_in_flight");

    let mut client = TcpStream::connect(cluster.public).expect("connect to the LB");
    client.write_all(b"GET /wait HTTP/1.1\r\nHost: waiting.localhost\r\n\r\n").expect("request");
    steady_e2e::eventually("the request to reach the app", || {
        cluster.app_log("waiting").contains("waiting").then_some(())
    });
    assert_eq!(in_flight(), 1.0);
    drop(client);
    // Both hops notice the hang-up at once, not when the app answers a minute later.
    steady_e2e::eventually("the LB to let go of the request", || (in_flight() == 0.0).then_some(()));
    steady_e2e::eventually("the app to see its request abandoned", || {
        cluster.app_log("waiting").contains("abandoned").then_some(())
    });
    let logged = steady_e2e::eventually("the abandoned request in the app's request log", || {
        let listed = cluster.steady(&["requests", "waiting", "--json"]);
        let records: serde_json::Value = serde_json::from_slice(&listed.stdout).ok()?;
        records.as_array()?.iter().find(|r| r["path"] == "/wait").cloned()
    });
    assert_eq!(logged["status"], 499, "logged as a client gone: {logged}");
    assert_eq!(cluster.get("waiting", "/").status, 200, "the app serves on");
}

/// One figure from an LB's metrics, or `None` if it is not there.
fn lb_metric(private: SocketAddr, name: &str) -> Option<f64> {
    crate::metrics::series(&private.to_string(), name)
}

#[test]
fn connections_past_the_bound_are_refused_and_the_open_ones_still_served() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "headers", HEADERS_APP);
    cluster.deploy(&app, "headers");
    let index = cluster.add_lb_with(&["--connections-max", "8"]);
    let (lb, private) = (cluster.more_lbs[index].public, cluster.more_lbs[index].private);
    let open = || lb_metric(private, "steady_lb_connections_open{listener=\"public\"}").unwrap_or(-1.0);

    // Eight idle connections fill the LB; it has accepted them all once it counts eight.
    let mut held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(lb).expect("connect")).collect();
    steady_e2e::eventually("the LB to hold eight connections", || (open() == 8.0).then_some(()));

    // The ninth is told to come back, in a whole answer, and closed.
    let (status, text) = get(lb, "");
    assert_eq!(status, 503, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
    let error: serde_json::Value = body_json(&text);
    assert_eq!(error["code"], "connections_max", "{text}");
    assert_eq!(lb_metric(private, "steady_lb_connections_refused_total{listener=\"public\"}"), Some(1.0));
    // The private listener counts its own (the scrape itself is one), apart from the public bound.
    let private_open = lb_metric(private, "steady_lb_connections_open{listener=\"private\"}");
    assert!(private_open >= Some(1.0), "{private_open:?}");

    // The open ones are served as before.
    let mut first = held.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    first.write_all(b"GET / HTTP/1.1\r\nHost: headers.localhost\r\n\r\n").expect("request");
    let mut answer = [0u8; 64];
    let read = first.read(&mut answer).expect("an answer on a held connection");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..read]));

    // A place given back is taken by the next client.
    drop(first);
    steady_e2e::eventually("the LB to let go of a closed connection", || (open() == 7.0).then_some(()));
    let (status, text) = get(lb, "");
    assert_eq!(status, 200, "{text}");
    assert_eq!(body_json(&text)["served"], 2, "the refused request never reached the app");
    drop(held);
    steady_e2e::eventually("every place given back", || (open() == 0.0).then_some(()));
}
