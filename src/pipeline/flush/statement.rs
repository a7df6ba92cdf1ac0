//! BatchExecuteStatement: the set deltas and guarded updates of a flush that one PartiQL
//! `UPDATE` each can carry (see [`super::request::statement_spec`]), up to 25 in one request
//! instead of one UpdateItem each, sent by the retry loop.
//!
//! Each statement has its own answer. Applied: written. `ConditionalCheckFailed`: a PartiQL
//! UPDATE never creates an item, so this is either the write's no-op (a DELETE from a missing
//! item, a node guard that fails, an older event: written, as the UpdateItem's failed condition
//! is) or, for a write that creates (an ADD to a topic with no item yet, a client's first
//! connect), a sign that its item is missing: such writes go again, batched, as PartiQL INSERTs
//! of the item they create ([`super::request::insert_spec`]), and an INSERT that finds the item
//! there by then (`DuplicateItem`) is diverted to its UpdateItem, as is a creating write no
//! INSERT can carry. Throttled (`ThrottlingError`, `ProvisionedThroughputExceeded`,
//! `RequestLimitExceeded`, `TransactionConflict`): not applied, resent like BatchWriteItem's
//! UnprocessedItems (and handed back to its shard when hot-key windows are on). Anything else —
//! a `ValidationError` (a MsgId set at 400 KB among them), `InternalServerError`,
//! `AccessDenied`, `ResourceNotFound` — sends the write on as its UpdateItem, whose answers
//! the flusher already knows what to do with (drop the poison with DynamoDB's message, trim
//! the set and add again, retry); `InternalServerError` marks the write maybe applied first.
//!
//! One write per key per flush, so a request never names an item twice (DynamoDB refuses
//! that). The order guarantees are the flush's: every key stays in flight until its write,
//! diverted or not, has an end.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::types::{
    BatchStatementErrorCodeEnum as Code, BatchStatementRequest, ReturnConsumedCapacity,
};

use super::request::{StatementSpec, insert_spec, statement_spec};
use super::retry_loop::{End, Reply, Request, Unit};
use super::{Flusher, KeyEnd};
use crate::storage::dynamo::{self, Failure};
use crate::storage::item::{Key, Table, Write};
use crate::telemetry::stats::{Operation, StatementOutcome};

/// One BatchExecuteStatement: each write with its statement, by key.
///
/// - `inserts`: the statements are INSERTs (the second round of creating writes).
/// - `missing`: the keys whose creating UPDATE found no item, recorded by the replies (the retry
///   loop holds the batch shared while it answers), for the INSERT round.
pub(super) struct StatementBatch {
    writes: HashMap<Key, (Write, StatementSpec)>,
    inserts: bool,
    missing: Mutex<HashSet<Key>>,
}

impl StatementBatch {
    /// The statements of `writes`; those no statement can carry come back in the second list.
    pub(super) fn new(
        flusher: &Flusher,
        writes: Vec<(Write, Unit)>,
    ) -> (Self, Vec<Unit>, Vec<(Write, Unit)>) {
        Self::build(writes, false, |write, key| {
            statement_spec(flusher.tables.name(key.table), key, write)
        })
    }

    /// The INSERTs of `writes` (creating writes whose UPDATE found no item), with the writes no
    /// INSERT can carry in the second list.
    fn inserts(
        flusher: &Flusher,
        writes: Vec<(Write, Unit)>,
    ) -> (Self, Vec<Unit>, Vec<(Write, Unit)>) {
        Self::build(writes, true, |write, key| {
            // A set the item would start past its cap goes by UpdateItem, whose consumed
            // capacity starts the trim (`msgid`).
            if let Write::SetDelta { attr, add, .. } = write
                && flusher.msgid_cap.starts_past(
                    key.hash.len() + attr.len() + add.iter().map(String::len).sum::<usize>(),
                )
            {
                return None;
            }
            insert_spec(flusher.tables.name(key.table), key, write)
        })
    }

