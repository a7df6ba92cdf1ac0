//! UpdateItem: the updates and set deltas of a flush, each write as its UpdateItems in order
//! (one SET, or ADD chunks then DELETE chunks), each sent by the retry loop; a write handed back
//! part-way goes back as what is left of it.

use std::future::Future;

use aws_sdk_dynamodb::types::ReturnConsumedCapacity;

use super::msgid::refused_as_too_large;
use super::request::{UpdateSpec, remainder, update_specs};
use super::retry_loop::{End, Reply, Request, Unit};
use super::{Flusher, KeyEnd};
use crate::storage::dynamo::{self, Failure};
use crate::storage::item::{Key, Table, Timed, Write};
use crate::telemetry::stats::Operation;

/// One UpdateItem of a write.
pub(super) struct UpdateCall<'a> {
    key: &'a Key,
    /// The whole write (what is dead-lettered if it is given up).
    write: &'a Write,
    spec: &'a UpdateSpec,
    /// The set was trimmed after DynamoDB refused it as too large (once per request).
    trimmed: bool,
}

impl Request for UpdateCall<'_> {
    const OPERATION: Operation = Operation::UpdateItem;
    const API: &'static str = "UpdateItem";

    fn attempt(&self, flusher: &Flusher, _pending: &[Unit]) -> impl Future<Output = Reply> + Send {
        let spec = self.spec;
        let sent = flusher
            .client
            .update_item()
            .table_name(flusher.tables.name(self.key.table))
            .set_key(Some(dynamo::key_attrs(self.key)))
            .update_expression(&spec.expression)
            .set_condition_expression(spec.condition.clone())
            .set_expression_attribute_names(Some(spec.names.clone()))
            .set_expression_attribute_values(Some(spec.values.clone()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        let table = self.key.table;
        async move { reply(table, sent.await) }
    }

    fn write(&self, _key: &Key) -> Option<&Write> {
        Some(self.write)
    }

    fn alone(&self, _key: &Key) -> Option<Self> {
        None
    }

    fn applied(
        &self,
        flusher: &Flusher,
        consumed: &[(Table, f64)],
    ) -> impl Future<Output = ()> + Send {
        let units = consumed.first().map(|(_, units)| *units);
        async move {
            if let (Some(attr), Some(units)) = (self.spec.adds_to.as_deref(), units)
                && let Some(target) = flusher.msgid_cap.after_add(units)
            {
                flusher.trim_set(self.key, attr, target).await;
            }
        }
    }

    fn make_room(&mut self, flusher: &Flusher, message: &str) -> impl Future<Output = bool> + Send {
        let too_large = !self.trimmed && refused_as_too_large(message);
        async move {
            let Some(attr) = self.spec.adds_to.as_deref().filter(|_| too_large) else {
                return false;
            };
            // The set reached DynamoDB's 400 KB: make room, then add again.
            flusher
                .trim_set(self.key, attr, flusher.msgid_cap.after_refusal())
                .await;
            self.trimmed = true;
            true
        }
    }
}

/// What an UpdateItem came back with.
fn reply<R>(
    table: Table,
    sent: Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::update_item::UpdateItemError,
            R,
        >,
    >,
) -> Reply
where
    R: std::fmt::Debug,
{
    let err = match sent {
        Ok(out) => {
            let units = out.consumed_capacity().and_then(|c| c.capacity_units());
            return Reply::Applied {
                unprocessed: Default::default(),
                consumed: units.map(|u| (table, u)).into_iter().collect(),
                diverted: Default::default(),
            };
        }
        Err(err) => err,
    };
    match dynamo::classify(&err) {
        Failure::ConditionFailed => Reply::ConditionFailed,
        Failure::Throttled { code } => {
            let reasons = dynamo::update_throttling_reasons(&err);
            // Without reasons (older DynamoDB, emulators) a throttled single-key request is
            // taken as a hot key; with them, only a key range is.
            Reply::Throttled {
                code,
                own_key: reasons.is_empty() || dynamo::names_key_range(reasons),
                reasons: reasons.to_vec(),
            }
        }
        Failure::Invalid { message } => Reply::Invalid { message },
        Failure::Transient { code, message } => Reply::Transient { code, message },
        Failure::Credentials { code, message } => Reply::Credentials { code, message },
    }
}

impl Flusher {
    /// The UpdateItem(s) of one write, in order, each sent until it has an end. A hand-back
    /// part-way returns what is left of the write (marked maybe applied when an attempt of it
    /// ended ambiguously).
    ///
    /// A timed write DynamoDB refused on its condition that has a fallback (a connect folded
    /// with its disconnect) goes on as the fallback; a hand-back then returns the fallback.
    pub(super) async fn update(&self, write: &Write, unit: Unit) -> KeyEnd {
        let key = unit.key.clone();
        let mut unit = unit;
        let mut current = std::borrow::Cow::Borrowed(write);
        loop {
            let specs = update_specs(&key, &current);
            for (i, spec) in specs.iter().enumerate() {
                let mut call = UpdateCall {
                    key: &key,
                    write: &current,
                    spec,
                    trimmed: false,
                };
                let fallback = unit.clone();
                let (settled, end) = self
                    .settle(&mut call, vec![unit])
                    .await
                    .pop()
                    .unwrap_or((fallback, End::Dropped));
                unit = settled;
                if end != End::Written {
                    return KeyEnd::new(&unit, end, || Some(remainder(&current, &specs[i..])));
                }
            }
            match &*current {
                Write::Timed(Timed {
                    or_else: Some(fallback),
                    ..
                }) if unit.refused => {
                    unit.refused = false;
                    current = std::borrow::Cow::Owned(Write::Timed((**fallback).clone()));
                }
                _ => return KeyEnd::new(&unit, End::Written, || None),
            }
        }
    }
}
