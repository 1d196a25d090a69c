//! What two steady binaries must agree on, and nothing else.
//!
//! The slicer, host daemons, load balancers and the CLI talk over HTTP+JSON; the types that
//! cross those wires live in [`wire`]. Which names an app may have is decided once, in [`name`]; which environment variables it
//! may be given, in [`env`].
//! How an app name maps to a slice of the 64-bit hash space is decided once, in [`slice`], so
//! that a load balancer and the slicer can never disagree on where an app lives. This crate
//! does no I/O: nothing async, no SQLite, no sockets.

pub mod env;
pub mod name;
pub mod slice;
pub mod wire;

/// Most worker threads a load balancer takes (`steady-lb --threads`): each worker listens on
/// a socket of its own, and an upgrade hands at most 32 sockets to the new process (one is
/// the private listener's). The CLI checks cluster files and the bench its flag against it.
pub const LB_THREADS_MAX: usize = 31;

/// [`LB_THREADS_MAX`] for a load balancer with a TLS listener: each worker has two sockets.
pub const LB_THREADS_MAX_WITH_TLS: usize = 15;

/// Most certificates a load balancer serves (`steady-lb --tls-cert`, one per domain); the CLI
/// checks cluster files against it.
pub const LB_TLS_CERTS_MAX: usize = 64;

/// Version of the HTTP API between steady's own binaries; every path starts with `/v1`.
pub const API_VERSION: &str = "v1";