    /// The batch of the writes `spec_of` gives a statement, their units, and the rest.
    fn build(
        writes: Vec<(Write, Unit)>,
        inserts: bool,
        spec_of: impl Fn(&Write, &Key) -> Option<StatementSpec>,
    ) -> (Self, Vec<Unit>, Vec<(Write, Unit)>) {
        let mut batch = HashMap::with_capacity(writes.len());
        let (mut units, mut rest) = (Vec::with_capacity(writes.len()), Vec::new());
        for (write, unit) in writes {
            match spec_of(&write, &unit.key) {
                Some(spec) => {
                    batch.insert(unit.key.clone(), (write, spec));
                    units.push(unit);
                }
                None => rest.push((write, unit)),
            }
        }
        (
            StatementBatch {
                writes: batch,
                inserts,
                missing: Mutex::default(),
            },
            units,
            rest,
        )
    }

    /// Whether the creating UPDATE of `key` found no item.
    fn found_missing(&self, key: &Key) -> bool {
        self.missing.lock().is_ok_and(|m| m.contains(key))
    }
}

impl Request for StatementBatch {
    const OPERATION: Operation = Operation::BatchExecuteStatement;
    const API: &'static str = "BatchExecuteStatement";

    fn attempt(&self, flusher: &Flusher, pending: &[Unit]) -> impl Future<Output = Reply> + Send {
        let mut keys = Vec::with_capacity(pending.len());
        let mut statements = Vec::with_capacity(pending.len());
        for unit in pending {
            let Some((_, spec)) = self.writes.get(&unit.key) else {
                continue;
            };
            let built = BatchStatementRequest::builder()
                .statement(&spec.text)
                .set_parameters(Some(spec.params.clone()))
                .build();
            // The builder only refuses a missing statement, which is always set.
            if let Ok(statement) = built {
                keys.push(unit.key.clone());
                statements.push(statement);
            }
        }
        let sent = flusher
            .client
            .batch_execute_statement()
            .set_statements(Some(statements))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        async move { self.reply(flusher, keys, sent.await) }
    }

    fn write(&self, key: &Key) -> Option<&Write> {
        self.writes.get(key).map(|(write, _)| write)
    }

    fn alone(&self, key: &Key) -> Option<Self> {
        if self.writes.len() < 2 {
            return None;
        }
        let (write, spec) = self.writes.get(key)?;
        Some(StatementBatch {
            writes: [(key.clone(), (write.clone(), spec.clone()))].into(),
            inserts: self.inserts,
            missing: Mutex::new(
                self.found_missing(key)
                    .then(|| key.clone())
                    .into_iter()
                    .collect(),
            ),
        })
    }
}

