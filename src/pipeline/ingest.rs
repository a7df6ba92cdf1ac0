//! The front door: events are planned into writes on the caller's thread and queued on a bounded
//! crossbeam channel, limited in events and in bytes.
//!
//! One entry point, [`Ingest::submit`], for an event or for writes from no hook; its [`Admit`]
//! says how it is admitted. Policy when full: with [`Admit::now`] it does not wait for room and
//! fails with [`SubmitError::Full`]; with [`Admit::until`] it waits up to the deadline for room,
//! then fails the same way. Either way the refusal is counted
//! (`mqtt_dynamo_events_rejected_total{adapter, reason="queue_full"}`) and the caller decides
//! what the broker sees. Nothing that was accepted is dropped here. `submit` returns a
//! [`Receipt`]: with the spool on, the caller waits on it for the fsync covering the event before
//! acknowledging.
//!
//! **Repeats.** A sender that resends (an HTTP client retrying a partly accepted request, one
//! publish through two adapters) must not bring back a message that was acked: a publish whose
//! message id was acked within `pipeline.dedup_window` is not stored again, and one whose id was
//! already published is stored with its writes marked maybe applied, so that its ack is written
//! rather than cancelled (`pipeline::dedup`; the certainty rule in [`crate::pipeline::coalesce`]).
//!
//! **The topic index.** A submission whose writes store a retained message or add message ids to
//! a topic's set gets the puts of the topic's `mqtt_topic_index` entries added, unless this
//! process submitted them already (`pipeline::topic_index`); they travel with the submission.
//!
//! With the spool on (`[pipeline.spool]`), an accepted event is appended to the spool instead and
//! the spool's feeder queues it; "full" then means the spool's disk bound, and an accepted event
//! is acknowledged only once it is durable under the spool's fsync policy.

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use thiserror::Error;

use crate::event::HookEvent;
use crate::lookup::ReadState;
use crate::pipeline::dedup::{Dedup, Seen};
use crate::pipeline::topic_index::{IndexedTopics, Spreader};
use crate::rules::{ActionScope, EventError, RuleSet, StorageFormat};
use crate::spool::{Spool, SpoolError};
use crate::storage::item::{Key, Op};
use crate::storage::topic_index::IndexKind;
use crate::telemetry::stats::{Origin, RejectReason, Stats};

/// Rate limit for the duplicate-publish log line.
static DUPLICATE_LOG: crate::telemetry::stats::LogGate = crate::telemetry::stats::LogGate::new();

/// Why an event was not accepted. Nothing of a refused event is queued.
#[derive(Debug, Error)]
pub enum SubmitError {
    #[error("ingest queue is full")]
    Full,
    #[error("invalid event: {0}")]
    Invalid(#[from] EventError),
    #[error(
        "the event's writes take {needed} bytes, more than the whole ingest queue ({limit} bytes)"
    )]
    TooLarge { needed: usize, limit: usize },
    #[error("the pipeline is shut down")]
    Closed,
    /// The spool could not take the event (a write or fsync error); nothing of it is queued.
    #[error(transparent)]
    Spool(SpoolError),
}

/// What an accepted submission still waits for before it may be acknowledged: nothing without
/// the spool, the fsync covering its record with it. A failed fsync is counted as a refusal under
/// the submitter's origin.
#[derive(Debug)]
#[must_use = "a submission is durable only once its receipt says so"]
pub struct Receipt(Option<Pending>);

/// The spool ticket a receipt waits on, and where a failure is counted.
#[derive(Debug)]
struct Pending {
    spool: Arc<Spool>,
    ticket: u64,
    stats: Arc<Stats>,
    origin: Origin,
}

impl Pending {
    fn settle(&self, synced: Result<(), SpoolError>) -> Result<(), SubmitError> {
        let result = synced.map_err(spool_error);
        if let Err(e @ SubmitError::Spool(_)) = &result {
            self.stats.event_rejected(self.origin, reject_reason(e), 1);
        }
        result
    }
}

impl Receipt {
    /// Waits (async) until the submission is durable under the spool's fsync policy.
    pub async fn durable(self) -> Result<(), SubmitError> {
        match self.0 {
            Some(p) => {
                let synced = p.spool.synced(p.ticket).await;
                p.settle(synced)
            }
            None => Ok(()),
        }
    }

