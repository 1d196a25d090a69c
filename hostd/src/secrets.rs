//! App environment variables set with `steady env`, encrypted at rest.
//!
//! Each app's variables are one object, `env/<app>`, in the cluster's blob store — the same
//! store that holds bundles and replicas — so they follow the app to whichever host runs it
//! next (a live move, a dead host's apps adopted elsewhere, a replaced disk). The object is the
//! JSON map sealed with ChaCha20-Poly1305 under the cluster's key (`--secrets-key-file`, the
//! same file on every host), with a random nonce per write and the app's name as associated
//! data, so an object copied under another app's key does not open. Plaintext exists only in
//! hostd's memory and in the app process's environment.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use steady_blob::{BlobError, BlobStore};
use steady_proto::env::{self, EnvError, ENV_KEYS_MAX, ENV_TOTAL_BYTES_MAX};

/// An app's variables, by name.
pub type Env = BTreeMap<String, String>;

/// Key length of the cluster key, in bytes (written as 64 hex digits in the key file).
pub const KEY_BYTES: usize = 32;
/// First byte of every sealed object: the format, so a later one can be told apart.
const FORMAT_VERSION: u8 = 1;
/// Nonce length of ChaCha20-Poly1305, in bytes.
const NONCE_BYTES: usize = 12;
/// Largest sealed object read back: the plaintext bound plus JSON quoting and the tag.
const SEALED_BYTES_MAX: usize = 8 * ENV_TOTAL_BYTES_MAX;
/// Most apps whose variables are kept in memory; beyond it the cache starts over.
const CACHED_APPS_MAX: usize = 100_000;

