//! `steady-lb`: builds the pingora server with the public (plain and TLS) and private proxies,
//! the slicer watch, the certificate reloader and the drain, then runs until SIGINT (fast
//! stop), SIGTERM (graceful stop) or SIGQUIT (hand the sockets to a new process, then drain).

use std::sync::Arc;

use clap::Parser;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use steady_daemon::files::{self, Budget};
use steady_lb::certs::{CertReloader, CertStore};
use steady_lb::config::Config;
use steady_lb::connections::{self, Capped, Slots};
use steady_lb::drain::{Drain, InFlight};
use steady_lb::fastlane::{FastLane, LaneTimeouts, HOST_POOL};
use steady_lb::handshake::TlsPort;
use steady_lb::metrics::ListenerLabels;
use steady_lb::sessions::PublicSessions;
use steady_lb::{
    private::PrivateProxy, public::PublicProxy, readiness::Readiness, routing::Routes, watch::SlicerWatch, workers,
};

/// Every request allocates and frees dozens of small buffers across worker threads; mimalloc's
/// per-thread free lists took 15 % off the LB's instructions per request (docs/notes.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps transparent huge pages out of the process. mimalloc asks for them on its arenas, so the
/// first touch of fresh heap zeroes 2 MiB at a time: a burst of new connections (each takes
/// buffers) stalled both workers for 40–60 ms, every client connection's request with them
/// (docs/notes.md, "The LB's tail in a burst of new connections"). With 4 KiB pages that gap
/// was gone (the first round's p99 level with nginx's). The flag covers memory advised for
/// huge pages and a machine whose setting is `always`. Called before anything allocates much;
/// a failure (a kernel without the flag) only leaves the tail, so it is logged, not fatal.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Seconds in-flight work gets after pingora's grace period, before its runtimes are dropped.
const GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;
/// Idle keep-alive connections each worker's proxy keeps to hosts, across all hosts.
const UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 1024;

