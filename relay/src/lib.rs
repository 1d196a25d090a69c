//! HTTP/1.1 relaying without an HTTP framework: the pieces the load balancer's fast lane and
//! hostd's ingress lane share.
//!
//! Both daemons pass the common request (a bodiless `GET` or `HEAD`) from a client connection
//! to a pooled upstream connection and the answer back, reading headers in place and writing
//! bytes straight through. What differs between them (which requests qualify, how the upstream
//! is found, what is logged) stays in each daemon; this crate has what does not: writing a
//! request header from parsed bytes ([`head`]), reading an upstream's answer header and
//! following its body to where its framing says it ends ([`answer`]), the exchange of one
//! request over one upstream connection ([`exchange`]), noticing a client that hangs up while
//! it waits ([`hangup`]), and the idle upstream connections kept between requests ([`pool`]).

pub mod answer;
pub mod exchange;
pub mod hangup;
pub mod head;
pub mod pool;
