//! End-to-end tests: real binaries, real Bun, real bubblewrap, driven through the LB and CLI.
//! One test binary, so the suite links once.

mod cli;
mod cluster_file;
mod durability;
mod edge;
mod hostd;
mod limits;
mod metrics;
mod migration;
mod protocols;
mod request_path;
mod sandbox;
mod up;
