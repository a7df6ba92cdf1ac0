//! Pipeline counters: one place that records every stage's figures, both into process-local atomics
//! (read by the shutdown report, loadgen and tests) and into the `metrics` facade under the names
//! of [`crate::telemetry::catalogue`] (exported by whatever recorder the binary installs).
//!
//! Recording happens per batch or per flush, not per event, except for the ingest counters, which
//! are one relaxed atomic add each.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::event::HookPoint;
use crate::storage::item::Table;
use crate::telemetry::catalogue;

fn table_index(t: Table) -> usize {
    t.index()
}

fn hook_index(h: HookPoint) -> usize {
    HookPoint::ALL.iter().position(|x| *x == h).unwrap_or(0)
}

/// Why an event was refused (by an adapter while reading it, or at ingest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The queues (or the spool's disk bound) stayed full.
    QueueFull,
    /// Malformed, or something MQTT or the storage contract forbids.
    Invalid,
    /// The service is shutting down.
    Closed,
    /// The spool could not write or sync the event.
    SpoolError,
    /// Larger than a request, an item or the ingest queue allows.
    TooLarge,
    /// A missing or wrong bearer token.
    Unauthorized,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::QueueFull,
        RejectReason::Invalid,
        RejectReason::Closed,
        RejectReason::SpoolError,
        RejectReason::TooLarge,
        RejectReason::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::Invalid => "invalid",
            RejectReason::Closed => "closed",
            RejectReason::SpoolError => "spool_error",
            RejectReason::TooLarge => "too_large",
            RejectReason::Unauthorized => "unauthorized",
        }
    }
}

/// Where an event came from: the label `adapter` of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// The library API (`PipelineHandle::submit` from the embedding program).
    #[default]
    Api,
    Exhook,
    Http,
}

impl Origin {
    pub const ALL: [Origin; 3] = [Origin::Api, Origin::Exhook, Origin::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Exhook => "exhook",
            Origin::Http => "http",
        }
    }
}

/// Why an accepted write was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// DynamoDB refused the write itself (ValidationException on the write alone).
    Rejected,
    /// Retries went on past `pipeline.retry.max_elapsed` (only without the spool).
    RetriesExhausted,
    /// Still unwritten when `pipeline.shutdown_timeout` ran out (only without the spool; with it
    /// the backlog stays on disk for the next start).
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// What started a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    Count,
    Bytes,
    Age,
    Shutdown,
}

impl FlushTrigger {
    pub const ALL: [FlushTrigger; 4] = [
        FlushTrigger::Count,
        FlushTrigger::Bytes,
        FlushTrigger::Age,
        FlushTrigger::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlushTrigger::Count => "count",
            FlushTrigger::Bytes => "bytes",
            FlushTrigger::Age => "age",
            FlushTrigger::Shutdown => "shutdown",
        }
    }
}

/// The DynamoDB operations the flusher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    BatchWriteItem,
    UpdateItem,
    BatchExecuteStatement,
}

impl Operation {
    pub const ALL: [Operation; 3] = [
        Operation::BatchWriteItem,
        Operation::UpdateItem,
        Operation::BatchExecuteStatement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::BatchWriteItem => "batch_write_item",
            Operation::UpdateItem => "update_item",
            Operation::BatchExecuteStatement => "batch_execute_statement",
        }
    }
}

/// How one statement of a BatchExecuteStatement ended (`mqtt_dynamo_dynamodb_statements_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementOutcome {
    Applied,
    /// ConditionalCheckFailed on a write that does nothing then (a DELETE from a missing item,
    /// a failed node guard).
    ConditionFailed,
    /// Throttled (or not answered): resent.
    Throttled,
    /// Sent on as its UpdateItem (an INSERT whose item appeared meanwhile, a write no INSERT
    /// can carry, a refusal, an internal error).
    Diverted,
    /// ConditionalCheckFailed on a write that creates its item (an ADD to a topic with no item
    /// yet, a first connect): sent again as a PartiQL INSERT.
    Missing,
    /// An INSERT applied: the item a `Missing` statement's write creates.
    Inserted,
}

