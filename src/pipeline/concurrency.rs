//! Adaptive flush concurrency, AIMD in the manner of Vector's adaptive request concurrency
//! (DynamoDB's guidance: back off on throttling, retry UnprocessedItems): the number of flushes in flight grows by one after a limit's
//! worth of clean requests, and halves — at most once per round trip — when DynamoDB throttles,
//! returns UnprocessedItems, or answers far slower than its recent average. Always within
//! `[pipeline] min_in_flight ..= max_in_flight`.
//!
//! The limit is enforced by the shards' semaphore: raising it adds permits; lowering it forgets
//! the permits that are free and records the rest as a debt, paid by forgetting permits as
//! flushes finish ([`Concurrency::release`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How much slower than the average a request must be to count as a latency spike.
const SPIKE_FACTOR: f64 = 3.0;
/// Below this, latencies are noise on loopback; no spike is declared under it.
const SPIKE_FLOOR: Duration = Duration::from_millis(20);

/// The AIMD arithmetic, without the semaphore (pure, so it is unit-tested on its own; the
/// caller passes tokio's `now`).
#[derive(Debug, Clone)]
pub struct Aimd {
    /// The current limit on flushes in flight.
    pub limit: usize,
    /// `pipeline.min_in_flight`: the floor of a decrease.
    min: usize,
    /// `pipeline.max_in_flight`: the ceiling of an increase (and the start).
    max: usize,
    /// Clean requests since the last increase.
    successes: usize,
    /// Exponentially weighted average of clean requests' latency, seconds.
    average: Option<f64>,
    /// When the limit last halved: at most one decrease per round trip.
    last_decrease: Option<Instant>,
}

impl Aimd {
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.clamp(1, max.max(1));
        Aimd {
            limit: max.max(min),
            min,
            max: max.max(min),
            successes: 0,
            average: None,
            last_decrease: None,
        }
    }

    /// A request that went through; returns the new limit if it changed.
    pub fn success(&mut self, latency: Duration, now: Instant) -> Option<usize> {
        let secs = latency.as_secs_f64();
        if let Some(avg) = self.average
            && latency > SPIKE_FLOOR
            && secs > avg * SPIKE_FACTOR
        {
            return self.decrease(now);
        }
        self.average = Some(self.average.map_or(secs, |a| a * 0.9 + secs * 0.1));
        self.successes += 1;
        if self.successes >= self.limit && self.limit < self.max {
            self.successes = 0;
            self.limit += 1;
            return Some(self.limit);
        }
        None
    }

    /// DynamoDB pushed back (throttling, UnprocessedItems); returns the new limit if it changed.
    pub fn backoff(&mut self, now: Instant) -> Option<usize> {
        self.decrease(now)
    }

    fn decrease(&mut self, now: Instant) -> Option<usize> {
        // Once per round trip: the requests already in flight were sent under the old limit.
        let window = Duration::from_secs_f64(self.average.unwrap_or(0.05)).max(SPIKE_FLOOR);
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < window)
        {
            return None;
        }
        self.last_decrease = Some(now);
        self.successes = 0;
        let new = (self.limit / 2).max(self.min);
        (new != self.limit).then(|| {
            self.limit = new;
            new
        })
    }
}

/// The live controller shared by the shards (who hold the permits) and the flusher (who
/// reports outcomes).
///
/// - `permits`: the semaphore the shards acquire one permit per flush from.
/// - `aimd`: the arithmetic behind a mutex held for a few integer operations, never across I/O.
/// - `debt`: permits still to be forgotten after a decrease found them in use.
/// - `limit`: the current limit, for the gauge.
///
/// Nothing here blocks: a shard waits on the semaphore only when it has a flush to start and no
/// permit is free. Nothing is dropped: a permit owed to a decrease is forgotten on release
/// instead of returned.
#[derive(Debug)]
pub struct Concurrency {
    permits: std::sync::Arc<Semaphore>,
    aimd: Option<Mutex<Aimd>>,
    debt: AtomicUsize,
    limit: AtomicUsize,
}

