//! Command-line configuration of `steady-lb`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Longest the private listener holds a deploy answer while waiting for the table that
/// includes the app.
pub const DEPLOY_TABLE_WAIT_MS: u64 = 3_000;
/// Timeout for connecting to a host or the slicer.
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Default total time a client has to send a request's header on the public listeners.
pub const HEADER_READ_TIMEOUT_MS: u64 = 15_000;
/// Default longest a stopping LB waits for its requests in flight.
pub const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Most certificates (domains) on the TLS listener.
pub const TLS_CERTS_MAX: usize = steady_proto::LB_TLS_CERTS_MAX;

/// `steady-lb`: routes app traffic and API calls to the right host.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Config {
    /// Public listener for app traffic (`Host: <app>.<domain>`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub public: SocketAddr,
    /// Private listener for the API; never expose it beyond the operators' network.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub private: SocketAddr,
    /// Slicer API address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:8082", env = "STEADY_SLICER")]
    pub slicer: SocketAddr,
    /// TLS listener for app traffic (HTTPS), beside the plain `--public` one; needs `--tls-cert`.
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// A domain's certificate for the TLS listener: `<domain>=<chain.pem>,<key.pem>`, the chain
    /// (leaf first) covering `<domain>` and `*.<domain>`. Repeat per domain; each must be a
    /// `--domain`. SIGHUP reloads the files in place; a file that fails keeps the old certificate.
    #[arg(long = "tls-cert", value_name = "DOMAIN=CHAIN,KEY")]
    pub tls_certs: Vec<crate::certs::CertSource>,
    /// Total time a client has to send a request's header on the public listeners (also the
    /// longest an idle keep-alive connection stays open); past it the connection is closed.
    #[arg(long, default_value_t = HEADER_READ_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub header_read_timeout_ms: u64,
    /// Longest a stopping LB (SIGTERM, or SIGQUIT for an upgrade) waits for requests in flight.
    #[arg(long, default_value_t = DRAIN_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_timeout_ms: u64,
    /// Take the listening sockets over from the steady-lb running with the same `--data` (send
    /// it SIGQUIT after starting this one): a restart with new flags or a new binary that
    /// refuses no connection.
    #[arg(long)]
    pub upgrade: bool,
    /// Domains apps answer under; repeat for several (`--domain steady.page --domain steady.sh`).
    #[arg(long = "domain", default_value = "localhost")]
    pub domains: Vec<String>,
    /// How long the LB waits at start for its first routing table before it listens; past
    /// that it listens anyway and answers 503 until a table arrives.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub first_table_wait_ms: u64,
    /// Longest request target (path and query) on the public listener; longer ones get 414.
    #[arg(long, default_value_t = crate::edge::URI_BYTES_MAX)]
    pub uri_bytes_max: usize,
    /// Most header bytes (names and values) on the public listener; more get 431.
    #[arg(long, default_value_t = crate::edge::HEADER_BYTES_MAX)]
    pub header_bytes_max: usize,
    /// Most headers on the public listener; more get 431.
    #[arg(long, default_value_t = crate::edge::HEADER_COUNT_MAX)]
    pub header_count_max: usize,
    /// Largest request body on the public listener; larger ones get 413 (each host daemon also
    /// has its own per-app bound).
    #[arg(long, default_value_t = crate::edge::BODY_BYTES_MAX)]
    pub body_bytes_max: u64,
    /// Requests per second one client address may send through this LB; more get 429.
    #[arg(long, default_value_t = crate::limits::CLIENT_REQUESTS_PER_SECOND_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_requests_per_second_max: u32,
    /// Requests one app may have in flight through this LB; more get 429.
    #[arg(long, default_value_t = crate::limits::APP_IN_FLIGHT_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub app_in_flight_max: u32,
    /// Longest the LB waits on a host for an answer, or for the next piece of a streamed one;
    /// past it the client gets 504. Apps that stream with long pauses (server-sent events)
    /// should send a heartbeat more often.
    #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub upstream_read_timeout_ms: u64,
    /// Most client connections the public listeners keep open (all workers together); past it a
    /// new connection gets 503 and is closed. An HTTP/2 connection's requests in flight past
    /// its first count as one connection each (past the bound: 503). Default: 16384, or as
    /// many as the open files limit covers (the LB raises its soft limit to the hard one; each
    /// connection is counted with a host connection of its own). A value the limit does not
    /// cover is refused at start.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections_max: Option<u64>,
    /// Worker threads of the public listener: each serves the connections it accepts, with its
    /// own pool of host connections (the private listener has one thread). At most 31, 15 with
    /// TLS: each worker has its own listening sockets, and an upgrade hands over at most 32.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// How app traffic reaches host daemons: `http1` (pooled keep-alive connections) or `h2c`
    /// (HTTP/2 without TLS, many requests multiplexed on one connection per host). WebSocket
    /// upgrades always use HTTP/1.1.
    #[arg(long, value_enum, default_value_t = HostProtocol::Http1)]
    pub host_protocol: HostProtocol,
    /// Temporary apps one client address may start per minute without a token (`steady run`
    /// while signed out, or the dashboard's anonymous Run); past it: 429.
    #[arg(long, default_value_t = crate::gateway::ANONYMOUS_RUNS_PER_MINUTE_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub anonymous_runs_per_minute_max: u32,
    /// Directory for the LB's own files (the upgrade socket).
    #[arg(long, default_value = ".steady/lb")]
    pub data: PathBuf,
}