impl StatementOutcome {
    pub const ALL: [StatementOutcome; 6] = [
        StatementOutcome::Applied,
        StatementOutcome::ConditionFailed,
        StatementOutcome::Throttled,
        StatementOutcome::Diverted,
        StatementOutcome::Missing,
        StatementOutcome::Inserted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatementOutcome::Applied => "applied",
            StatementOutcome::ConditionFailed => "condition_failed",
            StatementOutcome::Throttled => "throttled",
            StatementOutcome::Diverted => "diverted",
            StatementOutcome::Missing => "missing",
            StatementOutcome::Inserted => "inserted",
        }
    }
}

/// How one DynamoDB request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// BatchWriteItem succeeded for some items and returned the rest as UnprocessedItems.
    Partial,
    Throttled,
    /// A guarded update whose condition did not hold: nothing to do, not an error.
    ConditionFailed,
    Rejected,
    Error,
    /// DynamoDB refused the credentials (wrong, expired or missing keys).
    Unauthorized,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::Partial,
        Outcome::Throttled,
        Outcome::ConditionFailed,
        Outcome::Rejected,
        Outcome::Error,
        Outcome::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Partial => "partial",
            Outcome::Throttled => "throttled",
            Outcome::ConditionFailed => "condition_failed",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
            Outcome::Unauthorized => "unauthorized",
        }
    }
}

/// Counters of the whole pipeline, shared by every stage.
#[derive(Debug)]
pub struct Stats {
    events_received: [AtomicU64; 6],
    /// Refusals by origin and reason.
    rejected: [[AtomicU64; 6]; 3],
    ops_planned: AtomicU64,
    /// Ops folded into an already pending write (including cancellations).
    coalesced: [AtomicU64; Table::COUNT],
    /// Writes that vanished entirely (put∘delete of a fresh message, ADD∘DELETE of one id).
    cancelled: [AtomicU64; Table::COUNT],
    /// Event-time writes DynamoDB's condition refused (a newer event stored, or a disconnect
    /// from a node the client left): counted no-ops.
    superseded: [AtomicU64; Table::COUNT],
    flushes: [AtomicU64; 4],
    requests: [[AtomicU64; 7]; 3],
    /// BatchExecuteStatement's statements by how each ended (each attempt counts).
    statements: [AtomicU64; 6],
    items_written: [AtomicU64; Table::COUNT],
    unprocessed: AtomicU64,
    throttles: AtomicU64,
    retries: AtomicU64,
    /// Writes of hot keys handed back to their shard instead of retried.
    requeued: AtomicU64,
    dropped: [AtomicU64; 3],
    /// Publishes dropped as duplicates of a message acked within the dedup window.
    duplicates_dropped: AtomicU64,
    /// Publishes of an id already seen, stored with their writes marked maybe applied.
    duplicates_uncertain: AtomicU64,
    consumed_wcu: [AtomicU64; Table::COUNT],
    /// Message ids removed from sets at their size cap.
    trimmed: AtomicU64,
    /// Topic index entry puts submitted, by kind (retained, offline).
    topic_index_writes: [AtomicU64; 2],
    /// Topic index levels spread (directory puts taken), by kind.
    topic_index_spreads: [AtomicU64; 2],
    /// Ingest-to-durable latency in microseconds; recorded per flush.
    durable_latency: Mutex<Histogram<u64>>,
    /// Keys and bytes pending in all shards' coalescers (each shard adds its changes).
    pub(crate) pending_keys: AtomicI64,
    /// Keys held back as hot, across shards.
    pub(crate) hot_keys: AtomicI64,
    pub(crate) pending_bytes: AtomicI64,
    /// Flushes started and not yet completed.
    pub(crate) flushes_in_flight: AtomicI64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            events_received: Default::default(),
            rejected: Default::default(),
            ops_planned: Default::default(),
            coalesced: Default::default(),
            cancelled: Default::default(),
            superseded: Default::default(),
            flushes: Default::default(),
            requests: Default::default(),
            statements: Default::default(),
            items_written: Default::default(),
            unprocessed: Default::default(),
            throttles: Default::default(),
            retries: Default::default(),
            requeued: Default::default(),
            dropped: Default::default(),
            duplicates_dropped: Default::default(),
            duplicates_uncertain: Default::default(),
            consumed_wcu: Default::default(),
            trimmed: Default::default(),
            topic_index_writes: Default::default(),
            topic_index_spreads: Default::default(),
            durable_latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
            pending_keys: AtomicI64::new(0),
            hot_keys: AtomicI64::new(0),
            pending_bytes: AtomicI64::new(0),
            flushes_in_flight: AtomicI64::new(0),
        }
    }
}

