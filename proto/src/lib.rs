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

/// Version of the HTTP API between steady's own binaries; every path starts with `/v1`.
pub const API_VERSION: &str = "v1";
