//! `steady-slicer`: reads its config, opens its store, serves the API until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use steady_slicer::{api, config::Config, store::Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    steady_daemon::init_tracing();
    if let Err(error) = steady_daemon::files::raise_open_files_limit() {
        tracing::warn!(%error, "could not raise the open files limit");
    }
    let config = Config::parse();
    std::fs::create_dir_all(&config.data).with_context(|| format!("creating {}", config.data.display()))?;
    let store = Store::open(&config.data.join("slicer.db")).context("opening the slicer database")?;
    let mut store = store;
    let admin = steady_slicer::identity::admin_secret(&config.admin_token_path())?;
    store.set_admin_token(&admin, api::now_ms())?;
    let slicer = api::Slicer::new(store)?;
    tokio::spawn(slicer.clone().expire_hosts(config.host_timeout_ms));
    tokio::spawn(steady_slicer::mover::run(slicer.clone(), config.mover()));
    if config.rebalance_interval_ms > 0 {
        tokio::spawn(steady_slicer::balance::run(slicer.clone(), config.rebalance_interval_ms));
    }
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &config.ready_file {
        steady_daemon::write_ready_file(path, &serde_json::json!({ "api": addr.to_string() }))?;
    }
    tracing::info!(%addr, "slicer listening");
    let router = steady_daemon::keepalive::announce_close(api::router(slicer));
    axum::serve(listener, router).with_graceful_shutdown(steady_daemon::shutdown_signal()).await?;
    Ok(())
}
