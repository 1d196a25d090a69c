//! This host's relation with the slicer: registration and app records.

use std::time::Duration;

use steady_proto::wire::{ApiError, AppDeployed, Heartbeat, HostEntry, RegisterHost, RoutingTable, TableVersion};

/// Attempts to register before giving up at start (the slicer may still be starting).
const REGISTER_ATTEMPTS_MAX: u32 = 100;
const REGISTER_RETRY_MS: u64 = 200;
const SLICER_TIMEOUT_MS: u64 = 10_000;

/// Failures talking to the slicer.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the slicer at {0} is unreachable: {1}")]
    Unreachable(String, reqwest::Error),
    #[error("the slicer refused: {0}")]
    Refused(String),
    #[error("this host does not own the app (the slicer says: {0})")]
    NotOwner(String),
}

/// Client for the slicer's API, bound to this host's identity.
pub struct Membership {
    base_url: String,
    host: HostEntry,
    http: reqwest::Client,
}

impl Membership {
    /// A client for the slicer at `slicer` (`host:port`) acting as `host`.
    pub fn new(slicer: &str, host: HostEntry) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(SLICER_TIMEOUT_MS))
            .build()
            .expect("static client config");
        Self { base_url: format!("http://{slicer}/v1"), host, http }
    }

    /// Registers (or re-registers) this host, retrying while the slicer starts.
    pub async fn register(&self) -> Result<RoutingTable, MembershipError> {
        let url = format!("{}/hosts/register", self.base_url);
        let body = RegisterHost { host: self.host.clone() };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.http.post(&url).json(&body).send().await {
                Ok(response) if response.status().is_success() => {
                    return response.json().await.map_err(|e| MembershipError::Unreachable(url.clone(), e));
                }
                Ok(response) => return Err(MembershipError::Refused(refusal(response).await)),
                Err(error) if attempt >= REGISTER_ATTEMPTS_MAX => return Err(MembershipError::Unreachable(url, error)),
                Err(_) => tokio::time::sleep(Duration::from_millis(REGISTER_RETRY_MS)).await,
            }
        }
    }

    /// Tells the slicer this host is alive. `Ok(false)` means the slicer does not know it
    /// (declared dead, or a slicer with fresh data): register again.
    pub async fn heartbeat(&self, load: &Heartbeat) -> Result<bool, MembershipError> {
        let url = format!("{}/hosts/{}/heartbeat", self.base_url, self.host.id);
        let request = self.http.post(&url).json(load);
        let response = request.send().await.map_err(|e| MembershipError::Unreachable(url.clone(), e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        table_version(url, response).await.map(|_| true)
    }

    /// Waits (at most `wait_ms`) for a routing table newer than `after`; `None` if none came.
    pub async fn next_table(&self, after: u64, wait_ms: u64) -> Result<Option<RoutingTable>, MembershipError> {
        let url = format!("{}/table?after={after}&wait_ms={wait_ms}", self.base_url);
        let request = self.http.get(&url).timeout(Duration::from_millis(wait_ms + SLICER_TIMEOUT_MS));
        let response = request.send().await.map_err(|e| MembershipError::Unreachable(url.clone(), e))?;
        if !response.status().is_success() {
            return Err(MembershipError::Refused(refusal(response).await));
        }
        let table: RoutingTable = response.json().await.map_err(|e| MembershipError::Unreachable(url, e))?;
        Ok((table.version > after).then_some(table))
    }

    /// Tells the slicer this host now serves `app` at `version`; returns the table version
    /// that includes it.
    pub async fn app_deployed(
        &self,
        app: &str,
        version: u64,
        bundle: &str,
        expires_at_ms: Option<u64>,
    ) -> Result<u64, MembershipError> {
        let url = format!("{}/apps/{app}", self.base_url);
        let body =
            AppDeployed { host_id: self.host.id.clone(), version, bundle: Some(bundle.to_owned()), expires_at_ms };
        let response =
            self.http.put(&url).json(&body).send().await.map_err(|e| MembershipError::Unreachable(url.clone(), e))?;
        table_version(url, response).await
    }
}

impl Membership {
    /// Tells the slicer this host let `app` go to its slice's new owner (after a final sync).
    pub async fn app_released(&self, app: &str) -> Result<u64, MembershipError> {
        let url = format!("{}/apps/{app}/release?host_id={}", self.base_url, self.host.id);
        let response = self.http.post(&url).send().await.map_err(|e| MembershipError::Unreachable(url.clone(), e))?;
        table_version(url, response).await
    }

    /// Tells the slicer this host no longer serves `app`; the app leaves the routing table.
    pub async fn app_deleted(&self, app: &str) -> Result<u64, MembershipError> {
        let url = format!("{}/apps/{app}?host_id={}", self.base_url, self.host.id);
        let response = self.http.delete(&url).send().await.map_err(|e| MembershipError::Unreachable(url.clone(), e))?;
        table_version(url, response).await
    }
}

/// The table version in a slicer's answer to a change, or why there is none.
async fn table_version(url: String, response: reqwest::Response) -> Result<u64, MembershipError> {
    if response.status() == reqwest::StatusCode::CONFLICT {
        return Err(MembershipError::NotOwner(refusal(response).await));
    }
    if !response.status().is_success() {
        return Err(MembershipError::Refused(refusal(response).await));
    }
    let answer: TableVersion = response.json().await.map_err(|e| MembershipError::Unreachable(url, e))?;
    Ok(answer.version)
}

async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    match response.json::<ApiError>().await {
        Ok(error) => error.message,
        Err(_) => format!("HTTP {status}"),
    }
}
