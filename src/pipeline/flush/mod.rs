//! Sending one flush to DynamoDB: the puts and deletes as one BatchWriteItem, the updates and set
//! changes as one BatchExecuteStatement and UpdateItems, each request retried until durable,
//! refused, or out of retry budget.
//!
//! - **UnprocessedItems** (which the SDK does not retry) are resent alone after a full-jitter
//!   exponential backoff; throttling errors and transient failures retry the whole request the
//!   same way. The key of every write stays in flight in its shard until this returns, so nothing
//!   newer for that key can overtake a retry.
//! - **Hot keys** (with `pipeline.hot_key_window` on): a write throttled on its own key — returned
//!   in UnprocessedItems, or an UpdateItem throttled with a key-range ThrottlingReason or none — is
//!   not retried here but handed back ([`KeyEnd::Requeue`]), so its shard can merge the key's
//!   newer ops into it while the key waits its window. Throttling that names table or account
//!   capacity, and writes older than `max_elapsed`, are retried here as above.
//! - **ValidationException** on a batch is never retried whole: each write is resent alone, so one
//!   poison write is dropped (counted, logged with DynamoDB's message) and the rest are written.
//! - A guarded update whose condition fails (a late disconnect from a node the client has left)
//!   did its job by doing nothing.
//! - **What to do after a failure** is [`retry::RetryPolicy::decide`]: retry after a backoff, hand
//!   back, give up (never for time while the spool is on), or — past the shutdown deadline — leave
//!   the write to the spool or dead-letter it.
//! - **Ambiguous attempts**: a write whose attempt ended in a timeout, a 5xx or a reset may have
//!   been applied. If it is then handed back to its shard it is marked maybe applied
//!   ([`Write::maybe_applied`]), so the coalescer never cancels a later delete against it (the
//!   certainty rule, [`crate::pipeline::coalesce`]); whatever its end, the shard then holds the
//!   key for `pipeline.ambiguous_hold`.
//! - **Set deltas** go out in UpdateItems of at most [`crate::storage::item::MAX_SET_CHUNK_BYTES`]
//!   of members each, ADDs first, so a long-merged hot key's delta never exceeds what DynamoDB
//!   takes.
//!
//! - **Set changes and guarded updates** one PartiQL `UPDATE` can carry go up to 25 per
//!   BatchExecuteStatement (`pipeline.batch_statements`); what a statement cannot carry, by shape
//!   or as DynamoDB answered it, is diverted to UpdateItem (see `statement`).
//!
//! Files, one concern each: `request` builds requests; `batch` sends BatchWriteItem, `statement`
//! BatchExecuteStatement, `update` UpdateItem, all through the one loop in `retry_loop`;
//! [`retry`] is the retry decision; `msgid` trims MsgId sets at their size cap.

mod batch;
mod msgid;
mod request;
pub mod retry;
mod retry_loop;
mod statement;
mod update;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use tracing::error;

pub use request::TableNames;
use retry::{Deadline, RetryPolicy};
pub use retry_loop::Cost;
use retry_loop::{End, Unit};

use crate::pipeline::coalesce::{Seqs, Taken};
use crate::storage::item::{Key, Write};
use crate::telemetry::stats::{DropReason, Stats};

/// How one write of a flush ended, with its key and the ops folded into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub key: Key,
    /// When its oldest event was accepted (the coalescer's clock).
    pub since: std::time::Instant,
    /// The ops folded into the write (for `ReadState::settled`).
    pub seqs: Seqs,
    pub end: KeyEnd,
}

