//! The CLI's client for steady's API (the LB's private port).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use steady_proto::wire::{
    ApiError, AppStatus, CreatedToken, DbAnswer, DbQuery, DeployResult, EnvChange, EnvList, NewToken, RequestRecord,
    Rollback, TokenInfo, VersionInfo, HEADER_NEW_TOKEN, HEADER_URL,
};

use crate::exit::{Failure, AUTH, CONFLICT, FAILED, NETWORK, NOT_FOUND};

/// The API address `steady up` serves on by default.
pub const DEFAULT_API: &str = "127.0.0.1:8081";
const REQUEST_TIMEOUT_MS: u64 = 120_000;
const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Backups and restores move whole databases: they get longer than other calls.
const LONG_OPERATION_TIMEOUT: Duration = Duration::from_secs(900);

/// An API client, with the caller's token on every call.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// What `deploy` prints.
#[derive(Debug, Serialize)]
pub struct Deployed {
    #[serde(flatten)]
    pub result: DeployResult,
    pub url: String,
    /// For an anonymous run: the token that may see and delete the temporary app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// An app as `GET /v1/apps` lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListedApp {
    #[serde(flatten)]
    pub entry: steady_proto::wire::AppEntry,
    #[serde(default)]
    pub owner: String,
}

#[derive(Deserialize)]
struct AppList {
    apps: Vec<ListedApp>,
}

/// Who a token belongs to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Whoami {
    pub owner: String,
    pub role: steady_proto::wire::Role,
    pub token_id: String,
}

impl Client {
    /// A client for `api` (`host:port` or `http://host:port`), calling with `token`.
    pub fn new(api: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = crate::config::base_url(api);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .default_headers(Self::headers(token)?)
            .build()?;
        Ok(Self { base, http, token: token.map(str::to_owned) })
    }

