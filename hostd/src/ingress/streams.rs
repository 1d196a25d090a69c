//! HTTP/2 streams' share of the ingress connection bound.
//!
//! The ingress counts each open connection in its bounded places, and the open files budget
//! (`Config::ingress_budget`) gives each place two descriptors: the connection and one
//! connection to an app. An LB speaking h2c carries many requests at once on one connection,
//! each with an app connection of its own, so counting the connection once would let a few
//! of them go past the budget. Here, as in the LB's public listener, a connection's first
//! HTTP/2 request in flight rides on the connection's place and every further one takes a
//! place of its own, held until its answer's body has ended; one that finds none is answered
//! `503` with `retry-after` and goes nowhere.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, Version};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connection's requests in flight, and the ingress's places they share.
#[derive(Clone)]
pub struct ConnectionStreams {
    places: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
}

/// One HTTP/2 request's share: a place of its own unless it is its connection's only one.
pub struct StreamPlace {
    in_flight: Arc<AtomicUsize>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl ConnectionStreams {
    /// A connection's streams, taking their places from `places`.
    pub fn new(places: Arc<Semaphore>) -> Self {
        Self { places, in_flight: Arc::default() }
    }

    /// A place for one more request, unless every place is taken.
    pub fn take(&self) -> Option<StreamPlace> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = if before == 0 { None } else { self.places.clone().try_acquire_owned().ok() };
        if before > 0 && permit.is_none() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamPlace { in_flight: self.in_flight.clone(), _permit: permit })
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a stream given back twice");
    }
}

/// Serves `request` with `inner` (the router), an HTTP/2 one only with a place from
/// `streams`, held until its answer's body has ended (or is dropped).
pub async fn serve<S>(
    inner: &S,
    streams: &ConnectionStreams,
    request: Request<Incoming>,
) -> Result<Response, Infallible>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    if request.version() != Version::HTTP_2 {
        return inner.call(request).await;
    }
    let Some(place) = streams.take() else {
        let message = "too many requests in flight on this host's ingress; try again".to_owned();
        let mut refusal = super::failure(StatusCode::SERVICE_UNAVAILABLE, "connections_max", message);
        refusal.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        return Ok(refusal);
    };
    let answer = inner.call(request).await?;
    Ok(answer.map(|body| {
        Body::new(body.map_frame(move |frame| {
            // The place lives as long as the body does.
            let _ = &place;
            frame
        }))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_first_stream_rides_on_its_place_and_further_ones_take_their_own() {
        let places = Arc::new(Semaphore::new(2));
        let _connection = places.clone().try_acquire_owned().expect("the connection's own place");
        let streams = ConnectionStreams::new(places.clone());
        let first = streams.take().expect("the first stream");
        assert_eq!(places.available_permits(), 1, "the first stream takes no place");
        let second = streams.take().expect("a second stream");
        assert_eq!(places.available_permits(), 0);
        assert!(streams.take().is_none(), "a third past the bound");
        assert_eq!(streams.in_flight.load(Ordering::Acquire), 2, "a refused stream is not counted");
        drop(second);
        assert_eq!(places.available_permits(), 1);
        drop(first);
        assert_eq!(streams.in_flight.load(Ordering::Acquire), 0);
    }
}
