//! Graceful stop: requests in flight finish before the process exits.
//!
//! On SIGTERM (and on SIGQUIT, after handing its sockets to a new process) pingora stops
//! accepting, closes idle keep-alive connections and then waits a fixed grace period before it
//! drops every task, finished or not. [`InFlight`] counts the public listeners' sessions
//! (`sessions`) and the private proxy's calls, and [`Drain`] ends the process once that count
//! is zero after the stop was broadcast (and at least `sessions::STOP_SETTLE_MS` after it,
//! while late requests may still arrive), or when `drain_timeout_ms` has passed — so a stop takes as long as the slowest
//! request, not a fixed grace period. pingora's grace period is set just above the drain bound
//! as a backstop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// How often the drain looks at the count once the stop has begun.
const DRAIN_POLL_MS: u64 = 20;

/// The number of sessions and calls the LB is working on, across its listeners.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One session's or call's place in [`InFlight`]; dropping it gives it back.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more requests left than entered");
    }
}

/// Ends the process once the requests in flight have finished after a stop began.
pub struct Drain {
    in_flight: InFlight,
    timeout: Duration,
}

impl Drain {
    /// Waits for `in_flight` to reach zero, at most `timeout_ms`, once the stop is broadcast.
    pub fn new(in_flight: InFlight, timeout_ms: u64) -> Self {
        Self { in_flight, timeout: Duration::from_millis(timeout_ms) }
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        tracing::info!(in_flight = self.in_flight.count(), "stopping: waiting for requests in flight");
        let poll = Duration::from_millis(DRAIN_POLL_MS);
        let settle = Duration::from_millis(crate::sessions::STOP_SETTLE_MS);
        while (self.in_flight.count() > 0 || started.elapsed() < settle) && started.elapsed() < self.timeout {
            tokio::time::sleep(poll).await;
        }
        let left = self.in_flight.count();
        if left > 0 {
            tracing::warn!(
                left,
                timeout_ms = self.timeout.as_millis() as u64,
                "requests still in flight at the drain bound"
            );
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained; exiting");
        // pingora would only drop the remaining (idle) tasks after its fixed grace period;
        // there is nothing left for it to do, so the stop ends here.
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_requests_until_dropped() {
        let in_flight = InFlight::default();
        let first = in_flight.enter();
        let second = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        drop(first);
        assert_eq!(in_flight.count(), 1);
        drop(second);
        assert_eq!(in_flight.count(), 0);
    }
}