/// How one key's write ended in a flush: exactly one of these, each with what the shard must
/// know about the key's attempts.
///
/// `hot`: DynamoDB throttled this key itself in some attempt (UnprocessedItems, or a throttled
/// UpdateItem whose ThrottlingReasons, when present, name a key range rather than table
/// capacity); the shard's window for the key grows. `ambiguous`: an attempt ended ambiguously (a
/// timeout, a 5xx, a reset, abandoned at the deadline): DynamoDB may still apply it later, so the
/// shard holds the key for `pipeline.ambiguous_hold` before its next write, which a late landing
/// could otherwise overwrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEnd {
    /// Durable: written, or a guarded update that did its job by doing nothing; with what it
    /// cost when DynamoDB's consumed capacity tells it (for the shard's cost windows).
    Written {
        hot: bool,
        ambiguous: bool,
        cost: Option<Cost>,
    },
    /// Given up: counted, logged, dead-lettered.
    Dropped { hot: bool, ambiguous: bool },
    /// Throttled on its own key (so always hot) and not applied: what is left of the write,
    /// handed back to the shard, which puts it ahead of the key's newer ops (they merge into it
    /// during the key's window). Marked maybe applied when `ambiguous`.
    Requeue { write: Write, ambiguous: bool },
    /// The shutdown deadline passed with the spool on: not written, not given up; the spool
    /// replays it at the next start (the shard is stopping: nothing else about the key matters).
    Left,
}

impl KeyEnd {
    /// The end of a write whose request ended as `end` for `unit`; `rest` is what is left of the
    /// write if it is handed back.
    fn new(unit: &Unit, end: End, rest: impl FnOnce() -> Option<Write>) -> KeyEnd {
        let (hot, ambiguous) = (unit.hot, unit.ambiguous);
        match end {
            End::Written => KeyEnd::Written {
                hot,
                ambiguous,
                cost: unit.cost,
            },
            End::Dropped => KeyEnd::Dropped { hot, ambiguous },
            End::Left => KeyEnd::Left,
            // Only BatchExecuteStatement diverts, and `Flusher::statements` sends a diverted
            // write on as its UpdateItems before asking for an end; never reached.
            End::Diverted => KeyEnd::Dropped { hot, ambiguous },
            End::HandedBack => match rest() {
                Some(mut write) => {
                    if ambiguous {
                        write.maybe_applied();
                    }
                    KeyEnd::Requeue { write, ambiguous }
                }
                None => KeyEnd::Dropped { hot, ambiguous },
            },
        }
    }

    /// DynamoDB throttled the key itself (its hot-key window grows).
    pub fn hot(&self) -> bool {
        match self {
            KeyEnd::Written { hot, .. } | KeyEnd::Dropped { hot, .. } => *hot,
            KeyEnd::Requeue { .. } => true,
            KeyEnd::Left => false,
        }
    }

    /// An attempt may still land (the key is held for `pipeline.ambiguous_hold`).
    pub fn ambiguous(&self) -> bool {
        match self {
            KeyEnd::Written { ambiguous, .. }
            | KeyEnd::Dropped { ambiguous, .. }
            | KeyEnd::Requeue { ambiguous, .. } => *ambiguous,
            KeyEnd::Left => false,
        }
    }
}

/// What a shard needs from the flusher: send a flush, give up a write it will not send. A trait
/// so the shard's tests can stand in for DynamoDB.
pub(crate) trait Flush: Send + Sync + 'static {
    /// Sends `writes` (one per key) and reports how each ended.
    fn flush(self: Arc<Self>, writes: Vec<Taken>) -> impl Future<Output = Vec<Completed>> + Send;

    /// Counts a given-up write and records it in the dead-letter file.
    fn give_up(&self, key: &Key, write: &Write, reason: DropReason, error_text: &str);
}