    /// Blocks until the submission is durable under the spool's fsync policy.
    pub fn wait(self) -> Result<(), SubmitError> {
        match self.0 {
            Some(p) => p.settle(p.spool.wait_synced(p.ticket)),
            None => Ok(()),
        }
    }
}

/// What is submitted: a hook event (planned into writes by the rules) or writes that come from no
/// hook (the subscription API).
#[derive(Debug)]
pub enum Submission<'a> {
    Event(&'a HookEvent),
    Ops(Vec<Op>),
}

impl<'a> From<&'a HookEvent> for Submission<'a> {
    fn from(event: &'a HookEvent) -> Self {
        Submission::Event(event)
    }
}

impl From<Vec<Op>> for Submission<'static> {
    fn from(ops: Vec<Op>) -> Self {
        Submission::Ops(ops)
    }
}

/// How a submission is admitted: which of an event's rules apply, how long to wait for room in
/// the queue, and whether a `Full` refusal is counted here.
#[derive(Clone, Copy, Debug)]
pub struct Admit {
    scope: ActionScope,
    deadline: Option<Instant>,
    /// The caller tries again when full and counts the final outcome itself.
    caller_retries: bool,
}

impl Default for Admit {
    fn default() -> Self {
        Admit::now()
    }
}

impl Admit {
    /// Every rule, no waiting for room: accepted now or refused `Full` (never blocks on the
    /// queue; the receipt waits for the spool's fsync, if any).
    pub fn now() -> Admit {
        Admit {
            scope: ActionScope::All,
            deadline: None,
            caller_retries: false,
        }
    }

    /// Waits until `deadline` for room.
    pub fn until(deadline: Instant) -> Admit {
        Admit {
            deadline: Some(deadline),
            ..Admit::now()
        }
    }

    /// Waits up to `timeout` for room.
    pub fn within(timeout: Duration) -> Admit {
        Admit::until(Instant::now() + timeout)
    }

    /// Only the rules `scope` admits.
    pub fn scope(self, scope: ActionScope) -> Admit {
        Admit { scope, ..self }
    }

    /// Leaves a `Full` refusal uncounted: for a caller that will wait and try again, and counts
    /// the final outcome itself.
    pub fn retried_by_caller(self) -> Admit {
        Admit {
            caller_retries: true,
            ..self
        }
    }
}

/// The counter label of a refusal.
pub fn reject_reason(e: &SubmitError) -> RejectReason {
    match e {
        SubmitError::Full => RejectReason::QueueFull,
        SubmitError::TooLarge { .. } => RejectReason::TooLarge,
        SubmitError::Invalid(e) if e.is_too_large() => RejectReason::TooLarge,
        SubmitError::Invalid(_) => RejectReason::Invalid,
        SubmitError::Closed => RejectReason::Closed,
        SubmitError::Spool(_) => RejectReason::SpoolError,
    }
}

fn spool_error(e: SpoolError) -> SubmitError {
    match e {
        SpoolError::Full { .. } => SubmitError::Full,
        SpoolError::Closed => SubmitError::Closed,
        other => SubmitError::Spool(other),
    }
}

/// One accepted event's writes.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub ops: Vec<Op>,
    /// Bytes reserved in the ingest budget, released when the router takes the envelope.
    pub bytes: usize,
    pub accepted: Instant,
    /// The sequence number of the first op (the next ops follow); 0 when nobody numbers them.
    pub first_seq: u64,
}

/// What travels on the ingest channel.
#[derive(Debug)]
pub(crate) enum IngestMsg {
    Event(Envelope),
    /// From the spool's feeder, after the last record of a segment: every op numbered up to this
    /// has been queued; shards acknowledge it once those ops are settled.
    Barrier(u64),
    /// Sent once, after the last event, by [`Ingest::close`] (by the spool's feeder when the
    /// spool is on).
    Shutdown,
}

