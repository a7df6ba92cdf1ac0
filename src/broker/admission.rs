//! Admission: the door between a broker adapter and the pipeline, and the full-queue policy
//! (`when_full`: drop at once, or block up to a deadline, then drop) applied at it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::warn;

use crate::config::WhenFull;
use crate::event::HookEvent;
use crate::pipeline::PipelineHandle;
use crate::pipeline::{Admit, Receipt, SubmitError};
use crate::rules::{ActionScope, EventError};
use crate::telemetry::stats::{LogGate, Origin};

/// Why an adapter could not hand an event over.
#[derive(Debug, Error)]
pub enum AdmitError {
    /// The event itself is bad (the broker should be told).
    #[error(transparent)]
    Invalid(EventError),
    /// The queue stayed full past the policy's deadline (or the policy is `drop`): the event is
    /// dropped, counted and logged.
    #[error("ingest queue is full; event dropped")]
    Dropped,
    #[error("the service is shutting down")]
    Closed,
    /// The event could not be made durable (a spool write or fsync failed).
    #[error("{0}")]
    Unavailable(#[source] crate::spool::SpoolError),
}

/// The door between an adapter and the pipeline: submit, and when the queue is full apply the
/// adapter's policy.
///
/// Shared by every call of one adapter (behind an `Arc`). A call that finds the queue full under
/// `when_full = "block"` waits on tokio's blocking pool, never on a runtime worker, for at most
/// `block_timeout`; under `"drop"`, or past the deadline, the event is dropped, counted and
/// logged (rate limited). Nothing here waits on DynamoDB.
#[derive(Debug)]
pub struct Admission {
    /// The pipeline's submit handle, tagged with this adapter's origin for the refusal counters.
    handle: PipelineHandle,
    /// The policy when the ingest queue (or the spool's disk bound) is full.
    when_full: WhenFull,
    /// How long a blocked call waits for room before its event is dropped.
    block_timeout: Duration,
    /// The adapter's name in metrics and logs (`exhook`, `http`).
    adapter: &'static str,
    /// Rate limit for the drop warnings.
    drop_log: LogGate,
    /// Events dropped because the queue was full.
    dropped: AtomicU64,
    /// Calls that found the queue full and waited for room (`when_full = "block"`).
    waited: AtomicU64,
}

impl Admission {
    /// How a write that comes from no hook is admitted under this policy: waiting up to the
    /// block timeout for room, or not at all.
    pub fn admit_writes(&self) -> Admit {
        match self.when_full {
            WhenFull::Block => Admit::within(self.block_timeout),
            WhenFull::Drop => Admit::now(),
        }
    }

    pub fn new(
        handle: PipelineHandle,
        when_full: WhenFull,
        block_timeout: Duration,
        adapter: &'static str,
    ) -> Self {
        let origin = match adapter {
            "exhook" => Origin::Exhook,
            "http" => Origin::Http,
            _ => Origin::Api,
        };
        Admission {
            handle: handle.for_origin(origin),
            when_full,
            block_timeout,
            adapter,
            drop_log: LogGate::new(),
            dropped: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }
    }

    pub fn handle(&self) -> &PipelineHandle {
        &self.handle
    }

    /// Events this adapter dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Calls that waited for room in the queue.
    pub fn waited(&self) -> u64 {
        self.waited.load(Relaxed)
    }

    /// Queues `event`, applying the full-queue policy.
    pub async fn admit(&self, event: HookEvent, scope: ActionScope) -> Result<(), AdmitError> {
        let hook = event.hook().as_str();
        let first = match self.when_full {
            // Full: this caller waits and tries again, and counts the final outcome.
            WhenFull::Block => Admit::now().scope(scope).retried_by_caller(),
            WhenFull::Drop => Admit::now().scope(scope),
        };
        let first = self.handle.submit(&event, first);
        // Without the spool the receipt is ready at once; with it, wait for the fsync here
        // (async), not on a runtime worker.
        let first = match first {
            Ok(receipt) => receipt.durable().await,
            Err(e) => Err(e),
        };
        let result = match (first, self.when_full) {
            (Err(SubmitError::Full), WhenFull::Block) => self.wait_for_room(event, scope).await,
            (other, _) => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(SubmitError::Full | SubmitError::TooLarge { .. }) => {
                self.count_drop(hook);
                Err(AdmitError::Dropped)
            }
            Err(SubmitError::Invalid(e)) => Err(AdmitError::Invalid(e)),
            Err(SubmitError::Closed) => Err(AdmitError::Closed),
            Err(SubmitError::Spool(e)) => Err(AdmitError::Unavailable(e)),
        }
    }

    /// `when_full = "block"`: submits again on the blocking pool, waiting up to `block_timeout`
    /// for room (and for the spool's fsync).
    async fn wait_for_room(&self, event: HookEvent, scope: ActionScope) -> Result<(), SubmitError> {
        self.waited.fetch_add(1, Relaxed);
        metrics::counter!(crate::telemetry::catalogue::HOOK_WAITS_TOTAL, "adapter" => self.adapter)
            .increment(1);
        let handle = self.handle.clone();
        let deadline = Instant::now() + self.block_timeout;
        tokio::task::spawn_blocking(move || {
            handle
                .submit(&event, Admit::until(deadline).scope(scope))
                .and_then(Receipt::wait)
        })
        .await
        .unwrap_or(Err(SubmitError::Closed))
    }

    /// Counts and logs (rate limited) an event of `hook` dropped for a full queue.
    fn count_drop(&self, hook: &str) {
        self.dropped.fetch_add(1, Relaxed);
        metrics::counter!(crate::telemetry::catalogue::HOOK_EVENTS_DROPPED_TOTAL, "adapter" => self.adapter, "reason" => "queue_full")
            .increment(1);
        if let Some(held) = self.drop_log.allow() {
            warn!(
                adapter = self.adapter,
                hook,
                reason = "queue_full",
                dropped_total = self.dropped.load(Relaxed),
                held_back = held,
                "ingest queue full: hook event dropped"
            );
        }
    }
}
