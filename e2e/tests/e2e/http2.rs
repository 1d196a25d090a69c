//! HTTP/2 from clients: the LB's TLS listener offers `h2` by ALPN (browsers speak HTTP/2 only
//! over TLS), serves many streams on one connection — events streamed one by one beside
//! other requests, bodies uploaded with flow control — for both domains, holds each stream
//! to the edge's rules, takes HTTP/2 with prior knowledge on the plain listener, and bounds
//! a connection that never asks for anything, or a body that stops coming, as it bounds a
//! silent HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use steady_e2e::tls::{client_config, TestCa};
use steady_e2e::{free_port, write_app, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocols::EVENTS_APP;

/// Answers with the headers it got; `/sink` counts the bytes of the body it got.
const APP: &str = r#"export default {
  async fetch(request) {
    if (new URL(request.url).pathname === "/sink") {
      let bytes = 0;
      for await (const chunk of request.body ?? []) bytes += chunk.length;
      return new Response(String(bytes));
    }
    return Response.json({ url: request.url, headers: Object.fromEntries(request.headers) });
  },
};
"#;

/// Largest answer body the client reads.
const BODY_BYTES_MAX: usize = 1024 * 1024;

/// A cluster of one host with apps `a` and `events`, and an LB serving `steady.page` and
/// `steady.sh` over TLS with `extra` flags; returns the cluster, the TLS address and the
/// client's TLS configuration (trusting the test's authority, offering h2 and HTTP/1.1).
fn cluster_with_tls_lb(extra: &[&str]) -> (Cluster, SocketAddr, Arc<rustls::ClientConfig>) {
    let mut cluster = Cluster::start(1);
    for (name, source) in [("a", APP), ("events", EVENTS_APP)] {
        let app = write_app(cluster.dir.path(), name, source);
        cluster.deploy(&app, name);
    }
    let ca = TestCa::new(cluster.dir.path(), "ca");
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().expect("address");
    let mut flags = vec!["--domain".to_string(), "steady.page".into(), "--domain".into(), "steady.sh".into()];
    flags.extend(["--tls-listen".to_string(), tls.to_string()]);
    for domain in ["steady.page", "steady.sh"] {
        let (chain, key) = ca.issue(domain);
        flags.extend(["--tls-cert".to_string(), format!("{domain}={},{}", chain.display(), key.display())]);
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    cluster.add_lb_with(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut config = (*client_config(&[ca.cert_path()])).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (cluster, tls, Arc::new(config))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` for `host`, and the protocol ALPN chose.
async fn tls_connect(addr: SocketAddr, host: &str, config: &Arc<rustls::ClientConfig>) -> (TlsStream, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("no delay, as browsers ask");
    let name = ServerName::try_from(host.to_owned()).expect("server name");
    let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.expect("TLS handshake");
    let alpn = stream.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    (stream, alpn.unwrap_or_default())
}

/// An HTTP/2 connection to `addr` for `host`; the task driving it ends when the server closes it.
async fn h2_connect(
    addr: SocketAddr,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let (stream, alpn) = tls_connect(addr, host, config).await;
    assert_eq!(alpn, "h2", "the LB offers HTTP/2 by ALPN");
    let (client, connection) = h2::client::handshake(stream).await.expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

/// An answer: status, body, and when each `\n\n`-ended event of the body arrived.
struct Answer {
    status: u16,
    body: String,
    events_at: Vec<Instant>,
}

/// Sends `method url` with `headers` and `body` (in 64 KiB pieces, as the server's flow
/// control allows) on `client`, and reads the whole answer.
async fn send(
    client: &SendRequest<Bytes>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Answer {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(()).expect("request");
    let mut client = client.clone().ready().await.expect("a stream to send on");
    let (response, mut upload) = client.send_request(request, body.is_none()).expect("request sent");
    if let Some(mut body) = body {
        while !body.is_empty() {
            upload.reserve_capacity(body.len().min(64 * 1024));
            let granted = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                .await
                .expect("the stream stays open")
                .expect("capacity");
            upload.send_data(body.split_to(granted.min(body.len())), false).expect("body piece sent");
        }
        upload.send_data(Bytes::new(), true).expect("end of body sent");
    }
    let response = response.await.expect("an answer");
    let status = response.status().as_u16();
    let mut stream = response.into_body();
    let (mut body, mut events_at) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.expect("the answer's body");
        let _ = stream.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
        assert!(body.len() <= BODY_BYTES_MAX, "an answer larger than the test expects");
        while events_at.len() < body.windows(2).filter(|w| w == b"\n\n").count() {
            events_at.push(Instant::now());
        }
    }
    Answer { status, body: String::from_utf8_lossy(&body).into_owned(), events_at }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_browser_speaks_http2_over_tls_to_both_domains_with_streams_side_by_side() {
    let (cluster, tls, config) = cluster_with_tls_lb(&[]);
    runtime().block_on(async {
        for domain in ["steady.page", "steady.sh"] {
            let host = format!("a.{domain}");
            let (client, _driver) = h2_connect(tls, &host, &config).await;
            let answer = send(&client, "GET", &format!("https://{host}/path?q=1"), &[], None).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            let seen = json(&answer.body);
            assert_eq!(seen["url"], format!("https://{host}/path?q=1"), "the app sees the URL the browser asked for");
            assert_eq!(seen["headers"]["host"], host.as_str());
            assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
            assert_eq!(seen["headers"]["x-forwarded-host"], host.as_str());
        }

        // One connection: an event stream, and meanwhile a request and an upload on streams
        // beside it, answered before the events end.
        let (client, _driver) = h2_connect(tls, "events.steady.page", &config).await;
        let events = send(&client, "GET", "https://events.steady.page/", &[], None);
        let beside = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let got = send(&client, "GET", "https://a.steady.page/", &[], None).await;
            let upload_bytes = 8 * 1024 * 1024;
            let body = Bytes::from(vec![b'x'; upload_bytes]);
            let sunk = send(&client, "POST", "https://a.steady.page/sink", &[], Some(body)).await;
            (got, sunk, upload_bytes, Instant::now())
        };
        let (events, (got, sunk, upload_bytes, beside_done)) = tokio::join!(events, beside);
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!((sunk.status, sunk.body), (200, upload_bytes.to_string()), "the app got every byte");
        assert_eq!(events.status, 200);
        assert_eq!(events.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
        let spread = events.events_at[3].duration_since(events.events_at[0]);
        assert!(spread >= Duration::from_millis(800), "events arrived together ({spread:?} apart)");
        assert!(beside_done < events.events_at[3], "the streams beside the events waited for them to end");

        // The authority names the app; a Host beside it that names another is refused.
        let mixed = send(&client, "GET", "https://a.steady.page/", &[("host", "events.steady.page")], None).await;
        assert_eq!(mixed.status, 400, "{}", mixed.body);
        // The edge's limits hold per stream: 40 KiB of headers is over its 32 KiB.
        let big = "v".repeat(40 * 1024);
        let oversized = send(&client, "GET", "https://a.steady.page/", &[("x-big", &big)], None).await;
        assert_eq!(oversized.status, 431, "{}", oversized.body);
        assert_eq!(
            send(&client, "GET", "https://a.steady.page/", &[], None).await.status,
            200,
            "the connection serves on"
        );
    });
    drop(cluster);
}

/// Reads `stream` (the server's SETTINGS come first) until the server closes it, which must
/// happen at about `deadline`: not before half of it, not after ten times it.
async fn assert_closed_at(mut stream: impl tokio::io::AsyncRead + Unpin, deadline: Duration, what: &str) {
    let started = Instant::now();
    let mut sink = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(deadline * 10, async {
        while let Ok(read) = stream.read(&mut sink).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what} was still open after {:?}", deadline * 10);
    assert!(started.elapsed() >= deadline / 2, "{what} was closed before its deadline ({:?})", started.elapsed());
}

#[test]
fn an_http2_connection_is_closed_at_the_header_deadline_when_silent_or_idle_not_in_use() {
    let deadline = Duration::from_millis(1_000);
    let deadline_ms = deadline.as_millis().to_string();
    let (cluster, tls, config) = cluster_with_tls_lb(&["--header-read-timeout-ms", &deadline_ms]);
    runtime().block_on(async {
        // Negotiates HTTP/2, then sends not even the preface.
        let (silent, alpn) = tls_connect(tls, "a.steady.page", &config).await;
        assert_eq!(alpn, "h2");
        assert_closed_at(silent, deadline, "a silent TLS connection").await;

        // Over plain TCP: the preface, then silence.
        let public = cluster.more_lbs[0].public;
        let mut silent = tokio::net::TcpStream::connect(public).await.expect("connect");
        silent.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        assert_closed_at(silent, deadline, "a silent plain connection").await;

        // A connection in use lives past the deadline; once it idles, it is closed as well.
        let (client, driver) = h2_connect(tls, "a.steady.page", &config).await;
        let opened = Instant::now();
        while opened.elapsed() < deadline * 5 / 2 {
            assert_eq!(send(&client, "GET", "https://a.steady.page/", &[], None).await.status, 200);
            tokio::time::sleep(deadline * 2 / 5).await;
        }
        assert!(!driver.is_finished(), "a connection in use was closed");
        let ended = tokio::time::timeout(deadline * 10, driver).await;
        assert!(ended.is_ok(), "the idle HTTP/2 connection was still open after {:?}", deadline * 10);

        // The LB serves the next connection as before.
        let (client, _driver) = h2_connect(tls, "a.steady.page", &config).await;
        assert_eq!(send(&client, "GET", "https://a.steady.page/", &[], None).await.status, 200);
    });
    drop(cluster);
}

#[test]
fn a_client_with_prior_knowledge_speaks_http2_on_the_plain_listener() {
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "a", APP);
    cluster.deploy(&app, "a");
    let host = format!("a.{}", cluster.domain);
    // The same on an LB that speaks h2c to hosts (where no request takes the fast lane).
    let h2c = cluster.add_lb_with(&["--host-protocol", "h2c"]);
    for lb in [cluster.public, cluster.more_lbs[h2c].public] {
        runtime().block_on(async {
            let tcp = tokio::net::TcpStream::connect(lb).await.expect("connect");
            tcp.set_nodelay(true).expect("no delay");
            let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            for path in ["/one", "/two"] {
                let answer = send(&client, "GET", &format!("http://{host}{path}"), &[], None).await;
                assert_eq!(answer.status, 200, "{lb}: {}", answer.body);
                let seen = json(&answer.body);
                assert_eq!(seen["url"], format!("http://{host}{path}"));
                assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
            }
            let body = Some(Bytes::from_static(b"12345"));
            let sunk = send(&client, "POST", &format!("http://{host}/sink"), &[], body).await;
            assert_eq!((sunk.status, sunk.body.as_str()), (200, "5"), "{lb}");
        });
    }
    // HTTP/1.1 on the same listeners as before.
    assert_eq!(cluster.get("a", "/").status, 200);
    let plain = reqwest::blocking::Client::new().get(format!("http://{}/", cluster.more_lbs[h2c].public));
    assert_eq!(plain.header("host", &host).send().expect("HTTP/1.1 through the h2c LB").status(), 200);
}

#[test]
fn a_stalled_http2_upload_ends_at_the_upstream_read_timeout() {
    // pingora bounds each read of an HTTP/1.1 body (60 s) but not of an HTTP/2 one: what ends a
    // stream whose body stops coming is the host's silence, past the upstream read timeout.
    let timeout = Duration::from_millis(2_000);
    let timeout_ms = timeout.as_millis().to_string();
    let (cluster, tls, config) = cluster_with_tls_lb(&["--upstream-read-timeout-ms", &timeout_ms]);
    runtime().block_on(async {
        let (client, _driver) = h2_connect(tls, "a.steady.page", &config).await;
        let request =
            http::Request::builder().method("POST").uri("https://a.steady.page/sink").body(()).expect("request");
        let mut ready = client.clone().ready().await.expect("a stream to send on");
        let (response, mut upload) = ready.send_request(request, false).expect("request sent");
        upload.send_data(Bytes::from_static(b"a first piece, then nothing"), false).expect("a piece sent");
        let started = Instant::now();
        let response = tokio::time::timeout(timeout * 5, response).await.expect("an answer before 5x the timeout");
        let status = response.expect("an answer").status().as_u16();
        assert_eq!(status, 504, "the stalled upload ends in a gateway timeout");
        assert!(started.elapsed() >= timeout / 2, "ended before the timeout ({:?})", started.elapsed());
        // The connection serves on.
        assert_eq!(send(&client, "GET", "https://a.steady.page/", &[], None).await.status, 200);
    });
    drop(cluster);
}

/// `/hold` answers once `/release` is asked (which says how many it let go), and logs that it
/// waits; the rest at once.
const HOLDING_APP: &str = r#"let waiting = [];
export default {
  async fetch(request) {
    const path = new URL(request.url).pathname;
    if (path === "/hold") {
      console.log("holding");
      await new Promise((resolve) => waiting.push(resolve));
      return new Response("released");
    }
    if (path === "/release") {
      const count = waiting.length;
      waiting.forEach((resolve) => resolve());
      waiting = [];
      return new Response(String(count));
    }
    return new Response("ok");
  },
};
"#;

#[test]
fn an_http2_clients_requests_in_flight_share_the_connection_bound() {
    // Each HTTP/2 request in flight may hold a host connection, so past a connection's first
    // they take places of their own: a few clients cannot open more than the bound allows.
    let mut cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "holding", HOLDING_APP);
    cluster.deploy(&app, "holding");
    let index = cluster.add_lb_with(&["--connections-max", "3"]);
    let (lb, private) = (cluster.more_lbs[index].public, cluster.more_lbs[index].private.to_string());
    let host = format!("holding.{}", cluster.domain);
    let metric = move |name: &str| crate::metrics::series(&private, name).unwrap_or(-1.0);
    let places_taken = |count: f64| {
        let metric = metric.clone();
        tokio::task::spawn_blocking(move || {
            steady_e2e::eventually(&format!("{count} places taken"), || {
                (metric("steady_lb_connections_open{listener=\"public\"}") == count).then_some(())
            })
        })
    };
    let runtime = runtime();
    let held = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(lb).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // Three requests held by the app: the first on the connection's place, two more.
        let held: Vec<_> = (0..3)
            .map(|_| {
                let (client, url) = (client.clone(), format!("http://{host}/hold"));
                tokio::spawn(async move { send(&client, "GET", &url, &[], None).await })
            })
            .collect();
        places_taken(3.0).await.expect("waiting");

        // A fourth is told to come back, and never reaches the app.
        let refused = send(&client, "GET", &format!("http://{host}/"), &[], None).await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(json(&refused.body)["code"], "connections_max", "{}", refused.body);
        (client, held)
    });
    // So is a new connection: streams and connections share the bound.
    let plain = reqwest::blocking::Client::new().get(format!("http://{lb}/")).header("host", &host).send();
    assert_eq!(plain.expect("an answer").status(), 503);
    assert_eq!(metric("steady_lb_connections_refused_total{listener=\"public\"}"), 2.0);

    // Once the app lets the three go (asked through the other LB), the places come back.
    let released = cluster.get("holding", "/release");
    assert_eq!((released.status, released.body.as_str()), (200, "3"), "the refused request never reached the app");
    let (client, held) = held;
    runtime.block_on(async {
        for answer in held {
            let answer = answer.await.expect("a held request");
            assert_eq!((answer.status, answer.body.as_str()), (200, "released"));
        }
        places_taken(1.0).await.expect("waiting");
        let served = send(&client, "GET", &format!("http://{host}/"), &[], None).await;
        assert_eq!((served.status, served.body.as_str()), (200, "ok"));
    });
}

#[test]
fn an_lb_speaking_h2c_shares_the_hosts_ingress_bound_among_its_requests_in_flight() {
    // hostd's ingress counts connections with an app connection each; an LB speaking h2c
    // carries many requests on one, so past its first they take places of their own.
    let cluster = Cluster::start_with(1, &["--ingress-connections-max", "3"]);
    let app = write_app(cluster.dir.path(), "holding", HOLDING_APP);
    cluster.deploy(&app, "holding");
    let ingress = cluster.hosts[0].ingress;
    let holding = || cluster.app_log("holding").matches("holding").count();
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(ingress).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let app_header = [("x-steady-app", "holding")];
        // Requests held one after another until one is refused: the connection's first rides on
        // its place, each further one takes one of the (at most) two places left.
        let mut held = Vec::new();
        let refused = loop {
            assert!(held.len() < 3, "{} requests held on one connection with a bound of 3", held.len());
            let client = client.clone();
            let mut request =
                tokio::spawn(
                    async move { send(&client, "GET", "http://holding.localhost/hold", &app_header, None).await },
                );
            let mut waits = 0;
            while holding() == held.len() && !request.is_finished() {
                waits += 1;
                assert!(waits < 400, "request {} neither reached the app nor was answered", held.len() + 1);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if request.is_finished() {
                break (&mut request).await.expect("the refused request");
            }
            held.push(request);
        };
        assert!(held.len() >= 2, "only {} held: the connection's place and at least one more", held.len());
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(json(&refused.body)["code"], "connections_max", "{}", refused.body);

        // A request the LB gives up on gives its place back.
        held[1].abort();
        let mut tries = 0;
        loop {
            let answer = send(&client, "GET", "http://holding.localhost/", &app_header, None).await;
            if answer.status == 200 {
                assert_eq!(answer.body, "ok");
                break;
            }
            tries += 1;
            assert!(answer.status == 503 && tries < 200, "{} {}", answer.status, answer.body);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
}