impl Concurrency {
    /// `adaptive` off keeps the limit at `max`.
    pub fn new(min: usize, max: usize, adaptive: bool) -> Self {
        Concurrency {
            permits: std::sync::Arc::new(Semaphore::new(max)),
            aimd: adaptive.then(|| Mutex::new(Aimd::new(min, max))),
            debt: AtomicUsize::new(0),
            limit: AtomicUsize::new(max),
        }
    }

    pub fn permits(&self) -> &std::sync::Arc<Semaphore> {
        &self.permits
    }

    /// The current limit on flushes in flight.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Returns a flush's permit: forgotten while a decrease is still owed, else released.
    pub fn release(&self, permit: OwnedSemaphorePermit) {
        let owed = self
            .debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok();
        if owed {
            permit.forget();
        } else {
            drop(permit);
        }
    }

    pub fn success(&self, latency: Duration) {
        let change = self.aimd.as_ref().and_then(|a| {
            a.lock()
                .ok()
                .and_then(|mut a| a.success(latency, Instant::now()))
        });
        self.apply(change);
    }

    pub fn backoff(&self) {
        let change = self
            .aimd
            .as_ref()
            .and_then(|a| a.lock().ok().and_then(|mut a| a.backoff(Instant::now())));
        self.apply(change);
    }

    fn apply(&self, new: Option<usize>) {
        let Some(new) = new else { return };
        let old = self.limit.swap(new, Ordering::Relaxed);
        if new > old {
            // Pay debt first, then add what is left.
            let mut add = new - old;
            while add > 0 {
                match self
                    .debt
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
                {
                    Ok(_) => add -= 1,
                    Err(_) => break,
                }
            }
            self.permits.add_permits(add);
        } else if new < old {
            let cut = old - new;
            let forgotten = self.permits.forget_permits(cut);
            self.debt.fetch_add(cut - forgotten, Ordering::Relaxed);
        }
        metrics::gauge!(crate::telemetry::catalogue::FLUSHES_IN_FLIGHT_LIMIT).set(new as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_backoff_once_per_round_trip_and_grows_by_one_per_window() {
        let t0 = Instant::now();
        let mut a = Aimd::new(2, 32);
        assert_eq!(a.limit, 32);
        let rtt = Duration::from_millis(10);
        assert_eq!(a.success(rtt, t0), None);
        assert_eq!(a.backoff(t0), Some(16));
        // Within the same round trip: no second halving.
        assert_eq!(a.backoff(t0 + Duration::from_millis(5)), None);
        assert_eq!(a.backoff(t0 + Duration::from_millis(100)), Some(8));
        assert_eq!(a.backoff(t0 + Duration::from_millis(200)), Some(4));
        assert_eq!(a.backoff(t0 + Duration::from_millis(300)), Some(2));
        assert_eq!(a.backoff(t0 + Duration::from_millis(400)), None, "floor");
        // Additive increase: one step per `limit` clean requests.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(a.success(rtt, later), None);
        assert_eq!(a.success(rtt, later), Some(3));
        for _ in 0..2 {
            assert_eq!(a.success(rtt, later), None);
        }
        assert_eq!(a.success(rtt, later), Some(4));
    }

    #[test]
    fn a_latency_spike_counts_as_backoff() {
        let t0 = Instant::now();
        let mut a = Aimd::new(1, 8);
        for _ in 0..20 {
            a.success(Duration::from_millis(10), t0);
        }
        assert_eq!(a.success(Duration::from_millis(200), t0), Some(4));
    }

    #[tokio::test]
    async fn the_semaphore_follows_the_limit_with_debt_for_permits_in_use() {
        let c = Concurrency::new(1, 4, true);
        let held: Vec<_> = (0..3)
            .map(|_| Arc::clone(c.permits()).try_acquire_owned().unwrap())
            .collect();
        c.backoff(); // 4 -> 2: one free permit forgotten, one owed
        assert_eq!(c.limit(), 2);
        assert_eq!(c.permits().available_permits(), 0);
        let mut held = held.into_iter();
        c.release(held.next().unwrap()); // pays the debt
        assert_eq!(c.permits().available_permits(), 0);
        c.release(held.next().unwrap());
        assert_eq!(c.permits().available_permits(), 1);
        drop(held);
        assert_eq!(c.permits().available_permits(), 2);
    }

    use std::sync::Arc;
}
