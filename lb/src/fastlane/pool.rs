//! Idle keep-alive connections from the fast lane to hosts.
//!
//! A request borrows the most recently used idle connection to its host, or opens a new one,
//! and gives it back when the answer ended where its framing said. No task watches an idle
//! connection: one the host closed while idle is found out by the next request that borrows
//! it, which then asks again on a new connection (the lane serves only `GET` and `HEAD`). So a
//! request costs no wake-ups beyond its own reads and writes; the price is that a closed
//! connection can sit in the pool until it is borrowed or ages out, which the bounds below
//! keep small.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept to one host: enough for every connection of a busy client-side burst
/// to find one again.
pub const IDLE_PER_HOST_MAX: usize = 256;

/// Idle connections kept across all hosts.
pub const IDLE_TOTAL_MAX: usize = 1024;

/// How long a connection may sit idle before it is closed rather than borrowed; well under the
/// idle timeouts of host daemons' ingress servers, so a borrowed one is rarely found closed.
pub const IDLE_MS_MAX: u64 = 30_000;

/// An idle connection and when it was given back.
#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Idle connections to hosts, most recently used last.
#[derive(Debug, Default)]
pub struct HostPool {
    idle: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    by_host: HashMap<SocketAddr, Vec<Idle>>,
    total: usize,
}

impl HostPool {
    /// Borrows the most recently used idle connection to `host` that has not aged out by `now`.
    pub fn take(&self, host: SocketAddr, now: Instant) -> Option<TcpStream> {
        let mut pool = self.idle.lock().expect("pool lock");
        let Pool { by_host, total } = &mut *pool;
        let idle = by_host.get_mut(&host)?;
        let found = loop {
            let Some(connection) = idle.pop() else { break None };
            *total -= 1;
            if now.saturating_duration_since(connection.since) < Duration::from_millis(IDLE_MS_MAX) {
                break Some(connection.stream);
            }
            // The rest are older still.
            *total -= idle.len();
            idle.clear();
        };
        if idle.is_empty() {
            by_host.remove(&host);
        }
        found
    }

    /// Gives a connection back after a complete answer to a request that started at `since`
    /// (its idle time counts from there: the clock is read once per request); it is closed
    /// instead when the pool is full.
    pub fn give(&self, host: SocketAddr, stream: TcpStream, since: Instant) {
        let mut pool = self.idle.lock().expect("pool lock");
        if pool.total >= IDLE_TOTAL_MAX {
            return;
        }
        let idle = pool.by_host.entry(host).or_default();
        if idle.len() >= IDLE_PER_HOST_MAX {
            return;
        }
        idle.push(Idle { stream, since });
        pool.total += 1;
        debug_assert_eq!(pool.total, pool.by_host.values().map(Vec::len).sum::<usize>());
    }

    /// Idle connections kept, across all hosts.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(listener: &tokio::net::TcpListener) -> TcpStream {
        let address = listener.local_addr().expect("address");
        let (connected, _) = tokio::join!(TcpStream::connect(address), listener.accept());
        connected.expect("connect")
    }

    #[tokio::test]
    async fn the_last_connection_given_back_is_borrowed_first_and_the_bounds_hold() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("address");
        let pool = HostPool::default();
        let now = Instant::now();
        assert!(pool.take(host, now).is_none());
        let (first, second) = (pair(&listener).await, pair(&listener).await);
        let second_port = second.local_addr().expect("address").port();
        pool.give(host, first, now);
        pool.give(host, second, now);
        assert_eq!(pool.idle_count(), 2);
        let borrowed = pool.take(host, now).expect("an idle connection");
        assert_eq!(borrowed.local_addr().expect("address").port(), second_port);
        assert_eq!(pool.idle_count(), 1);
        for _ in 0..IDLE_PER_HOST_MAX + 4 {
            pool.give(host, pair(&listener).await, now);
        }
        assert_eq!(pool.idle_count(), IDLE_PER_HOST_MAX, "one host keeps at most its share");
        let later = now + Duration::from_millis(IDLE_MS_MAX);
        assert!(pool.take(host, later).is_none(), "connections idle too long are closed, not borrowed");
        assert_eq!(pool.idle_count(), 0);
    }
}
