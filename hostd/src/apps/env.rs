//! `steady env`: an app's environment variables, applied like a config change — stored
//! (sealed, in the blob store: see [`crate::secrets`]), then the running process, if any, is
//! drained and started again so the next request sees the new value.

use std::sync::Arc;

use steady_proto::wire::{EnvChange, EnvList};

use super::{Apps, Slot};
use crate::secrets::SecretsError;

/// Why an app's variables could not be listed or changed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("no app named {0:?} on this host")]
    Unknown(String),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("{0}")]
    Host(String),
}

impl Apps {
    fn env_slot(&self, name: &str) -> Result<Arc<Slot>, EnvError> {
        self.existing_slot(name)
            .map_err(|e| EnvError::Host(e.to_string()))?
            .ok_or_else(|| EnvError::Unknown(name.into()))
    }

    /// The names of `name`'s variables, and their values when `reveal`.
    #[tracing::instrument(skip_all, fields(app = %name))]
    pub async fn env_list(&self, name: &str, reveal: bool) -> Result<EnvList, EnvError> {
        self.env_slot(name)?;
        let vars = self.secrets.load(name).await?;
        let keys = vars.keys().cloned().collect();
        Ok(EnvList { name: name.into(), keys, values: reveal.then(|| vars.as_ref().clone()) })
    }

    /// Sets `key` to `value` (`Some`) or removes it (`None`) for `name`, then restarts its
    /// running process so the change applies to the next request.
    #[tracing::instrument(skip_all, fields(app = %name))]
    pub async fn env_change(&self, name: &str, key: &str, value: Option<&str>) -> Result<EnvChange, EnvError> {
        let slot = self.env_slot(name)?;
        let _one_change_at_a_time = slot.deploying.lock().await;
        let (existed, keys) = match value {
            Some(value) => self.secrets.set(name, key, value).await?,
            None => self.secrets.unset(name, key).await?,
        };
        let verb = if value.is_some() { "set" } else { "unset" };
        if value.is_none() && !existed {
            return Ok(EnvChange {
                name: name.into(),
                key: key.into(),
                existed,
                keys,
                restarted: false,
                restart_error: None,
            });
        }
        slot.log.line("steady", &format!("environment variable {key} {verb}"));
        tracing::info!(app = %name, key, verb, "environment changed");
        let (restarted, restart_error) = self.restart_for_config(&slot).await;
        Ok(EnvChange { name: name.into(), key: key.into(), existed, keys, restarted, restart_error })
    }

    /// Drains and stops `slot`'s running process and starts its current version again (a
    /// config change). Returns whether a process was running, and why the new one did not
    /// start if it did not (the next request tries again).
    async fn restart_for_config(&self, slot: &Slot) -> (bool, Option<String>) {
        let current = match self.store().current(&slot.name) {
            Ok(Some(current)) => current,
            Ok(None) => return (false, None),
            Err(error) => return (false, Some(error.to_string())),
        };
        let mut serving = slot.serving.lock().await;
        if !self.retire(slot, &mut serving).await {
            return (false, None);
        }
        match self.start(slot, &current).await {
            Ok(process) => {
                slot.log.line("steady", &format!("version {} restarted: configuration changed", current.version));
                *serving = Some(process);
                drop(serving);
                self.started.notify_one();
                (true, None)
            }
            Err(error) => {
                slot.log.line("steady", &format!("version {} did not start again: {error}", current.version));
                (true, Some(error.to_string()))
            }
        }
    }
}
