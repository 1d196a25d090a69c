//! Keeps [`Routes`] fresh by long-polling the slicer's `/v1/table?after=N`.
//!
//! On any failure the LB keeps its last table and retries with capped backoff, so a slicer
//! outage stops table changes, not traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use steady_proto::wire::RoutingTable;

use crate::routing::{RouteTable, Routes};

/// How long one long-poll asks the slicer to wait for a change.
const WATCH_WAIT_MS: u64 = 25_000;
/// Client-side bound on one long-poll (the wait plus slack).
const WATCH_REQUEST_TIMEOUT_MS: u64 = 35_000;
const RETRY_MS_MIN: u64 = 100;
const RETRY_MS_MAX: u64 = 5_000;

/// The background service that watches the slicer.
pub struct SlicerWatch {
    slicer: SocketAddr,
    routes: Arc<Routes>,
}

impl SlicerWatch {
    /// Watches the slicer at `slicer`, installing tables into `routes`.
    pub fn new(slicer: SocketAddr, routes: Arc<Routes>) -> Self {
        Self { slicer, routes }
    }

    async fn fetch(&self, http: &reqwest::Client, after: u64) -> Result<RoutingTable, String> {
        let url = format!("http://{}/v1/table?after={after}&wait_ms={WATCH_WAIT_MS}", self.slicer);
        get_table(http, &url).await
    }
}

async fn get_table(http: &reqwest::Client, url: &str) -> Result<RoutingTable, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("slicer answered {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// Fetches the first routing table before the LB listens, so a restarted LB never answers
/// from an empty table; gives up (keeping the table empty) after `wait_ms`.
pub fn fetch_first(slicer: SocketAddr, routes: &Routes, wait_ms: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(wait_ms.max(1))).build().expect("client");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        while tokio::time::Instant::now() < deadline {
            match get_table(&http, &format!("http://{slicer}/v1/table"))
                .await
                .and_then(|table| RouteTable::from_wire(&table))
            {
                Ok(table) => {
                    tracing::info!(version = table.version, "first routing table installed");
                    routes.install(table);
                    return;
                }
                Err(error) => tracing::warn!(%error, "no routing table yet"),
            }
            tokio::time::sleep(Duration::from_millis(RETRY_MS_MIN)).await;
        }
        tracing::warn!(wait_ms, "starting without a routing table: answering 503 until one arrives");
    });
}

#[async_trait]
impl BackgroundService for SlicerWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(WATCH_REQUEST_TIMEOUT_MS))
            .build()
            .expect("static client config");
        let mut retry_ms = RETRY_MS_MIN;
        loop {
            let after = self.routes.current().version;
            let outcome = tokio::select! {
                outcome = self.fetch(&http, after) => outcome,
                _ = shutdown.changed() => return,
            };
            match outcome.and_then(|table| RouteTable::from_wire(&table)) {
                Ok(table) => {
                    retry_ms = RETRY_MS_MIN;
                    let version = table.version;
                    if self.routes.install(table) {
                        tracing::info!(version, "routing table installed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_ms, "slicer watch failed; keeping the last table");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {},
                        _ = shutdown.changed() => return,
                    }
                    retry_ms = (retry_ms * 2).min(RETRY_MS_MAX);
                }
            }
        }
    }
}