impl Stats {
    pub(crate) fn event_received(&self, hook: HookPoint, ops: usize) {
        // Per event: atomics only; the exported counter is set from them once a second
        // (`export_counters`), so the hot path makes no metric-registry lookups.
        self.events_received[hook_index(hook)].fetch_add(1, Relaxed);
        self.ops_planned.fetch_add(ops as u64, Relaxed);
    }

    /// `n` refused events (a refused request whose events could not be read counts as one).
    pub(crate) fn event_rejected(&self, origin: Origin, reason: RejectReason, n: u64) {
        self.rejected[origin as usize][reason as usize].fetch_add(n, Relaxed);
        metrics::counter!(catalogue::EVENTS_REJECTED_TOTAL, "adapter" => origin.as_str(), "reason" => reason.as_str())
            .increment(n);
    }

    fn rejected_for(&self, reason: RejectReason) -> u64 {
        self.rejected
            .iter()
            .map(|by_reason| by_reason[reason as usize].load(Relaxed))
            .sum()
    }

    pub(crate) fn coalesced(&self, table: Table, merged: u64, cancelled: u64) {
        let i = table_index(table);
        self.coalesced[i].fetch_add(merged, Relaxed);
        self.cancelled[i].fetch_add(cancelled, Relaxed);
        metrics::counter!(catalogue::OPS_COALESCED_TOTAL, "table" => table.base_name())
            .increment(merged);
        metrics::counter!(catalogue::WRITES_CANCELLED_TOTAL, "table" => table.base_name())
            .increment(cancelled);
    }

    /// An event-time write to `table` whose condition DynamoDB refused: a no-op, not retried.
    pub(crate) fn superseded(&self, table: Table) {
        self.superseded[table_index(table)].fetch_add(1, Relaxed);
        metrics::counter!(catalogue::WRITES_SUPERSEDED_TOTAL, "table" => table.base_name())
            .increment(1);
    }

    /// One statement of a BatchExecuteStatement ended as `outcome`.
    pub(crate) fn statement(&self, outcome: StatementOutcome) {
        self.statements[outcome as usize].fetch_add(1, Relaxed);
        metrics::counter!(catalogue::DYNAMODB_STATEMENTS_TOTAL, "outcome" => outcome.as_str())
            .increment(1);
    }

    pub(crate) fn flushed(&self, trigger: FlushTrigger, requests: usize, bytes: usize) {
        self.flushes[trigger as usize].fetch_add(1, Relaxed);
        self.flushes_in_flight.fetch_add(1, Relaxed);
        metrics::counter!(catalogue::FLUSHES_TOTAL, "trigger" => trigger.as_str()).increment(1);
        metrics::histogram!(catalogue::BATCH_REQUESTS).record(requests as f64);
        metrics::histogram!(catalogue::BATCH_BYTES).record(bytes as f64);
    }

    pub(crate) fn flush_done(&self) {
        self.flushes_in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn request(&self, op: Operation, outcome: Outcome, duration: Duration) {
        self.requests[op as usize][outcome as usize].fetch_add(1, Relaxed);
        metrics::counter!(catalogue::DYNAMODB_REQUESTS_TOTAL, "operation" => op.as_str(), "outcome" => outcome.as_str())
            .increment(1);
        metrics::histogram!(catalogue::DYNAMODB_REQUEST_DURATION_SECONDS, "operation" => op.as_str())
            .record(duration.as_secs_f64());
    }

    pub(crate) fn throttled(&self, code: &'static str) {
        self.throttles.fetch_add(1, Relaxed);
        metrics::counter!(catalogue::DYNAMODB_THROTTLES_TOTAL, "error_code" => code).increment(1);
    }

    pub(crate) fn unprocessed(&self, n: u64) {
        self.unprocessed.fetch_add(n, Relaxed);
        metrics::counter!(catalogue::DYNAMODB_UNPROCESSED_ITEMS_TOTAL).increment(n);
    }

    pub(crate) fn requeued(&self) {
        self.requeued.fetch_add(1, Relaxed);
        metrics::counter!(catalogue::HOT_KEY_REQUEUES_TOTAL).increment(1);
    }

    pub(crate) fn retried(&self, op: Operation) {
        self.retries.fetch_add(1, Relaxed);
        metrics::counter!(catalogue::RETRIES_TOTAL, "operation" => op.as_str()).increment(1);
    }

    pub(crate) fn written(&self, table: Table, n: u64) {
        self.items_written[table_index(table)].fetch_add(n, Relaxed);
        metrics::counter!(catalogue::ITEMS_WRITTEN_TOTAL, "table" => table.base_name())
            .increment(n);
    }

    pub(crate) fn consumed(&self, table: Table, units: f64) {
        let units = units.round() as u64;
        self.consumed_wcu[table_index(table)].fetch_add(units, Relaxed);
        metrics::counter!(catalogue::CONSUMED_WRITE_CAPACITY_UNITS_TOTAL, "table" => table.base_name())
            .increment(units);
    }

    pub(crate) fn trimmed(&self, n: u64) {
        self.trimmed.fetch_add(n, Relaxed);
        metrics::counter!(catalogue::MSGIDS_TRIMMED_TOTAL).increment(n);
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Relaxed);
        metrics::counter!(catalogue::WRITES_DROPPED_TOTAL, "reason" => reason.as_str())
            .increment(n);
    }

