//! The one retry loop: sends a request (BatchWriteItem or UpdateItem, see [`Request`]) until
//! every write it carries has an end, and records what each attempt came back with in one place
//! ([`Flusher::record`]: stats, the AIMD limit, the rate-limited logs). What happens after a
//! failure is [`super::retry::RetryPolicy::decide`]; this only carries it out.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::types::ThrottlingReason;
use tokio::time::Instant;
use tracing::{error, warn};

use super::Flusher;
use super::retry::{Decision, Failed};
use crate::storage::dynamo;
use crate::storage::item::{Key, Table, Write};
use crate::telemetry::stats::{DropReason, LogGate, Operation, Outcome};

/// Rate limits for the flusher's warnings and errors: an outage must not flood the log.
static RETRY_LOG: LogGate = LogGate::new();
static AUTH_LOG: LogGate = LogGate::new();
static DROP_LOG: LogGate = LogGate::new();

/// Counts a request in the in-flight gauge while it lives.
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

/// One write a request carries, by key, with what its attempts have said so far (these travel
/// with the write through poison isolation and from one UpdateItem of it to the next).
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub key: Key,
    /// The write's age when the flush started (for the hand-back decision).
    pub age: Duration,
    /// DynamoDB throttled the key itself in some attempt (UnprocessedItems, a key-range
    /// ThrottlingReason or none): the shard's hot-key window for it grows.
    pub hot: bool,
    /// Some attempt carrying the write ended ambiguously (a timeout, a 5xx, a reset, abandoned at
    /// the shutdown deadline): DynamoDB may have applied it, or may still.
    pub ambiguous: bool,
    /// What the write cost in write units, when DynamoDB's consumed capacity tells it.
    pub cost: Option<Cost>,
    /// DynamoDB refused the write on its condition (ConditionalCheckFailed): its no-op, or, for
    /// a timed write with a fallback, the cue to send the fallback.
    pub refused: bool,
}

impl Cost {
    /// This cost and an earlier one of the same write (its other UpdateItems): the larger of
    /// the same kind; an exact one over a bound.
    fn or(self, earlier: Option<Cost>) -> Cost {
        match earlier {
            Some(e) if e.exact == self.exact => Cost {
                units: e.units.max(self.units),
                exact: self.exact,
            },
            Some(e) if e.exact => e,
            _ => self,
        }
    }
}

impl Unit {
    /// Records what this write cost from an attempt's consumed capacity: its table's units,
    /// less one for each of the `others` writes of that table the attempt carried (exact when
    /// there are none, as for an UpdateItem).
    fn note_cost(&mut self, consumed: &[(Table, f64)], others: u64, exact: bool) {
        let units: f64 = consumed
            .iter()
            .filter(|(t, _)| *t == self.key.table)
            .map(|(_, u)| *u)
            .sum();
        if units > 0.0 {
            let cost = Cost {
                units: (units - others as f64).max(0.0).ceil() as u32,
                exact,
            };
            self.cost = Some(cost.or(self.cost));
        }
    }

    pub fn new(key: Key, age: Duration) -> Self {
        Unit {
            key,
            age,
            hot: false,
            ambiguous: false,
            cost: None,
            refused: false,
        }
    }
}

/// What one write cost in write units (rounded up), from consumed capacity: exactly, from an
/// UpdateItem (the largest of its requests); or at most, from a BatchExecuteStatement, whose
/// capacity comes per table (the table's units less one for each other statement of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub units: u32,
    pub exact: bool,
}

/// How a request ended for one write it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Applied, or a guarded update whose condition failed (it did its job by doing nothing).
    Written,
    /// Given up: counted, logged and dead-lettered here.
    Dropped,
    /// Not applied; goes back to its shard (throttled on its own key, hot-key windows on).
    HandedBack,
    /// The shutdown deadline passed with the spool on: left to the spool.
    Left,
    /// This kind of request cannot carry the write (a BatchExecuteStatement's statement that
    /// must go as an UpdateItem): not applied, sent another way by the caller.
    Diverted,
}