/// Sends flushes. Shared by every shard; holds no per-flush state, so nothing here blocks a
/// shard except the flush it awaits (which ends by the shutdown deadline at the latest).
#[derive(Debug)]
pub struct Flusher {
    /// The pipeline's client, with the SDK's own retries off (this is the one retry layer).
    client: Client,
    /// Table names as configured, to address requests and read UnprocessedItems back.
    tables: TableNames,
    /// What to do after a failed attempt (spool on or off, hot-key windows).
    policy: RetryPolicy,
    /// Fired when `pipeline.shutdown_timeout` runs out: pauses end and requests in flight are
    /// abandoned, their writes left to the spool or dead-lettered.
    deadline: Arc<Deadline>,
    /// Counters of every request, write, retry and drop (shared with the shards).
    stats: Arc<Stats>,
    /// Where given-up writes are recorded.
    dead_letters: crate::pipeline::deadletter::DeadLetters,
    /// `storage.max_msgid_set_kb` in bytes (0: no cap).
    msgid_cap: msgid::MsgIdCap,
    /// Which message ids have expired, so trimming removes those first (shared with ingest).
    expiry: Arc<crate::pipeline::expiry::ExpiryBook>,
    /// Told how each request went, so the limit on flushes in flight adapts.
    concurrency: Arc<crate::pipeline::concurrency::Concurrency>,
    /// `pipeline.batch_statements`: set deltas and guarded updates go by BatchExecuteStatement.
    statements: bool,
}

impl Flusher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        concurrency: Arc<crate::pipeline::concurrency::Concurrency>,
        client: Client,
        tables: TableNames,
        policy: RetryPolicy,
        deadline: Arc<Deadline>,
        stats: Arc<Stats>,
        dead_letters: crate::pipeline::deadletter::DeadLetters,
        msgid_cap: usize,
        expiry: Arc<crate::pipeline::expiry::ExpiryBook>,
    ) -> Self {
        Flusher {
            expiry,
            client,
            tables,
            policy,
            deadline,
            stats,
            dead_letters,
            msgid_cap: msgid::MsgIdCap(msgid_cap),
            concurrency,
            statements: false,
        }
    }

    /// Sends set deltas and guarded updates by BatchExecuteStatement (`pipeline.batch_statements`).
    pub fn with_statements(mut self, on: bool) -> Self {
        self.statements = on;
        self
    }

    /// Counts a given-up write and records it in the dead-letter file.
    pub(crate) fn give_up(&self, key: &Key, write: &Write, reason: DropReason, error_text: &str) {
        self.stats.dropped(reason, 1);
        self.dead_letters
            .record(self.tables.name(key.table), key, write, reason, error_text);
    }

    /// Sends `writes` (one per key) and reports how each ended: the puts and deletes in one
    /// BatchWriteItem here, the set deltas and guarded updates in one BatchExecuteStatement
    /// beside it (with `pipeline.batch_statements`; a key whose cost is being measured goes by
    /// UpdateItem), each other update in a task of its own.
    pub async fn flush(self: Arc<Self>, writes: Vec<Taken>) -> Vec<Completed> {
        let now = tokio::time::Instant::now().into_std();
        let taken: HashMap<Key, (std::time::Instant, Seqs)> = writes
            .iter()
            .map(|t| (t.key.clone(), (t.since, t.seqs)))
            .collect();
        let (batchable, others): (Vec<Taken>, Vec<Taken>) =
            writes.into_iter().partition(|t| t.write.is_batchable());
        let mut updates = UpdateTasks::default();
        let mut statements = Vec::new();
        for t in others {
            if self.statements && !t.measure {
                statements.push((t.write, unit_of(&t.key, t.since, now)));
            } else {
                updates.spawn(&self, t.write, unit_of(&t.key, t.since, now));
            }
        }
        // What no statement can carry goes as UpdateItems at once, beside the two batches.
        let (statements, units, rest) = statement::StatementBatch::new(&self, statements);
        for (write, unit) in rest {
            updates.spawn(&self, write, unit);
        }
        let batch: Vec<(Write, Unit)> = batchable
            .into_iter()
            .map(|t| {
                let unit = unit_of(&t.key, t.since, now);
                (t.write, unit)
            })
            .collect();
        let (mut ends, (statement_ends, diverted)) = tokio::join!(
            async {
                if batch.is_empty() {
                    Vec::new()
                } else {
                    self.batch(batch).await
                }
            },
            self.statements(statements, units)
        );
        ends.extend(statement_ends);
        for (write, unit) in diverted {
            updates.spawn(&self, write, unit);
        }
        updates.join(&mut ends).await;
        self.completions(ends, taken, now)
    }

    /// Each write's end with its key's `since` and ops; keys whose task died are reported as
    /// dropped (and maybe applied) so the shard releases them.
    fn completions(
        &self,
        ends: Vec<(Key, KeyEnd)>,
        mut taken: HashMap<Key, (std::time::Instant, Seqs)>,
        now: std::time::Instant,
    ) -> Vec<Completed> {
        let mut completed: Vec<Completed> = ends
            .into_iter()
            .map(|(key, end)| {
                let (since, seqs) = taken.remove(&key).unwrap_or((now, Seqs::default()));
                Completed {
                    key,
                    since,
                    seqs,
                    end,
                }
            })
            .collect();
        if !taken.is_empty() {
            self.stats
                .dropped(DropReason::RetriesExhausted, taken.len() as u64);
        }
        completed.extend(taken.into_iter().map(|(key, (since, seqs))| Completed {
            key,
            since,
            seqs,
            end: KeyEnd::Dropped {
                hot: false,
                ambiguous: true,
            },
        }));
        completed
    }
}

