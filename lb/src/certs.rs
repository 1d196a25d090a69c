//! TLS certificates of the public listener: one wildcard certificate per domain, read from PEM
//! files, picked by SNI during each handshake and reloaded in place on SIGHUP.
//!
//! [`CertStore`] is a rustls `ResolvesServerCert` over an `ArcSwap` of the loaded keys, so a
//! reload swaps one pointer: handshakes under way finish with the key they started with,
//! established connections are untouched, and the listener never closes. A reload that cannot
//! read, parse or check a domain's files keeps that domain's previous key and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Largest certificate chain or key file read (a chain is a few KiB; this is a guard).
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most certificates in one chain file.
pub const CHAIN_CERTIFICATES_MAX: usize = 16;

/// Where one domain's certificate lives: `--tls-cert <domain>=<chain.pem>,<key.pem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// The domain; the certificate must cover `<domain>` and `*.<domain>`.
    pub domain: String,
    /// PEM file with the leaf certificate first, then its intermediates.
    pub chain_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

impl std::str::FromStr for CertSource {
    type Err = String;

    /// Parses `<domain>=<chain.pem>,<key.pem>`.
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "expected <domain>=<chain.pem>,<key.pem>";
        let (domain, files) = text.split_once('=').ok_or_else(|| format!("{text:?}: {usage}"))?;
        let (chain, key) = files.split_once(',').ok_or_else(|| format!("{text:?}: {usage}"))?;
        if domain.is_empty() || chain.is_empty() || key.is_empty() {
            return Err(format!("{text:?}: {usage}"));
        }
        let domain = domain.to_ascii_lowercase();
        Ok(Self { domain, chain_path: chain.into(), key_path: key.into() })
    }
}

/// Why a domain's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is larger than {PEM_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: no certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: more than {CHAIN_CERTIFICATES_MAX} certificates in it")]
    TooManyCertificates { path: PathBuf },
    #[error("{path}: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("{path}: unusable private key: {source}")]
    BadKey { path: PathBuf, source: rustls::Error },
    #[error("the key in {key} does not belong to the certificate in {chain}: {source}")]
    KeyMismatch { chain: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("{path}: the certificate does not cover {name}: {message}")]
    WrongName { path: PathBuf, name: String, message: String },
}

/// The certificates of the public TLS listener, one per domain, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    sources: Vec<CertSource>,
    /// Domain → its key; read on every handshake, replaced whole by [`CertStore::reload`].
    keys: ArcSwap<BTreeMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    /// Loads every source; any failure is an error here (a listener must start with all its
    /// certificates).
    pub fn load(sources: Vec<CertSource>) -> Result<Self, CertError> {
        assert!(!sources.is_empty(), "a TLS listener needs at least one certificate");
        let mut keys = BTreeMap::new();
        for source in &sources {
            keys.insert(source.domain.clone(), Arc::new(load_source(source)?));
        }
        Ok(Self { sources, keys: ArcSwap::from_pointee(keys) })
    }

    /// Reads every source again. A domain whose files fail keeps its current key; the errors
    /// are returned (and the caller logs them). Returns the domains that were replaced.
    pub fn reload(&self) -> (Vec<String>, Vec<(String, CertError)>) {
        let mut keys = BTreeMap::clone(&self.keys.load());
        let (mut replaced, mut failed) = (Vec::new(), Vec::new());
        for source in &self.sources {
            match load_source(source) {
                Ok(key) => {
                    keys.insert(source.domain.clone(), Arc::new(key));
                    replaced.push(source.domain.clone());
                }
                Err(error) => failed.push((source.domain.clone(), error)),
            }
        }
        self.keys.store(Arc::new(keys));
        (replaced, failed)
    }

    /// The key for a TLS server name: `<domain>` or `<one label>.<domain>` (what a wildcard
    /// certificate covers). No name (a client that sends no SNI) gets the first domain's key.
    pub fn key_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.load();
        let Some(name) = server_name else {
            return keys.get(&self.sources[0].domain).cloned();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let domain = match name.split_once('.') {
            Some((_, parent)) if !keys.contains_key(&name) => parent,
            _ => name.as_str(),
        };
        keys.get(domain).cloned()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key_for(hello.server_name())
    }
}

/// Reads a PEM file, bounded in size.
fn read_bounded(path: &Path) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| CertError::Read { path: path.into(), source })?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CertError::Read { path: path.into(), source })?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(CertError::TooLarge { path: path.into() });
    }
    Ok(bytes)
}

/// Loads one domain's chain and key and checks that they belong together and cover the domain.
fn load_source(source: &CertSource) -> Result<CertifiedKey, CertError> {
    let chain_path = &source.chain_path;
    let chain_pem = read_bounded(chain_path)?;
    let mut chain = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(&chain_pem) {
        let certificate =
            certificate.map_err(|e| CertError::BadPem { path: chain_path.clone(), message: e.to_string() })?;
        if chain.len() == CHAIN_CERTIFICATES_MAX {
            return Err(CertError::TooManyCertificates { path: chain_path.clone() });
        }
        chain.push(certificate);
    }
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate { path: chain_path.clone() });
    };
    // The wildcard and the apex: the two kinds of name the resolver hands this key out for.
    for name in [format!("wildcard-check.{}", source.domain), source.domain.clone()] {
        check_name(leaf, &name).map_err(|message| CertError::WrongName { path: chain_path.clone(), name, message })?;
    }
    let key_path = &source.key_path;
    let key_pem = read_bounded(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| CertError::BadPem { path: key_path.clone(), message: e.to_string() })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|source| CertError::BadKey { path: key_path.clone(), source })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|source| CertError::KeyMismatch {
        chain: chain_path.clone(),
        key: key_path.clone(),
        source,
    })?;
    Ok(certified)
}

/// Does the leaf certificate cover `name`? (Its validity period is the client's to judge.)
fn check_name(leaf: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let certificate = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let server_name = ServerName::try_from(name).map_err(|e| e.to_string())?;
    certificate.verify_is_valid_for_subject_name(&server_name).map_err(|e| e.to_string())
}

/// Reloads the certificates on SIGHUP, for as long as the LB runs.
pub struct CertReloader {
    store: Arc<CertStore>,
}

impl CertReloader {
    /// Reloads `store` on every SIGHUP.
    pub fn new(store: Arc<CertStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; certificates will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => {}
                _ = shutdown.changed() => return,
            }
            // Reading a few small files: brief enough to do on this runtime's thread.
            let (replaced, failed) = self.store.reload();
            for (domain, error) in &failed {
                tracing::error!(%domain, %error, "certificate not reloaded; the previous one stays in use");
            }
            tracing::info!(?replaced, failed = failed.len(), "certificates reloaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_from_the_flag() {
        let source: CertSource = "Steady.page=/c/chain.pem,/c/key.pem".parse().expect("source");
        assert_eq!(source.domain, "steady.page");
        assert_eq!(source.chain_path, PathBuf::from("/c/chain.pem"));
        assert_eq!(source.key_path, PathBuf::from("/c/key.pem"));
        for bad in ["steady.page", "steady.page=/c/chain.pem", "=a,b", "d=,b", "d=a,"] {
            assert!(bad.parse::<CertSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let source: CertSource = "steady.page=/nonexistent/chain.pem,/nonexistent/key.pem".parse().expect("source");
        let error = load_source(&source).expect_err("no files");
        assert!(matches!(error, CertError::Read { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/chain.pem"), "{error}");
    }
}