/// What one attempt came back with, without the SDK's types.
#[derive(Debug)]
pub(super) enum Reply {
    /// DynamoDB answered: applied, except the keys in `unprocessed` (BatchWriteItem's
    /// UnprocessedItems), with the capacity consumed per table.
    Applied {
        unprocessed: HashSet<Key>,
        consumed: Vec<(Table, f64)>,
        /// Writes this request cannot carry, to be sent another way, each with whether the
        /// attempt may have applied it (a statement answered InternalServerError).
        diverted: HashMap<Key, bool>,
    },
    /// A guarded UpdateItem whose condition failed.
    ConditionFailed,
    /// Throttled; `own_key` when DynamoDB throttled the write's key itself.
    Throttled {
        code: &'static str,
        own_key: bool,
        reasons: Vec<ThrottlingReason>,
    },
    /// A ValidationException: retrying the same request cannot help.
    Invalid { message: String },
    /// A 5xx, a timeout, a reset: it may or may not have been applied.
    Transient { code: String, message: String },
    /// An answer this request cannot get (a condition failure on a BatchWriteItem): retried like
    /// a transient failure, but the attempt was not applied.
    Unexpected { what: &'static str },
    /// DynamoDB refused the credentials.
    Credentials { code: String, message: String },
    /// Abandoned at the shutdown deadline: it may have been applied.
    Abandoned,
}

impl Reply {
    /// For a failure to retry: how it failed (for the decision), whether the attempt may have
    /// been applied, and what to say if the writes are given up.
    fn failure(&self) -> Option<(Failed, bool, String)> {
        Some(match self {
            Reply::Throttled { code, own_key, .. } => (
                Failed::Throttled { own_key: *own_key },
                false,
                code.to_string(),
            ),
            Reply::Transient { code, message } => {
                (Failed::Transient, true, format!("{code}: {message}"))
            }
            Reply::Unexpected { what } => (Failed::Transient, false, format!("unexpected {what}")),
            Reply::Credentials { code, message } => {
                (Failed::Credentials, false, format!("{code}: {message}"))
            }
            Reply::Abandoned => (
                Failed::Transient,
                true,
                "request abandoned at the shutdown deadline".into(),
            ),
            Reply::Applied { .. } | Reply::ConditionFailed | Reply::Invalid { .. } => return None,
        })
    }
}

/// A kind of request the loop can send (BatchWriteItem, UpdateItem).
pub(super) trait Request: Send + Sync + Sized {
    /// The API, for stats and logs.
    const OPERATION: Operation;
    const API: &'static str;

    /// Sends one attempt carrying the writes of `pending` (a subset of those it was built with).
    fn attempt(&self, flusher: &Flusher, pending: &[Unit]) -> impl Future<Output = Reply> + Send;

    /// The write to dead-letter if `key`'s is given up.
    fn write(&self, key: &Key) -> Option<&Write>;

    /// The same request for `key`'s write alone (to find a poison write in a rejected batch);
    /// `None` when it carries one write only.
    fn alone(&self, key: &Key) -> Option<Self>;

