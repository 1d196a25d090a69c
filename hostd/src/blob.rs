//! Content-addressed blob store on the local disk: a blob's name is its SHA-256.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A directory of immutable blobs named by their SHA-256 in hex.
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self { root: root.to_owned() })
    }

    /// The hex SHA-256 of `bytes`: the blob's address.
    pub fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Stores `bytes` (a no-op if present) and returns its address. Written to a temporary
    /// file and renamed, so a crash never leaves a blob with the wrong content.
    pub fn put(&self, bytes: &[u8]) -> io::Result<String> {
        let digest = Self::digest(bytes);
        let path = self.path(&digest);
        if !path.exists() {
            let temporary = self.root.join(format!(".{digest}.tmp"));
            std::fs::write(&temporary, bytes)?;
            std::fs::rename(&temporary, &path)?;
        }
        Ok(digest)
    }

    /// Where the blob with address `digest` lives.
    pub fn path(&self, digest: &str) -> PathBuf {
        debug_assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
        self.root.join(digest)
    }
}
