//! The S3 store: objects in a bucket under a prefix, on AWS or any S3-compatible server.
//!
//! The client is built from [`S3Config`] alone when the configuration names both keys: no
//! credential, region, endpoint, timeout, retry or checksum setting comes from an environment
//! variable, a profile file or a metadata service, so a test or a daemon with explicit settings
//! behaves the same on every machine (the SDK still reads a few variables for its user-agent and
//! tracing headers). Without keys, only the credentials
//! come from the standard AWS chain; region, endpoint, timeouts and retries still come from the
//! configuration. TLS is rustls on ring with the system's root certificates.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider, SharedHttpClient};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::{Bytes, BytesMut};

use crate::{
    check_size, check_size_bytes, validate_key, validate_prefix, BlobError, BlobStore, S3Config, BLOB_SIZE_MAX_BYTES,
    LIST_KEYS_MAX,
};

/// The first retry waits about this long (with jitter), doubling up to [`BACKOFF_MAX_MS`].
const BACKOFF_INITIAL_MS: u64 = 200;

/// The longest wait between two attempts.
const BACKOFF_MAX_MS: u64 = 5_000;

/// Keys per listing page (S3's own maximum).
const LIST_PAGE_KEYS_MAX: i32 = 1_000;

/// The most listing pages read before [`BlobError::TooManyKeys`]; with full pages that is
/// [`LIST_KEYS_MAX`], and a server that sends short pages cannot keep a listing going forever.
const LIST_PAGES_MAX: usize = LIST_KEYS_MAX / LIST_PAGE_KEYS_MAX as usize + 1;

/// A [`BlobStore`] in an S3 bucket.
#[derive(Clone)]
pub struct S3 {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or ending with one slash.
    prefix: String,
    /// For error messages: the endpoint URL, or AWS S3 and the region.
    endpoint: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3 {
    /// Builds a client for the bucket in `config` (after validating it). Nothing is sent yet:
    /// a wrong endpoint or wrong keys show up as errors of the first operation.
    pub async fn connect(config: &S3Config) -> Result<Self, BlobError> {
        config.validate()?;
        let http_client =
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let region = Region::new(config.region.clone());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .operation_timeout(Duration::from_millis(config.operation_timeout_ms))
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(config.attempts_max)
            .with_initial_backoff(Duration::from_millis(BACKOFF_INITIAL_MS))
            .with_max_backoff(Duration::from_millis(BACKOFF_MAX_MS));
        let credentials = credentials(config, &http_client, &region, &timeouts, &retries).await;
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .http_client(http_client)
            .timeout_config(timeouts)
            .retry_config(retries)
            .force_path_style(config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let endpoint = match &config.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => format!("AWS S3 in {}", config.region),
        };
        Ok(S3 {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix_normalized(),
            endpoint,
        })
    }

    /// The object key in the bucket for a store key.
    fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Turns an SDK error into a [`BlobError`] of the right kind.
    fn classify<E>(&self, operation: &'static str, key: &str, error: SdkError<E>) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let key = key.to_owned();
        let status = error.raw_response().map(|response| response.status().as_u16());
        let code = error.code().map(str::to_owned).or(status.map(|status| format!("HTTP {status}")));
        let code = code.unwrap_or_else(|| "no answer".to_owned());
        let message = match (error.message(), status) {
            (Some(message), _) => message.to_owned(),
            // HEAD answers have no body, so no S3 error code or message.
            (None, Some(status)) => format!("the server answered HTTP {status} without details"),
            (None, None) => error_chain(&error),
        };
        match &error {
            SdkError::DispatchFailure(_) if caused_by_credentials(&error) => {
                BlobError::AccessDenied { operation, key, code: "CredentialsUnavailable".to_owned(), message }
            }
            SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
                BlobError::Unreachable { operation, key, endpoint: self.endpoint.clone(), message }
            }
            SdkError::TimeoutError(_) => BlobError::Timeout { operation, key, message },
            _ if is_access_denied(&code, status) => BlobError::AccessDenied { operation, key, code, message },
            _ if code == "NoSuchBucket" => BlobError::BucketMissing { operation, key, bucket: self.bucket.clone() },
            _ if matches!(code.as_str(), "NoSuchKey" | "NotFound") || status == Some(404) => {
                BlobError::NotFound { operation, key }
            }
            _ => BlobError::S3 { operation, key, code, message },
        }
    }
}

