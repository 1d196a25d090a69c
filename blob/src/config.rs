//! Where blobs live, as configuration: a local directory or an S3 bucket. Every check is in
//! [`BlobConfig::validate`], so a daemon can refuse a bad file before it opens anything.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The region when none is configured.
pub const REGION_DEFAULT: &str = "us-east-1";

/// How long to wait for a TCP (and TLS) connection to the S3 endpoint by default.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;

/// How long one S3 operation may take by default, retries included (64 MiB at ~2 MB/s).
pub const OPERATION_TIMEOUT_MS_DEFAULT: u64 = 60_000;

/// How many attempts an S3 operation gets by default (the first one and two retries).
pub const ATTEMPTS_MAX_DEFAULT: u32 = 3;

/// The most attempts an S3 operation may be configured to get.
pub const ATTEMPTS_LIMIT: u32 = 10;

/// Where the blob store keeps its objects, selected by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BlobConfig {
    /// Files under a directory on this machine (`kind: local`).
    Local(LocalConfig),
    /// An S3 bucket, on AWS or any S3-compatible server (`kind: s3`).
    S3(S3Config),
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig::Local(LocalConfig::default())
    }
}

/// A local directory store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// The root directory; created when missing. Relative paths are relative to the daemon's
    /// working directory. Default: `blobs`.
    pub path: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { path: PathBuf::from("blobs") }
    }
}

/// An S3 bucket store.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The bucket name (required): 3 to 63 characters of a-z, 0-9, '.' and '-'.
    pub bucket: String,
    /// A key prefix inside the bucket, such as `steady/prod/`; no leading slash. A trailing
    /// slash is added when missing. Default: empty (keys at the top of the bucket).
    pub prefix: String,
    /// The region requests are signed for. Default: `us-east-1`, which S3-compatible servers
    /// usually expect.
    pub region: String,
    /// The endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`); absent for AWS.
    pub endpoint: Option<String>,
    /// Put the bucket in the path (`<endpoint>/<bucket>/<key>`) instead of the host name; most
    /// S3-compatible servers need this. Default: false.
    pub path_style: bool,
    /// The access key id. With `secret_access_key`, these are the only credentials used and the
    /// environment is not read; when both are absent, the standard AWS chain is used
    /// (environment, profile files, web identity, container and instance metadata).
    pub access_key_id: Option<String>,
    /// The secret access key that goes with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// How long to wait for a connection to the endpoint, in milliseconds. Default: 3,000.
    pub connect_timeout_ms: u64,
    /// How long one operation may take in all, retries included, in milliseconds. Default: 60,000.
    pub operation_timeout_ms: u64,
    /// How many attempts an operation gets (1 means no retry), at most 10. Default: 3.
    pub attempts_max: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            region: REGION_DEFAULT.to_owned(),
            endpoint: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            operation_timeout_ms: OPERATION_TIMEOUT_MS_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
        }
    }
}

/// The secret never reaches a log through `{:?}`.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("operation_timeout_ms", &self.operation_timeout_ms)
            .field("attempts_max", &self.attempts_max)
            .finish()
    }
}

/// Why a [`BlobConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `kind: local` with an empty `path`.
    #[error("local: path is empty")]
    PathEmpty,
    /// `kind: s3` without a bucket.
    #[error("s3: bucket is empty")]
    BucketEmpty,
    /// A bucket name S3 would refuse.
    #[error("s3: bucket {bucket:?}: {reason}")]
    BucketInvalid {
        /// The bucket as configured.
        bucket: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A prefix that is not a relative key path.
    #[error("s3: prefix {prefix:?}: {reason}")]
    PrefixInvalid {
        /// The prefix as configured.
        prefix: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// An empty region or one with characters no region has.
    #[error("s3: region {region:?} is not a region name (a-z, 0-9, '-')")]
    RegionInvalid {
        /// The region as configured.
        region: String,
    },
    /// An endpoint that is not an http(s) URL of a server.
    #[error("s3: endpoint {endpoint:?}: {reason}")]
    EndpointInvalid {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the two keys, or an empty one.
    #[error("s3: access_key_id and secret_access_key must both be set (and not empty) or both be absent")]
    CredentialsIncomplete,
    /// A zero timeout, or a connect timeout longer than the operation timeout.
    #[error("s3: timeouts must be above zero and connect_timeout_ms ({connect_timeout_ms}) at most operation_timeout_ms ({operation_timeout_ms})")]
    TimeoutsInvalid {
        /// The connect timeout as configured.
        connect_timeout_ms: u64,
        /// The operation timeout as configured.
        operation_timeout_ms: u64,
    },
    /// `attempts_max` outside 1..=[`ATTEMPTS_LIMIT`].
    #[error("s3: attempts_max {attempts_max} is outside 1..={ATTEMPTS_LIMIT}")]
    AttemptsInvalid {
        /// The value as configured.
        attempts_max: u32,
    },
}

impl BlobConfig {
    /// Checks the whole configuration; the only place that does.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            BlobConfig::Local(local) if local.path.as_os_str().is_empty() => Err(ConfigError::PathEmpty),
            BlobConfig::Local(_) => Ok(()),
            BlobConfig::S3(s3) => s3.validate(),
        }
    }
}

