//! `steady-lb`: builds the pingora server with the public and private proxies and the slicer
//! watch, then runs until SIGINT (fast stop) or SIGTERM (graceful stop).

use clap::Parser;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use steady_lb::{config::Config, private::PrivateProxy, public::PublicProxy, routing::Routes, watch::SlicerWatch};

/// Seconds the LB keeps serving after SIGTERM before it stops accepting (pingora's default is 300).
const GRACE_PERIOD_SECONDS: u64 = 1;
/// Seconds in-flight requests get to finish after that.
const GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;
/// Idle keep-alive connections kept to hosts, across all hosts.
const UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 1024;

fn main() {
    steady_daemon::init_tracing();
    let config = match Config::parse().validate() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("steady-lb: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = std::fs::create_dir_all(&config.data) {
        eprintln!("steady-lb: creating {}: {error}", config.data.display());
        std::process::exit(2);
    }
    let server_conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS),
        upstream_keepalive_pool_size: UPSTREAM_KEEPALIVE_POOL_SIZE,
        upgrade_sock: config.data.join("upgrade.sock").display().to_string(),
        pid_file: config.data.join("lb.pid").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();
    let routes = Routes::new();
    steady_lb::watch::fetch_first(config.slicer, &routes, config.first_table_wait_ms);
    let metrics = std::sync::Arc::new(steady_lb::metrics::Metrics::default());
    let gateway = std::sync::Arc::new(steady_lb::gateway::Gateway::new(
        routes.clone(),
        config.slicer,
        &config.domains[0],
        config.public,
        config.anonymous_runs_per_minute_max,
    ));

    let mut public = pingora::proxy::http_proxy_service(
        &server.configuration,
        PublicProxy::new(
            routes.clone(),
            config.domains.clone(),
            config.edge_limits(),
            steady_lb::limits::Limits::new(config.client_requests_per_second_max, config.app_in_flight_max),
            metrics.clone(),
            gateway.clone(),
        )
        .with_upstream_read_timeout_ms(config.upstream_read_timeout_ms),
    );
    public.add_tcp(&config.public.to_string());
    public.threads = Some(config.threads);
    let mut private =
        pingora::proxy::http_proxy_service(&server.configuration, PrivateProxy::new(routes.clone(), metrics, gateway));
    private.add_tcp(&config.private.to_string());
    private.threads = Some(1);
    let watch =
        pingora::services::background::background_service("slicer watch", SlicerWatch::new(config.slicer, routes));

    server.add_service(public);
    server.add_service(private);
    server.add_service(watch);
    tracing::info!(public = %config.public, private = %config.private, slicer = %config.slicer, "load balancer starting");
    server.run_forever();
}
