//! The source files each version was deployed with (`steady pull`, `steady edit`): read back
//! out of the version's bundle in the blob store, so they are there on any host the app runs.

use super::{Apps, DeployError};
use crate::bundle;

/// Why a version's sources could not be given.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("no app named {0:?} on this host")]
    Unknown(String),
    #[error("{app} has no version {version}")]
    NoSuchVersion { app: String, version: u64 },
    #[error("version {version} of {app} was deployed without its sources (by an older steady CLI)")]
    NoSources { app: String, version: u64 },
    #[error(transparent)]
    Failed(#[from] DeployError),
}

impl Apps {
    /// The sources of `version` of `name` (the current version when `None`), as a tar archive
    /// with paths relative to the app's folder; also the version they belong to.
    #[tracing::instrument(skip_all, fields(app = %name))]
    pub async fn sources(&self, name: &str, version: Option<u64>) -> Result<(u64, Vec<u8>), SourcesError> {
        let versions = self.store().versions(name).map_err(DeployError::from)?;
        let current = self.store().current(name).map_err(DeployError::from)?;
        let Some(current) = current else { return Err(SourcesError::Unknown(name.into())) };
        let version = version.unwrap_or(current.version);
        let row = versions
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| SourcesError::NoSuchVersion { app: name.into(), version })?;
        let archive = self.storage.get(&row.bundle).await.map_err(DeployError::from)?;
        let sources = tokio::task::spawn_blocking(move || bundle::sources(&archive))
            .await
            .map_err(|e| DeployError::Io(std::io::Error::other(e)))?
            .map_err(DeployError::from)?;
        let archive = sources.ok_or_else(|| SourcesError::NoSources { app: name.into(), version })?;
        Ok((version, archive))
    }
}
