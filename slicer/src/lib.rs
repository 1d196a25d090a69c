//! The slicer: steady's membership and placement service.
//!
//! Host daemons register here; the slicer cuts the app-name hash space into slices
//! ([`steady_proto::slice`]), gives each slice one owner host ([`planner`]), keeps hosts,
//! slices and apps durable in SQLite ([`store`]) and serves the versioned routing table that
//! load balancers watch ([`api`]). When the assignment changes, the [`mover`] takes apps to
//! their new hosts live; [`balance`] rebalances by the load hosts report.

pub mod access;
pub mod api;
pub mod balance;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod mover;
pub mod planner;
pub mod store;
