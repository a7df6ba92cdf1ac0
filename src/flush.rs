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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, ReturnConsumedCapacity, WriteRequest,
};
use tracing::{error, warn};

use crate::coalesce::Taken;
use crate::config::{DynamoConfig, RetryConfig};
use crate::dynamo::{self, Failure};
use crate::item::{Key, Table, Value, Write};
use crate::stats::{DropReason, LogGate, Operation, Outcome, Stats};

/// Rate limits for the flusher's warnings and errors: an outage must not flood the log.
static RETRY_LOG: LogGate = LogGate::new();
static AUTH_LOG: LogGate = LogGate::new();
static TRIM_LOG: LogGate = LogGate::new();
static DROP_LOG: LogGate = LogGate::new();

/// Counts a DynamoDB request in the in-flight gauge while it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("mqtt_dynamo_dynamodb_in_flight_requests").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("mqtt_dynamo_dynamodb_in_flight_requests").decrement(1.0);
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
    /// Written (or a guarded no-op); false when it was dropped (counted and logged).
    pub durable: bool,
    /// The ops folded into the write (for [`crate::lookup::ReadState::settled`]).
    pub seqs: crate::coalesce::Seqs,
    /// DynamoDB throttled this key itself (UnprocessedItems, or a throttled UpdateItem whose
    /// ThrottlingReasons, when present, name a key range rather than table capacity).
    pub hot: bool,
    /// What is left of the write when it was handed back instead of retried (a hot key, with
    /// `hot_key_window` on): the shard puts it back ahead of the key's newer ops, which merge
    /// into it during the key's window. Not durable, not dropped.
    pub requeue: Option<Write>,
}

/// How one key's write ended in a flush.
#[derive(Debug)]
enum KeyEnd {
    /// Written, or a guarded update that did its job by doing nothing.
    Written,
    /// Given up: counted, logged, dead-lettered.
    Dropped,
    /// Throttled on its own key: handed back to the shard (what is left of it).
    Requeue(Write),
}

/// How one UpdateItem of a write ended.
#[derive(Debug)]
enum SpecEnd {
    Done,
    Dropped,
    /// Throttled on its own key, and the write may be handed back.
    HotThrottled,
}

/// Sends flushes. Shared by every shard; holds no per-flush state.
#[derive(Debug)]
pub struct Flusher {
    client: Client,
    tables: TableNames,
    retry: RetryConfig,
    stats: Arc<Stats>,
    /// Where given-up writes are recorded.
    dead_letters: crate::deadletter::DeadLetters,
    /// `storage.max_msgid_set_kb` in bytes (0: no cap).
    msgid_cap: usize,
    /// Told how each request went, so the limit on flushes in flight adapts.
    concurrency: Arc<crate::concurrency::Concurrency>,
    /// Hand writes of keys DynamoDB throttles back to their shard instead of retrying them here
    /// (`pipeline.hot_key_window` > 0).
    requeue_hot: bool,
}