/// The byte limit of the ingest queue: reserved before an envelope is queued, released when the
/// router takes it. A mutex and condvar rather than an atomic so that a submit with a deadline can wait
/// for room without spinning; the critical section is two integer operations.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: Mutex<usize>,
    freed: Condvar,
    pub(crate) limit: usize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Self {
        ByteBudget {
            used: Mutex::new(0),
            freed: Condvar::new(),
            limit,
        }
    }

    /// Reserves `n` bytes, waiting until `deadline` (if any) for room.
    pub(crate) fn reserve(&self, n: usize, deadline: Option<Instant>) -> bool {
        let Ok(mut used) = self.used.lock() else {
            return false;
        };
        loop {
            if *used + n <= self.limit {
                *used += n;
                return true;
            }
            let Some(deadline) = deadline else {
                return false;
            };
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.freed.wait_timeout(used, deadline - now) {
                Ok((guard, _)) => used = guard,
                Err(_) => return false,
            }
        }
    }

    /// Reserves `n` bytes (at most the whole limit, so one message larger than the limit still
    /// goes, alone), waiting as long as it takes; returns the bytes reserved, to release later.
    pub(crate) fn reserve_wait(&self, n: usize) -> usize {
        let n = n.min(self.limit);
        let Ok(mut used) = self.used.lock() else {
            return 0;
        };
        while *used + n > self.limit {
            match self.freed.wait(used) {
                Ok(guard) => used = guard,
                Err(_) => return 0,
            }
        }
        *used += n;
        n
    }

    pub fn release(&self, n: usize) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(n);
            self.freed.notify_all();
        }
    }

    pub fn used(&self) -> usize {
        self.used.lock().map(|u| *u).unwrap_or(0)
    }
}

/// The submitting side of the pipeline, shared by every caller.
///
/// `closed` is a read-write lock rather than a flag so that `close` cannot slip its shutdown
/// marker in between another thread's check and send: submitters hold the read side across both,
/// `close` takes the write side, so every accepted event is queued before the marker.
#[derive(Debug)]
pub struct Ingest {
    tx: Sender<IngestMsg>,
    pub(crate) budget: Arc<ByteBudget>,
    closed: RwLock<bool>,
    rules: RuleSet,
    format: StorageFormat,
    stats: Arc<Stats>,
    capacity: usize,
    /// Where accepted ops are numbered and recorded for lookups (read-your-writes).
    read: Option<Arc<ReadState>>,
    /// The topic index entries already submitted, so each is put once (bounded), and the
    /// first levels' bucket counts.
    indexed: IndexedTopics,
    /// Puts the directory entries of spread levels (`None`: levels are never spread).
    spreader: Option<Spreader>,
    /// The durable spool, when on: accepted events go there, and its feeder queues them.
    spool: Option<Arc<Spool>>,
    /// Recently published and acked message ids (`None` with `dedup_window = 0`).
    dedup: Option<Dedup>,
    /// Where the expiry of each planned message is recorded, for MsgId trimming.
    expiry: Option<Arc<crate::pipeline::expiry::ExpiryBook>>,
}

impl Ingest {
    pub(crate) fn new(
        tx: Sender<IngestMsg>,
        budget: Arc<ByteBudget>,
        rules: RuleSet,
        format: StorageFormat,
        stats: Arc<Stats>,
        capacity: usize,
        read: Option<Arc<ReadState>>,
    ) -> Self {
        Ingest {
            tx,
            budget,
            closed: RwLock::new(false),
            rules,
            format,
            stats,
            capacity,
            read,
            indexed: IndexedTopics::new(0),
            spreader: None,
            spool: None,
            dedup: None,
            expiry: None,
        }
    }

    /// Records each planned message's expiry in `book` (what the flushers trim by).
    pub(crate) fn with_expiry(mut self, book: Arc<crate::pipeline::expiry::ExpiryBook>) -> Self {
        self.expiry = Some(book);
        self
    }

    /// Remembers message ids for `window` (at most `max_ids` of each kind) to recognise repeated
    /// publishes (see the module docs); a zero window turns it off.
    pub(crate) fn with_dedup(mut self, window: Duration, max_ids: usize) -> Self {
        self.dedup = (!window.is_zero() && max_ids > 0).then(|| Dedup::new(window, max_ids));
        self
    }

    /// Spreads first levels of the topic index past `rate` new topics a second per bucket, the
    /// directory puts made by `spreader` (see `pipeline::topic_index`).
    pub(crate) fn with_spreading(
        mut self,
        rate: u64,
        spreader: impl FnOnce(&IndexedTopics) -> Spreader,
    ) -> Self {
        if rate > 0 {
            self.indexed = IndexedTopics::new(rate);
            self.spreader = Some(spreader(&self.indexed));
        }
        self
    }

    /// Sends accepted events through `spool` (whose feeder then queues them).
    pub(crate) fn with_spool(mut self, spool: Option<Arc<Spool>>) -> Self {
        self.spool = spool;
        self
    }

