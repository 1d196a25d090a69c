//! End-to-end tests: real binaries, real Bun, real bubblewrap, driven through the LB and CLI.
//! One test binary, so the suite links once.

mod access;
mod cli;
mod cluster_file;
mod commands;
mod dashboard;
mod durability;
mod edge;
mod hostd;
mod http2;
mod lb_lifecycle;
mod limits;
mod metrics;
mod migration;
mod openapi;
mod protocols;
mod request_path;
mod sandbox;
mod tls;
mod up;
