//! Command-line configuration of `steady-lb`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Longest the private listener holds a deploy answer while waiting for the table that
/// includes the app.
pub const DEPLOY_TABLE_WAIT_MS: u64 = 3_000;
/// Timeout for connecting to a host or the slicer.
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// `steady-lb`: routes app traffic and API calls to the right host.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
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
    /// Worker threads per listener.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
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
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be between 1 and 256".into());
        }
        if self.uri_bytes_max == 0 || self.header_bytes_max == 0 || self.header_count_max == 0 {
            return Err("--uri-bytes-max, --header-bytes-max and --header-count-max must be positive".into());
        }
        if self.public == self.private {
            return Err("--public and --private must differ".into());
        }
        if let Some(bad) = self.domains.iter().find(|d| d.is_empty() || d.starts_with('.') || d.contains(':')) {
            return Err(format!("--domain {bad:?} is not a domain name"));
        }
        Ok(self)
    }
}
