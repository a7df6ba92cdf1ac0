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
    /// Puts, updates and deletes applied (a batch counts each applied request).
    pub items_written: u64,
    /// Items read from storage (Get/BatchGet hits, items evaluated by Query/Scan).
    pub items_read: u64,
    /// Write units charged (each item rounded up to 1 KB, minimum 1).
    pub write_units: u64,
    /// Requests rejected with ProvisionedThroughputExceededException or ThrottlingException.
    pub throttled_requests: u64,
    /// Write requests returned in BatchWriteItem's `UnprocessedItems` (capacity or `throttle_rate`).
    pub throttled_items: u64,
    /// Keys returned in BatchGetItem's `UnprocessedKeys`.
    pub unprocessed_keys: u64,
    /// ValidationException responses.
    pub validation_errors: u64,
    /// ConditionalCheckFailedException responses.
    pub conditional_failures: u64,
    /// UnrecognizedClientException responses (wrong access key).
    pub auth_failures: u64,
    /// Any other error response (SerializationException, ResourceNotFoundException, ...).
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

/// The live counters. Relaxed atomics: each counter is independent and a snapshot is allowed
/// to be a few requests inconsistent across counters.
#[derive(Debug)]
pub struct Counters {
    requests: [AtomicU64; Op::ALL.len()],
    pub items_written: AtomicU64,
    pub items_read: AtomicU64,
    pub write_units: AtomicU64,
    pub throttled_requests: AtomicU64,
    pub throttled_items: AtomicU64,
    pub unprocessed_keys: AtomicU64,
    pub validation_errors: AtomicU64,
    pub conditional_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub other_errors: AtomicU64,
    pub fault_errors: AtomicU64,
    pub fault_resets: AtomicU64,
    pub fault_stalls: AtomicU64,
    pub fault_outages: AtomicU64,
    pub fault_applied_then_failed: AtomicU64,
    pub fault_applied_late: AtomicU64,
    /// When counting (re)started.
    since: Mutex<Instant>,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            requests: Default::default(),
            items_written: AtomicU64::new(0),
            items_read: AtomicU64::new(0),
            write_units: AtomicU64::new(0),
            throttled_requests: AtomicU64::new(0),
            throttled_items: AtomicU64::new(0),
            unprocessed_keys: AtomicU64::new(0),
            validation_errors: AtomicU64::new(0),
            conditional_failures: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            other_errors: AtomicU64::new(0),
            fault_errors: AtomicU64::new(0),
            fault_resets: AtomicU64::new(0),
            fault_stalls: AtomicU64::new(0),
            fault_outages: AtomicU64::new(0),
            fault_applied_then_failed: AtomicU64::new(0),
            fault_applied_late: AtomicU64::new(0),
            since: Mutex::new(Instant::now()),
        }
    }

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

    fn all(&self) -> impl Iterator<Item = &AtomicU64> {
        self.requests.iter().chain([
            &self.items_written,
            &self.items_read,
            &self.write_units,
            &self.throttled_requests,
            &self.throttled_items,
            &self.unprocessed_keys,
            &self.validation_errors,
            &self.conditional_failures,
            &self.auth_failures,
            &self.other_errors,
            &self.fault_errors,
            &self.fault_resets,
            &self.fault_stalls,
            &self.fault_outages,
            &self.fault_applied_then_failed,
            &self.fault_applied_late,
        ])
    }

    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Relaxed);
        }
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The counters part of a snapshot; the caller fills in uptime, outage and tables.
    pub fn snapshot(&self, started: Instant) -> SimStats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let requests_by_operation: BTreeMap<String, u64> = Op::ALL
            .iter()
            .map(|op| (op.name().to_owned(), get(&self.requests[*op as usize])))
            .collect();
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        SimStats {
            uptime_seconds: started.elapsed().as_secs_f64(),
            counting_seconds: since.elapsed().as_secs_f64(),
            requests_total: requests_by_operation.values().sum(),
            requests_by_operation,
            items_written: get(&self.items_written),
            items_read: get(&self.items_read),
            write_units: get(&self.write_units),
            throttled_requests: get(&self.throttled_requests),
            throttled_items: get(&self.throttled_items),
            unprocessed_keys: get(&self.unprocessed_keys),
            validation_errors: get(&self.validation_errors),
            conditional_failures: get(&self.conditional_failures),
            auth_failures: get(&self.auth_failures),
            other_errors: get(&self.other_errors),
            faults: FaultStats {
                errors: get(&self.fault_errors),
                resets: get(&self.fault_resets),
                stalls: get(&self.fault_stalls),
                outage_rejections: get(&self.fault_outages),
                applied_then_failed: get(&self.fault_applied_then_failed),
                applied_late: get(&self.fault_applied_late),
            },
            outage_active: false,
            item_counts: BTreeMap::new(),
        }
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Relaxed);
    }
}