    /// After an applied attempt (UpdateItem: trims a MsgId set past its cap).
    fn applied(
        &self,
        _flusher: &Flusher,
        _consumed: &[(Table, f64)],
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After a ValidationException: `true` when room was made and the attempt is to be sent
    /// again at once (UpdateItem: a MsgId set at DynamoDB's 400 KB, trimmed once per request).
    fn make_room(
        &mut self,
        _flusher: &Flusher,
        _message: &str,
    ) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

impl Flusher {
    /// Sends `request` until every write of `pending` has an end; returns each with its end.
    pub(super) async fn settle<R: Request>(
        &self,
        request: &mut R,
        mut pending: Vec<Unit>,
    ) -> Vec<(Unit, End)> {
        let mut done = Vec::with_capacity(pending.len());
        let started = Instant::now();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let t0 = Instant::now();
            let in_flight = InFlight::start();
            let sent = self.send_or_stop(request.attempt(self, &pending)).await;
            drop(in_flight);
            let reply = sent.unwrap_or(Reply::Abandoned);
            self.record::<R>(&reply, &pending, attempt, t0.elapsed());
            let (failed, last_error) = match reply {
                Reply::Applied {
                    unprocessed,
                    consumed,
                    diverted,
                } => {
                    if !diverted.is_empty() {
                        let (away, stay): (Vec<_>, Vec<_>) = pending
                            .into_iter()
                            .partition(|u| diverted.contains_key(&u.key));
                        done.extend(away.into_iter().map(|mut u| {
                            u.ambiguous |= diverted.get(&u.key).copied().unwrap_or(false);
                            (u, End::Diverted)
                        }));
                        pending = stay;
                    }
                    pending =
                        self.written(pending, &unprocessed, &consumed, R::OPERATION, &mut done);
                    request.applied(self, &consumed).await;
                    for unit in &mut pending {
                        unit.hot = true;
                    }
                    (
                        Failed::Throttled { own_key: true },
                        "returned as UnprocessedItems".to_string(),
                    )
                }
                Reply::ConditionFailed => {
                    for unit in &mut pending {
                        unit.refused = true;
                        if matches!(request.write(&unit.key), Some(Write::Timed(_))) {
                            self.stats.superseded(unit.key.table);
                        }
                    }
                    done.extend(pending.drain(..).map(|u| (u, End::Written)));
                    break;
                }
                Reply::Invalid { message } => {
                    if request.make_room(self, &message).await {
                        continue;
                    }
                    self.reject::<R>(request, std::mem::take(&mut pending), &message, &mut done)
                        .await;
                    break;
                }
                other => {
                    // (Every other reply is a failure; the fallback only keeps this total.)
                    let (failed, ambiguous, text) =
                        other
                            .failure()
                            .unwrap_or((Failed::Transient, true, format!("{other:?}")));
                    for unit in &mut pending {
                        unit.ambiguous |= ambiguous;
                        unit.hot |= failed == (Failed::Throttled { own_key: true });
                    }
                    (failed, text)
                }
            };
            if pending.is_empty() {
                break;
            }
            pending = self
                .after_failure::<R>(
                    request,
                    pending,
                    failed,
                    attempt,
                    started,
                    &last_error,
                    &mut done,
                )
                .await;
            attempt += 1;
        }
        done
    }

    /// The writes of an applied attempt that are not in `unprocessed` end written (counted per
    /// table); returns the rest.
    fn written(
        &self,
        pending: Vec<Unit>,
        unprocessed: &HashSet<Key>,
        consumed: &[(Table, f64)],
        op: Operation,
        done: &mut Vec<(Unit, End)>,
    ) -> Vec<Unit> {
        let (rest, mut written): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|u| unprocessed.contains(&u.key));
        let mut per_table: HashMap<Table, u64> = HashMap::new();
        for unit in &written {
            *per_table.entry(unit.key.table).or_default() += 1;
        }
        // BatchWriteItem's capacity is not used per key (puts and deletes are not held for cost).
        if op != Operation::BatchWriteItem {
            for unit in &mut written {
                let others = per_table.get(&unit.key.table).copied().unwrap_or(1) - 1;
                unit.note_cost(consumed, others, op == Operation::UpdateItem);
            }
        }
        done.extend(written.into_iter().map(|u| (u, End::Written)));
        for (table, n) in per_table {
            self.stats.written(table, n);
        }
        rest
    }

    /// DynamoDB rejected the request (ValidationException): with several writes, each is resent
    /// alone to find the poison; a write alone is dropped (counted, logged with DynamoDB's
    /// message, dead-lettered).
    async fn reject<R: Request>(
        &self,
        request: &R,
        pending: Vec<Unit>,
        message: &str,
        done: &mut Vec<(Unit, End)>,
    ) {
        let isolate = pending.len() > 1;
        if isolate {
            warn!(requests = pending.len(), %message, "{} rejected; resending its writes one by one", R::API);
        }
        for unit in pending {
            if isolate && let Some(mut single) = request.alone(&unit.key) {
                let ends = Box::pin(self.settle(&mut single, vec![unit])).await;
                done.extend(ends);
                continue;
            }
            if let Some(held) = DROP_LOG.allow() {
                error!(held_back = held, table = %unit.key.table, %message, "DynamoDB rejected a write; dropped");
            }
            match request.write(&unit.key) {
                Some(w) => self.give_up(&unit.key, w, DropReason::Rejected, message),
                None => self.stats.dropped(DropReason::Rejected, 1),
            }
            done.push((unit, End::Dropped));
        }
    }

