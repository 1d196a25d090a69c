//! HTTPS on the LB: two domains, each with its wildcard certificate (made by a throwaway
//! authority in the test's temp dir), picked by SNI; certificates reloaded on SIGHUP while
//! requests keep flowing, a bad file keeping the old certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use steady_e2e::tls::{client_config, first_cert_der, https_get, TestCa, TlsClient};
use steady_e2e::{eventually, free_port, write_app, Cluster};

/// Answers with the URL and the headers it got.
const HEADERS_APP: &str = r#"export default {
  fetch(request) {
    return Response.json({ url: request.url, headers: Object.fromEntries(request.headers) });
  },
};
"#;

/// Accepts a WebSocket, greets it with the URL the app saw, and echoes its messages.
const ECHO_APP: &str = r#"export default {
  fetch(request, env, ctx) {
    if (ctx.upgrade(request, { data: { url: request.url } })) return;
    return new Response("websockets only", { status: 400 });
  },
  websocket: {
    open(ws) { ws.send(`welcome to ${ws.data.url}`); },
    message(ws, message) { ws.send(`echo: ${message}`); },
  },
};
"#;

/// Most requests a background loop sends (a bound; the loops stop long before).
const LOOP_REQUESTS_MAX: usize = 20_000;

/// A cluster with app `a` deployed and an LB serving `steady.page` and `steady.sh` over TLS with
/// the given (chain, key) per domain; returns the LB's index and its TLS address.
pub fn tls_lb(cluster: &mut Cluster, certs: &[(&str, &(PathBuf, PathBuf))]) -> (usize, SocketAddr) {
    tls_lb_with(cluster, certs, &[])
}