/// A write's unit, aged from when its oldest event was accepted to the flush's start.
fn unit_of(key: &Key, since: std::time::Instant, now: std::time::Instant) -> Unit {
    Unit::new(key.clone(), now.saturating_duration_since(since))
}

/// The UpdateItems of a flush, each write's in a task of its own, so one key's retries hold back
/// no other key.
#[derive(Default)]
struct UpdateTasks(tokio::task::JoinSet<(Key, KeyEnd)>);

impl UpdateTasks {
    fn spawn(&mut self, flusher: &Arc<Flusher>, write: Write, unit: Unit) {
        let flusher = Arc::clone(flusher);
        self.0.spawn(async move {
            let key = unit.key.clone();
            (key, flusher.update(&write, unit).await)
        });
    }

    /// Waits for every task, adding each write's end to `ends`.
    async fn join(mut self, ends: &mut Vec<(Key, KeyEnd)>) {
        while let Some(joined) = self.0.join_next().await {
            match joined {
                Ok(end) => ends.push(end),
                // The update task panicked: a bug, not input. Its key must still be released,
                // but we no longer know it here; `completions` reports it as dropped.
                Err(e) => error!(error = %e, "update task failed"),
            }
        }
    }
}

impl Flush for Flusher {
    fn flush(self: Arc<Self>, writes: Vec<Taken>) -> impl Future<Output = Vec<Completed>> + Send {
        Flusher::flush(self, writes)
    }

    fn give_up(&self, key: &Key, write: &Write, reason: DropReason, error_text: &str) {
        Flusher::give_up(self, key, write, reason, error_text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::Table;

    #[test]
    fn a_handed_back_write_is_requeued_hot_and_marked_maybe_applied_when_ambiguous() {
        let key = Key::new(Table::Msg, "m");
        let put = Write::Put {
            item: key.to_item(),
            fresh: true,
        };
        let mut unit = Unit::new(key, std::time::Duration::ZERO);
        let end = KeyEnd::new(&unit, End::HandedBack, || Some(put.clone()));
        assert_eq!(
            end,
            KeyEnd::Requeue {
                write: put.clone(),
                ambiguous: false
            }
        );
        assert!(end.hot() && !end.ambiguous());
        unit.ambiguous = true;
        let KeyEnd::Requeue { write, ambiguous } =
            KeyEnd::new(&unit, End::HandedBack, || Some(put.clone()))
        else {
            panic!("handed back");
        };
        assert!(ambiguous && !write.is_fresh(), "the certainty rule");
        unit.hot = true;
        let written = KeyEnd::new(&unit, End::Written, || None);
        assert_eq!(
            written,
            KeyEnd::Written {
                hot: true,
                ambiguous: true,
                cost: None
            }
        );
        assert!(written.hot() && written.ambiguous());
        assert_eq!(KeyEnd::new(&unit, End::Left, || None), KeyEnd::Left);
    }
}
