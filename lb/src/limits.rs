//! Per-client request rate and per-app concurrency limits on the public listener, answered
//! with 429. Both use pingora-limits' count-min estimators: fixed memory whatever the number of
//! clients or apps (they may over-count on a collision, never under-count).

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;

/// Default requests per second one client address may send.
pub const CLIENT_REQUESTS_PER_SECOND_MAX: u32 = 20_000;
/// Default requests one app may have in flight through one LB.
pub const APP_IN_FLIGHT_MAX: u32 = 1_024;

/// The limits and their counters.
pub struct Limits {
    client_rate: Rate,
    client_requests_per_second_max: u32,
    app_in_flight: Inflight,
    app_in_flight_max: u32,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    ClientRate,
    AppInFlight,
}

impl Limited {
    /// The metric label and error code.
    pub fn label(self) -> &'static str {
        match self {
            Limited::ClientRate => "client_rate",
            Limited::AppInFlight => "app_in_flight",
        }
    }
}

impl Limits {
    pub fn new(client_requests_per_second_max: u32, app_in_flight_max: u32) -> Self {
        assert!(client_requests_per_second_max > 0 && app_in_flight_max > 0);
        Self {
            client_rate: Rate::new(Duration::from_secs(1)),
            client_requests_per_second_max,
            app_in_flight: Inflight::new(),
            app_in_flight_max,
        }
    }

    /// Counts a request from `client`; refused past the per-second bound.
    pub fn admit_client(&self, client: IpAddr) -> Result<(), Limited> {
        let seen = self.client_rate.observe(&client, 1);
        if seen > self.client_requests_per_second_max as isize {
            return Err(Limited::ClientRate);
        }
        Ok(())
    }

    /// Takes a place among `app`'s requests in flight; the place is given back when the guard
    /// drops (the request ended).
    pub fn admit_app(&self, app: &str) -> Result<Guard, Limited> {
        let (guard, in_flight) = self.app_in_flight.incr(app, 1);
        if in_flight > self.app_in_flight_max as isize {
            return Err(Limited::AppInFlight);
        }
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_rate_is_refused_and_others_are_not() {
        let limits = Limits::new(10, 100);
        let (noisy, quiet) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let admitted = (0..30).filter(|_| limits.admit_client(noisy).is_ok()).count();
        assert_eq!(admitted, 10);
        assert_eq!(limits.admit_client(quiet), Ok(()));
    }

    #[test]
    fn app_places_come_back_when_requests_end() {
        let limits = Limits::new(10, 2);
        let first = limits.admit_app("a").expect("place 1");
        let _second = limits.admit_app("a").expect("place 2");
        assert_eq!(limits.admit_app("a").err(), Some(Limited::AppInFlight));
        assert!(limits.admit_app("b").is_ok(), "another app has its own places");
        drop(first);
        assert!(limits.admit_app("a").is_ok());
    }
}