impl S3Config {
    /// Checks the S3 settings (called by [`BlobConfig::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_bucket(&self.bucket)?;
        validate_prefix(&self.prefix)?;
        let region_valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        if self.region.is_empty() || !self.region.bytes().all(region_valid) {
            return Err(ConfigError::RegionInvalid { region: self.region.clone() });
        }
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint(endpoint)?;
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (None, None) => {}
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {}
            _ => return Err(ConfigError::CredentialsIncomplete),
        }
        let (connect_timeout_ms, operation_timeout_ms) = (self.connect_timeout_ms, self.operation_timeout_ms);
        if connect_timeout_ms == 0 || connect_timeout_ms > operation_timeout_ms {
            return Err(ConfigError::TimeoutsInvalid { connect_timeout_ms, operation_timeout_ms });
        }
        if self.attempts_max == 0 || self.attempts_max > ATTEMPTS_LIMIT {
            return Err(ConfigError::AttemptsInvalid { attempts_max: self.attempts_max });
        }
        Ok(())
    }

    /// The prefix as used in object keys: empty, or ending with exactly one slash.
    pub(crate) fn prefix_normalized(&self) -> String {
        let prefix = self.prefix.trim_end_matches('/');
        if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        }
    }

    /// Whether both keys are configured, so the environment is not consulted.
    pub(crate) fn has_explicit_credentials(&self) -> bool {
        self.access_key_id.is_some() && self.secret_access_key.is_some()
    }
}

fn validate_bucket(bucket: &str) -> Result<(), ConfigError> {
    let invalid = |reason| Err(ConfigError::BucketInvalid { bucket: bucket.to_owned(), reason });
    if bucket.is_empty() {
        return Err(ConfigError::BucketEmpty);
    }
    if bucket.len() < 3 || bucket.len() > 63 {
        return invalid("must be 3 to 63 characters long");
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    if !bucket.bytes().all(allowed) {
        return invalid("only a-z, 0-9, '.' and '-' are allowed");
    }
    let edge_valid = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_valid(bucket.bytes().next()) || !edge_valid(bucket.bytes().last()) {
        return invalid("must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return invalid("must not contain '..'");
    }
    Ok(())
}

fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| Err(ConfigError::PrefixInvalid { prefix: prefix.to_owned(), reason });
    if prefix.starts_with('/') {
        return invalid("must not start with a slash (S3 keys are relative)".to_owned());
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(());
    }
    match crate::validate_key(trimmed) {
        Ok(()) => Ok(()),
        Err(crate::BlobError::InvalidKey { reason, .. }) => invalid(reason.to_owned()),
        Err(other) => invalid(other.to_string()),
    }
}

fn validate_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| Err(ConfigError::EndpointInvalid { endpoint: endpoint.to_owned(), reason });
    let url = match url::Url::parse(endpoint) {
        Ok(url) => url,
        Err(error) => return invalid(format!("not a URL: {error}")),
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return invalid(format!("the scheme must be http or https, not {:?}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return invalid("no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("credentials belong in access_key_id and secret_access_key, not the URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return invalid("no query or fragment allowed".to_owned());
    }
    if url.path() != "/" && !url.path().is_empty() {
        return invalid("no path allowed (put key paths in prefix)".to_owned());
    }
    Ok(())
}
