//! What every steady daemon does the same way at its edges: set up logging from
//! `STEADY_LOG`, raise its open files limit and bound its connections by it ([`files`]), tell its supervisor it is ready through a ready file, wait for the signal to
//! stop, and keep its API's keep-alive honest ([`keepalive`]). Used by the binaries' `main.rs`
//! only.

use std::path::Path;

pub mod files;
pub mod keepalive;

use anyhow::Context;

/// Logs to stderr, filtered by `STEADY_LOG` (default `info`); also captures `log` records.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEADY_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

/// Writes `value` to `path` atomically (temporary file, then rename): a supervisor polling
/// for the file never reads half of it.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, value.to_string()).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
