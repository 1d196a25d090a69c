//! When the LB is ready (`/readyz` on the private listener): it has a routing table, and its
//! public addresses take connections.
//!
//! The private listener and the public workers are services of their own, each binding its
//! socket as its thread starts, so the private one may answer before a public one listens. A
//! supervisor that sends users to the LB as soon as it says ready would then see connections
//! refused. So the first ready answer is given only after a connection to each public address
//! (plain, and TLS when it listens) was taken; from then on the sockets stay open for the
//! LB's life (an upgrade hands them over open), and no further probe is made.
//!
//! A probe says nothing and waits until the LB has closed it, not just until the kernel
//! completed its handshake: a worker then accepted it and gave its place back
//! (`crate::connections`), so a client sent to the LB once it is ready never finds a place
//! taken by the probe (with a small `--connections-max`, its request would be refused).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for a public address to take a probe connection and close it.
const ACCEPT_PROBE_TIMEOUT_MS: u64 = 500;

/// The LB's readiness: its public addresses, and whether each has taken a connection yet.
#[derive(Debug)]
pub struct Readiness {
    listeners: Vec<SocketAddr>,
    accepting: AtomicBool,
}

impl Readiness {
    /// Readiness of an LB listening publicly on `listeners`.
    pub fn new(listeners: Vec<SocketAddr>) -> Self {
        assert!(!listeners.is_empty(), "an LB listens on a public address");
        Self { listeners, accepting: AtomicBool::new(false) }
    }

    /// `Ok` when the LB is ready with routing table `table_version` (0: none yet), else why not.
    pub async fn check(&self, table_version: u64) -> Result<(), String> {
        if table_version == 0 {
            return Err("no routing table yet".into());
        }
        if self.accepting.load(Ordering::Acquire) {
            return Ok(());
        }
        for &listener in &self.listeners {
            match tokio::time::timeout(Duration::from_millis(ACCEPT_PROBE_TIMEOUT_MS), probe(listener)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("{listener} does not take connections yet: {error}")),
                Err(_) => return Err(format!("{listener} does not take connections yet")),
            }
        }
        self.accepting.store(true, Ordering::Release);
        Ok(())
    }
}

/// Connects to `listener`, ends its side at once and reads (dropping whatever comes) until
/// the other side closes too.
async fn probe(listener: SocketAddr) -> std::io::Result<()> {
    let mut connection = tokio::net::TcpStream::connect(probe_target(listener)).await?;
    connection.shutdown().await?;
    let mut buffer = [0u8; 1024];
    // Bounded by the caller's timeout.
    while connection.read(&mut buffer).await? > 0 {}
    Ok(())
}

/// Where to connect to reach a socket listening on `addr`: an unspecified address (all
/// interfaces) is reached on loopback.
fn probe_target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that takes connections as the LB's workers do: reads to the end, closes.
    fn serving(listener: std::net::TcpListener) {
        std::thread::spawn(move || {
            for mut connection in listener.incoming().flatten() {
                let _ = std::io::Read::read_to_end(&mut connection, &mut Vec::new());
            }
        });
    }

    #[tokio::test]
    async fn ready_only_with_a_table_and_once_every_public_address_takes_and_closes_a_connection() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let readiness = Readiness::new(vec![plain_addr, closed]);
        assert_eq!(readiness.check(0).await, Err("no routing table yet".into()));
        // Bound but not accepting: the kernel completes the handshake, nobody takes it.
        let refused = readiness.check(3).await.unwrap_err();
        assert!(refused.contains(&format!("{plain_addr} does not take connections yet")), "{refused}");

        serving(plain);
        let tls = std::net::TcpListener::bind(closed).unwrap();
        let refused = readiness.check(3).await.unwrap_err();
        assert!(refused.contains(&format!("{closed} does not take connections yet")), "{refused}");
        serving(tls);
        assert_eq!(readiness.check(3).await, Ok(()));
        assert_eq!(readiness.check(4).await, Ok(()), "probed once: the sockets stay open for the LB's life");
    }

    #[test]
    fn all_interfaces_are_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(probe_target(any), "127.0.0.1:8080".parse().unwrap());
        let any6: SocketAddr = "[::]:443".parse().unwrap();
        assert_eq!(probe_target(any6), "[::1]:443".parse().unwrap());
        let one: SocketAddr = "127.0.0.3:80".parse().unwrap();
        assert_eq!(probe_target(one), one);
    }
}