    fn receipt(&self, origin: Origin, ticket: Option<u64>) -> Receipt {
        Receipt(
            self.spool
                .as_ref()
                .zip(ticket)
                .map(|(spool, ticket)| Pending {
                    spool: Arc::clone(spool),
                    ticket,
                    stats: Arc::clone(&self.stats),
                    origin,
                }),
        )
    }

    /// Accepts an event's writes (for the rules `admit` scopes) or writes from no hook, all or
    /// nothing, waiting for room as `admit` says. Every refusal is counted under `origin`
    /// (a `Full` one unless `admit` leaves it to the caller). The receipt says when the
    /// submission is durable.
    pub fn submit<'a>(
        &self,
        origin: Origin,
        what: impl Into<Submission<'a>>,
        admit: Admit,
    ) -> Result<Receipt, SubmitError> {
        let result = match what.into() {
            Submission::Event(event) => self.try_enqueue(event, admit.deadline, admit.scope),
            Submission::Ops(ops) => self.enqueue_ops(ops, admit.deadline, None),
        };
        match result {
            Ok(ticket) => Ok(self.receipt(origin, ticket)),
            Err(SubmitError::Full) if admit.caller_retries => Err(SubmitError::Full),
            Err(e) => {
                self.count_rejection(origin, &e);
                Err(e)
            }
        }
    }

    /// Counts a refusal made outside ingest (an adapter that could not read a request, or a
    /// `Full` that [`Admit::retried_by_caller`] left to the caller).
    pub fn count(&self, origin: Origin, reason: RejectReason, n: u64) {
        self.stats.event_rejected(origin, reason, n);
    }

    fn count_rejection(&self, origin: Origin, e: &SubmitError) {
        self.count(origin, reject_reason(e), 1);
    }

    fn try_enqueue(
        &self,
        event: &HookEvent,
        deadline: Option<Instant>,
        scope: ActionScope,
    ) -> Result<Option<u64>, SubmitError> {
        let mut ops = self.rules.plan_scoped(event, &self.format, scope)?;
        if let Some(book) = &self.expiry {
            book.record_planned(ops.iter().map(|op| (&op.key, &op.write)));
        }
        // Only whole publishes: a retained-only delivery of a message (the EMQX rule beside
        // ExHook, `publish_actions = "retained_only"`) is the other half of the same publish, not
        // a repeat, and must not be dropped because ExHook's copy was acked meanwhile.
        if let (Some(dedup), HookEvent::MessagePublish { message }) = (&self.dedup, event)
            && !ops.is_empty()
            && scope == ActionScope::All
        {
            match dedup.publish(&message.id) {
                Seen::New => {}
                Seen::Published => {
                    self.stats.duplicate(false);
                    for op in &mut ops {
                        op.write.maybe_applied();
                    }
                }
                Seen::Acked => {
                    self.stats.duplicate(true);
                    if let Some(limited) = DUPLICATE_LOG.allow() {
                        tracing::info!(held_back = limited, msgid = %message.id, topic = %message.topic,
                            "a publish of a message acked moments ago: not stored again");
                    }
                    ops.clear();
                }
            }
        }
        let acked = match (&self.dedup, event) {
            (Some(_), HookEvent::MessageAcked { message, .. }) => Some(message.id.as_str()),
            _ => None,
        };
        let result = self.enqueue_ops(ops, deadline, Some(event.hook()));
        if let (Ok(_), Some(id), Some(dedup)) = (&result, acked, &self.dedup) {
            dedup.acked(id);
        }
        result
    }

    /// Queues one event's (or one API call's) writes, all or nothing. Returns the spool ticket
    /// to wait on when the spool is on.
    fn enqueue_ops(
        &self,
        ops: Vec<Op>,
        deadline: Option<Instant>,
        hook: Option<crate::event::HookPoint>,
    ) -> Result<Option<u64>, SubmitError> {
        let closed = self.closed.read().map_err(|_| SubmitError::Closed)?;
        if *closed {
            return Err(SubmitError::Closed);
        }
        if ops.is_empty() {
            if let Some(hook) = hook {
                self.stats.event_received(hook, 0);
            }
            return Ok(None);
        }
        let mut ops = ops;
        let (index_puts, spreads) = self.indexed.missing(&ops);
        if let Some(spreader) = &self.spreader {
            for spread in spreads {
                spreader.spread(spread);
            }
        }
        let index_entries: Vec<(IndexKind, Key)> = index_puts
            .iter()
            .map(|p| (p.kind, p.entry.clone()))
            .collect();
        ops.extend(index_puts.into_iter().map(|p| p.op));
        let n_ops = ops.len();
        let bytes: usize = ops.iter().map(Op::size).sum();
        if bytes > self.budget.limit {
            return Err(SubmitError::TooLarge {
                needed: bytes,
                limit: self.budget.limit,
            });
        }
        if let Some(spool) = &self.spool {
            // Numbered (and recorded for lookups) inside the append, in file order.
            let appended = spool.append(&ops, deadline).map_err(spool_error)?;
            self.indexed_accepted(&index_entries);
            if let Some(hook) = hook {
                self.stats.event_received(hook, n_ops);
            }
            return Ok(Some(appended.ticket));
        }
        if !self.budget.reserve(bytes, deadline) {
            return Err(SubmitError::Full);
        }
        // Numbered and recorded before queueing, so no shard can settle an op before it is
        // recorded; taken back below if the queue refuses it.
        let first_seq = match &self.read {
            Some(read) => read.record(&ops),
            None => 0,
        };
        let msg = IngestMsg::Event(Envelope {
            ops,
            bytes,
            accepted: Instant::now(),
            first_seq,
        });
        let sent = match deadline {
            None => self.tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(m) => (SubmitError::Full, m),
                TrySendError::Disconnected(m) => (SubmitError::Closed, m),
            }),
            Some(d) => self.tx.send_deadline(msg, d).map_err(|e| match e {
                SendTimeoutError::Timeout(m) => (SubmitError::Full, m),
                SendTimeoutError::Disconnected(m) => (SubmitError::Closed, m),
            }),
        };
        match sent {
            Ok(()) => {
                self.indexed_accepted(&index_entries);
                if let Some(hook) = hook {
                    self.stats.event_received(hook, n_ops);
                }
                Ok(None)
            }
            Err((e, refused)) => {
                self.budget.release(bytes);
                if let (Some(read), IngestMsg::Event(env)) = (&self.read, refused) {
                    read.forget(&env.ops, first_seq);
                }
                Err(e)
            }
        }
    }

    /// The index puts of an accepted submission: remembered (not put again) and counted.
    fn indexed_accepted(&self, entries: &[(IndexKind, Key)]) {
        if entries.is_empty() {
            return;
        }
        self.indexed
            .remember(entries.iter().map(|(kind, key)| (*kind, key)));
        for kind in IndexKind::ALL {
            let n = entries.iter().filter(|(k, _)| *k == kind).count() as u64;
            if n > 0 {
                self.stats.topic_index_writes(kind, n);
            }
        }
    }

    /// The topic index entries this process remembers having submitted.
    pub fn indexed_topics(&self) -> &IndexedTopics {
        &self.indexed
    }

    /// Stops accepting events and queues the shutdown marker behind the last accepted one.
    /// Blocks while the queue is full (the router keeps draining it).
    pub(crate) fn close(&self) {
        let Ok(mut closed) = self.closed.write() else {
            return;
        };
        if !*closed {
            *closed = true;
            match &self.spool {
                // The feeder queues the marker after the spool's last record.
                Some(spool) => spool.close(),
                // The receiver lives as long as the router; if it is gone there is nothing to stop.
                None => {
                    let _ = self.tx.send(IngestMsg::Shutdown);
                }
            }
        }
    }

    pub fn format(&self) -> StorageFormat {
        self.format.clone()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Events waiting in the ingest queue.
    pub fn queued_events(&self) -> usize {
        self.tx.len()
    }

    /// Bytes waiting in the ingest queue.
    pub fn queued_bytes(&self) -> usize {
        self.budget.used()
    }

    pub fn capacity_events(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard inbox's byte bound: the router waits while the inbox holds its limit and goes on
    /// once the shard takes something; one message larger than the limit still goes, alone.
    #[test]
    fn a_byte_budget_holds_the_sender_until_room_is_released() {
        let budget = Arc::new(ByteBudget::new(100));
        assert_eq!(budget.reserve_wait(60), 60);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn({
            let budget = Arc::clone(&budget);
            move || {
                let got = budget.reserve_wait(50);
                tx.send(got).unwrap();
            }
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "60 + 50 bytes do not fit in 100: the sender waits"
        );
        budget.release(60);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(50));
        waiter.join().unwrap();
        budget.release(50);
        assert_eq!(budget.reserve_wait(1_000), 100, "capped at the whole limit");
        assert_eq!(budget.used(), 100);
    }
}
