//! Requests of one caller being forwarded at once. Each holds an upstream connection until its
//! answer has been streamed back (an SSE stream for as long as it lasts), so without this bound a
//! caller with a thousand slow calls would take the upstream pool from everyone else.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use dashmap::DashMap;
use hyper::body::{Body, Frame, SizeHint};

/// In-flight counts by caller. Callers are configured users, so the map is as large as the user
/// list at most.
#[derive(Default)]
pub struct InFlight {
    by_caller: DashMap<Arc<str>, Arc<AtomicUsize>>,
}

/// A slot taken; given back when dropped (when the answer's body is done or dropped).
#[derive(Debug)]
pub struct InFlightSlot(Arc<AtomicUsize>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// A slot for one more of `caller`'s requests, unless `max` are in flight already.
    pub fn acquire(&self, caller: &Arc<str>, max: usize) -> Option<InFlightSlot> {
        let counter = match self.by_caller.get(caller) {
            Some(counter) => Arc::clone(&counter),
            None => Arc::clone(
                self.by_caller
                    .entry(Arc::clone(caller))
                    .or_default()
                    .value(),
            ),
        };
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| InFlightSlot(counter))
    }
}

/// A response body that holds its request's slot (and whatever else counts the request as
/// open) until it is done or dropped.
pub struct HoldingSlot<B, T = InFlightSlot> {
    body: B,
    _slot: T,
}

impl<B, T> HoldingSlot<B, T> {
    pub fn new(body: B, slot: T) -> Self {
        Self { body, _slot: slot }
    }
}

impl<B: Body + Unpin, T: Unpin> Body for HoldingSlot<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_at_most_max_slots_and_a_dropped_slot_frees_one() {
        let in_flight = InFlight::default();
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let slots: Vec<InFlightSlot> = (0..3)
            .map(|_| in_flight.acquire(&alice, 3).unwrap())
            .collect();
        assert!(in_flight.acquire(&alice, 3).is_none());
        assert!(
            in_flight.acquire(&bob, 3).is_some(),
            "bob has slots of his own"
        );
        drop(slots);
        assert!(in_flight.acquire(&alice, 3).is_some());
    }
}