/// One UpdateItem, ready to send (and resend).
#[derive(Debug, Clone)]
struct UpdateSpec {
    /// The set attribute this ADDs to (for the size cap), if it is a set ADD.
    adds_to: Option<String>,
    expression: String,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Flusher {
    pub fn new(
        concurrency: Arc<crate::concurrency::Concurrency>,
        client: Client,
        tables: TableNames,
        retry: RetryConfig,
        stats: Arc<Stats>,
        dead_letters: crate::deadletter::DeadLetters,
        msgid_cap: usize,
    ) -> Self {
        Flusher {
            client,
            tables,
            retry,
            stats,
            dead_letters,
            msgid_cap,
            concurrency,
            requeue_hot: false,
        }
    }

    /// Hands throttled hot keys' writes back to their shard instead of retrying them.
    pub fn with_hot_key_requeue(mut self, on: bool) -> Self {
        self.requeue_hot = on;
        self
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
    fn give_up(&self, key: &Key, write: &Write, reason: DropReason, error_text: &str) {
        self.stats.dropped(reason, 1);
        self.dead_letters
            .record(self.tables.name(key.table), key, write, reason, error_text);
    }

    /// Sends `writes` (one per key) and reports how each ended.
    pub async fn flush(self: Arc<Self>, writes: Vec<Taken>) -> Vec<Completed> {
        let since: HashMap<Key, (Instant, crate::coalesce::Seqs)> = writes
            .iter()
            .map(|t| (t.key.clone(), (t.since, t.seqs)))
            .collect();
        // A write may be handed back only while it is young enough that its retry deadline
        // (measured from its oldest op) has not passed; older ones retry here until it does.
        let requeue_ok = |t: &Taken| self.requeue_hot && t.since.elapsed() < self.retry.max_elapsed;
        let (batchable, updates): (Vec<Taken>, Vec<Taken>) =
            writes.into_iter().partition(|t| t.write.is_batchable());
        let mut tasks = tokio::task::JoinSet::new();
        for t in updates {
            let this = Arc::clone(&self);
            let may_requeue = requeue_ok(&t);
            tasks.spawn(async move {
                let mut hot = false;
                let end = this.update(&t.key, &t.write, &mut hot, may_requeue).await;
                (t.key, end, hot)
            });
        }
        let mut hot_keys = HashSet::new();
        let may_requeue: HashSet<Key> = batchable
            .iter()
            .filter(|t| requeue_ok(t))
            .map(|t| t.key.clone())
            .collect();
        let mut results: Vec<(Key, KeyEnd, bool)> = if batchable.is_empty() {
            Vec::new()
        } else {
            self.batch(
                batchable.into_iter().map(|t| (t.key, t.write)).collect(),
                &mut hot_keys,
                &may_requeue,
            )
            .await
            .into_iter()
            .map(|(key, end)| {
                let hot = hot_keys.contains(&key);
                (key, end, hot)
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
            .map(|(key, end, hot)| {
                let (since, seqs) = since
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| (Instant::now(), Default::default()));
                let (durable, requeue) = match end {
                    KeyEnd::Written => (true, None),
                    KeyEnd::Dropped => (false, None),
                    KeyEnd::Requeue(w) => (false, Some(w)),
                };
                Completed {
                    since,
                    key,
                    durable,
                    seqs,
                    hot,
                    requeue,
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
                durable: false,
                seqs: *seqs,
                hot: false,
                requeue: None,
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

    /// Waits before the next attempt, or reports that the budget is spent.
    async fn pause(&self, op: Operation, attempt: u32, started: Instant, longest: bool) -> bool {
        if started.elapsed() >= self.retry.max_elapsed {
            return false;
        }
        self.stats.retried(op);
        // Refused credentials do not heal in milliseconds: wait the longest backoff.
        let wait = if longest {
            self.retry.max_backoff
        } else {
            dynamo::backoff(attempt, self.retry.initial_backoff, self.retry.max_backoff)
        };
        tokio::time::sleep(wait).await;
        true
    }

    /// Says, at most once a second, that DynamoDB refused the credentials and what happens now.
    fn credentials_refused(&self, op: Operation, code: &str, message: &str) {
        if let Some(held) = AUTH_LOG.allow() {
            error!(
                operation = op.as_str(),
                %code,
                %message,
                held_back = held,
                retry_every_s = self.retry.max_backoff.as_secs_f64(),
                give_up_after_s = self.retry.max_elapsed.as_secs_f64(),
                "DynamoDB refused the credentials; writes wait and retry, then go to the dead-letter file. Check [dynamodb] access_key_id / secret_access_key or the AWS credential chain"
            );
        }
    }

    /// One BatchWriteItem of ≤ 25 puts/deletes on distinct keys, retried until done. Keys
    /// DynamoDB returned as UnprocessedItems are added to `hot`; those in `may_requeue` are
    /// handed back instead of retried.
    async fn batch(
        &self,
        writes: Vec<(Key, Write)>,
        hot: &mut HashSet<Key>,
        may_requeue: &HashSet<Key>,
    ) -> Vec<(Key, KeyEnd)> {
        let mut pending: Vec<(Key, WriteRequest)> = writes
            .iter()
            .map(|(k, w)| (k.clone(), Self::write_request(k, w)))
            .collect();
        let mut done = Vec::with_capacity(pending.len());
        let started = Instant::now();
        let mut attempt = 0u32;
        // What went wrong last, for the dead-letter record if the retries run out.
        let mut last_error = String::new();
        while !pending.is_empty() {
            let mut refused = false;
            let mut request: HashMap<String, Vec<WriteRequest>> = HashMap::new();
            for (key, req) in &pending {
                request
                    .entry(self.tables.name(key.table).to_string())
                    .or_default()
                    .push(req.clone());
            }
            let t0 = Instant::now();
            let in_flight = InFlight::start();
            let result = self
                .client
                .batch_write_item()
                .set_request_items(Some(request))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            drop(in_flight);
            let elapsed = t0.elapsed();
            match result {
                Ok(out) => {
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
                    if !rest.is_empty() {
                        self.stats.unprocessed(rest.len() as u64);
                        last_error = "returned as UnprocessedItems".into();
                        hot.extend(rest.iter().map(|(k, _)| k.clone()));
                    }
                    let (back, rest): (Vec<_>, Vec<_>) =
                        rest.into_iter().partition(|(k, _)| may_requeue.contains(k));
                    for (key, _) in back {
                        if let Some((_, w)) = writes.iter().find(|(k, _)| *k == key) {
                            done.push((key, KeyEnd::Requeue(w.clone())));
                        }
                    }
                    pending = rest;
                }
                Err(err) => match dynamo::classify(&err) {
                    Failure::Throttled { code } => {
                        last_error = code.to_string();
                        self.concurrency.backoff();
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Throttled, elapsed);
                        self.stats.throttled(code);
                        dynamo::record_throttling_reasons(dynamo::batch_throttling_reasons(&err));
                    }
                    Failure::Invalid { message } => {
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Rejected, elapsed);
                        if pending.len() > 1 {
                            // Find the poison: every write alone.
                            warn!(requests = pending.len(), %message, "BatchWriteItem rejected; resending its writes one by one");
                            let by_key: HashMap<Key, Write> = writes.iter().cloned().collect();
                            for (key, _) in std::mem::take(&mut pending) {
                                if let Some(w) = by_key.get(&key) {
                                    let single = Box::pin(self.batch(
                                        vec![(key.clone(), w.clone())],
                                        hot,
                                        may_requeue,
                                    ))
                                    .await;
                                    done.extend(single);
                                }
                            }
                        } else {
                            for (key, _) in std::mem::take(&mut pending) {
                                if let Some(held) = DROP_LOG.allow() {
                                    error!(held_back = held, table = %key.table, %message, "DynamoDB rejected a write; dropped");
                                }
                                match writes.iter().find(|(k, _)| *k == key) {
                                    Some((_, w)) => {
                                        self.give_up(&key, w, DropReason::Rejected, &message)
                                    }
                                    None => self.stats.dropped(DropReason::Rejected, 1),
                                }
                                done.push((key, KeyEnd::Dropped));
                            }
                        }
                        continue;
                    }
                    Failure::Transient { code, message } => {
                        last_error = format!("{code}: {message}");
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Error, elapsed);
                        if let Some(held) = RETRY_LOG.allow() {
                            warn!(%code, %message, attempt, held_back = held, "BatchWriteItem failed; retrying");
                        }
                    }
                    Failure::ConditionFailed => {
                        self.stats
                            .request(Operation::BatchWriteItem, Outcome::Error, elapsed);
                    }
                    Failure::Credentials { code, message } => {
                        last_error = format!("{code}: {message}");
                        self.stats.request(
                            Operation::BatchWriteItem,
                            Outcome::Unauthorized,
                            elapsed,
                        );
                        self.credentials_refused(Operation::BatchWriteItem, &code, &message);
                        refused = true;
                    }
                },
            }
            if !pending.is_empty() {
                if !self
                    .pause(Operation::BatchWriteItem, attempt, started, refused)
                    .await
                {
                    if let Some(held) = DROP_LOG.allow() {
                        error!(
                            held_back = held,
                            writes = pending.len(),
                            elapsed_s = started.elapsed().as_secs_f64(),
                            "BatchWriteItem retries exhausted; writes dropped"
                        );
                    }
                    let why = format!(
                        "retries exhausted after {:.1} s; last: {last_error}",
                        started.elapsed().as_secs_f64()
                    );
                    for (key, _) in pending.drain(..) {
                        match writes.iter().find(|(k, _)| *k == key) {
                            Some((_, w)) => {
                                self.give_up(&key, w, DropReason::RetriesExhausted, &why)
                            }
                            None => self.stats.dropped(DropReason::RetriesExhausted, 1),
                        }
                        done.push((key, KeyEnd::Dropped));
                    }
                }
                attempt += 1;
            }
        }
        done
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
                    expression: format!("SET {}", parts.join(", ")),
                    condition,
                    names,
                    values,
                }]
            }
            Write::SetDelta { attr, add, del } => {
                let mut specs = Vec::new();
                if !add.is_empty() {
                    specs.push(UpdateSpec {
                        adds_to: (key.table == Table::TopicMsgMap).then(|| attr.clone()),
                        expression: "ADD #s :m".into(),
                        condition: None,
                        names: [("#s".to_string(), attr.clone())].into(),
                        values: [(":m".to_string(), dynamo::to_attr(&Value::Ss(add.clone())))]
                            .into(),
                    });
                }
                if !del.is_empty() {
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
                        values: [(":m".to_string(), dynamo::to_attr(&Value::Ss(del.clone())))]
                            .into(),
                    });
                }
                specs
            }
            // Puts and deletes go through BatchWriteItem.
            _ => Vec::new(),
        }
    }

    /// The UpdateItem(s) of one write, in order, each retried until done. Sets `hot` when
    /// DynamoDB throttled the key itself; with `may_requeue`, such a throttle hands what is left
    /// of the write back instead of retrying it.
    async fn update(&self, key: &Key, write: &Write, hot: &mut bool, may_requeue: bool) -> KeyEnd {
        for (i, spec) in Self::update_specs(key, write).iter().enumerate() {
            match self.update_one(key, write, spec, hot, may_requeue).await {
                SpecEnd::Done => {}
                SpecEnd::Dropped => return KeyEnd::Dropped,
                SpecEnd::HotThrottled => return KeyEnd::Requeue(Self::remainder(write, i)),
            }
        }
        KeyEnd::Written
    }

    /// What is left of `write` when its UpdateItems before number `done` went through: a set
    /// delta's ADD goes first, so after it only the DELETE is left.
    fn remainder(write: &Write, done: usize) -> Write {
        match write {
            Write::SetDelta { attr, add, del } if done > 0 && !add.is_empty() => Write::SetDelta {
                attr: attr.clone(),
                add: Default::default(),
                del: del.clone(),
            },
            other => other.clone(),
        }
    }

    async fn update_one(
        &self,
        key: &Key,
        write: &Write,
        spec: &UpdateSpec,
        hot: &mut bool,
        may_requeue: bool,
    ) -> SpecEnd {
        let started = Instant::now();
        let mut attempt = 0u32;
        // Set by every failure that leads to a retry; read if the retries run out.
        let mut last_error: String;
        // The set was trimmed after DynamoDB refused it as too large (once per write).
        let mut trimmed = false;
        loop {
            let mut refused = false;
            let t0 = Instant::now();
            let in_flight = InFlight::start();
            let result = self
                .client
                .update_item()
                .table_name(self.tables.name(key.table))
                .set_key(Some(dynamo::key_attrs(key)))
                .update_expression(&spec.expression)
                .set_condition_expression(spec.condition.clone())
                .set_expression_attribute_names(Some(spec.names.clone()))
                .set_expression_attribute_values(Some(spec.values.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            drop(in_flight);
            let elapsed: Duration = t0.elapsed();
            match result {
                Ok(out) => {
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
                Err(err) => match dynamo::classify(&err) {
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
                        if key_throttled && may_requeue {
                            return SpecEnd::HotThrottled;
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
                            0 => crate::item::MAX_ITEM_BYTES,
                            c => c.min(crate::item::MAX_ITEM_BYTES),
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
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Error, elapsed);
                        if let Some(held) = RETRY_LOG.allow() {
                            warn!(%code, %message, attempt, held_back = held, table = %key.table, "UpdateItem failed; retrying");
                        }
                    }
                    Failure::Credentials { code, message } => {
                        last_error = format!("{code}: {message}");
                        self.stats
                            .request(Operation::UpdateItem, Outcome::Unauthorized, elapsed);
                        self.credentials_refused(Operation::UpdateItem, &code, &message);
                        refused = true;
                    }
                },
            }
            if !self
                .pause(Operation::UpdateItem, attempt, started, refused)
                .await
            {
                if let Some(held) = DROP_LOG.allow() {
                    error!(held_back = held, table = %key.table, elapsed_s = started.elapsed().as_secs_f64(), "UpdateItem retries exhausted; write dropped");
                }
                let why = format!(
                    "retries exhausted after {:.1} s; last: {last_error}",
                    started.elapsed().as_secs_f64()
                );
                self.give_up(key, write, DropReason::RetriesExhausted, &why);
                return SpecEnd::Dropped;
            }
            attempt += 1;
        }
    }
}