/// The configured keys; or, when there are none, the standard AWS chain (environment, profile
/// files, web identity, container and instance metadata) using the same HTTP client, region,
/// timeouts and retries.
async fn credentials(
    config: &S3Config,
    http_client: &SharedHttpClient,
    region: &Region,
    timeouts: &TimeoutConfig,
    retries: &RetryConfig,
) -> SharedCredentialsProvider {
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        return SharedCredentialsProvider::new(Credentials::new(id, secret, None, None, "steady-blob configuration"));
    }
    assert!(!config.has_explicit_credentials());
    let provider_config = ProviderConfig::default()
        .with_http_client(http_client.clone())
        .with_region(Some(region.clone()))
        .with_timeout_config(timeouts.clone())
        .with_retry_config(retries.clone());
    SharedCredentialsProvider::new(DefaultCredentialsChain::builder().configure(provider_config).build().await)
}

/// An error and its causes on one line ("dispatch failure: io error: … Connection refused"),
/// without the SDK's debug dump. Bounded: the chains seen are under ten deep.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    const DEPTH_MAX: usize = 16;
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    for _ in 0..DEPTH_MAX {
        let Some(error) = current else { break };
        let part = error.to_string();
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        current = error.source();
    }
    parts.join(": ")
}

/// Whether the credentials could not be loaded (none in the chain, or a provider failed), which
/// the SDK reports as a dispatch failure before anything is sent.
fn caused_by_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    const DEPTH_MAX: usize = 16;
    let mut current = Some(error);
    for _ in 0..DEPTH_MAX {
        let Some(error) = current else { return false };
        if error.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Whether an S3 error code or status means the credentials or permissions were refused.
fn is_access_denied(code: &str, status: Option<u16>) -> bool {
    const CODES: [&str; 7] = [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
    ];
    CODES.contains(&code) || status == Some(403)
}

#[async_trait]
impl BlobStore for S3 {
    async fn put_key(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        validate_key(key)?;
        check_size("put", key, &bytes)?;
        let request = self.client.put_object().bucket(&self.bucket).key(self.object_key(key));
        match request.body(ByteStream::from(bytes)).send().await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.classify("put", key, error)),
        }
    }

    async fn get_key(&self, key: &str) -> Result<Bytes, BlobError> {
        validate_key(key)?;
        let request = self.client.get_object().bucket(&self.bucket).key(self.object_key(key));
        let mut output = request.send().await.map_err(|error| self.classify("get", key, error))?;
        // Refuse by the announced length before reading, then hold the body to the limit anyway.
        let length_bytes = output.content_length().unwrap_or(0).max(0) as u64;
        check_size_bytes("get", key, length_bytes)?;
        let mut bytes = BytesMut::with_capacity(length_bytes as usize);
        while let Some(chunk) = output.body.next().await {
            let chunk = chunk.map_err(|error| BlobError::S3 {
                operation: "get",
                key: key.to_owned(),
                code: "body".to_owned(),
                message: error_chain(&error),
            })?;
            check_size_bytes("get", key, (bytes.len() + chunk.len()) as u64)?;
            bytes.extend_from_slice(&chunk);
        }
        assert!(bytes.len() as u64 <= BLOB_SIZE_MAX_BYTES);
        Ok(bytes.freeze())
    }

    async fn exists_key(&self, key: &str) -> Result<bool, BlobError> {
        validate_key(key)?;
        let request = self.client.head_object().bucket(&self.bucket).key(self.object_key(key));
        match request.send().await {
            Ok(_) => Ok(true),
            Err(error) => match self.classify("exists", key, error) {
                BlobError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        validate_prefix(prefix)?;
        let too_many = || BlobError::TooManyKeys { prefix: prefix.to_owned(), limit: LIST_KEYS_MAX };
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        for _page in 0..LIST_PAGES_MAX {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.object_key(prefix))
                .max_keys(LIST_PAGE_KEYS_MAX)
                .set_continuation_token(continuation.take());
            let output = request.send().await.map_err(|error| self.classify("list", prefix, error))?;
            for object in output.contents() {
                let Some(key) = object.key().and_then(|key| key.strip_prefix(&self.prefix)) else { continue };
                // Objects written by other tools may have names that are not keys; skip them.
                if validate_key(key).is_err() {
                    continue;
                }
                if keys.len() == LIST_KEYS_MAX {
                    return Err(too_many());
                }
                keys.push(key.to_owned());
            }
            match output.next_continuation_token() {
                Some(token) if output.is_truncated() == Some(true) => continuation = Some(token.to_owned()),
                _ => {
                    keys.sort();
                    return Ok(keys);
                }
            }
        }
        Err(too_many())
    }

    async fn delete_key(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        let request = self.client.delete_object().bucket(&self.bucket).key(self.object_key(key));
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) => match self.classify("delete", key, error) {
                BlobError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}