/// [`tls_lb`] with more flags for the LB.
pub fn tls_lb_with(
    cluster: &mut Cluster,
    certs: &[(&str, &(PathBuf, PathBuf))],
    extra: &[&str],
) -> (usize, SocketAddr) {
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().expect("address");
    let mut flags: Vec<String> =
        ["--domain", "steady.page", "--domain", "steady.sh", "--tls-listen"].iter().map(|s| s.to_string()).collect();
    flags.push(tls.to_string());
    for (domain, (chain, key)) in certs {
        flags.push("--tls-cert".into());
        flags.push(format!("{domain}={},{}", chain.display(), key.display()));
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let index = cluster.add_lb_with(&flags);
    (index, tls)
}

/// A cluster of one host with app `a` (which echoes its request headers).
pub fn cluster_with_app() -> Cluster {
    let cluster = Cluster::start(1);
    let app = write_app(cluster.dir.path(), "a", HEADERS_APP);
    cluster.deploy(&app, "a");
    cluster
}

fn headers(body: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(body).expect("the app's JSON")["headers"].clone()
}

#[test]
fn https_serves_two_domains_each_with_its_certificate() {
    let mut cluster = cluster_with_app();
    let ca = TestCa::new(cluster.dir.path(), "ca");
    let (page, sh) = (ca.issue("steady.page"), ca.issue("steady.sh"));
    let (index, tls) = tls_lb(&mut cluster, &[("steady.page", &page), ("steady.sh", &sh)]);
    let config = client_config(&[ca.cert_path()]);

    for (domain, (chain, _)) in [("steady.page", &page), ("steady.sh", &sh)] {
        let host = format!("a.{domain}");
        let answer = https_get(tls, &host, "/", &config).unwrap_or_else(|e| panic!("https://{host}/: {e}"));
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.peer_cert, first_cert_der(chain), "{host} got its domain's certificate");
        let url = &serde_json::from_str::<serde_json::Value>(answer.body()).expect("the app's JSON")["url"];
        assert_eq!(url, &format!("https://{host}/"), "the app sees the URL the browser asked for");
        let seen = headers(answer.body());
        assert_eq!(seen["x-forwarded-proto"], "https");
        assert_eq!(seen["x-forwarded-host"], host.as_str());
        assert_eq!(seen["forwarded"], format!("for=127.0.0.1;host=\"{host}\";proto=https"));
    }
    let apex = https_get(tls, "steady.sh", "/", &config).expect("the apex over TLS");
    assert_eq!(apex.status, 200);
    assert_eq!(apex.peer_cert, first_cert_der(&sh.0));
    // A name under neither domain gets no certificate: the handshake fails.
    let error = https_get(tls, "a.example.com", "/", &config).expect_err("no certificate for a.example.com");
    assert!(error.contains("handshake"), "{error}");
    // Two labels are not covered by a wildcard certificate, so none is offered.
    assert!(https_get(tls, "x.a.steady.page", "/", &config).is_err());

    // Deployed through this LB's API, an app's URL names the TLS listener.
    let private = cluster.more_lbs[index].private.to_string();
    let source = write_app(cluster.dir.path(), "b", HEADERS_APP);
    let output = cluster.steady(&["--api", &private, "deploy", &source.display().to_string(), "--name", "b", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let deployed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("deploy prints JSON");
    assert_eq!(deployed["url"], format!("https://b.steady.page:{}/", tls.port()));

    // Plain HTTP stays on the public listener, for both domains.
    let public = cluster.more_lbs[index].public;
    for host in ["a.steady.page", "a.steady.sh"] {
        let answer = reqwest::blocking::Client::new()
            .get(format!("http://{public}/"))
            .header("host", host)
            .send()
            .expect("plain request");
        assert_eq!(answer.status(), 200);
        let body = answer.text().expect("body");
        assert_eq!(headers(&body)["x-forwarded-proto"], "http");
        let url = &serde_json::from_str::<serde_json::Value>(&body).expect("the app's JSON")["url"];
        assert_eq!(url, &format!("http://{host}/"));
    }
}

/// Replaces `target` with a copy of `source` atomically (a rename), as a certificate tool would.
fn replace_file(source: &Path, target: &Path) {
    let temporary = target.with_extension("new");
    std::fs::copy(source, &temporary).expect("copy");
    std::fs::rename(&temporary, target).expect("rename");
}

/// Sends requests over fresh TLS connections for `host` until `stop`, counting them in `sent`;
/// returns the failures.
pub fn tls_loop(
    tls: SocketAddr,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
    stop: &AtomicBool,
    sent: &AtomicUsize,
) -> Vec<String> {
    let mut failures = Vec::new();
    while !stop.load(Ordering::Acquire) && sent.load(Ordering::Acquire) < LOOP_REQUESTS_MAX {
        sent.fetch_add(1, Ordering::AcqRel);
        match https_get(tls, host, "/", config) {
            Ok(answer) if answer.status == 200 => {}
            Ok(answer) => failures.push(format!("status {}", answer.status)),
            Err(error) => failures.push(error),
        }
    }
    failures
}

/// Waits (bounded) until `sent` has moved on by `more` from now, so a loop overlaps an event.
pub fn wait_for_progress(sent: &AtomicUsize, more: usize) {
    let target = sent.load(Ordering::Acquire) + more;
    eventually("requests to go on", || (sent.load(Ordering::Acquire) >= target).then_some(()));
}

#[test]
fn certificates_reload_on_sighup_without_a_failed_request_and_a_bad_file_keeps_the_old_one() {
    let mut cluster = cluster_with_app();
    let (old_ca, new_ca) = (TestCa::new(cluster.dir.path(), "old-ca"), TestCa::new(cluster.dir.path(), "new-ca"));
    let page = old_ca.issue("steady.page");
    let sh = old_ca.issue("steady.sh");
    let old_der = first_cert_der(&page.0);
    let (index, tls) = tls_lb(&mut cluster, &[("steady.page", &page), ("steady.sh", &sh)]);
    let config = client_config(&[old_ca.cert_path(), new_ca.cert_path()]);
    let mut kept = TlsClient::connect(tls, "a.steady.page", &config).expect("a connection kept across the reloads");
    assert_eq!(kept.get("/", false).expect("first request").status, 200);

    let (stop, sent) = (AtomicBool::new(false), AtomicUsize::new(0));
    let (failures, reload_ms) = std::thread::scope(|scope| {
        let looping = scope.spawn(|| tls_loop(tls, "a.steady.page", &config, &stop, &sent));
        let lb = &cluster.more_lbs[index].daemon;
        wait_for_progress(&sent, 100);

        // A new certificate from another authority, in place of the old files, then SIGHUP.
        let renewed = new_ca.issue("steady.page");
        let new_der = first_cert_der(&renewed.0);
        replace_file(&renewed.1, &page.1);
        replace_file(&renewed.0, &page.0);
        let signalled = Instant::now();
        lb.signal(libc::SIGHUP);
        eventually("handshakes to present the renewed certificate", || {
            let answer = https_get(tls, "a.steady.page", "/", &config).ok()?;
            (answer.peer_cert == new_der).then_some(())
        });
        let reload_ms = signalled.elapsed().as_millis();

        // A broken chain file: the reload keeps the renewed certificate and says why.
        std::fs::write(&page.0, "not a certificate\n").expect("break the chain file");
        lb.signal(libc::SIGHUP);
        eventually("the LB to report the bad file", || {
            let log = std::fs::read_to_string(&lb.log).ok()?;
            log.contains("certificate not reloaded").then_some(())
        });
        for _ in 0..20 {
            let answer = https_get(tls, "a.steady.page", "/", &config).expect("served after a bad reload");
            assert_eq!((answer.status, answer.peer_cert == new_der), (200, true));
        }
        // steady.sh was reloaded beside it, unchanged, and still serves.
        assert_eq!(https_get(tls, "a.steady.sh", "/", &config).expect("steady.sh").status, 200);
        wait_for_progress(&sent, 100);
        stop.store(true, Ordering::Release);
        (looping.join().expect("request loop"), reload_ms)
    });
    let sent = sent.load(Ordering::Acquire);
    eprintln!("certificate reload: {sent} requests on fresh TLS connections, {} failed; renewed certificate served {reload_ms} ms after SIGHUP", failures.len());
    assert!(failures.is_empty(), "{} of {sent} requests failed: {failures:?}", failures.len());

    // The connection opened before the reloads is still up, on the certificate it started with.
    let answer = kept.get("/", false).expect("the kept connection still serves");
    assert_eq!((answer.status, answer.peer_cert == old_der), (200, true));
}

#[test]
fn a_websocket_opens_over_tls_and_its_app_sees_the_https_url() {
    let mut cluster = cluster_with_app();
    let echo = write_app(cluster.dir.path(), "echo", ECHO_APP);
    cluster.deploy(&echo, "echo");
    let ca = TestCa::new(cluster.dir.path(), "ca");
    let page = ca.issue("steady.page");
    let (_, tls) = tls_lb(&mut cluster, &[("steady.page", &page)]);
    let config = client_config(&[ca.cert_path()]);

    let tcp = std::net::TcpStream::connect(tls).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("echo.steady.page").expect("name");
    let connection = rustls::ClientConnection::new(config, name).expect("TLS client");
    let stream = rustls::StreamOwned::new(connection, tcp);
    let (mut socket, response) =
        tungstenite::client("wss://echo.steady.page/chat", stream).expect("WebSocket handshake");
    assert_eq!(response.status().as_u16(), 101);
    let welcome = socket.read().expect("first message");
    assert_eq!(welcome, tungstenite::Message::text("welcome to https://echo.steady.page/chat"));
    for i in 0..3 {
        socket.send(tungstenite::Message::text(format!("hello {i}"))).expect("send");
        assert_eq!(socket.read().expect("echo"), tungstenite::Message::text(format!("echo: hello {i}")));
    }
    socket.close(None).expect("close");
}

#[test]
fn a_tls_client_that_never_says_hello_counts_against_the_bound_and_is_cut_off_at_the_deadline() {
    let mut cluster = cluster_with_app();
    let ca = TestCa::new(cluster.dir.path(), "ca");
    let page = ca.issue("steady.page");
    let limits = ["--header-read-timeout-ms", "1500", "--connections-max", "3"];
    let (index, tls) = tls_lb_with(&mut cluster, &[("steady.page", &page)], &limits);
    let (public, private) = (cluster.more_lbs[index].public, cluster.more_lbs[index].private);
    let open = || crate::metrics::series(&private.to_string(), "steady_lb_connections_open{listener=\"public\"}");

    // Three connections to the TLS port that send nothing take every place.
    let silent: Vec<std::net::TcpStream> =
        (0..3).map(|_| std::net::TcpStream::connect(tls).expect("connect to the TLS port")).collect();
    eventually("the silent TLS connections to be counted", || (open() == Some(3.0)).then_some(()));
    let refused =
        reqwest::blocking::Client::new().get(format!("http://{public}/")).header("host", "a.steady.page").send();
    assert_eq!(refused.expect("a plain request meanwhile").status(), 503, "no place left");

    // Each is closed at the header deadline (pingora's own handshake bound was 60 s).
    for mut stream in silent {
        use std::io::Read;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent TLS connection still open after 20 s, or answered: {other:?}"),
        }
    }
    eventually("the places to be given back", || (open() == Some(0.0)).then_some(()));
    let config = client_config(&[ca.cert_path()]);
    let answer = https_get(tls, "a.steady.page", "/", &config).expect("HTTPS once the silent ones are gone");
    assert_eq!(answer.status, 200, "{}", answer.text);
}
