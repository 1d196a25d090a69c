//! The steady load balancer, built on pingora.
//!
//! Two listeners share one routing table ([`routing`]): the public one sends
//! `Host: <app>.<domain>` to the host that holds the app (probing the old host of an app
//! in the middle of a move, [`probe`]) and answers unknown apps with its own
//! 404 page ([`public`]); the private one carries the API to the owning host or the slicer
//! ([`private`]). The table is fed by a long-poll watch of the slicer ([`watch`]); between
//! updates, and while the slicer is down, the LB keeps routing on its last table.
//!
//! The public proxy listens in plain HTTP and, with certificates, in TLS ([`certs`]: picked by
//! SNI, reloaded on SIGHUP); each request header must arrive within a total deadline
//! ([`sessions`]); a stop waits for the requests in flight ([`drain`]). The common app
//! request (a bodiless `GET`/`HEAD` over HTTP/1.1) is served straight from the client's bytes
//! on pooled host connections ([`fastlane`]); every other request goes through pingora's proxy.
//! Each worker thread runs its own copy of the public service on a socket of its own
//! ([`workers`]).

pub mod certs;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod drain;
pub mod edge;
pub mod fastlane;
pub mod gateway;
pub mod handshake;
pub mod limits;
pub mod metrics;
pub mod pages;
pub mod private;
pub mod probe;
pub mod public;
pub mod readiness;
pub mod routing;
pub mod sessions;
pub mod upstream;
pub mod watch;
pub mod workers;
