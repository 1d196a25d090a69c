//! TLS on the public listener, terminated by the LB's own connection app rather than by
//! pingora's listener.
//!
//! pingora's TLS listener runs the handshake before any app sees the connection, bounded only
//! by its own 60 s: a client that opened connections to the TLS port and sent nothing (or
//! trickled its hello) held a socket for a minute each, outside the bound on open connections
//! ([`crate::connections`]) and past the header deadline. So the TLS address is a plain TCP
//! endpoint of each worker's service, and [`TlsPort`] runs the handshake with pingora's own
//! acceptor (the same certificates, reloaded in place, and the same ALPN offer) once the
//! connection has its place, within the header deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::TlsSettings;
use pingora::protocols::l4::stream::Stream as PlainStream;
use pingora::protocols::Stream;

use crate::certs::CertStore;

/// The TLS address of the public listener and how a connection there is taken on.
pub struct TlsPort {
    addr: SocketAddr,
    acceptor: pingora::listeners::tls::Acceptor,
    timeout: Duration,
}

impl TlsPort {
    /// Connections to `addr` are TLS, with `certs` picked by SNI, HTTP/2 and HTTP/1.1 offered by
    /// ALPN, and `handshake_timeout_ms` to finish the handshake.
    pub fn new(addr: SocketAddr, certs: Arc<CertStore>, handshake_timeout_ms: u64) -> Result<Self, String> {
        assert!(handshake_timeout_ms > 0, "a handshake with no time refuses everyone");
        let mut settings = TlsSettings::intermediate("", "").map_err(|error| format!("TLS settings: {error}"))?;
        settings.set_cert_resolver(certs);
        // Offer HTTP/2 and HTTP/1.1 by ALPN: browsers speak HTTP/2 only over TLS.
        settings.enable_h2();
        Ok(Self { addr, acceptor: settings.build(), timeout: Duration::from_millis(handshake_timeout_ms) })
    }

    /// Whether `stream` came in on the TLS address (by the address it was accepted on).
    pub fn arrived(&self, stream: &Stream) -> bool {
        let local = stream.get_socket_digest().and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local.is_some_and(|local| {
            local.port() == self.addr.port() && (self.addr.ip().is_unspecified() || local.ip() == self.addr.ip())
        })
    }

    /// Runs the TLS handshake on `stream`, a plain connection to the TLS address; `None` if it
    /// fails or takes longer than the handshake timeout (the connection then closes).
    pub async fn handshake(&self, stream: Stream) -> Option<Stream> {
        let Ok(plain) = stream.into_any().downcast::<PlainStream>() else {
            tracing::warn!("a connection on the TLS address that is not a plain TCP stream; closing");
            return None;
        };
        match tokio::time::timeout(self.timeout, self.acceptor.tls_handshake(*plain)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(timeout_ms = self.timeout.as_millis() as u64, "TLS handshake took too long; closing");
                None
            }
        }
    }
}
