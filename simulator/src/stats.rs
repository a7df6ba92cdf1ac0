//! Counters, updated lock-free by request handlers, and the [`SimStats`] snapshot served by
//! `SimHandle::stats` and `GET /_sim/stats`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;

use crate::ops::Op;

/// A snapshot of the counters (since start or the last reset) and of the tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimStats {
    /// Seconds since the simulator started.
    pub uptime_seconds: f64,
    /// Seconds since the counters were last reset (or since start): the denominator for rates.
    pub counting_seconds: f64,
    /// Data-plane requests received (POST /), whatever their outcome.
    pub requests_total: u64,
    /// Per operation (`PutItem`, ..., `Unknown` for a target the simulator does not know).
    pub requests_by_operation: BTreeMap<String, u64>,
    /// Puts, updates and deletes applied (a batch counts each applied request or statement).
    pub items_written: u64,
    /// Items read from storage (Get/BatchGet hits, items evaluated by Query/Scan).
    pub items_read: u64,
    /// Write units charged (each item rounded up to 1 KB, minimum 1).
    pub write_units: u64,
    /// Requests rejected with ProvisionedThroughputExceededException or ThrottlingException.
    pub throttled_requests: u64,
    /// Write requests returned in BatchWriteItem's `UnprocessedItems`, and BatchExecuteStatement
    /// statements failed with `ThrottlingError` (capacity or `throttle_rate`).
    pub throttled_items: u64,
    /// Keys returned in BatchGetItem's `UnprocessedKeys`.
    pub unprocessed_keys: u64,
    /// ValidationException responses, and `ValidationError` statements of BatchExecuteStatement.
    pub validation_errors: u64,
    /// ConditionalCheckFailedException responses, and `ConditionalCheckFailed` statements.
    pub conditional_failures: u64,
    /// UnrecognizedClientException responses (wrong access key).
    pub auth_failures: u64,
    /// Any other error response (SerializationException, ResourceNotFoundException, ...), and
    /// statements failed with any other code (`ResourceNotFound`).
    pub other_errors: u64,
    /// Injected faults by kind.
    pub faults: FaultStats,
    /// Whether an outage (scheduled or forced) is in effect now.
    pub outage_active: bool,
    /// Current item count per table.
    pub item_counts: BTreeMap<String, u64>,
}

/// Injected faults by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    /// 500/503 answers from `error_rate`.
    pub errors: u64,
    /// Connections closed without an answer (`reset_rate`, and stalls ending in a drop).
    pub resets: u64,
    /// Requests held by `stall_rate`.
    pub stalls: u64,
    /// 503 answers during an outage.
    pub outage_rejections: u64,
    /// Writes applied and then answered 500 (`apply_then_error_rate`).
    pub applied_then_failed: u64,
    /// Writes applied after `apply_late_delay` and then dropped unanswered (`apply_late_rate`);
    /// counted just before the write is applied.
    pub applied_late: u64,
}

/// Declares [`Counters`] from one list: an `AtomicU64` per counter of [`SimStats`] (named as
/// there) and per fault of [`FaultStats`] (`counter => field`), so that `all()` (for resets)
/// and the snapshot cannot leave one out.
macro_rules! counters {
    (
        stats: [$($stat:ident),* $(,)?],
        faults: [$($counter:ident => $fault:ident),* $(,)?] $(,)?
    ) => {
        /// The live counters. Relaxed atomics: each counter is independent and a snapshot is
        /// allowed to be a few requests inconsistent across counters.
        #[derive(Debug, Default)]
        pub struct Counters {
            requests: [AtomicU64; Op::ALL.len()],
            $(pub $stat: AtomicU64,)*
            $(pub $counter: AtomicU64,)*
            since: Since,
        }

        impl Counters {
            fn all(&self) -> impl Iterator<Item = &AtomicU64> {
                self.requests
                    .iter()
                    .chain([$(&self.$stat,)* $(&self.$counter,)*])
            }

            /// The counters part of a snapshot; the caller fills in uptime, outage and tables.
            pub fn snapshot(&self, started: Instant) -> SimStats {
                let requests_by_operation: BTreeMap<String, u64> = Op::ALL
                    .iter()
                    .map(|op| (op.name().to_owned(), self.requests[*op as usize].load(Relaxed)))
                    .collect();
                SimStats {
                    uptime_seconds: started.elapsed().as_secs_f64(),
                    counting_seconds: self.since.get().elapsed().as_secs_f64(),
                    requests_total: requests_by_operation.values().sum(),
                    requests_by_operation,
                    $($stat: self.$stat.load(Relaxed),)*
                    faults: FaultStats {
                        $($fault: self.$counter.load(Relaxed),)*
                    },
                    outage_active: false,
                    item_counts: BTreeMap::new(),
                }
            }
        }
    };
}

