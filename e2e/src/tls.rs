//! TLS for tests: a throwaway certificate authority made with the `openssl` command in the
//! test's temp dir (no key is ever committed), and a small blocking HTTPS client that trusts
//! only that authority and sends the SNI and Host a test asks for, whatever address it dials.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest answer the client reads.
const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// A certificate authority for one test, in `dir`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl TestCa {
    /// Makes a new authority (P-256 key, valid two days) named `name` in `dir/<name>/`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("CA dir");
        let subject = format!("/CN=steady test {name}");
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &subject,
            ],
        );
        Self { dir, name: name.into() }
    }

    /// The authority's certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `*.<domain>` and `<domain>`; returns (chain, key) paths.
    pub fn issue(&self, domain: &str) -> (PathBuf, PathBuf) {
        let (key, csr, chain, ext) =
            (format!("{domain}.key"), format!("{domain}.csr"), format!("{domain}.pem"), format!("{domain}.ext"));
        let subject = format!("/CN=*.{domain}");
        std::fs::write(
            self.dir.join(&ext),
            format!("subjectAltName=DNS:*.{domain},DNS:{domain}\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("extensions file");
        let serial = format!("0x{:016x}", rand_serial());
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-out",
                &chain,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (self.dir.join(chain), self.dir.join(key))
    }

    /// The authority's name (as given to [`TestCa::new`]).
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn rand_serial() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) | 1
}

/// The DER of the first certificate in a PEM file.
pub fn first_cert_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("certificate file");
    CertificateDer::pem_slice_iter(&pem).next().expect("a certificate").expect("PEM").to_vec()
}

/// A client configuration that trusts exactly the authorities in `ca_paths` and never resumes.
pub fn client_config(ca_paths: &[PathBuf]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for path in ca_paths {
        roots.add(CertificateDer::from(first_cert_der(path))).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake: a resumed one presents no certificate, and the tests
    // look at the certificate each handshake got.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// An HTTPS answer and the certificate the server presented.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: u16,
    /// Headers and body as text.
    pub text: String,
    /// The leaf certificate the server presented (DER).
    pub peer_cert: Vec<u8>,
}

impl TlsAnswer {
    /// The body (after the header).
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }
}

/// One TLS connection to `addr` for `host` (the SNI and the Host header).
pub struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: String,
}

impl TlsClient {
    /// Connects and completes the handshake (an error if the server's certificate is not
    /// trusted by `config` for `host`).
    pub fn connect(addr: SocketAddr, host: &str, config: &Arc<rustls::ClientConfig>) -> Result<Self, String> {
        let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
        socket.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let connection = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(Self { stream, host: host.into() })
    }

    /// The leaf certificate the server presented.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default()
    }

    /// Sends `GET path` on this connection and reads one answer with a Content-Length body
    /// (the LB's and the apps' answers have one); `close` asks the server to close after it.
    pub fn get(&mut self, path: &str, close: bool) -> Result<TlsAnswer, String> {
        let connection = if close { "close" } else { "keep-alive" };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\n\r\n", self.host);
        self.stream.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            if let Some(length) = complete_length(&answer) {
                answer.truncate(length);
                break;
            }
            if answer.len() > ANSWER_BYTES_MAX {
                return Err("answer too large".into());
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => return Err(format!("closed after {} bytes", answer.len())),
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status: {text}"))?;
        Ok(TlsAnswer { status, text, peer_cert: self.peer_cert() })
    }
}

/// The length of a complete answer at the start of `bytes` (header + Content-Length body).
fn complete_length(bytes: &[u8]) -> Option<usize> {
    let header_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let header = String::from_utf8_lossy(&bytes[..header_end]).to_ascii_lowercase();
    let length: usize = header
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (bytes.len() >= header_end + length).then_some(header_end + length)
}

/// One `GET path` for `host` over a new TLS connection to `addr`.
pub fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsAnswer, String> {
    TlsClient::connect(addr, host, config)?.get(path, true)
}
