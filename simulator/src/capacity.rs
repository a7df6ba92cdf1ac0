//! Write-unit accounting and the token buckets behind `table_wcu` / `key_wcu`.

use std::time::Instant;

/// Write units for one item write of `bytes` (the larger of the before/after sizes for puts and
/// updates, the deleted item for deletes): each item rounded up to 1 KB separately, minimum 1.
pub fn write_units(bytes: usize) -> u64 {
    (bytes.div_ceil(1024) as u64).max(1)
}

/// A token bucket refilled continuously at `rate` units per second up to `rate × burst_seconds`.
///
/// It starts full. A charge larger than the whole bucket would never fit, so a full bucket
/// accepts any single charge and goes into debt (like DynamoDB letting a 400 KB item through a
/// small partition once): the write pays for itself by blocking the key for a while.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: capacity,
            last: now,
        }
    }

    /// Adds what has accrued since the last call.
    pub fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.last = now;
    }

    /// Whether `cost` can be charged now (after [`Bucket::refill`]).
    pub fn fits(&self, cost: f64, capacity: f64) -> bool {
        self.tokens >= cost || self.tokens >= capacity
    }

    pub fn take(&mut self, cost: f64) {
        self.tokens -= cost;
    }

    /// Full again: indistinguishable from a fresh bucket, so it can be forgotten.
    pub fn is_full(&self, capacity: f64) -> bool {
        self.tokens >= capacity
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn units_round_each_item_up() {
        assert_eq!(write_units(0), 1);
        assert_eq!(write_units(500), 1);
        assert_eq!(write_units(1024), 1);
        assert_eq!(write_units(1025), 2);
        assert_eq!(write_units(3584), 4);
        assert_eq!(write_units(409_600), 400);
    }

    #[test]
    fn bucket_refills_and_allows_one_oversized_charge() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10.0, t0);
        assert!(b.fits(10.0, 10.0));
        b.take(4.0);
        assert!(!b.fits(7.0, 10.0));
        b.refill(5.0, 10.0, t0 + Duration::from_millis(200));
        assert!(b.fits(7.0, 10.0));
        b.refill(5.0, 10.0, t0 + Duration::from_secs(60));
        assert!(b.is_full(10.0));
        assert!(
            b.fits(50.0, 10.0),
            "a full bucket takes an oversized charge"
        );
        b.take(50.0);
        assert!(!b.fits(1.0, 10.0));
    }
}