    /// After a failed attempt: hands back the writes throttled on their own key (their ages
    /// differ, so each is asked), then carries out one decision for the rest (the pause of a
    /// retry already waited out, cut short by the shutdown deadline). Returns what to retry.
    #[allow(clippy::too_many_arguments)]
    async fn after_failure<R: Request>(
        &self,
        request: &R,
        pending: Vec<Unit>,
        failed: Failed,
        attempt: u32,
        started: Instant,
        last_error: &str,
        done: &mut Vec<(Unit, End)>,
    ) -> Vec<Unit> {
        let mut pending = pending;
        if !self.deadline.passed() {
            let (back, keep): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|u| self.policy.hands_back(failed, u.age));
            done.extend(back.into_iter().map(|u| (u, End::HandedBack)));
            pending = keep;
        }
        if pending.is_empty() {
            return pending;
        }
        let age = pending.iter().map(|u| u.age).min().unwrap_or_default();
        match self
            .decide(R::OPERATION, failed, attempt, started, age)
            .await
        {
            Decision::RetryAfter(_) => return pending,
            Decision::HandBack => done.extend(pending.drain(..).map(|u| (u, End::HandedBack))),
            Decision::Leave => done.extend(pending.drain(..).map(|u| (u, End::Left))),
            Decision::GiveUp(reason) => {
                let why = give_up_text(reason, started, last_error);
                for unit in pending.drain(..) {
                    if let Some(held) = DROP_LOG.allow() {
                        error!(held_back = held, table = %unit.key.table, reason = reason.as_str(), %why, "write given up");
                    }
                    match request.write(&unit.key) {
                        Some(w) => self.give_up(&unit.key, w, reason, &why),
                        None => self.stats.dropped(reason, 1),
                    }
                    done.push((unit, End::Dropped));
                }
            }
        }
        pending
    }

    /// Records what one attempt of `R` came back with: the request counter and its duration,
    /// the AIMD limit, throttling, consumed capacity, and the rate-limited logs.
    fn record<R: Request>(&self, reply: &Reply, pending: &[Unit], attempt: u32, elapsed: Duration) {
        let op = R::OPERATION;
        let outcome = match reply {
            Reply::Applied {
                unprocessed,
                consumed,
                ..
            } => {
                for (table, units) in consumed {
                    self.stats.consumed(*table, *units);
                }
                let left = pending
                    .iter()
                    .filter(|u| unprocessed.contains(&u.key))
                    .count();
                if left == 0 {
                    self.concurrency.success(elapsed);
                    Outcome::Success
                } else {
                    self.concurrency.backoff();
                    self.stats.unprocessed(left as u64);
                    Outcome::Partial
                }
            }
            Reply::ConditionFailed => Outcome::ConditionFailed,
            Reply::Throttled { code, reasons, .. } => {
                self.concurrency.backoff();
                self.stats.throttled(code);
                dynamo::record_throttling_reasons(reasons);
                Outcome::Throttled
            }
            Reply::Invalid { .. } => Outcome::Rejected,
            Reply::Transient { code, message } => {
                if let Some(held) = RETRY_LOG.allow() {
                    let table = pending.first().map(|u| u.key.table.to_string());
                    warn!(%code, %message, attempt, held_back = held, writes = pending.len(), table, "{} failed; retrying", R::API);
                }
                Outcome::Error
            }
            Reply::Unexpected { .. } => Outcome::Error,
            Reply::Credentials { code, message } => {
                self.credentials_refused(op, code, message);
                Outcome::Unauthorized
            }
            // Never answered: nothing to count.
            Reply::Abandoned => return,
        };
        self.stats.request(op, outcome, elapsed);
    }

    /// Sends `request`, unless the shutdown deadline passes first (`None`: abandoned; whether
    /// DynamoDB applied it is unknown).
    async fn send_or_stop<T>(&self, request: impl Future<Output = T>) -> Option<T> {
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
    async fn decide(
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

#[cfg(test)]
mod tests;