/// Why variables could not be read or changed. Messages are shown to users as they are.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "this host has no cluster key (start steady-hostd with --secrets-key-file): app environment variables are off"
    )]
    NoKey,
    #[error("reading the cluster key {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("the environment of {0:?} does not decrypt with this host's key (hosts must share one --secrets-key-file) or is damaged")]
    Decrypt(String),
    #[error(transparent)]
    Invalid(#[from] EnvError),
    #[error("an app may have at most {ENV_KEYS_MAX} variables")]
    TooManyKeys,
    #[error("an app's variables may total at most {ENV_TOTAL_BYTES_MAX} bytes of names and values")]
    TooLarge,
    #[error("blob store: {0}")]
    Storage(#[from] BlobError),
}

/// Reads the cluster key: 64 hex digits (surrounding whitespace ignored).
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_BYTES], SecretsError> {
    let fail = |message: String| SecretsError::KeyFile { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut key = [0u8; KEY_BYTES];
    hex::decode_to_slice(text.trim(), &mut key)
        .map_err(|_| fail(format!("expected {} hex digits (e.g. `openssl rand -hex 32`)", 2 * KEY_BYTES)))?;
    Ok(key)
}

/// The blob-store key of `app`'s variables.
fn object_key(app: &str) -> String {
    format!("env/{app}")
}

/// Associated data binding a sealed object to its app.
fn associated_data(app: &str) -> Vec<u8> {
    format!("steady env {app}").into_bytes()
}

/// Every app's variables: sealed in the blob store, cached in memory once opened.
pub struct Secrets {
    cipher: Option<ChaCha20Poly1305>,
    storage: Arc<dyn BlobStore>,
    cache: Mutex<HashMap<String, Arc<Env>>>,
}

impl Secrets {
    /// Variables sealed under `key`; `None` turns them off (reads of apps that have some fail).
    pub fn new(key: Option<[u8; KEY_BYTES]>, storage: Arc<dyn BlobStore>) -> Self {
        let cipher = key.map(|k| ChaCha20Poly1305::new(&k.into()));
        Self { cipher, storage, cache: Mutex::new(HashMap::new()) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Env>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `app`'s variables (empty when it has none).
    pub async fn load(&self, app: &str) -> Result<Arc<Env>, SecretsError> {
        if let Some(env) = self.cache().get(app) {
            return Ok(env.clone());
        }
        let env = Arc::new(self.read(app).await?);
        let mut cache = self.cache();
        if cache.len() >= CACHED_APPS_MAX {
            cache.clear();
        }
        cache.insert(app.to_owned(), env.clone());
        Ok(env)
    }

    /// Drops `app`'s cached variables: it left this host, so another host may change them
    /// before it comes back.
    pub fn forget(&self, app: &str) {
        self.cache().remove(app);
    }

    async fn read(&self, app: &str) -> Result<Env, SecretsError> {
        let sealed = match self.storage.get_key(&object_key(app)).await {
            Ok(sealed) => sealed,
            Err(BlobError::NotFound { .. }) => return Ok(Env::new()),
            Err(error) => return Err(error.into()),
        };
        let cipher = self.cipher.as_ref().ok_or(SecretsError::NoKey)?;
        open(cipher, app, &sealed)
    }

    /// Sets `name` to `value` for `app`; returns whether it existed and how many there are now.
    /// The caller serialises changes of one app.
    pub async fn set(&self, app: &str, name: &str, value: &str) -> Result<(bool, usize), SecretsError> {
        env::validate_name(name)?;
        env::validate_value(value)?;
        let mut vars = self.read(app).await?;
        let existed = vars.insert(name.to_owned(), value.to_owned()).is_some();
        if vars.len() > ENV_KEYS_MAX {
            return Err(SecretsError::TooManyKeys);
        }
        if vars.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > ENV_TOTAL_BYTES_MAX {
            return Err(SecretsError::TooLarge);
        }
        self.write(app, vars).await.map(|count| (existed, count))
    }

    /// Removes `name` from `app`'s variables; returns whether it existed and how many are left.
    pub async fn unset(&self, app: &str, name: &str) -> Result<(bool, usize), SecretsError> {
        let mut vars = self.read(app).await?;
        if vars.remove(name).is_none() {
            return Ok((false, vars.len()));
        }
        self.write(app, vars).await.map(|count| (true, count))
    }

    async fn write(&self, app: &str, vars: Env) -> Result<usize, SecretsError> {
        let count = vars.len();
        if vars.is_empty() {
            self.storage.delete_key(&object_key(app)).await?;
        } else {
            let cipher = self.cipher.as_ref().ok_or(SecretsError::NoKey)?;
            self.storage.put_key(&object_key(app), seal(cipher, app, &vars)).await?;
        }
        self.cache().insert(app.to_owned(), Arc::new(vars));
        Ok(count)
    }

    /// Deletes `app`'s variables (the app is deleted).
    pub async fn delete(&self, app: &str) -> Result<(), SecretsError> {
        self.forget(app);
        self.storage.delete_key(&object_key(app)).await?;
        Ok(())
    }
}

/// `vars` as JSON, sealed: format byte, random nonce, ciphertext with its tag.
fn seal(cipher: &ChaCha20Poly1305, app: &str, vars: &Env) -> Bytes {
    let plaintext = serde_json::to_vec(vars).expect("a map of strings serialises");
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let aad = associated_data(app);
    let sealed =
        cipher.encrypt(&nonce, Payload { msg: &plaintext, aad: &aad }).expect("encryption has no failure mode");
    let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Bytes::from(out)
}

fn open(cipher: &ChaCha20Poly1305, app: &str, sealed: &[u8]) -> Result<Env, SecretsError> {
    let damaged = || SecretsError::Decrypt(app.to_owned());
    if sealed.len() > SEALED_BYTES_MAX || sealed.len() < 1 + NONCE_BYTES || sealed[0] != FORMAT_VERSION {
        return Err(damaged());
    }
    let (nonce, ciphertext) = sealed[1..].split_at(NONCE_BYTES);
    let aad = associated_data(app);
    let plaintext =
        cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| damaged())?;
    serde_json::from_slice(&plaintext).map_err(|_| damaged())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &Path) -> Arc<dyn BlobStore> {
        Arc::new(steady_blob::LocalDir::open(dir).await.unwrap())
    }

    #[tokio::test]
    async fn sealed_at_rest_and_bound_to_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(Some([7; KEY_BYTES]), store(dir.path()).await);
        assert_eq!(secrets.set("a", "API_KEY", "hunter2-plaintext").await.unwrap(), (false, 1));
        assert_eq!(secrets.set("a", "API_KEY", "hunter2-plaintext").await.unwrap(), (true, 1));
        let raw = std::fs::read(dir.path().join("env/a")).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"hunter"), "no plaintext at rest");
        // Another host with the same key, nothing cached: it reads what the first wrote.
        let other = Secrets::new(Some([7; KEY_BYTES]), store(dir.path()).await);
        assert_eq!(other.load("a").await.unwrap()["API_KEY"], "hunter2-plaintext");
        // The same bytes under another app's name, or another key, do not open.
        std::fs::write(dir.path().join("env/b"), &raw).unwrap();
        assert!(matches!(other.load("b").await, Err(SecretsError::Decrypt(_))));
        let wrong = Secrets::new(Some([8; KEY_BYTES]), store(dir.path()).await);
        assert!(matches!(wrong.load("a").await, Err(SecretsError::Decrypt(_))));
        let keyless = Secrets::new(None, store(dir.path()).await);
        assert!(matches!(keyless.load("a").await, Err(SecretsError::NoKey)));
        assert!(keyless.load("none").await.unwrap().is_empty(), "an app without variables needs no key");
        assert_eq!(secrets.unset("a", "API_KEY").await.unwrap(), (true, 0));
        assert!(!dir.path().join("env/a").exists(), "the last variable removed removes the object");
    }

    #[tokio::test]
    async fn bounds() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(Some([1; KEY_BYTES]), store(dir.path()).await);
        assert!(matches!(secrets.set("a", "STEADY_APP", "x").await, Err(SecretsError::Invalid(_))));
        assert!(matches!(secrets.set("a", "lower", "x").await, Err(SecretsError::Invalid(_))));
        for i in 0..ENV_KEYS_MAX {
            secrets.set("a", &format!("K{i}"), "v").await.unwrap();
        }
        assert!(matches!(secrets.set("a", "ONE_MORE", "v").await, Err(SecretsError::TooManyKeys)));
        assert_eq!(secrets.load("a").await.unwrap().len(), ENV_KEYS_MAX, "a refused change changes nothing");
    }

    #[test]
    fn key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(KEY_BYTES))).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), [0xab; KEY_BYTES]);
        std::fs::write(&path, "short").unwrap();
        assert!(read_key_file(&path).is_err());
    }
}
