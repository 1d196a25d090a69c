//! `steady-slicer`: reads its config, opens its store, serves the API until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use steady_slicer::{api, config::Config, store::Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(env_filter()).with_target(false).init();
    let config = Config::parse();
    std::fs::create_dir_all(&config.data).with_context(|| format!("creating {}", config.data.display()))?;
    let store = Store::open(&config.data.join("slicer.db")).context("opening the slicer database")?;
    let slicer = api::Slicer::new(store)?;
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &config.ready_file {
        write_ready_file(path, &serde_json::json!({ "api": addr.to_string() }))?;
    }
    tracing::info!(%addr, "slicer listening");
    axum::serve(listener, api::router(slicer)).with_graceful_shutdown(shutdown_signal()).await?;
    Ok(())
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("STEADY_LOG").unwrap_or_else(|_| "info".into())
}

fn write_ready_file(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, value.to_string())?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! { _ = terminate.recv() => {}, _ = interrupt.recv() => {} }
    tracing::info!("slicer stopping");
}
