//! The `HEAD` probe of a moving app's old host: "do you still serve this app?"
//!
//! During a move the table names both hosts. The old host answers 200 while it serves the
//! app and 404 once it has begun to hand it over (from then on it forwards whatever still
//! reaches it). A probe that fails or times out counts as "gone": the new host holds requests
//! until the app is up, so sending there is never wrong, only sometimes slower.

use std::net::SocketAddr;
use std::time::Duration;

use steady_proto::wire::{HEADER_APP, HEADER_PROBE};

use crate::metrics::{Metrics, ProbeLabels, ProbeOutcome};

/// Bound on one probe.
const PROBE_TIMEOUT_MS: u64 = 300;

/// Sends probes over a small keep-alive pool (shared by clones).
#[derive(Clone)]
pub struct Prober {
    http: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(PROBE_TIMEOUT_MS))
            .pool_max_idle_per_host(8)
            .build()
            .expect("static client config");
        Self { http }
    }
}

impl Prober {
    /// Whether the host at `ingress` still serves `app`.
    pub async fn serves(&self, ingress: SocketAddr, app: &str, metrics: &Metrics) -> bool {
        let request = self.http.head(format!("http://{ingress}/")).header(HEADER_APP, app).header(HEADER_PROBE, "1");
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => ProbeOutcome::Live,
            Ok(_) => ProbeOutcome::Gone,
            Err(error) => {
                tracing::debug!(%ingress, %app, %error, "probe failed");
                ProbeOutcome::Failed
            }
        };
        metrics.probes.get_or_create(&ProbeLabels { outcome }).inc();
        outcome == ProbeOutcome::Live
    }
}