    /// `n` puts of topic index entries of `kind` added to an accepted submission.
    pub(crate) fn topic_index_writes(&self, kind: crate::storage::topic_index::IndexKind, n: u64) {
        let i = match kind {
            crate::storage::topic_index::IndexKind::Retained => 0,
            crate::storage::topic_index::IndexKind::Offline => 1,
        };
        self.topic_index_writes[i].fetch_add(n, Relaxed);
        metrics::counter!(catalogue::TOPIC_INDEX_WRITES_TOTAL, "index" => kind.as_str())
            .increment(n);
    }

    /// A spread of a topic index level of `kind`: `taken` by DynamoDB, or given up.
    pub(crate) fn topic_index_spread(
        &self,
        kind: crate::storage::topic_index::IndexKind,
        taken: bool,
    ) {
        if taken {
            let i = match kind {
                crate::storage::topic_index::IndexKind::Retained => 0,
                crate::storage::topic_index::IndexKind::Offline => 1,
            };
            self.topic_index_spreads[i].fetch_add(1, Relaxed);
        }
        let result = if taken { "taken" } else { "failed" };
        metrics::counter!(catalogue::TOPIC_INDEX_SPREADS_TOTAL, "index" => kind.as_str(), "result" => result)
            .increment(1);
    }

    /// A publish of a message id already seen: `acked` when its ack was seen too (the publish is
    /// not stored again), otherwise stored with its writes marked maybe applied.
    pub(crate) fn duplicate(&self, acked: bool) {
        let (counter, kind) = if acked {
            (&self.duplicates_dropped, "acked")
        } else {
            (&self.duplicates_uncertain, "unacked")
        };
        counter.fetch_add(1, Relaxed);
        metrics::counter!(catalogue::DUPLICATE_PUBLISHES_TOTAL, "kind" => kind).increment(1);
    }

    pub(crate) fn durable(&self, latencies: &[Duration]) {
        if let Ok(mut h) = self.durable_latency.lock() {
            for l in latencies {
                h.saturating_record(l.as_micros() as u64);
            }
        }
        let hist = metrics::histogram!(catalogue::INGEST_TO_DURABLE_SECONDS);
        for l in latencies {
            hist.record(l.as_secs_f64());
        }
    }

