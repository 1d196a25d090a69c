//! The local directory store: one file per key under a root directory. Writes go to a temporary
//! file in the target's directory, are flushed to disk, renamed over the target and the
//! directory is flushed, so after a crash a key holds its old content, its new content, or
//! nothing — never a prefix. Temporary files start with a dot, which no key may, so they are
//! neither listed nor addressable. File work runs on tokio's blocking pool.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{check_size, check_size_bytes, validate_key, validate_prefix, BlobError, BlobStore, LIST_KEYS_MAX};

/// Bound on directory depth while listing; a key of [`crate::KEY_SIZE_MAX_BYTES`] has at most
/// 256 components.
const LIST_DEPTH_MAX: usize = 256;

/// A [`BlobStore`] on the local file system.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// Opens the store under `root`, creating the directory when missing.
    pub async fn open(root: &Path) -> Result<Self, BlobError> {
        let root = root.to_owned();
        blocking(move || {
            fs::create_dir_all(&root).map_err(|source| io_error("open", &root, source))?;
            Ok(LocalDir { root })
        })
        .await
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key` (which need not exist).
    pub fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl BlobStore for LocalDir {
    async fn put_key(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        check_size("put", key, &bytes)?;
        let path = self.path(key)?;
        blocking(move || write_atomically(&path, &bytes)).await
    }

    async fn get_key(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || read_bounded(&key, &path)).await
    }

    async fn exists_key(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        blocking(move || match fs::metadata(&path) {
            Ok(metadata) => Ok(metadata.is_file()),
            Err(error) if is_absent(&error) => Ok(false),
            Err(source) => Err(io_error("exists", &path, source)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            // Only the directory named by the prefix's complete components can hold matches.
            let directory = match prefix.rfind('/') {
                Some(end) => prefix[..end].to_owned(),
                None => String::new(),
            };
            let mut keys = Vec::new();
            walk(&root, &directory, &prefix, 0, &mut keys)?;
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn delete_key(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if is_absent(&error) => Ok(()),
            Err(source) => Err(io_error("delete", &path, source)),
        })
        .await
    }
}

/// Writes `bytes` to a temporary file next to `path`, flushes it, renames it over `path` and
/// flushes the directory, so the rename itself survives a crash.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let directory = path.parent().expect("a validated key has a parent: the root");
    fs::create_dir_all(directory).map_err(|source| io_error("put", directory, source))?;
    let mut temporary = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(directory)
        .map_err(|source| io_error("put", directory, source))?;
    temporary.write_all(bytes).map_err(|source| io_error("put", temporary.path(), source))?;
    temporary.as_file().sync_all().map_err(|source| io_error("put", temporary.path(), source))?;
    temporary.persist(path).map_err(|error| io_error("put", path, error.error))?;
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| io_error("put", directory, source))
}

/// Reads `path` whole, refusing more than [`crate::BLOB_SIZE_MAX_BYTES`] even if the file grows
/// while it is read.
fn read_bounded(key: &str, path: &Path) -> Result<Bytes, BlobError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if is_absent(&error) => return Err(BlobError::NotFound { operation: "get", key: key.to_owned() }),
        Err(source) => return Err(io_error("get", path, source)),
    };
    let metadata = file.metadata().map_err(|source| io_error("get", path, source))?;
    if !metadata.is_file() {
        return Err(BlobError::NotFound { operation: "get", key: key.to_owned() });
    }
    check_size_bytes("get", key, metadata.len())?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    let limit = crate::BLOB_SIZE_MAX_BYTES + 1;
    file.take(limit).read_to_end(&mut bytes).map_err(|source| io_error("get", path, source))?;
    check_size("get", key, &bytes)?;
    Ok(Bytes::from(bytes))
}

/// Collects into `keys` the files under `root/directory` whose key starts with `prefix`.
fn walk(root: &Path, directory: &str, prefix: &str, depth: usize, keys: &mut Vec<String>) -> Result<(), BlobError> {
    assert!(depth <= LIST_DEPTH_MAX, "directory depth is bounded by the key length");
    let path = root.join(directory);
    let entries = match fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(error) if is_absent(&error) => return Ok(()),
        Err(source) => return Err(io_error("list", &path, source)),
    };
    for entry in entries {
        let entry = entry.map_err(|source| io_error("list", &path, source))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if name.starts_with('.') {
            continue; // Temporary files, and nothing a key can name.
        }
        let key = if directory.is_empty() { name } else { format!("{directory}/{name}") };
        let file_type = entry.file_type().map_err(|source| io_error("list", &entry.path(), source))?;
        if file_type.is_dir() {
            // Descend only where keys under this directory can still start with the prefix.
            let below = format!("{key}/");
            if (below.starts_with(prefix) || prefix.starts_with(&below)) && depth < LIST_DEPTH_MAX {
                walk(root, &key, prefix, depth + 1, keys)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) && validate_key(&key).is_ok() {
            if keys.len() == LIST_KEYS_MAX {
                return Err(BlobError::TooManyKeys { prefix: prefix.to_owned(), limit: LIST_KEYS_MAX });
            }
            keys.push(key);
        }
    }
    Ok(())
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) if join_error.is_panic() => std::panic::resume_unwind(join_error.into_panic()),
        Err(join_error) => {
            Err(BlobError::Io { operation: "blocking", path: PathBuf::new(), source: io::Error::other(join_error) })
        }
    }
}

/// Not found, or a path through a file (`a/b` when `a` is a file): either way there is no object.
fn is_absent(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> BlobError {
    BlobError::Io { operation, path: path.to_owned(), source }
}