counters! {
    stats: [
        items_written,
        items_read,
        write_units,
        throttled_requests,
        throttled_items,
        unprocessed_keys,
        validation_errors,
        conditional_failures,
        auth_failures,
        other_errors,
    ],
    faults: [
        fault_errors => errors,
        fault_resets => resets,
        fault_stalls => stalls,
        fault_outages => outage_rejections,
        fault_applied_then_failed => applied_then_failed,
        fault_applied_late => applied_late,
    ],
}

/// When counting (re)started: at creation, then at each reset.
#[derive(Debug)]
struct Since(Mutex<Instant>);

impl Default for Since {
    fn default() -> Since {
        Since(Mutex::new(Instant::now()))
    }
}

impl Since {
    fn get(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restart(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

impl Counters {
    pub fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Relaxed);
    }

    /// Counts an error response by its code.
    pub fn error(&self, code: &str) {
        let counter = match code {
            "ValidationException" => &self.validation_errors,
            "ConditionalCheckFailedException" => &self.conditional_failures,
            "ProvisionedThroughputExceededException" | "ThrottlingException" => {
                &self.throttled_requests
            }
            "UnrecognizedClientException" => &self.auth_failures,
            _ => &self.other_errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a per-statement error of BatchExecuteStatement by its `Code`, with the
    /// exception it corresponds to (`ThrottlingError` is counted in `throttled_items`).
    pub fn statement_error(&self, code: &str) {
        match code {
            "ValidationError" => self.error("ValidationException"),
            "ConditionalCheckFailed" => self.error("ConditionalCheckFailedException"),
            "ThrottlingError" => {}
            _ => self.error(code),
        }
    }

    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Relaxed);
        }
        self.since.restart();
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;

    /// Every number of a snapshot but the two durations (and the empty `item_counts`).
    fn counts(stats: &SimStats) -> Vec<(String, u64)> {
        fn walk(prefix: &str, json: &Json, out: &mut Vec<(String, u64)>) {
            match json {
                Json::Object(map) => {
                    for (k, v) in map {
                        walk(&format!("{prefix}.{k}"), v, out);
                    }
                }
                Json::Number(n) if n.is_u64() => out.push((prefix.to_owned(), n.as_u64().unwrap())),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk("", &serde_json::to_value(stats).unwrap(), &mut out);
        out
    }

    #[test]
    fn every_counter_is_snapshot_and_reset() {
        let counters = Counters::default();
        for c in counters.all() {
            c.fetch_add(1, Relaxed);
        }
        let before = counts(&counters.snapshot(Instant::now()));
        // 10 counters, 6 faults, 14 operations and their total.
        assert_eq!(before.len(), 10 + 6 + 14 + 1, "{before:?}");
        for (name, n) in &before {
            let expected = if name == ".requests_total" {
                Op::ALL.len() as u64
            } else {
                1
            };
            assert_eq!(*n, expected, "{name}");
        }
        counters.reset();
        let after = counts(&counters.snapshot(Instant::now()));
        assert_eq!(after.len(), before.len());
        assert!(after.iter().all(|(_, n)| *n == 0), "{after:?}");
    }
}