impl Config {
    /// The edge limits of the public listener.
    pub fn edge_limits(&self) -> crate::edge::EdgeLimits {
        crate::edge::EdgeLimits {
            uri_bytes_max: self.uri_bytes_max,
            header_bytes_max: self.header_bytes_max,
            header_count_max: self.header_count_max,
            body_bytes_max: self.body_bytes_max,
        }
    }

    /// Checks the configuration; an error here is a configuration error (exit code 2).
    pub fn validate(self) -> Result<Self, String> {
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        crate::workers::check_upgrade_bounds(self.threads, self.public, self.tls_listen, self.private)?;
        if self.uri_bytes_max == 0 || self.header_bytes_max == 0 || self.header_count_max == 0 {
            return Err("--uri-bytes-max, --header-bytes-max and --header-count-max must be positive".into());
        }
        if self.public == self.private {
            return Err("--public and --private must differ".into());
        }
        if let Some(bad) = self.domains.iter().find(|d| d.is_empty() || d.starts_with('.') || d.contains(':')) {
            return Err(format!("--domain {bad:?} is not a domain name"));
        }
        self.validate_tls()?;
        Ok(self)
    }

    fn validate_tls(&self) -> Result<(), String> {
        match (self.tls_listen, self.tls_certs.is_empty()) {
            (Some(_), true) => return Err("--tls-listen needs at least one --tls-cert".into()),
            (None, false) => return Err("--tls-cert needs --tls-listen".into()),
            _ => {}
        }
        if let Some(tls) = self.tls_listen {
            if tls == self.public || tls == self.private {
                return Err("--tls-listen must differ from --public and --private".into());
            }
            // Both listen as plain TCP; a connection is known for TLS by the port it came in on.
            if tls.port() == self.public.port() {
                return Err("--tls-listen and --public must use different ports".into());
            }
        }
        if self.tls_certs.len() > TLS_CERTS_MAX {
            return Err(format!("at most {TLS_CERTS_MAX} --tls-cert"));
        }
        for (index, cert) in self.tls_certs.iter().enumerate() {
            if !self.domains.iter().any(|d| d.eq_ignore_ascii_case(&cert.domain)) {
                return Err(format!("--tls-cert for {:?}, which is not a --domain", cert.domain));
            }
            if self.tls_certs[..index].iter().any(|other| other.domain == cert.domain) {
                return Err(format!("two --tls-cert for {:?}", cert.domain));
            }
        }
        Ok(())
    }
}

const AFTER_HELP: &str = "\
Example, HTTPS for two domains beside plain HTTP:
  steady-lb --domain steady.page --domain steady.sh --public 0.0.0.0:80 --tls-listen 0.0.0.0:443 \\
    --tls-cert steady.page=/etc/steady/tls/steady.page/fullchain.pem,/etc/steady/tls/steady.page/privkey.pem \\
    --tls-cert steady.sh=/etc/steady/tls/steady.sh/fullchain.pem,/etc/steady/tls/steady.sh/privkey.pem

Signals: SIGHUP reloads the certificates in place; SIGTERM stops accepting and exits once the
requests in flight are done (at most --drain-timeout-ms); SIGINT stops at once. To change flags
or the binary without refusing a connection, start the new process with --upgrade and the same
--data, then send the old one SIGQUIT: it hands its sockets over and drains.";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from(std::iter::once("steady-lb").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
            .and_then(Config::validate)
    }

    #[test]
    fn tls_flags_are_checked_together() {
        let cert = "steady.page=/c.pem,/k.pem";
        assert!(config(&[]).is_ok());
        assert!(config(&["--domain", "steady.page", "--tls-listen", "127.0.0.1:8443", "--tls-cert", cert]).is_ok());
        let errors = [
            vec!["--tls-listen", "127.0.0.1:8443"],
            vec!["--domain", "steady.page", "--tls-cert", cert],
            vec!["--tls-listen", "127.0.0.1:8443", "--tls-cert", cert],
            vec!["--domain", "steady.page", "--tls-listen", "127.0.0.1:8080", "--tls-cert", cert],
            vec!["--domain", "steady.page", "--tls-listen", "127.0.0.1:8443", "--tls-cert", cert, "--tls-cert", cert],
        ];
        for args in errors {
            assert!(config(&args).is_err(), "{args:?}");
        }
    }
}

/// The protocol between the LB and host daemons for app traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HostProtocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
}
