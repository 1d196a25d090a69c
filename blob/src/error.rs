//! The one error type of the blob store. Each variant is a kind a caller may act on differently
//! (retry, fix the configuration, treat as absent, alert) and carries the operation and key it
//! happened on, so a message in a log says what failed without a backtrace.

use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;

/// What went wrong in a blob store operation.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The configuration was refused by [`crate::BlobConfig::validate`].
    #[error("invalid blob store configuration: {0}")]
    Config(#[from] ConfigError),

    /// A key or listing prefix broke the rules of [`crate::validate_key`].
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A blob address that is not 64 lowercase hex digits.
    #[error("invalid blob digest {digest:?}: expected 64 lowercase hex digits (SHA-256)")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },

    /// No object under the key.
    #[error("{operation} {key:?}: not found")]
    NotFound {
        /// The operation (`get`, `put`, …).
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
    },

    /// The configured S3 bucket does not exist (a configuration problem, not a missing object).
    #[error("{operation} {key:?}: the bucket {bucket:?} does not exist")]
    BucketMissing {
        /// The operation.
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
        /// The configured bucket.
        bucket: String,
    },

    /// An object over [`crate::BLOB_SIZE_MAX_BYTES`], refused before it was written or read whole.
    #[error("{operation} {key:?}: {size_bytes} bytes is over the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The operation.
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
        /// The size seen (for a read, at least this much).
        size_bytes: u64,
        /// The limit, [`crate::BLOB_SIZE_MAX_BYTES`].
        limit_bytes: u64,
    },

    /// A listing longer than [`crate::LIST_KEYS_MAX`].
    #[error("list {prefix:?}: more than {limit} keys")]
    TooManyKeys {
        /// The prefix listed.
        prefix: String,
        /// The limit, [`crate::LIST_KEYS_MAX`].
        limit: usize,
    },

    /// A blob whose content does not hash to its address: the stored object is corrupt or was
    /// overwritten. Its content is never returned.
    #[error("get {digest:?}: the stored content has SHA-256 {actual}; the object is corrupt")]
    DigestMismatch {
        /// The address asked for.
        digest: String,
        /// The SHA-256 of what was read.
        actual: String,
    },

    /// The endpoint could not be reached: connection refused, no route, DNS or TLS failure, or
    /// no connection within the connect timeout (after the configured retries).
    #[error("{operation} {key:?}: cannot reach {endpoint}: {message}")]
    Unreachable {
        /// The operation.
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
        /// The endpoint tried (the configured URL, or AWS S3 and the region).
        endpoint: String,
        /// The underlying error, with its causes.
        message: String,
    },

    /// The server refused the credentials or the request: wrong or unknown keys, a bad
    /// signature, expired credentials, or a policy that denies the operation; or no credentials
    /// could be found at all.
    #[error("{operation} {key:?}: access denied ({code}): {message}")]
    AccessDenied {
        /// The operation.
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
        /// The S3 error code (`AccessDenied`, `SignatureDoesNotMatch`, …) or the HTTP status.
        code: String,
        /// The server's message.
        message: String,
    },

    /// The operation did not finish within the operation timeout (the endpoint was reachable).
    #[error("{operation} {key:?}: timed out: {message}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
        /// The underlying error.
        message: String,
    },

    /// A local file system error.
    #[error("{operation} {path:?}: {source}")]
    Io {
        /// The operation.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },

    /// Any other S3 failure: a server error, a malformed answer, a body cut short.
    #[error("{operation} {key:?}: S3 error ({code}): {message}")]
    S3 {
        /// The operation.
        operation: &'static str,
        /// The key, relative to the store.
        key: String,
        /// The S3 error code or HTTP status, when there was an answer.
        code: String,
        /// The error, with its causes.
        message: String,
    },
}
