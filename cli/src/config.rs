//! The CLI's config file, `$XDG_CONFIG_HOME/steady/config.yaml` (`~/.config/steady/` without
//! it): the API to use and a token per API, written by `steady login` and by `steady up` for
//! its own API. Flags and environment variables win over it.
//!
//! ```yaml
//! api: http://127.0.0.1:8081
//! tokens:
//!   http://127.0.0.1:8081: stdy_…
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::exit::{Failure, USAGE};

/// Largest config file read (it holds a few tokens).
const CONFIG_BYTES_MAX: u64 = 1 << 20;
/// Most APIs the file keeps a token for.
const TOKENS_MAX: usize = 100;

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The API used when neither `--api` nor `STEADY_API` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// A token per API base URL.
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

/// Where the file lives.
pub fn path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
                Failure::new(USAGE, "no_config_dir", "neither XDG_CONFIG_HOME nor HOME is set; pass --api and --token")
            })?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("steady").join("config.yaml"))
}

/// The API base URL for `api` (`host:port` or a URL).
pub fn base_url(api: &str) -> String {
    if api.contains("://") {
        api.trim_end_matches('/').to_owned()
    } else {
        format!("http://{api}")
    }
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load() -> anyhow::Result<Self> {
        let path = path()?;
        let text = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > CONFIG_BYTES_MAX => {
                anyhow::bail!("{} is over {CONFIG_BYTES_MAX} bytes; is it the right file?", path.display())
            }
            Ok(_) => std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        serde_yaml::from_str(&text).map_err(|error| {
            let message = format!("{} is not a valid steady config: {error}; fix it or remove it", path.display());
            Failure::new(USAGE, "bad_config", message).into()
        })
    }

    /// Writes the file, readable by its owner only (it holds tokens).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        anyhow::ensure!(self.tokens.len() <= TOKENS_MAX, "the config keeps tokens for at most {TOKENS_MAX} APIs");
        let path = path()?;
        let dir = path.parent().expect("the config path has a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let temp = path.with_extension("yaml.tmp");
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
        file.write_all(serde_yaml::to_string(self)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The token kept for `api`.
    pub fn token_for(&self, api: &str) -> Option<&str> {
        self.tokens.get(&base_url(api)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_urls_name_the_same_api() {
        assert_eq!(base_url("127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(base_url("https://steady.page/"), "https://steady.page");
        let mut config = ConfigFile::default();
        config.tokens.insert(base_url("127.0.0.1:8081"), "stdy_x".into());
        assert_eq!(config.token_for("http://127.0.0.1:8081"), Some("stdy_x"));
        assert_eq!(config.token_for("127.0.0.1:9000"), None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml::from_str::<ConfigFile>("api: x\ntokenz: {}\n").is_err());
        let parsed: ConfigFile = serde_yaml::from_str("tokens:\n  http://a:1: stdy_y\n").unwrap();
        assert_eq!(parsed.token_for("a:1"), Some("stdy_y"));
    }
}
