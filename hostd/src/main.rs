//! `steady-hostd`: reads its config, opens its store, listens, registers with the slicer and
//! serves until SIGINT/SIGTERM, then stops every app it started.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use steady_hostd::replica::{ReplicaTarget, Replicator};
use steady_hostd::secrets::Secrets;
use steady_hostd::{api, apps::Apps, config::Config, ingress, leftovers, membership::Membership, store::Store};
use steady_proto::wire::HostEntry;

const RUNNER_JS: &str = include_str!("runner.js");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    steady_daemon::init_tracing();
    let (config, storage) = match Config::parse().validate().and_then(|c| c.storage().map(|s| (c, s))) {
        Ok(both) => both,
        Err(message) => {
            eprintln!("steady-hostd: {message}");
            std::process::exit(2);
        }
    };
    let ingress_connections_max = ingress_bound(&config);
    let secrets_key = match config.secrets_key_file.as_deref().map(steady_hostd::secrets::read_key_file).transpose() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("steady-hostd: {error}");
            std::process::exit(2);
        }
    };
    let data = config.data.clone();
    let _claim = match leftovers::claim(&data) {
        Ok(claim) => claim,
        Err(error) => {
            eprintln!("steady-hostd: {error}");
            std::process::exit(2);
        }
    };
    // An earlier run's sandboxes died with it, unless one was caught starting
    // (steady_hostd::leftovers): end any such before its data moves.
    let ended = leftovers::kill_processes_naming(&data).context("ending the sandboxes of an earlier run")?;
    if ended > 0 {
        tracing::warn!(ended, "ended sandbox processes an earlier run left behind");
    }
    let runner = data.join("runner.js");
    std::fs::write(&runner, RUNNER_JS).context("writing the app runner")?;
    // Every sandbox of an earlier run is gone now; put back the data they held.
    steady_hostd::process::recover(&data.join(steady_hostd::apps::SANDBOXES_DIR))
        .context("recovering app data from the sandboxes of an earlier run")?;
    let store = Store::open(&data.join("hostd.db")).context("opening the host database")?;
    let blobs = steady_blob::open(&storage).await.context("opening the blob store")?;
    let target = ReplicaTarget::from_config(&storage);
    let replicator =
        Arc::new(Replicator::new(config.litestream.clone(), data.join("litestream"), target, blobs.clone()));
    replicator.start().await.context("starting litestream")?;
    let ingress_listener = bind(config.ingress).await?;
    let api_listener = bind(config.api).await?;
    let host = HostEntry {
        id: config.id.clone(),
        ingress_addr: ingress_listener.local_addr()?.to_string(),
        api_addr: api_listener.local_addr()?.to_string(),
        draining: false,
    };
    let membership = Membership::new(&config.slicer, host.clone());
    let table = membership.register().await.context("registering with the slicer")?;
    tracing::info!(ingress = %host.ingress_addr, api = %host.api_addr, table_version = table.version, "host registered");
    let bundle_size_max_bytes = config.bundle_size_max_bytes;
    let builder =
        Arc::new(steady_hostd::build::Builder::new(config.bwrap.clone(), config.bun.clone(), data.join("builds")));
    let request_body_max_bytes = config.request_body_max_bytes;
    let app_idle_connections_max = config.app_concurrency_max;
    let ready_file = config.ready_file.clone();
    let secrets = Secrets::new(secrets_key, blobs.clone());
    let apps = Arc::new(Apps::new(config, runner, store, blobs, replicator.clone(), membership, secrets));
    tokio::spawn(apps.clone().replicate_new_databases());
    let version = table.version;
    apps.follow(table).await;
    tokio::spawn(apps.clone().follow_cluster(version));
    tokio::spawn(apps.clone().housekeeping());
    tokio::spawn(apps.clone().crons());
    tokio::spawn(apps.clone().keep_warm());
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let ingress_limits = ingress::IngressLimits {
        body_max_bytes: request_body_max_bytes,
        connections_max: ingress_connections_max,
        app_idle_connections_max,
    };
    let ingress_server = ingress::serve(ingress_listener, apps.clone(), ingress_limits, stop.clone());
    let api_server = serve(api_listener, api::router(apps.clone(), builder, bundle_size_max_bytes), stop);
    if let Some(path) = ready_file {
        let ready = serde_json::json!({ "ingress": host.ingress_addr, "api": host.api_addr });
        steady_daemon::write_ready_file(&path, &ready)?;
    }
    steady_daemon::shutdown_signal().await;
    tracing::info!("host stopping");
    let _ = stop_sender.send(true);
    apps.stop_all().await;
    replicator.stop();
    let _ = tokio::join!(ingress_server, api_server);
    // A sandbox still starting when the pool stopped is killed with the runtime, inside bwrap's
    // window (steady_hostd::leftovers): end what would outlive this process.
    match tokio::task::spawn_blocking(move || leftovers::kill_processes_naming(&data)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(ended)) => tracing::info!(ended, "ended sandbox processes still starting at the stop"),
        Ok(Err(error)) => tracing::error!(%error, "ending sandbox processes at the stop"),
        Err(error) => tracing::error!(%error, "ending sandbox processes at the stop"),
    }
    tracing::info!("host stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(error) = axum::serve(listener, steady_daemon::keepalive::announce_close(router))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "listener failed");
        }
    })
}

/// The bound on the ingress listener's connections: `--ingress-connections-max`, or the
/// default the open files limit covers (`steady_daemon::files`); one it cannot cover exits.
fn ingress_bound(config: &Config) -> usize {
    let open_files_max = match steady_daemon::files::raise_open_files_limit() {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("steady-hostd: reading the open files limit: {error}");
            std::process::exit(2);
        }
    };
    config.ingress_budget(open_files_max).settle(config.ingress_connections_max).unwrap_or_else(|message| {
        eprintln!("steady-hostd: {message}");
        std::process::exit(2);
    })
}