    /// Sets the per-event counters in the metrics registry from the atomics (the sampler calls
    /// this once a second).
    pub(crate) fn export_counters(&self) {
        for (hook, n) in HookPoint::ALL.iter().zip(&self.events_received) {
            metrics::counter!(catalogue::EVENTS_RECEIVED_TOTAL, "hook" => hook.as_str())
                .absolute(n.load(Relaxed));
        }
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let per_table = |a: &[AtomicU64; Table::COUNT]| {
            Table::ALL
                .iter()
                .zip(a.iter())
                .map(|(t, v)| (*t, v.load(Relaxed)))
                .collect::<Vec<_>>()
        };
        let sum = |a: &[AtomicU64]| a.iter().map(|v| v.load(Relaxed)).sum::<u64>();
        let latency = self.durable_latency.lock().map(|h| h.clone()).ok();
        StatsSnapshot {
            events_received: sum(&self.events_received),
            rejected_full: self.rejected_for(RejectReason::QueueFull),
            rejected_invalid: self.rejected_for(RejectReason::Invalid),
            rejected_closed: self.rejected_for(RejectReason::Closed),
            rejected_other: self.rejected_for(RejectReason::SpoolError)
                + self.rejected_for(RejectReason::TooLarge)
                + self.rejected_for(RejectReason::Unauthorized),
            ops_planned: self.ops_planned.load(Relaxed),
            coalesced: sum(&self.coalesced),
            cancelled: sum(&self.cancelled),
            superseded: sum(&self.superseded),
            flushes: FlushTrigger::ALL
                .map(|t| (t.as_str(), self.flushes[t as usize].load(Relaxed))),
            batch_write_requests: sum(&self.requests[Operation::BatchWriteItem as usize]),
            update_requests: sum(&self.requests[Operation::UpdateItem as usize]),
            statement_requests: sum(&self.requests[Operation::BatchExecuteStatement as usize]),
            statements: StatementOutcome::ALL
                .map(|o| (o.as_str(), self.statements[o as usize].load(Relaxed))),
            failed_requests: [
                Outcome::Throttled,
                Outcome::Rejected,
                Outcome::Error,
                Outcome::Unauthorized,
            ]
            .iter()
            .map(|o| {
                self.requests
                    .iter()
                    .map(|by_outcome| by_outcome[*o as usize].load(Relaxed))
                    .sum::<u64>()
            })
            .sum(),
            condition_failed: self.requests[Operation::UpdateItem as usize]
                [Outcome::ConditionFailed as usize]
                .load(Relaxed)
                + self.statements[StatementOutcome::ConditionFailed as usize].load(Relaxed),
            items_written: per_table(&self.items_written),
            unprocessed: self.unprocessed.load(Relaxed),
            throttles: self.throttles.load(Relaxed),
            retries: self.retries.load(Relaxed),
            requeued: self.requeued.load(Relaxed),
            dropped_rejected: self.dropped[DropReason::Rejected as usize].load(Relaxed),
            dropped_retries_exhausted: self.dropped[DropReason::RetriesExhausted as usize]
                .load(Relaxed),
            dropped_shutdown: self.dropped[DropReason::Shutdown as usize].load(Relaxed),
            duplicates_dropped: self.duplicates_dropped.load(Relaxed),
            duplicates_uncertain: self.duplicates_uncertain.load(Relaxed),
            consumed_wcu: sum(&self.consumed_wcu),
            consumed_wcu_by_table: per_table(&self.consumed_wcu),
            topic_index_writes: sum(&self.topic_index_writes),
            topic_index_spreads: sum(&self.topic_index_spreads),
            msgids_trimmed: self.trimmed.load(Relaxed),
            durable_latency: latency,
        }
    }
}

/// Lets a log line through at most once per second (or per [`LogGate::every`]) per call site,
/// reporting how many were held back, so an outage or an overload does not flood the log.
#[derive(Debug)]
pub struct LogGate {
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
    /// At most one line per this long.
    every: Duration,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new()
    }
}

impl LogGate {
    /// One line a second.
    pub const fn new() -> Self {
        LogGate::every(Duration::from_secs(1))
    }

