//! Sending one flush to DynamoDB: the puts and deletes as one BatchWriteItem, the updates and set
//! changes as UpdateItems, each retried until durable, refused, or out of retry budget.
//!
//! - **UnprocessedItems** (which the SDK does not retry) are resent alone after a full-jitter
//!   exponential backoff; throttling errors and transient failures retry the whole request the
//!   same way. The key of every write stays in flight in its shard until this returns, so nothing
//!   newer for that key can overtake a retry.
//! - **Hot keys** (with `pipeline.hot_key_window` on): a write throttled on its own key — returned
//!   in UnprocessedItems, or an UpdateItem throttled with a key-range ThrottlingReason or none — is
//!   not retried here but handed back (`Completed::requeue`), so its shard can merge the key's newer
//!   ops into it while the key waits its window. Throttling that names table or account capacity,
//!   and writes older than `max_elapsed`, are retried here as above.
//! - **ValidationException** on a batch is never retried whole: each write is resent alone, so one
//!   poison write is dropped (counted, logged with DynamoDB's message) and the rest are written.
//! - A guarded update whose condition fails (a late disconnect from a node the client has left)
//!   did its job by doing nothing.
//! - **What to do after a failure** is [`crate::pipeline::flush::retry::RetryPolicy::decide`]: retry after a
//!   backoff, hand back, give up (never for time while the spool is on), or — past the shutdown
//!   deadline — leave the write to the spool or dead-letter it.
//! - **Ambiguous attempts**: a write whose attempt ended in a timeout, a 5xx or a reset may have
//!   been applied. If it is then handed back to its shard it is marked maybe applied
//!   ([`Write::maybe_applied`]), so the coalescer never cancels a later delete against it (the
//!   certainty rule, [`crate::pipeline::coalesce`]).
//! - **Set deltas** go out in UpdateItems of at most [`crate::storage::item::MAX_SET_CHUNK_BYTES`] of
//!   members each, ADDs first, so a long-merged hot key's delta never exceeds what DynamoDB takes.

pub mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, ReturnConsumedCapacity, WriteRequest,
};
use tracing::{error, warn};

use crate::config::DynamoConfig;
use crate::pipeline::coalesce::Taken;
use crate::pipeline::flush::retry::{Deadline, Decision, Failed, RetryPolicy};
use crate::storage::dynamo::{self, Failure};
use crate::storage::item::{Key, Table, Value, Write};
use crate::telemetry::stats::{DropReason, LogGate, Operation, Outcome, Stats};

/// Rate limits for the flusher's warnings and errors: an outage must not flood the log.
static RETRY_LOG: LogGate = LogGate::new();
static AUTH_LOG: LogGate = LogGate::new();
static TRIM_LOG: LogGate = LogGate::new();
static DROP_LOG: LogGate = LogGate::new();

/// Counts a DynamoDB request in the in-flight gauge while it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(crate::telemetry::catalogue::DYNAMODB_IN_FLIGHT_REQUESTS).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::catalogue::DYNAMODB_IN_FLIGHT_REQUESTS).decrement(1.0);
    }
}

/// Table names as configured, both ways.
#[derive(Debug, Clone)]
pub struct TableNames {
    names: [String; 6],
    by_name: HashMap<String, Table>,
}

impl TableNames {
    pub fn new(cfg: &DynamoConfig) -> Self {
        let names = Table::ALL.map(|t| cfg.table_name(t));
        let by_name = Table::ALL
            .iter()
            .map(|t| (cfg.table_name(*t), *t))
            .collect();
        TableNames { names, by_name }
    }

    pub fn name(&self, table: Table) -> &str {
        &self.names[Table::ALL.iter().position(|t| *t == table).unwrap_or(0)]
    }

    pub fn table(&self, name: &str) -> Option<Table> {
        self.by_name.get(name).copied()
    }
}

/// How one write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub key: Key,
    /// When its oldest event was accepted.
    pub since: Instant,
    /// The ops folded into the write (for [`crate::lookup::ReadState::settled`]).
    pub seqs: crate::pipeline::coalesce::Seqs,
    /// DynamoDB throttled this key itself (UnprocessedItems, or a throttled UpdateItem whose
    /// ThrottlingReasons, when present, name a key range rather than table capacity).
    pub hot: bool,
    /// An attempt of this write ended ambiguously (a timeout, a 5xx, a reset): DynamoDB may still
    /// apply it later, so the shard holds the key for `pipeline.ambiguous_hold` before its next
    /// write, which a late landing could otherwise overwrite.
    pub ambiguous: bool,
    pub end: KeyEnd,
}

