//! Idle keep-alive connections to upstreams (hosts for the LB, app sockets for hostd).
//!
//! A request borrows the most recently used idle connection to its upstream, or opens a new
//! one, and gives it back when the answer ended where its framing said. No task watches an
//! idle connection: one the upstream closed while idle is found out by the next request that
//! borrows it, which then asks again on a new connection (the lanes serve only `GET` and
//! `HEAD`). So a request costs no wake-ups beyond its own reads and writes; the price is that
//! a closed connection can sit in the pool until it is borrowed or ages out, which the bounds
//! keep small.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many idle connections a pool keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PoolBounds {
    /// Idle connections kept to one upstream.
    pub idle_per_upstream_max: usize,
    /// Idle connections kept across all upstreams.
    pub idle_total_max: usize,
    /// How long a connection may sit idle before it is closed rather than borrowed: under the
    /// upstream's own idle timeout, so a borrowed one is rarely found closed.
    pub idle_ms_max: u64,
}

/// An idle connection and when it was given back.
#[derive(Debug)]
struct Idle<S> {
    stream: S,
    since: Instant,
}

/// Idle connections of type `S` to upstreams named by `K`, most recently used last.
#[derive(Debug)]
pub struct IdlePool<K, S> {
    bounds: PoolBounds,
    idle: Mutex<Pool<K, S>>,
}

#[derive(Debug)]
struct Pool<K, S> {
    by_upstream: HashMap<K, Vec<Idle<S>>>,
    total: usize,
}

impl<K: Hash + Eq, S> IdlePool<K, S> {
    /// An empty pool that keeps at most what `bounds` allow.
    pub fn new(bounds: PoolBounds) -> Self {
        assert!(bounds.idle_per_upstream_max <= bounds.idle_total_max, "one upstream's share exceeds the whole");
        Self { bounds, idle: Mutex::new(Pool { by_upstream: HashMap::new(), total: 0 }) }
    }

    /// Borrows the most recently used idle connection to `upstream` that has not aged out by
    /// `now`.
    pub fn take<Q>(&self, upstream: &Q, now: Instant) -> Option<S>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Pool { by_upstream, total } = &mut *pool;
        let idle = by_upstream.get_mut(upstream)?;
        let found = loop {
            let Some(connection) = idle.pop() else { break None };
            *total -= 1;
            if now.saturating_duration_since(connection.since) < Duration::from_millis(self.bounds.idle_ms_max) {
                break Some(connection.stream);
            }
            // The rest are older still.
            *total -= idle.len();
            idle.clear();
        };
        if idle.is_empty() {
            by_upstream.remove(upstream);
        }
        found
    }

    /// Gives a connection back after a complete answer to a request that started at `since`
    /// (its idle time counts from there: the clock is read once per request); it is closed
    /// instead when the pool is full.
    pub fn give<Q>(&self, upstream: &Q, stream: S, since: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if pool.total >= self.bounds.idle_total_max {
            return;
        }
        // The key is copied only for an upstream with no idle connection yet.
        let idle = match pool.by_upstream.get_mut(upstream) {
            Some(idle) => idle,
            None => pool.by_upstream.entry(upstream.to_owned()).or_default(),
        };
        if idle.len() >= self.bounds.idle_per_upstream_max {
            return;
        }
        idle.push(Idle { stream, since });
        pool.total += 1;
        debug_assert_eq!(pool.total, pool.by_upstream.values().map(Vec::len).sum::<usize>());
    }

    /// Idle connections kept, across all upstreams.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    const BOUNDS: PoolBounds = PoolBounds { idle_per_upstream_max: 8, idle_total_max: 16, idle_ms_max: 30_000 };

    async fn pair(listener: &tokio::net::TcpListener) -> TcpStream {
        let address = listener.local_addr().expect("address");
        let (connected, _) = tokio::join!(TcpStream::connect(address), listener.accept());
        connected.expect("connect")
    }

    #[tokio::test]
    async fn the_last_connection_given_back_is_borrowed_first_and_the_bounds_hold() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("address");
        let pool = IdlePool::new(BOUNDS);
        let now = Instant::now();
        assert!(pool.take(&host, now).is_none());
        let (first, second) = (pair(&listener).await, pair(&listener).await);
        let second_port = second.local_addr().expect("address").port();
        pool.give(&host, first, now);
        pool.give(&host, second, now);
        assert_eq!(pool.idle_count(), 2);
        let borrowed = pool.take(&host, now).expect("an idle connection");
        assert_eq!(borrowed.local_addr().expect("address").port(), second_port);
        assert_eq!(pool.idle_count(), 1);
        for _ in 0..BOUNDS.idle_per_upstream_max + 4 {
            pool.give(&host, pair(&listener).await, now);
        }
        assert_eq!(pool.idle_count(), BOUNDS.idle_per_upstream_max, "one host keeps at most its share");
        let later = now + Duration::from_millis(BOUNDS.idle_ms_max);
        assert!(pool.take(&host, later).is_none(), "connections idle too long are closed, not borrowed");
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn the_total_bound_holds_across_upstreams() {
        let pool: IdlePool<String, usize> = IdlePool::new(BOUNDS);
        let now = Instant::now();
        for i in 0..BOUNDS.idle_total_max + 4 {
            pool.give(["a", "b", "c"][i % 3], i, now);
        }
        assert_eq!(pool.idle_count(), BOUNDS.idle_total_max);
        assert_eq!(pool.take("c", now), Some(14), "the newest c kept: later ones found the pool full");
    }
}
