//! The front door: events are planned into writes on the caller's thread and queued on a bounded
//! crossbeam channel, limited in events and in bytes.
//!
//! Policy when full: [`Ingest::submit`] never blocks and fails with [`SubmitError::Full`];
//! [`Ingest::submit_timeout`] waits up to its deadline for room, then fails the same way. Either way
//! the refusal is counted (`mqtt_dynamo_events_rejected_total{reason="queue_full"}`) and the caller
//! decides what the broker sees. Nothing that was accepted is dropped here.

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use thiserror::Error;

use crate::event::HookEvent;
use crate::item::Op;
use crate::lookup::ReadState;
use crate::rules::{ActionScope, EventError, RuleSet, StorageFormat};
use crate::stats::{RejectReason, Stats};

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
    /// Sent once, after the last event, by [`Ingest::close`].
    Shutdown,
}

/// The byte limit of the ingest queue: reserved before an envelope is queued, released when the
/// router takes it. A mutex and condvar rather than an atomic so that `submit_timeout` can wait
/// for room without spinning; the critical section is two integer operations.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: Mutex<usize>,
    freed: Condvar,
    limit: usize,
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
    fn reserve(&self, n: usize, deadline: Option<Instant>) -> bool {
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
    /// Where accepted ops are numbered and recorded for lookups (read-your-writes, indexes).
    read: Option<Arc<ReadState>>,
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
        }
    }

    /// Queues writes that come from no hook (the subscription API), waiting until `deadline`
    /// (if any) for room. Refusals are counted like an event's.
    pub fn submit_ops(&self, ops: Vec<Op>, deadline: Option<Instant>) -> Result<(), SubmitError> {
        let result = self.enqueue_ops(ops, deadline, None);
        if let Err(e) = &result {
            self.count_rejection(e);
        }
        result
    }

    /// Accepts `event` if there is room now; never blocks.
    pub fn submit(&self, event: &HookEvent) -> Result<(), SubmitError> {
        self.enqueue(event, None, ActionScope::All)
    }

    /// Accepts `event`, waiting up to `timeout` for room.
    pub fn submit_timeout(&self, event: &HookEvent, timeout: Duration) -> Result<(), SubmitError> {
        self.enqueue(event, Some(Instant::now() + timeout), ActionScope::All)
    }

    /// Accepts `event` for the rules `scope` admits, waiting until `deadline` (if any) for room.
    pub fn submit_scoped(
        &self,
        event: &HookEvent,
        scope: ActionScope,
        deadline: Option<Instant>,
    ) -> Result<(), SubmitError> {
        self.enqueue(event, deadline, scope)
    }

    /// Like [`Ingest::submit_scoped`] without waiting, and without counting a `Full` refusal: for
    /// callers that will wait and try again (and count the final outcome).
    pub fn probe_scoped(&self, event: &HookEvent, scope: ActionScope) -> Result<(), SubmitError> {
        match self.try_enqueue(event, None, scope) {
            Err(SubmitError::Full) => Err(SubmitError::Full),
            other => {
                if let Err(e) = &other {
                    self.count_rejection(e);
                }
                other
            }
        }
    }

    fn enqueue(
        &self,
        event: &HookEvent,
        deadline: Option<Instant>,
        scope: ActionScope,
    ) -> Result<(), SubmitError> {
        let result = self.try_enqueue(event, deadline, scope);
        if let Err(e) = &result {
            self.count_rejection(e);
        }
        result
    }

    fn count_rejection(&self, e: &SubmitError) {
        self.stats.event_rejected(match e {
            SubmitError::Full | SubmitError::TooLarge { .. } => RejectReason::QueueFull,
            SubmitError::Invalid(_) => RejectReason::Invalid,
            SubmitError::Closed => RejectReason::Closed,
        });
    }

    fn try_enqueue(
        &self,
        event: &HookEvent,
        deadline: Option<Instant>,
        scope: ActionScope,
    ) -> Result<(), SubmitError> {
        let ops = self.rules.plan_scoped(event, &self.format, scope)?;
        self.enqueue_ops(ops, deadline, Some(event.hook()))
    }

    /// Queues one event's (or one API call's) writes, all or nothing.
    fn enqueue_ops(
        &self,
        ops: Vec<Op>,
        deadline: Option<Instant>,
        hook: Option<crate::event::HookPoint>,
    ) -> Result<(), SubmitError> {
        let closed = self.closed.read().map_err(|_| SubmitError::Closed)?;
        if *closed {
            return Err(SubmitError::Closed);
        }
        let n_ops = ops.len();
        if ops.is_empty() {
            if let Some(hook) = hook {
                self.stats.event_received(hook, 0);
            }
            return Ok(());
        }
        let bytes: usize = ops.iter().map(Op::size).sum();
        if bytes > self.budget.limit {
            return Err(SubmitError::TooLarge {
                needed: bytes,
                limit: self.budget.limit,
            });
        }
        if !self.budget.reserve(bytes, deadline) {
            return Err(SubmitError::Full);
        }
        // Numbered and recorded before queueing, so no shard can settle an op before it is
        // recorded; taken back below if the queue refuses it.
        let (first_seq, changes) = match &self.read {
            Some(read) => (read.record(&ops), ReadState::index_changes(&ops)),
            None => (0, Vec::new()),
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
                if let Some(read) = &self.read {
                    read.apply_index(changes);
                }
                if let Some(hook) = hook {
                    self.stats.event_received(hook, n_ops);
                }
                Ok(())
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

    /// Stops accepting events and queues the shutdown marker behind the last accepted one.
    /// Blocks while the queue is full (the router keeps draining it).
    pub(crate) fn close(&self) {
        let Ok(mut closed) = self.closed.write() else {
            return;
        };
        if !*closed {
            *closed = true;
            // The receiver lives as long as the router; if it is gone there is nothing to stop.
            let _ = self.tx.send(IngestMsg::Shutdown);
        }
    }

    pub fn format(&self) -> StorageFormat {
        self.format
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