/// How one key's write ended in a flush: exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEnd {
    /// Written, or a guarded update that did its job by doing nothing.
    Written,
    /// Given up: counted, logged, dead-lettered.
    Dropped,
    /// Throttled on its own key: what is left of the write, handed back to the shard, which puts
    /// it ahead of the key's newer ops (they merge into it during the key's window). Marked maybe
    /// applied when an earlier attempt of it ended ambiguously.
    Requeue(Write),
    /// The shutdown deadline passed with the spool on: not written, not given up; the spool
    /// replays it at the next start.
    Left,
}

/// How one UpdateItem of a write ended.
#[derive(Debug)]
enum SpecEnd {
    Done,
    Dropped,
    /// Throttled on its own key, and the write may be handed back.
    HotThrottled,
    /// Past the shutdown deadline, left to the spool.
    Left,
}

/// Sends flushes. Shared by every shard; holds no per-flush state.
#[derive(Debug)]
pub struct Flusher {
    client: Client,
    tables: TableNames,
    /// What to do after a failed attempt (spool on or off, hot-key windows).
    policy: RetryPolicy,
    /// Fired when `pipeline.shutdown_timeout` runs out: pauses end and requests in flight are
    /// abandoned, their writes left to the spool or dead-lettered.
    deadline: Arc<Deadline>,
    stats: Arc<Stats>,
    /// Where given-up writes are recorded.
    dead_letters: crate::pipeline::deadletter::DeadLetters,
    /// `storage.max_msgid_set_kb` in bytes (0: no cap).
    msgid_cap: usize,
    /// Told how each request went, so the limit on flushes in flight adapts.
    concurrency: Arc<crate::pipeline::concurrency::Concurrency>,
}