    fn headers(token: Option<&str>) -> anyhow::Result<reqwest::header::HeaderMap> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Failure::new(crate::exit::USAGE, "bad_token", "the token holds characters a header cannot carry")
            })?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(headers)
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Who the token belongs to.
    pub async fn whoami(&self) -> anyhow::Result<Whoami> {
        self.get(format!("{}/v1/whoami", self.base)).await
    }

    /// The caller's tokens (every token, for an admin).
    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        #[derive(Deserialize)]
        struct Tokens {
            tokens: Vec<TokenInfo>,
        }
        Ok(self.get::<Tokens>(format!("{}/v1/tokens", self.base)).await?.tokens)
    }

    /// Makes a token.
    pub async fn create_token(&self, new: &NewToken) -> anyhow::Result<CreatedToken> {
        let request = self.http.post(format!("{}/v1/tokens", self.base)).json(new);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// Revokes token `id`.
    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<TokenInfo> {
        let response =
            self.http.delete(format!("{}/v1/tokens/{id}", self.base)).send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// The app's state and its public URL.
    pub async fn status_with_url(&self, name: &str) -> anyhow::Result<(AppStatus, String)> {
        let response = self.http.get(self.app_url(name, "")).send().await.map_err(|e| self.unreachable(e))?;
        let url = response.headers().get(HEADER_URL).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok((self.decode(response).await?, url))
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        Failure::new(
            NETWORK,
            "network",
            format!(
                "cannot reach the steady API at {}: {error}. Is `steady up` running? (set --api or STEADY_API)",
                self.base
            ),
        )
        .into()
    }

    fn app_url(&self, name: &str, rest: &str) -> String {
        format!("{}/v1/apps/{name}{rest}", self.base)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: String) -> anyhow::Result<T> {
        let response = self.http.get(url).send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// Uploads a bundle as the next version of `name`; `ttl_s` makes it a temporary app.
    pub async fn deploy(&self, name: &str, archive: Vec<u8>, ttl_s: Option<u64>) -> anyhow::Result<Deployed> {
        let query = ttl_s.map(|t| format!("?ttl_s={t}")).unwrap_or_default();
        let request = self.http.post(self.app_url(name, &format!("/deploy{query}")));
        let request = request.header("content-type", "application/x-tar").body(archive);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.deployed(response).await
    }

    async fn deployed(&self, response: reqwest::Response) -> anyhow::Result<Deployed> {
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (app_url, token) = (header(HEADER_URL).unwrap_or_default(), header(HEADER_NEW_TOKEN));
        let result: DeployResult = self.decode(response).await?;
        Ok(Deployed { result, url: app_url, token })
    }

    /// Makes an earlier version current again.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> anyhow::Result<Deployed> {
        let request = self.http.post(self.app_url(name, "/rollback")).json(&Rollback { version });
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.deployed(response).await
    }

    /// Ships every committed write of `name`'s databases to the replica now.
    pub async fn backup(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let request = self.http.post(self.app_url(name, "/backup")).timeout(LONG_OPERATION_TIMEOUT);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// Replaces `name`'s data with its replica as of `at` (RFC 3339), or the latest state.
    pub async fn restore(&self, name: &str, at: Option<&str>) -> anyhow::Result<serde_json::Value> {
        // An RFC 3339 time holds ':' and maybe '+', which a query must escape.
        let query = at.map(|at| format!("?at={}", at.replace(':', "%3A").replace('+', "%2B"))).unwrap_or_default();
        let url = self.app_url(name, &format!("/restore{query}"));
        let request = self.http.post(url).timeout(LONG_OPERATION_TIMEOUT);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// Every version attempt of `name`, newest first.
    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<VersionInfo>> {
        #[derive(Deserialize)]
        struct Versions {
            versions: Vec<VersionInfo>,
        }
        Ok(self.get::<Versions>(self.app_url(name, "/versions")).await?.versions)
    }

    /// The last requests of `name`.
    pub async fn requests(&self, name: &str, tail: usize) -> anyhow::Result<Vec<RequestRecord>> {
        #[derive(Deserialize)]
        struct Requests {
            requests: Vec<RequestRecord>,
        }
        let url = self.app_url(name, &format!("/requests?tail={tail}"));
        Ok(self.get::<Requests>(url).await?.requests)
    }

    /// Deletes `name` with its data.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let response = self.http.delete(self.app_url(name, "")).send().await.map_err(|e| self.unreachable(e))?;
        self.decode::<serde_json::Value>(response).await.map(drop)
    }

    /// Writes the app's log to `out`; with `follow` the stream stays open until interrupted.
    pub async fn logs(
        &self,
        name: &str,
        tail: usize,
        follow: bool,
        out: &mut impl std::io::Write,
        json: bool,
    ) -> anyhow::Result<()> {
        let url = self.app_url(name, &format!("/logs?tail={tail}&follow={follow}"));
        // A followed log has no end: no overall timeout, only the connect timeout.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .default_headers(Self::headers(self.token.as_deref())?)
            .build()?;
        let mut response = client.get(url).send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return self.decode::<serde_json::Value>(response).await.map(drop);
        }
        let mut lines = LogLines::default();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            if json {
                lines.write_json(&chunk, out)?;
            } else {
                out.write_all(&chunk)?;
            }
            out.flush()?;
        }
        lines.finish(json, out)?;
        Ok(())
    }

    /// The cluster's hosts with their slices and apps, as the slicer sees them.
    pub async fn hosts(&self) -> anyhow::Result<serde_json::Value> {
        let response =
            self.http.get(format!("{}/v1/hosts", self.base)).send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// `POST /v1/hosts/<host>/<action>` (drain, undrain).
    pub async fn host_action(&self, host: &str, action: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/v1/hosts/{host}/{action}", self.base);
        let response = self.http.post(url).send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// The caller's apps (every app, for an admin).
    pub async fn apps(&self) -> anyhow::Result<Vec<ListedApp>> {
        let response = self.http.get(format!("{}/v1/apps", self.base)).send().await.map_err(|e| self.unreachable(e))?;
        let list: AppList = self.decode(response).await?;
        Ok(list.apps)
    }

    /// The sources `version` of `name` was deployed with (the current one by default), as a
    /// tar archive.
    pub async fn sources(&self, name: &str, version: Option<u64>) -> anyhow::Result<Vec<u8>> {
        let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
        let response = self
            .http
            .get(self.app_url(name, &format!("/source{query}")))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return self.decode::<serde_json::Value>(response).await.map(|_| Vec::new());
        }
        Ok(response.bytes().await.map_err(|e| self.unreachable(e))?.to_vec())
    }

    /// The names of `name`'s environment variables, and their values when `reveal`.
    pub async fn env_list(&self, name: &str, reveal: bool) -> anyhow::Result<EnvList> {
        self.get(self.app_url(name, &format!("/env?reveal={reveal}"))).await
    }

    /// Sets `key` to `value` (`Some`) or removes it (`None`) in `name`'s environment.
    pub async fn env_change(&self, name: &str, key: &str, value: Option<&str>) -> anyhow::Result<EnvChange> {
        let url = self.app_url(name, &format!("/env/{key}"));
        let request = match value {
            Some(value) => {
                self.http.put(url).header("content-type", "text/plain; charset=utf-8").body(value.to_owned())
            }
            None => self.http.delete(url),
        };
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    /// Runs one SQL statement on `name`'s database.
    pub async fn db(&self, name: &str, query: &DbQuery) -> anyhow::Result<DbAnswer> {
        let request = self.http.post(self.app_url(name, "/db")).json(query);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    async fn decode<T: serde::de::DeserializeOwned>(&self, response: reqwest::Response) -> anyhow::Result<T> {
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| anyhow::anyhow!("the API answered {status} with unexpected content: {e}"));
        }
        let code = match status.as_u16() {
            401 | 403 => AUTH,
            404 => NOT_FOUND,
            409 => CONFLICT,
            502..=504 => NETWORK,
            _ => FAILED,
        };
        let detail: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let error: Option<ApiError> = serde_json::from_value(detail.clone()).ok();
        let (kind, message) = match error {
            Some(e) => (e.code, e.message),
            None => {
                ("http".to_owned(), format!("the API answered {status}: {}", String::from_utf8_lossy(&body).trim()))
            }
        };
        let mut failure = Failure::new(code, &kind, message);
        if let Some(lines) = detail.get("log").and_then(|l| l.as_array()) {
            failure.detail = lines.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect();
        }
        Err(failure.into())
    }
}

/// Longest log line `--json` turns into one object; a longer one is cut there.
const LOG_LINE_BYTES_MAX: usize = 64 * 1024;

/// Splits a log stream into lines for `--json` (one object per line).
#[derive(Default)]
struct LogLines {
    partial: Vec<u8>,
}

impl LogLines {
    fn write_json(&mut self, chunk: &[u8], out: &mut impl std::io::Write) -> std::io::Result<()> {
        for &byte in chunk {
            if byte == b'\n' {
                self.emit(out)?;
            } else if self.partial.len() < LOG_LINE_BYTES_MAX {
                self.partial.push(byte);
            }
        }
        Ok(())
    }

    fn emit(&mut self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let line = String::from_utf8_lossy(&self.partial);
        writeln!(out, "{}", serde_json::json!({ "line": line }))?;
        self.partial.clear();
        Ok(())
    }

    fn finish(&mut self, json: bool, out: &mut impl std::io::Write) -> std::io::Result<()> {
        if json && !self.partial.is_empty() {
            self.emit(out)?;
        }
        Ok(())
    }
}