    /// One line per `every`.
    pub const fn every(every: Duration) -> Self {
        LogGate {
            last: Mutex::new(None),
            held: AtomicU64::new(0),
            every,
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let Ok(mut last) = self.last.lock() else {
            return None;
        };
        if last.is_none_or(|t| t.elapsed() >= self.every) {
            *last = Some(Instant::now());
            Some(self.held.swap(0, Relaxed))
        } else {
            self.held.fetch_add(1, Relaxed);
            None
        }
    }
}

/// A copy of [`Stats`] for reports and tests.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    pub events_received: u64,
    pub rejected_full: u64,
    pub rejected_invalid: u64,
    pub rejected_closed: u64,
    /// Refused as too large, unauthorized, or because the spool failed.
    pub rejected_other: u64,
    pub ops_planned: u64,
    pub coalesced: u64,
    pub cancelled: u64,
    /// Event-time writes refused by DynamoDB's condition (`mqtt_dynamo_writes_superseded_total`).
    pub superseded: u64,
    pub flushes: [(&'static str, u64); 4],
    pub batch_write_requests: u64,
    pub update_requests: u64,
    pub statement_requests: u64,
    /// BatchExecuteStatement's statements by outcome.
    pub statements: [(&'static str, u64); 6],
    /// Requests that ended throttled, rejected or in error (each retry counts).
    pub failed_requests: u64,
    pub condition_failed: u64,
    pub items_written: Vec<(Table, u64)>,
    pub unprocessed: u64,
    pub throttles: u64,
    pub retries: u64,
    /// Writes of hot keys handed back to their shard (to wait a window) instead of retried.
    pub requeued: u64,
    pub dropped_rejected: u64,
    pub dropped_retries_exhausted: u64,
    pub dropped_shutdown: u64,
    /// Publishes of a message id acked within the dedup window: not stored again.
    pub duplicates_dropped: u64,
    /// Publishes of a message id already seen (not acked): stored, their writes maybe applied.
    pub duplicates_uncertain: u64,
    pub consumed_wcu: u64,
    /// Write capacity units DynamoDB reported, by table.
    pub consumed_wcu_by_table: Vec<(Table, u64)>,
    /// Puts of topic index entries submitted (`mqtt_dynamo_topic_index_writes_total`).
    pub topic_index_writes: u64,
    /// Topic index levels spread over more buckets (`mqtt_dynamo_topic_index_spreads_total`,
    /// taken).
    pub topic_index_spreads: u64,
    /// Message ids removed from `MsgId` sets at their size cap.
    pub msgids_trimmed: u64,
    /// Ingest-to-durable latency, microseconds.
    pub durable_latency: Option<Histogram<u64>>,
}

impl StatsSnapshot {
    pub fn requests(&self) -> u64 {
        self.batch_write_requests + self.update_requests + self.statement_requests
    }

    pub fn written(&self) -> u64 {
        self.items_written.iter().map(|(_, n)| n).sum()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped_rejected + self.dropped_retries_exhausted + self.dropped_shutdown
    }
}

impl std::fmt::Display for StatsSnapshot {
    /// The human-readable summary printed at shutdown and by loadgen.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "events received        {}", self.events_received)?;
        writeln!(
            f,
            "events refused         {} (queue full {}, invalid {}, closed {}, other {})",
            self.rejected_full + self.rejected_invalid + self.rejected_closed + self.rejected_other,
            self.rejected_full,
            self.rejected_invalid,
            self.rejected_closed,
            self.rejected_other
        )?;
        writeln!(f, "writes planned         {}", self.ops_planned)?;
        writeln!(
            f,
            "writes coalesced away  {} ({} cancelled outright)",
            self.coalesced, self.cancelled
        )?;
        writeln!(
            f,
            "writes superseded      {} (a newer event was stored)",
            self.superseded
        )?;
        let flushes: Vec<String> = self
            .flushes
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        writeln!(f, "flushes                {}", flushes.join(", "))?;
        writeln!(
            f,
            "DynamoDB requests      {} (BatchWriteItem {}, BatchExecuteStatement {}, UpdateItem {}; failed {}, guarded no-ops {})",
            self.requests(),
            self.batch_write_requests,
            self.statement_requests,
            self.update_requests,
            self.failed_requests,
            self.condition_failed
        )?;
        let written: Vec<String> = self
            .items_written
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        writeln!(
            f,
            "items written          {} ({})",
            self.written(),
            written.join(", ")
        )?;
        writeln!(f, "write capacity units   {}", self.consumed_wcu)?;
        writeln!(f, "topic index puts       {}", self.topic_index_writes)?;
        writeln!(f, "topic index spreads    {}", self.topic_index_spreads)?;
        writeln!(
            f,
            "throttles / unprocessed / retries / hot-key requeues  {} / {} / {} / {}",
            self.throttles, self.unprocessed, self.retries, self.requeued
        )?;
        writeln!(
            f,
            "writes dropped         {} (rejected {}, retries exhausted {}, shutdown {})",
            self.dropped(),
            self.dropped_rejected,
            self.dropped_retries_exhausted,
            self.dropped_shutdown
        )?;
        writeln!(
            f,
            "duplicate publishes    {} not stored again (acked), {} stored as maybe applied",
            self.duplicates_dropped, self.duplicates_uncertain
        )?;
        if let Some(h) = self.durable_latency.as_ref().filter(|h| !h.is_empty()) {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            writeln!(
                f,
                "ingest→durable latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            )?;
        }
        Ok(())
    }
}