/// One UpdateItem, ready to send (and resend).
#[derive(Debug, Clone)]
struct UpdateSpec {
    /// The set attribute this ADDs to (for the size cap), if it is a set ADD.
    adds_to: Option<String>,
    /// For a set delta: the members this request adds (`true`) or deletes, so that what is left
    /// after a hand-back can be rebuilt.
    members: Option<(bool, std::collections::BTreeSet<String>)>,
    expression: String,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
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
    ) -> Self {
        Flusher {
            client,
            tables,
            policy,
            deadline,
            stats,
            dead_letters,
            msgid_cap,
            concurrency,
        }
    }

    /// Sends `request`, unless the shutdown deadline passes first (`None`: abandoned; whether
    /// DynamoDB applied it is unknown).
    async fn send_or_stop<T>(&self, request: impl std::future::Future<Output = T>) -> Option<T> {
        if self.deadline.passed() {
            return None;
        }
        tokio::select! {
            r = request => Some(r),
            () = self.deadline.wait() => None,
        }
    }

    /// After attempt `attempt` failed as `failed`: the policy's decision, with the pause of a
    /// retry already waited out (cut short by the shutdown deadline, which then decides).
    async fn after_failure(
        &self,
        op: Operation,
        failed: Failed,
        attempt: u32,
        started: Instant,
        age: Duration,
    ) -> Decision {
        let decide = |stopping: bool| {
            self.policy.decide(
                failed,
                attempt,
                started.elapsed(),
                age,
                stopping,
                fastrand::f64(),
            )
        };
        let decision = decide(self.deadline.passed());
        if let Decision::RetryAfter(wait) = decision {
            self.stats.retried(op);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.deadline.wait() => return decide(true),
            }
        }
        decision
    }

    /// The log line and dead-letter reason text for a write given up with `reason`.
    fn give_up_text(reason: DropReason, started: Instant, last_error: &str) -> String {
        match reason {
            DropReason::Shutdown => {
                format!("not written when pipeline.shutdown_timeout ran out; last: {last_error}")
            }
            _ => format!(
                "retries exhausted after {:.1} s; last: {last_error}",
                started.elapsed().as_secs_f64()
            ),
        }
    }

    /// Removes the oldest ids (by GUID: time, then sequence; ids that are not GUIDs first) from `key`'s set
    /// until the item is at most `target` bytes. Runs while the key is in flight, so no write of
    /// ours races it. Best effort: a failure is logged and the caller goes on.
    async fn trim_set(&self, key: &Key, attr: &str, target: usize) {
        let table = self.tables.name(key.table);
        let got = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(dynamo::key_attrs(key)))
            .consistent_read(true)
            .send()
            .await;
        let ids: Vec<String> = match &got {
            Ok(out) => match out.item().and_then(|i| i.get(attr)) {
                Some(AttributeValue::Ss(ids)) => ids.clone(),
                _ => return,
            },
            Err(e) => {
                if let Some(held) = TRIM_LOG.allow() {
                    warn!(held_back = held, topic = %key.hash, error = %dynamo::error_text(e), "cannot read a MsgId set to trim it");
                }
                return;
            }
        };
        let mut size = key.size() + attr.len() + ids.iter().map(String::len).sum::<usize>();
        let mut by_age: Vec<(u128, String)> = ids
            .into_iter()
            .map(|id| (crate::lookup::guid_of(&id).unwrap_or(0), id))
            .collect();
        by_age.sort_unstable();
        let mut oldest = Vec::new();
        for (_, id) in by_age {
            if size <= target {
                break;
            }
            size -= id.len();
            oldest.push(id);
        }
        if oldest.is_empty() {
            return;
        }
        let n = oldest.len() as u64;
        let result = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(dynamo::key_attrs(key)))
            .update_expression("DELETE #s :m")
            .expression_attribute_names("#s", attr)
            .expression_attribute_values(":m", AttributeValue::Ss(oldest))
            .send()
            .await;
        match result {
            Ok(_) => {
                self.stats.trimmed(n);
                if let Some(held) = TRIM_LOG.allow() {
                    warn!(held_back = held, topic = %key.hash, removed = n, bytes_after = size, "MsgId set at its size cap; the oldest ids were removed (their messages stay in mqtt_msg)");
                }
            }
            Err(e) => {
                if let Some(held) = TRIM_LOG.allow() {
                    warn!(held_back = held, topic = %key.hash, error = %dynamo::error_text(&e), "cannot trim a MsgId set");
                }
            }
        }
    }

    /// Counts a given-up write and records it in the dead-letter file.
    pub(crate) fn give_up(&self, key: &Key, write: &Write, reason: DropReason, error_text: &str) {
        self.stats.dropped(reason, 1);
        self.dead_letters
            .record(self.tables.name(key.table), key, write, reason, error_text);
    }

    /// Sends `writes` (one per key) and reports how each ended.
    pub async fn flush(self: Arc<Self>, writes: Vec<Taken>) -> Vec<Completed> {
        let since: HashMap<Key, (Instant, crate::pipeline::coalesce::Seqs)> = writes
            .iter()
            .map(|t| (t.key.clone(), (t.since, t.seqs)))
            .collect();
        let (batchable, updates): (Vec<Taken>, Vec<Taken>) =
            writes.into_iter().partition(|t| t.write.is_batchable());
        let mut tasks = tokio::task::JoinSet::new();
        for t in updates {
            let this = Arc::clone(&self);
            tasks.spawn(async move {
                let (mut hot, mut ambiguous) = (false, false);
                let end = this
                    .update(
                        &t.key,
                        &t.write,
                        &mut hot,
                        &mut ambiguous,
                        t.since.elapsed(),
                    )
                    .await;
                (t.key, end, hot, ambiguous)
            });
        }
        let mut hot_keys = HashSet::new();
        let mut ambiguous_keys = HashSet::new();
        let mut results: Vec<(Key, KeyEnd, bool, bool)> = if batchable.is_empty() {
            Vec::new()
        } else {
            let ages: HashMap<Key, Duration> = batchable
                .iter()
                .map(|t| (t.key.clone(), t.since.elapsed()))
                .collect();
            self.batch(
                batchable.into_iter().map(|t| (t.key, t.write)).collect(),
                &mut hot_keys,
                &mut ambiguous_keys,
                &ages,
            )
            .await
            .into_iter()
            .map(|(key, end)| {
                let (hot, ambiguous) = (hot_keys.contains(&key), ambiguous_keys.contains(&key));
                (key, end, hot, ambiguous)
            })
            .collect()
        };
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                // The update task panicked: a bug, not input. Its key must still be released,
                // but we no longer know it here; the shard treats missing keys as dropped.
                Err(e) => error!(error = %e, "update task failed"),
            }
        }
        let mut completed: Vec<Completed> = results
            .into_iter()
            .map(|(key, end, hot, ambiguous)| {
                let (since, seqs) = since
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| (Instant::now(), Default::default()));
                Completed {
                    since,
                    key,
                    seqs,
                    hot,
                    ambiguous,
                    end,
                }
            })
            .collect();
        // Keys whose task died are reported as dropped so the shard releases them.
        let seen: HashSet<&Key> = completed.iter().map(|c| &c.key).collect();
        let lost: Vec<Completed> = since
            .iter()
            .filter(|(k, _)| !seen.contains(k))
            .map(|(k, (since, seqs))| Completed {
                key: k.clone(),
                since: *since,
                seqs: *seqs,
                hot: false,
                ambiguous: true,
                end: KeyEnd::Dropped,
            })
            .collect();
        if !lost.is_empty() {
            self.stats
                .dropped(DropReason::RetriesExhausted, lost.len() as u64);
        }
        completed.extend(lost);
        completed
    }

    fn write_request(key: &Key, write: &Write) -> WriteRequest {
        let builder = WriteRequest::builder();
        match write {
            Write::Put { item, .. } => builder.put_request(
                PutRequest::builder()
                    .set_item(Some(dynamo::to_attrs(item)))
                    .build()
                    .expect("item is set"),
            ),
            _ => builder.delete_request(
                DeleteRequest::builder()
                    .set_key(Some(dynamo::key_attrs(key)))
                    .build()
                    .expect("key is set"),
            ),
        }
        .build()
    }

    fn request_key(&self, table_name: &str, req: &WriteRequest) -> Option<Key> {
        let table = self.tables.table(table_name)?;
        if let Some(put) = req.put_request() {
            dynamo::key_of_attrs(table, put.item())
        } else {
            req.delete_request()
                .and_then(|d| dynamo::key_of_attrs(table, d.key()))
        }
    }

    /// Says, at most once a second, that DynamoDB refused the credentials and what happens now.
    fn credentials_refused(&self, op: Operation, code: &str, message: &str) {
        if let Some(held) = AUTH_LOG.allow() {
            error!(
                operation = op.as_str(),
                %code,
                %message,
                held_back = held,
                retry_every_s = self.policy.max_backoff.as_secs_f64(),
                give_up_after_s = (!self.policy.spooled).then_some(self.policy.max_elapsed.as_secs_f64()),
                "DynamoDB refused the credentials; writes wait and retry, then go to the dead-letter file. Check [dynamodb] access_key_id / secret_access_key or the AWS credential chain"
            );
        }
    }

    /// One BatchWriteItem of ≤ 25 puts/deletes on distinct keys, retried until done. Keys
    /// DynamoDB returned as UnprocessedItems are added to `hot`; the policy decides whether they
    /// are handed back instead of retried (`ages`: each write's age, for that decision).
    async fn batch(
        &self,
        writes: Vec<(Key, Write)>,
        hot: &mut HashSet<Key>,
        ambiguous: &mut HashSet<Key>,
        ages: &HashMap<Key, Duration>,
    ) -> Vec<(Key, KeyEnd)> {
        let mut pending: Vec<(Key, WriteRequest)> = writes
            .iter()
            .map(|(k, w)| (k.clone(), Self::write_request(k, w)))
            .collect();
        let write_of = |key: &Key| writes.iter().find(|(k, _)| k == key).map(|(_, w)| w);
        let mut done = Vec::with_capacity(pending.len());
        let started = Instant::now();
        let mut attempt = 0u32;
        // What went wrong last, for the dead-letter record if the writes are given up.
        let mut last_error: String;
        while !pending.is_empty() {
            let mut request: HashMap<String, Vec<WriteRequest>> = HashMap::new();
            for (key, req) in &pending {
                request
                    .entry(self.tables.name(key.table).to_string())
                    .or_default()
                    .push(req.clone());
            }
            let t0 = Instant::now();
            let in_flight = InFlight::start();
            let sent = self
                .send_or_stop(
                    self.client
                        .batch_write_item()
                        .set_request_items(Some(request))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send(),
                )
                .await;
            drop(in_flight);
            let elapsed = t0.elapsed();
            // How this attempt failed, for the retry decision of what is still pending.
            let failed = match sent {
                None => {
                    // Abandoned at the shutdown deadline: it may have been applied.
                    last_error = "request abandoned at the shutdown deadline".into();
                    ambiguous.extend(pending.iter().map(|(k, _)| k.clone()));
                    Failed::Transient
                }
                Some(Ok(out)) => {
                    for cc in out.consumed_capacity() {
                        if let (Some(name), Some(units)) = (cc.table_name(), cc.capacity_units())
                            && let Some(table) = self.tables.table(name)
                        {
                            self.stats.consumed(table, units);
                        }
                    }
                    let unprocessed: HashSet<Key> = out
                        .unprocessed_items()
                        .into_iter()
                        .flatten()
                        .flat_map(|(name, reqs)| {
                            reqs.iter().filter_map(|r| self.request_key(name, r))
                        })
                        .collect();
                    let outcome = if unprocessed.is_empty() {
                        self.concurrency.success(elapsed);
                        Outcome::Success
                    } else {
                        self.concurrency.backoff();
                        Outcome::Partial
                    };
                    self.stats
                        .request(Operation::BatchWriteItem, outcome, elapsed);
                    let (rest, written): (Vec<_>, Vec<_>) = pending
                        .into_iter()
                        .partition(|(k, _)| unprocessed.contains(k));
                    let mut per_table: HashMap<Table, u64> = HashMap::new();
                    for (key, _) in written {
                        *per_table.entry(key.table).or_default() += 1;
                        done.push((key, KeyEnd::Written));
                    }
                    for (table, n) in per_table {
                        self.stats.written(table, n);
                    }
                    pending = rest;
                    if pending.is_empty() {
                        break;
                    }
                    self.stats.unprocessed(pending.len() as u64);
                    last_error = "returned as UnprocessedItems".into();
                    hot.extend(pending.iter().map(|(k, _)| k.clone()));
                    Failed::Throttled { own_key: true }
                }
                Some(Err(err)) => match dynamo::classify(&err) {
                    Failure::Throttled { code } => {
                        last_error = code.to_string();
                        self.concurrency.backoff();
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Throttled, elapsed);
                        self.stats.throttled(code);
                        dynamo::record_throttling_reasons(dynamo::batch_throttling_reasons(&err));
                        Failed::Throttled { own_key: false }
                    }
                    Failure::Invalid { message } => {
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Rejected, elapsed);
                        if pending.len() > 1 {
                            // Find the poison: every write alone.
                            warn!(requests = pending.len(), %message, "BatchWriteItem rejected; resending its writes one by one");
                            for (key, _) in std::mem::take(&mut pending) {
                                if let Some(w) = write_of(&key) {
                                    let was_ambiguous = ambiguous.contains(&key);
                                    let single = Box::pin(self.batch(
                                        vec![(key.clone(), w.clone())],
                                        hot,
                                        ambiguous,
                                        ages,
                                    ))
                                    .await;
                                    done.extend(single.into_iter().map(|(k, end)| {
                                        (k, Self::carry_doubt(end, was_ambiguous))
                                    }));
                                }
                            }
                        } else {
                            for (key, _) in std::mem::take(&mut pending) {
                                if let Some(held) = DROP_LOG.allow() {
                                    error!(held_back = held, table = %key.table, %message, "DynamoDB rejected a write; dropped");
                                }
                                match write_of(&key) {
                                    Some(w) => {
                                        self.give_up(&key, w, DropReason::Rejected, &message)
                                    }
                                    None => self.stats.dropped(DropReason::Rejected, 1),
                                }
                                done.push((key, KeyEnd::Dropped));
                            }
                        }
                        break;
                    }
                    Failure::Transient { code, message } => {
                        last_error = format!("{code}: {message}");
                        ambiguous.extend(pending.iter().map(|(k, _)| k.clone()));
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Error, elapsed);
                        if let Some(held) = RETRY_LOG.allow() {
                            warn!(%code, %message, attempt, held_back = held, "BatchWriteItem failed; retrying");
                        }
                        Failed::Transient
                    }
                    Failure::ConditionFailed => {
                        // BatchWriteItem carries no conditions; treat it like any other error.
                        last_error = "unexpected ConditionalCheckFailed".into();
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Error, elapsed);
                        Failed::Transient
                    }
                    Failure::Credentials { code, message } => {
                        last_error = format!("{code}: {message}");
                        self.stats.request(
                            Operation::BatchWriteItem,
                            Outcome::Unauthorized,
                            elapsed,
                        );
                        self.credentials_refused(Operation::BatchWriteItem, &code, &message);
                        Failed::Credentials
                    }
                },
            };
            // Writes DynamoDB throttled on their own key go back to their shard (their ages
            // differ, so each is asked); the rest share one decision below.
            if !self.deadline.passed() {
                let age_of = |k: &Key| ages.get(k).copied().unwrap_or_default();
                let (back, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut pending)
                    .into_iter()
                    .partition(|(k, _)| self.policy.hands_back(failed, age_of(k)));
                for (key, _) in back {
                    if let Some(w) = write_of(&key) {
                        let mut w = w.clone();
                        if ambiguous.contains(&key) {
                            w.maybe_applied();
                        }
                        done.push((key, KeyEnd::Requeue(w)));
                    }
                }
                pending = keep;
            }
            if pending.is_empty() {
                break;
            }
            // The pause (with jitter), cut short by the shutdown deadline.
            let age = pending
                .iter()
                .filter_map(|(k, _)| ages.get(k))
                .min()
                .copied()
                .unwrap_or_default();
            match self
                .after_failure(Operation::BatchWriteItem, failed, attempt, started, age)
                .await
            {
                // (Writes to hand back left the batch above.)
                Decision::RetryAfter(_) | Decision::HandBack => {}
                Decision::GiveUp(reason) => {
                    for (key, _) in pending.drain(..) {
                        self.give_up_pending(&key, write_of(&key), reason, started, &last_error);
                        done.push((key, KeyEnd::Dropped));
                    }
                }
                Decision::Leave => {
                    done.extend(pending.drain(..).map(|(key, _)| (key, KeyEnd::Left)));
                }
            }
            attempt += 1;
        }
        done
    }

    /// A hand-back from a nested send keeps the doubt of the attempts before it.
    fn carry_doubt(end: KeyEnd, ambiguous: bool) -> KeyEnd {
        match end {
            KeyEnd::Requeue(mut w) if ambiguous => {
                w.maybe_applied();
                KeyEnd::Requeue(w)
            }
            other => other,
        }
    }

    /// Gives up one pending write of a batch: logged (rate limited), counted, dead-lettered.
    fn give_up_pending(
        &self,
        key: &Key,
        write: Option<&Write>,
        reason: DropReason,
        started: Instant,
        last_error: &str,
    ) {
        let why = Self::give_up_text(reason, started, last_error);
        if let Some(held) = DROP_LOG.allow() {
            error!(held_back = held, table = %key.table, reason = reason.as_str(), %why, "write given up");
        }
        match write {
            Some(w) => self.give_up(key, w, reason, &why),
            None => self.stats.dropped(reason, 1),
        }
    }

    fn update_specs(key: &Key, write: &Write) -> Vec<UpdateSpec> {
        match write {
            Write::Update { set, guard } => {
                let mut names = HashMap::new();
                let mut values = HashMap::new();
                let mut parts = Vec::new();
                for (i, (attr, value)) in set.iter().enumerate() {
                    names.insert(format!("#a{i}"), attr.clone());
                    values.insert(format!(":a{i}"), dynamo::to_attr(value));
                    parts.push(format!("#a{i} = :a{i}"));
                }
                let condition = guard.as_ref().map(|(attr, value)| {
                    names.insert("#g".into(), attr.clone());
                    values.insert(":g".into(), dynamo::to_attr(value));
                    "#g = :g".to_string()
                });
                vec![UpdateSpec {
                    adds_to: None,
                    members: None,
                    expression: format!("SET {}", parts.join(", ")),
                    condition,
                    names,
                    values,
                }]
            }
            Write::SetDelta { attr, add, del, .. } => {
                let mut specs = Vec::new();
                for chunk in crate::storage::item::split_set(add) {
                    specs.push(UpdateSpec {
                        adds_to: (key.table == Table::TopicMsgMap).then(|| attr.clone()),
                        expression: "ADD #s :m".into(),
                        condition: None,
                        names: [("#s".to_string(), attr.clone())].into(),
                        values: [(":m".to_string(), dynamo::to_attr(&Value::Ss(chunk.clone())))]
                            .into(),
                        members: Some((true, chunk)),
                    });
                }
                for chunk in crate::storage::item::split_set(del) {
                    // Never create an item just to delete from it.
                    specs.push(UpdateSpec {
                        adds_to: None,
                        expression: "DELETE #s :m".into(),
                        condition: Some("attribute_exists(#k)".into()),
                        names: [
                            ("#s".to_string(), attr.clone()),
                            ("#k".to_string(), key.table.key_names().0.to_string()),
                        ]
                        .into(),
                        values: [(":m".to_string(), dynamo::to_attr(&Value::Ss(chunk.clone())))]
                            .into(),
                        members: Some((false, chunk)),
                    });
                }
                specs
            }
            // Puts and deletes go through BatchWriteItem.
            _ => Vec::new(),
        }
    }

    /// The UpdateItem(s) of one write, in order, each retried until done. Sets `hot` when
    /// DynamoDB throttled the key itself; the policy decides whether such a throttle hands what
    /// is left of the write back instead of retrying it (`age`: the write's age).
    /// `ambiguous` is set once an attempt of it ended ambiguously (it may have been applied).
    async fn update(
        &self,
        key: &Key,
        write: &Write,
        hot: &mut bool,
        ambiguous: &mut bool,
        age: Duration,
    ) -> KeyEnd {
        let specs = Self::update_specs(key, write);
        for (i, spec) in specs.iter().enumerate() {
            match self.update_one(key, write, spec, hot, age, ambiguous).await {
                SpecEnd::Done => {}
                SpecEnd::Dropped => return KeyEnd::Dropped,
                SpecEnd::Left => return KeyEnd::Left,
                SpecEnd::HotThrottled => {
                    let mut rest = Self::remainder(write, &specs[i..]);
                    if *ambiguous {
                        rest.maybe_applied();
                    }
                    return KeyEnd::Requeue(rest);
                }
            }
        }
        KeyEnd::Written
    }

    /// What is left of `write` when only the UpdateItems `rest` are still to go: for a set
    /// delta, the members those requests carry (ADD chunks go first, then DELETE chunks).
    fn remainder(write: &Write, rest: &[UpdateSpec]) -> Write {
        match write {
            Write::SetDelta { attr, fresh, .. } => {
                let (mut add, mut del) = (
                    std::collections::BTreeSet::new(),
                    std::collections::BTreeSet::new(),
                );
                for spec in rest {
                    if let Some((adds, members)) = &spec.members {
                        if *adds { &mut add } else { &mut del }.extend(members.iter().cloned());
                    }
                }
                Write::SetDelta {
                    attr: attr.clone(),
                    add,
                    del,
                    fresh: *fresh,
                }
            }
            other => other.clone(),
        }
    }

    async fn update_one(
        &self,
        key: &Key,
        write: &Write,
        spec: &UpdateSpec,
        hot: &mut bool,
        age: Duration,
        ambiguous: &mut bool,
    ) -> SpecEnd {
        let started = Instant::now();
        let mut attempt = 0u32;
        // Set by every failure that leads to a retry; read if the write is given up.
        let mut last_error: String;
        // The set was trimmed after DynamoDB refused it as too large (once per write).
        let mut trimmed = false;
        loop {
            let t0 = Instant::now();
            let in_flight = InFlight::start();
            let sent = self
                .send_or_stop(
                    self.client
                        .update_item()
                        .table_name(self.tables.name(key.table))
                        .set_key(Some(dynamo::key_attrs(key)))
                        .update_expression(&spec.expression)
                        .set_condition_expression(spec.condition.clone())
                        .set_expression_attribute_names(Some(spec.names.clone()))
                        .set_expression_attribute_values(Some(spec.values.clone()))
                        .return_consumed_capacity(ReturnConsumedCapacity::Total)
                        .send(),
                )
                .await;
            drop(in_flight);
            let elapsed: Duration = t0.elapsed();
            let failed = match sent {
                None => {
                    last_error = "request abandoned at the shutdown deadline".into();
                    *ambiguous = true;
                    Failed::Transient
                }
                Some(Ok(out)) => {
                    self.concurrency.success(elapsed);
                    self.stats
                        .request(Operation::UpdateItem, Outcome::Success, elapsed);
                    let units = out.consumed_capacity().and_then(|c| c.capacity_units());
                    if let Some(units) = units {
                        self.stats.consumed(key.table, units);
                    }
                    self.stats.written(key.table, 1);
                    // An update costs the larger of the item before and after, in KB: the set
                    // item's size, without reading it.
                    let cap = self.msgid_cap;
                    if let (Some(attr), Some(units)) = (spec.adds_to.as_deref(), units)
                        && cap > 0
                        && units * 1024.0 > cap as f64
                    {
                        self.trim_set(key, attr, cap * 3 / 4).await;
                    }
                    return SpecEnd::Done;
                }
                Some(Err(err)) => match dynamo::classify(&err) {
                    Failure::ConditionFailed => {
                        self.stats.request(
                            Operation::UpdateItem,
                            Outcome::ConditionFailed,
                            elapsed,
                        );
                        return SpecEnd::Done;
                    }
                    Failure::Throttled { code } => {
                        last_error = code.to_string();
                        self.concurrency.backoff();
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Throttled, elapsed);
                        self.stats.throttled(code);
                        let reasons = dynamo::update_throttling_reasons(&err);
                        dynamo::record_throttling_reasons(reasons);
                        // Without reasons (older DynamoDB, emulators) a throttled single-key
                        // request is taken as a hot key; with them, only a key range is.
                        let key_throttled = reasons.is_empty() || dynamo::names_key_range(reasons);
                        *hot |= key_throttled;
                        Failed::Throttled {
                            own_key: key_throttled,
                        }
                    }
                    Failure::Invalid { message }
                        if !trimmed
                            && spec.adds_to.is_some()
                            && message.contains("Item size to update has exceeded") =>
                    {
                        // The set reached DynamoDB's 400 KB: make room, then add again.
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Rejected, elapsed);
                        let cap = match self.msgid_cap {
                            0 => crate::storage::item::MAX_ITEM_BYTES,
                            c => c.min(crate::storage::item::MAX_ITEM_BYTES),
                        };
                        let attr = spec.adds_to.clone().unwrap_or_default();
                        self.trim_set(key, &attr, cap * 3 / 4).await;
                        trimmed = true;
                        continue;
                    }
                    Failure::Invalid { message } => {
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Rejected, elapsed);
                        if let Some(held) = DROP_LOG.allow() {
                            error!(held_back = held, table = %key.table, %message, "DynamoDB rejected an update; dropped");
                        }
                        self.give_up(key, write, DropReason::Rejected, &message);
                        return SpecEnd::Dropped;
                    }
                    Failure::Transient { code, message } => {
                        last_error = format!("{code}: {message}");
                        *ambiguous = true;
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Error, elapsed);
                        if let Some(held) = RETRY_LOG.allow() {
                            warn!(%code, %message, attempt, held_back = held, table = %key.table, "UpdateItem failed; retrying");
                        }
                        Failed::Transient
                    }
                    Failure::Credentials { code, message } => {
                        last_error = format!("{code}: {message}");
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Unauthorized, elapsed);
                        self.credentials_refused(Operation::UpdateItem, &code, &message);
                        Failed::Credentials
                    }
                },
            };
            match self
                .after_failure(Operation::UpdateItem, failed, attempt, started, age)
                .await
            {
                Decision::RetryAfter(_) => {}
                Decision::HandBack => return SpecEnd::HotThrottled,
                Decision::Leave => return SpecEnd::Left,
                Decision::GiveUp(reason) => {
                    let why = Self::give_up_text(reason, started, &last_error);
                    if let Some(held) = DROP_LOG.allow() {
                        error!(held_back = held, table = %key.table, reason = reason.as_str(), %why, "update given up");
                    }
                    self.give_up(key, write, reason, &why);
                    return SpecEnd::Dropped;
                }
            }
            attempt += 1;
        }
    }
}
