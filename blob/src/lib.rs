//! The blob store behind bundles and replicas: immutable blobs addressed by their SHA-256, and
//! plain keyed objects for a replica or backup layer, kept either in a local directory
//! ([`LocalDir`]) or in an S3 bucket on AWS or any S3-compatible server ([`S3`]). Callers see
//! one interface, [`BlobStore`], and pick the implementation with a [`BlobConfig`] through
//! [`open`]. Every read is bounded by [`BLOB_SIZE_MAX_BYTES`], every blob read is checked
//! against its address, and no write leaves a partial object behind.

#![warn(missing_docs)]

mod config;
mod error;
mod local;
mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use config::{
    BlobConfig, ConfigError, LocalConfig, S3Config, ATTEMPTS_LIMIT, ATTEMPTS_MAX_DEFAULT, CONNECT_TIMEOUT_MS_DEFAULT,
    OPERATION_TIMEOUT_MS_DEFAULT, REGION_DEFAULT,
};
pub use error::BlobError;
pub use local::LocalDir;
pub use s3::S3;

/// The largest object (blob or keyed) the store writes or reads: 64 MiB.
pub const BLOB_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The longest key accepted, in bytes. S3 allows 1,024 with the prefix; this leaves room for one.
pub const KEY_SIZE_MAX_BYTES: usize = 512;

/// The most keys one [`BlobStore::list`] returns; a longer listing is an error, not a truncation.
pub const LIST_KEYS_MAX: usize = 100_000;

/// The key prefix under which content-addressed blobs live: `sha256/<hex digest>`.
pub const BLOB_KEY_PREFIX: &str = "sha256/";

/// A place for immutable content-addressed blobs and plain keyed objects.
///
/// Implementations provide the keyed operations; the content-addressed ones are built on them
/// here, so every implementation checks digests the same way. A trait object
/// (`Arc<dyn BlobStore>`) is what [`open`] returns, so callers and tests can also bring their
/// own implementation (a fake that fails on demand, say) without touching this crate.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Writes `bytes` under `key`, replacing what was there. Readers see the old object or the
    /// new one, never a mix or a prefix.
    async fn put_key(&self, key: &str, bytes: Bytes) -> Result<(), BlobError>;

    /// Reads the object under `key`; [`BlobError::NotFound`] if there is none.
    async fn get_key(&self, key: &str) -> Result<Bytes, BlobError>;

    /// Whether an object exists under `key`.
    async fn exists_key(&self, key: &str) -> Result<bool, BlobError>;

    /// The keys that start with `prefix` (a plain string prefix, as in S3), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;

    /// Removes the object under `key`. Removing a missing key is not an error (as in S3).
    async fn delete_key(&self, key: &str) -> Result<(), BlobError>;

    /// Stores `bytes` as a blob and returns its address, the hex SHA-256. A no-op when a blob
    /// with that address already exists (its content is checked on [`BlobStore::get`]).
    async fn put(&self, bytes: Bytes) -> Result<String, BlobError> {
        check_size("put", "(new blob)", &bytes)?;
        let digest = digest(&bytes);
        let key = blob_key(&digest)?;
        if !self.exists_key(&key).await? {
            self.put_key(&key, bytes).await?;
        }
        Ok(digest)
    }

    /// Reads the blob with address `digest` and checks its SHA-256: content that does not match
    /// is [`BlobError::DigestMismatch`] and is never returned.
    async fn get(&self, digest: &str) -> Result<Bytes, BlobError> {
        let key = blob_key(digest)?;
        let bytes = self.get_key(&key).await?;
        let actual = self::digest(&bytes);
        if actual != digest {
            return Err(BlobError::DigestMismatch { digest: digest.to_owned(), actual });
        }
        Ok(bytes)
    }

    /// Whether a blob with address `digest` exists (its content is not read).
    async fn exists(&self, digest: &str) -> Result<bool, BlobError> {
        self.exists_key(&blob_key(digest)?).await
    }
}

/// Opens the store `config` describes, after [`BlobConfig::validate`].
pub async fn open(config: &BlobConfig) -> Result<Arc<dyn BlobStore>, BlobError> {
    config.validate()?;
    match config {
        BlobConfig::Local(local) => Ok(Arc::new(LocalDir::open(&local.path).await?)),
        BlobConfig::S3(s3) => Ok(Arc::new(S3::connect(s3).await?)),
    }
}

/// The hex SHA-256 of `bytes`: a blob's address.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The key of the blob with address `digest` (`sha256/<digest>`); the digest must be 64
/// lowercase hex digits.
pub fn blob_key(digest: &str) -> Result<String, BlobError> {
    let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(BlobError::InvalidDigest { digest: digest.to_owned() });
    }
    Ok(format!("{BLOB_KEY_PREFIX}{digest}"))
}

/// Checks that `key` is a relative, normalized path of [A-Za-z0-9._-] components separated by
/// single slashes, no component starting with a dot (so no `.`, `..` or hidden names, which
/// the local store keeps for its temporary files), at most [`KEY_SIZE_MAX_BYTES`] long.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let invalid = |reason| Err(BlobError::InvalidKey { key: key.to_owned(), reason });
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > KEY_SIZE_MAX_BYTES {
        return invalid("longer than KEY_SIZE_MAX_BYTES");
    }
    validate_key_characters(key)?;
    if key.split('/').any(str::is_empty) {
        return invalid("leading, trailing or double slash");
    }
    Ok(())
}

/// Checks a listing prefix: like a key, but it may be empty and may end with a slash (or with a
/// partial component, as S3 prefixes may).
pub fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    let invalid = |reason| Err(BlobError::InvalidKey { key: prefix.to_owned(), reason });
    if prefix.len() > KEY_SIZE_MAX_BYTES {
        return invalid("longer than KEY_SIZE_MAX_BYTES");
    }
    validate_key_characters(prefix)?;
    let components: Vec<&str> = prefix.split('/').collect();
    let (_last, complete) = components.split_last().expect("split yields at least one part");
    if complete.iter().any(|component| component.is_empty()) {
        return invalid("leading or double slash");
    }
    Ok(())
}

/// The checks keys and prefixes share: the character set and no component starting with a dot.
fn validate_key_characters(key: &str) -> Result<(), BlobError> {
    let invalid = |reason| Err(BlobError::InvalidKey { key: key.to_owned(), reason });
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || b == b'/';
    if !key.bytes().all(allowed) {
        return invalid("only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed");
    }
    if key.split('/').any(|component| component.starts_with('.')) {
        return invalid("a component starts with a dot ('.', '..' and hidden names are not keys)");
    }
    Ok(())
}

/// Fails with [`BlobError::TooLarge`] when `bytes` is over [`BLOB_SIZE_MAX_BYTES`].
fn check_size(operation: &'static str, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
    check_size_bytes(operation, key, bytes.len() as u64)
}

/// Fails with [`BlobError::TooLarge`] when `size_bytes` is over [`BLOB_SIZE_MAX_BYTES`].
fn check_size_bytes(operation: &'static str, key: &str, size_bytes: u64) -> Result<(), BlobError> {
    if size_bytes > BLOB_SIZE_MAX_BYTES {
        let key = key.to_owned();
        return Err(BlobError::TooLarge { operation, key, size_bytes, limit_bytes: BLOB_SIZE_MAX_BYTES });
    }
    Ok(())
}