fn main() {
    let huge_pages = disable_transparent_huge_pages();
    steady_daemon::init_tracing();
    if let Err(error) = huge_pages {
        tracing::warn!(%error, "transparent huge pages stay allowed: a burst of new connections may stall the workers");
    }
    let config = match Config::parse().validate() {
        Ok(config) => config,
        Err(message) => exit_on_bad_config(&message),
    };
    let connections_max = connections_bound(&config);
    if let Err(error) = std::fs::create_dir_all(&config.data) {
        exit_on_bad_config(&format!("creating {}: {error}", config.data.display()));
    }
    // Load the certificates before anything listens: a bad file is a configuration error.
    let certs = match config.tls_certs.is_empty() {
        true => None,
        false => match CertStore::load(config.tls_certs.clone()) {
            Ok(store) => Some(Arc::new(store)),
            Err(error) => exit_on_bad_config(&error.to_string()),
        },
    };
    let server_conf = ServerConf {
        threads: config.threads,
        // The drain (below) ends the process as soon as requests are done; pingora's fixed grace
        // period, just above the drain bound, is only a backstop.
        grace_period_seconds: Some(config.drain_timeout_ms.div_ceil(1000) + 1),
        graceful_shutdown_timeout_seconds: Some(GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS),
        upstream_keepalive_pool_size: UPSTREAM_KEEPALIVE_POOL_SIZE,
        upgrade_sock: config.data.join("upgrade.sock").display().to_string(),
        pid_file: config.data.join("lb.pid").display().to_string(),
        ..ServerConf::default()
    };
    // The public sockets share their address between workers (SO_REUSEPORT); without this check
    // a second LB of the same user would share it too. An upgrade inherits the old one's sockets.
    if !config.upgrade {
        for addr in std::iter::once(config.public).chain(config.tls_listen) {
            if let Err(message) = workers::ensure_free(addr) {
                exit_on_bad_config(&message);
            }
        }
    }
    let opt = Opt { upgrade: config.upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    // With --upgrade this receives the listening sockets from the running LB.
    server.bootstrap();
    let routes = Routes::new();
    steady_lb::watch::fetch_first(config.slicer, &routes, config.first_table_wait_ms);
    let metrics = Arc::new(steady_lb::metrics::Metrics::default());
    let in_flight = InFlight::default();
    let gateway = Arc::new(steady_lb::gateway::Gateway::new(
        routes.clone(),
        config.slicer,
        &config.domains[0],
        config.public,
        config.tls_listen.zip(config.tls_certs.first().map(|cert| cert.domain.as_str())),
        config.anonymous_runs_per_minute_max,
    ));

    let public_proxy = PublicProxy::new(
        routes.clone(),
        config.domains.clone(),
        config.edge_limits(),
        steady_lb::limits::Limits::new(config.client_requests_per_second_max, config.app_in_flight_max),
        metrics.clone(),
        gateway.clone(),
    )
    .with_upstream_read_timeout_ms(config.upstream_read_timeout_ms)
    .with_host_protocol(config.host_protocol);
    let timeouts = LaneTimeouts {
        header_read_ms: config.header_read_timeout_ms,
        upstream_read_ms: config.upstream_read_timeout_ms,
    };
    let tls_port = match (config.tls_listen, &certs) {
        (Some(addr), Some(store)) => match TlsPort::new(addr, store.clone(), config.header_read_timeout_ms) {
            Ok(port) => Some(Arc::new(port)),
            Err(message) => exit_on_bad_config(&message),
        },
        _ => None,
    };
    let public_labels = ListenerLabels { listener: "public" };
    let slots = Slots::new(
        connections_max,
        "--connections-max",
        metrics.connections_open.get_or_create(&public_labels).clone(),
        metrics.connections_refused.get_or_create(&public_labels).clone(),
    );
    let publics: Vec<_> = (0..config.threads)
        .map(|worker| {
            let mut proxy = pingora::proxy::http_proxy(&server.configuration, public_proxy.clone());
            proxy.server_options = Some(public_server_options(config.header_read_timeout_ms));
            let sessions = PublicSessions::new(proxy, config.header_read_timeout_ms, in_flight.clone(), slots.clone());
            let h2_connections = sessions.h2_connections();
            let lane = FastLane::new(sessions, public_proxy.clone(), timeouts, in_flight.clone(), h2_connections);
            public_worker(worker, Capped::new(lane, slots.clone(), tls_port.clone()), &config)
        })
        .collect();
    let readiness = Arc::new(Readiness::new(std::iter::once(config.public).chain(config.tls_listen).collect()));
    let private_labels = ListenerLabels { listener: "private" };
    let private_slots = Slots::new(
        connections::PRIVATE_CONNECTIONS_MAX,
        "the private listener's bound",
        metrics.connections_open.get_or_create(&private_labels).clone(),
        metrics.connections_refused.get_or_create(&private_labels).clone(),
    );
    let private_proxy =
        PrivateProxy::new(routes.clone(), metrics, gateway, readiness).with_in_flight(in_flight.clone());
    let private_proxy = pingora::proxy::http_proxy(&server.configuration, private_proxy);
    let mut private = Service::new("private".to_string(), Capped::new(private_proxy, private_slots, None));
    private.add_tcp(&config.private.to_string());
    private.threads = Some(1);
    let watch = background_service("slicer watch", SlicerWatch::new(config.slicer, routes));
    let drain = background_service("drain", Drain::new(in_flight, config.drain_timeout_ms));

    for public in publics {
        server.add_service(public);
    }
    server.add_service(private);
    server.add_service(watch);
    server.add_service(drain);
    if let Some(store) = certs {
        server.add_service(background_service("certificate reload", CertReloader::new(store)));
    }
    tracing::info!(
        public = %config.public,
        tls = ?config.tls_listen,
        private = %config.private,
        slicer = %config.slicer,
        upgrade = config.upgrade,
        connections_max,
        "load balancer starting"
    );
    server.run_forever();
}

/// Worker `worker`'s public service: one thread, its own sockets on the public (and TLS)
/// addresses (`steady_lb::workers`).
fn public_worker<A: ServerApp + Send + Sync + 'static>(worker: usize, app: A, config: &Config) -> Service<A> {
    let mut public = Service::new(format!("public {worker}"), app);
    // The TLS address is a plain endpoint too: the app runs the handshake itself
    // (steady_lb::handshake), so a connection there counts and is timed from its first byte.
    public
        .add_listener(workers::listener(workers::listen_key(config.public, worker), workers::PLAIN_READ_BUFFER_BYTES));
    if let Some(addr) = config.tls_listen {
        public.add_listener(workers::listener(workers::listen_key(addr, worker), workers::TLS_READ_BUFFER_BYTES));
    }
    public.threads = Some(1);
    public
}

/// The bound on open client connections: `--connections-max`, or the default the open files
/// limit covers (`steady_lb::connections`); a bound the limit cannot cover exits.
fn connections_bound(config: &Config) -> usize {
    let open_files_max = match files::raise_open_files_limit() {
        Ok(limit) => limit,
        Err(error) => exit_on_bad_config(&format!("reading the open files limit: {error}")),
    };
    // Every worker keeps its lane's idle host connections and its proxy's (pingora's pool);
    // the private listener its proxy's, and its own connections with a host connection each.
    let pooled_max = (config.threads * (HOST_POOL.idle_total_max + UPSTREAM_KEEPALIVE_POOL_SIZE)) as u64;
    let private_max = (UPSTREAM_KEEPALIVE_POOL_SIZE + 2 * connections::PRIVATE_CONNECTIONS_MAX) as u64;
    let budget = Budget {
        open_files_max,
        fixed: pooled_max + private_max + connections::FILES_RESERVED,
        flag: "--connections-max",
        default_max: connections::CONNECTIONS_MAX,
    };
    budget.settle(config.connections_max).unwrap_or_else(|message| exit_on_bad_config(&message))
}

/// The public proxy's options: an HTTP/2 connection with no stream in flight for the header
/// deadline is closed, as an idle HTTP/1.1 keep-alive connection is (`steady_lb::sessions`).
fn public_server_options(header_read_timeout_ms: u64) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(std::time::Duration::from_millis(header_read_timeout_ms));
    options
}

/// Reports a configuration error and exits with code 2.
fn exit_on_bad_config(message: &str) -> ! {
    eprintln!("steady-lb: {message}");
    std::process::exit(2);
}
