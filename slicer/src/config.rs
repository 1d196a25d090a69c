//! Command-line configuration of `steady-slicer`, with defaults and validation in one place.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Longest a table watcher may wait for a newer version in one request.
pub const WATCH_WAIT_MS_MAX: u64 = 60_000;

/// `steady-slicer`: host registry, slice assignment and the routing table.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about, long_about = None)]
pub struct Config {
    /// Address of the slicer's HTTP API (`:0` picks a free port; see --ready-file).
    #[arg(long, default_value = "127.0.0.1:8082", env = "STEADY_SLICER_LISTEN")]
    pub listen: SocketAddr,
    /// Directory for the slicer's SQLite database.
    #[arg(long, default_value = ".steady/slicer")]
    pub data: PathBuf,
    /// The admin token's file: read at start, or made (mode 0600) if it does not exist.
    /// Defaults to `<data>/admin.token`. Give its content to `steady login` on an operator's
    /// machine; `steady token create --owner NAME` then makes tokens for the platform's users.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Once listening, write `{"api": "<addr>"}` to this file (atomically), for supervisors.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// A host that has not sent a heartbeat for this long is declared dead and its slices go
    /// to the others (its apps restore from their replicas there). The last host never is.
    /// Hosts heartbeat every second by default, so this is four missed heartbeats.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(200..=3_600_000))]
    pub host_timeout_ms: u64,
    /// Moves under way at once over the whole cluster (a big change is spread over time).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub moves_concurrent_max: u64,
    /// How often the slicer rebalances by the load hosts report (0 turns it off; joins, leaves
    /// and drains still balance by app count).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub rebalance_interval_ms: u64,
    /// New moves begun per second at most.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub move_starts_per_second: u32,
}

impl Config {
    /// Where the admin token is kept.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| self.data.join("admin.token"))
    }

    /// The mover's limits.
    pub fn mover(&self) -> crate::mover::MoverConfig {
        crate::mover::MoverConfig {
            concurrent_max: self.moves_concurrent_max as usize,
            starts_per_second: self.move_starts_per_second,
        }
    }
}