impl StatementBatch {
    /// What a BatchExecuteStatement came back with; `keys` are its statements' keys in order.
    fn reply<R>(
        &self,
        flusher: &Flusher,
        keys: Vec<Key>,
        sent: Result<
            aws_sdk_dynamodb::operation::batch_execute_statement::BatchExecuteStatementOutput,
            aws_sdk_dynamodb::error::SdkError<
                aws_sdk_dynamodb::operation::batch_execute_statement::BatchExecuteStatementError,
                R,
            >,
        >,
    ) -> Reply
    where
        R: std::fmt::Debug,
    {
        let out = match sent {
            Ok(out) => out,
            Err(err) => {
                return match dynamo::classify(&err) {
                    Failure::Throttled { code } => Reply::Throttled {
                        code,
                        own_key: false,
                        reasons: Vec::new(),
                    },
                    Failure::Invalid { message } => Reply::Invalid { message },
                    Failure::Transient { code, message } => Reply::Transient { code, message },
                    Failure::ConditionFailed => Reply::Unexpected {
                        what: "ConditionalCheckFailed",
                    },
                    Failure::Credentials { code, message } => Reply::Credentials { code, message },
                };
            }
        };
        let consumed: Vec<(Table, f64)> = out
            .consumed_capacity()
            .iter()
            .filter_map(|cc| {
                let table = flusher.tables.table(cc.table_name()?)?;
                Some((table, cc.capacity_units()?))
            })
            .collect();
        let mut unprocessed = HashSet::new();
        let mut diverted = HashMap::new();
        let responses = out.responses();
        for (i, key) in keys.into_iter().enumerate() {
            let error = responses.get(i).map(|r| r.error());
            let outcome = match error {
                // No answer for it at all: not applied, as far as we know.
                None => {
                    unprocessed.insert(key);
                    StatementOutcome::Throttled
                }
                Some(None) if self.inserts => StatementOutcome::Inserted,
                Some(None) => StatementOutcome::Applied,
                Some(Some(e)) => match e.code() {
                    // The item appeared between the UPDATE and the INSERT: its UpdateItem.
                    Some(Code::DuplicateItem) if self.inserts => {
                        diverted.insert(key, false);
                        StatementOutcome::Diverted
                    }
                    Some(Code::ConditionalCheckFailed) => match self.writes.get(&key) {
                        Some((_, spec)) if spec.creates => {
                            if let Ok(mut missing) = self.missing.lock() {
                                missing.insert(key.clone());
                            }
                            diverted.insert(key, false);
                            StatementOutcome::Missing
                        }
                        Some((Write::Timed(_), _)) => {
                            flusher.stats.superseded(key.table);
                            StatementOutcome::ConditionFailed
                        }
                        _ => StatementOutcome::ConditionFailed,
                    },
                    Some(
                        Code::ThrottlingError
                        | Code::ProvisionedThroughputExceeded
                        | Code::RequestLimitExceeded
                        | Code::TransactionConflict,
                    ) => {
                        unprocessed.insert(key);
                        StatementOutcome::Throttled
                    }
                    Some(Code::InternalServerError) => {
                        diverted.insert(key, true);
                        StatementOutcome::Diverted
                    }
                    _ => {
                        tracing::debug!(code = ?e.code(), message = e.message(), "statement refused; sending it as UpdateItem");
                        diverted.insert(key, false);
                        StatementOutcome::Diverted
                    }
                },
            };
            flusher.stats.statement(outcome);
        }
        Reply::Applied {
            unprocessed,
            consumed,
            diverted,
        }
    }
}

impl Flusher {
    /// The statements of a flush as one BatchExecuteStatement, sent until each write has an end;
    /// then the creating writes whose items were missing as one BatchExecuteStatement of
    /// INSERTs. Returns the ends, and the writes DynamoDB's answers divert to UpdateItem.
    pub(super) async fn statements(
        &self,
        request: StatementBatch,
        units: Vec<Unit>,
    ) -> (Vec<(Key, KeyEnd)>, Vec<(Write, Unit)>) {
        let (mut ends, diverted) = self.statement_round(request, units).await;
        let (missing, mut diverted): (Vec<_>, Vec<_>) =
            diverted.into_iter().partition(|(_, _, missing)| *missing);
        let missing: Vec<(Write, Unit)> = missing.into_iter().map(|(w, u, _)| (w, u)).collect();
        if !missing.is_empty() {
            let (inserts, units, rest) = StatementBatch::inserts(self, missing);
            diverted.extend(rest.into_iter().map(|(w, u)| (w, u, false)));
            let (insert_ends, insert_diverted) = self.statement_round(inserts, units).await;
            ends.extend(insert_ends);
            diverted.extend(insert_diverted);
        }
        (ends, diverted.into_iter().map(|(w, u, _)| (w, u)).collect())
    }

    /// One BatchExecuteStatement sent until each write has an end: the ends, and the diverted
    /// writes (each with whether its UPDATE found its item missing).
    async fn statement_round(
        &self,
        mut request: StatementBatch,
        units: Vec<Unit>,
    ) -> (Vec<(Key, KeyEnd)>, Vec<(Write, Unit, bool)>) {
        let (mut ends, mut diverted) = (Vec::with_capacity(units.len()), Vec::new());
        if units.is_empty() {
            return (ends, diverted);
        }
        for (unit, end) in self.settle(&mut request, units).await {
            if end == End::Diverted
                && let Some((write, _)) = request.writes.remove(&unit.key)
            {
                let missing = !request.inserts && request.found_missing(&unit.key);
                diverted.push((write, unit, missing));
                continue;
            }
            let key_end = KeyEnd::new(&unit, end, || request.write(&unit.key).cloned());
            ends.push((unit.key, key_end));
        }
        (ends, diverted)
    }
}
