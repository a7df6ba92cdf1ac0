//! BatchWriteItem: the puts and deletes of a flush (at most 25, on distinct keys) as one request,
//! sent by the retry loop; what DynamoDB returns in UnprocessedItems is resent alone (or handed
//! back to its shard), and a rejected batch is resent one write at a time to find the poison.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use aws_sdk_dynamodb::types::{ReturnConsumedCapacity, WriteRequest};

use super::request::{TableNames, request_key, write_request};
use super::retry_loop::{Reply, Request, Unit};
use super::{Flusher, KeyEnd};
use crate::storage::dynamo::{self, Failure};
use crate::storage::item::{Key, Write};
use crate::telemetry::stats::Operation;

/// One BatchWriteItem: each write with its wire request, by key.
pub(super) struct BatchWrite {
    writes: HashMap<Key, (Write, WriteRequest)>,
}

impl BatchWrite {
    fn new(writes: impl IntoIterator<Item = (Key, Write)>) -> Self {
        BatchWrite {
            writes: writes
                .into_iter()
                .map(|(key, write)| {
                    let request = write_request(&key, &write);
                    (key, (write, request))
                })
                .collect(),
        }
    }
}

impl Request for BatchWrite {
    const OPERATION: Operation = Operation::BatchWriteItem;
    const API: &'static str = "BatchWriteItem";

    fn attempt(&self, flusher: &Flusher, pending: &[Unit]) -> impl Future<Output = Reply> + Send {
        let mut items: HashMap<String, Vec<WriteRequest>> = HashMap::new();
        for unit in pending {
            if let Some((_, request)) = self.writes.get(&unit.key) {
                items
                    .entry(flusher.tables.name(unit.key.table).to_string())
                    .or_default()
                    .push(request.clone());
            }
        }
        let sent = flusher
            .client
            .batch_write_item()
            .set_request_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send();
        async move { reply(&flusher.tables, sent.await) }
    }

    fn write(&self, key: &Key) -> Option<&Write> {
        self.writes.get(key).map(|(write, _)| write)
    }

    fn alone(&self, key: &Key) -> Option<Self> {
        let (write, request) = self.writes.get(key)?;
        Some(BatchWrite {
            writes: [(key.clone(), (write.clone(), request.clone()))].into(),
        })
    }
}

/// What a BatchWriteItem came back with.
fn reply<R>(
    tables: &TableNames,
    sent: Result<
        aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemOutput,
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError,
            R,
        >,
    >,
) -> Reply
where
    R: std::fmt::Debug,
{
    let err = match sent {
        Ok(out) => {
            let consumed = out
                .consumed_capacity()
                .iter()
                .filter_map(|cc| {
                    let table = tables.table(cc.table_name()?)?;
                    Some((table, cc.capacity_units()?))
                })
                .collect();
            let unprocessed: HashSet<Key> = out
                .unprocessed_items()
                .into_iter()
                .flatten()
                .flat_map(|(name, reqs)| reqs.iter().filter_map(|r| request_key(tables, name, r)))
                .collect();
            return Reply::Applied {
                unprocessed,
                consumed,
                diverted: Default::default(),
            };
        }
        Err(err) => err,
    };
    match dynamo::classify(&err) {
        Failure::Throttled { code } => Reply::Throttled {
            code,
            own_key: false,
            reasons: dynamo::batch_throttling_reasons(&err).to_vec(),
        },
        Failure::Invalid { message } => Reply::Invalid { message },
        Failure::Transient { code, message } => Reply::Transient { code, message },
        // BatchWriteItem carries no conditions; treat it like any other error.
        Failure::ConditionFailed => Reply::Unexpected {
            what: "ConditionalCheckFailed",
        },
        Failure::Credentials { code, message } => Reply::Credentials { code, message },
    }
}

impl Flusher {
    /// One BatchWriteItem of ≤ 25 puts/deletes on distinct keys, sent until each has an end.
    /// Writes DynamoDB returned as UnprocessedItems are hot; the policy decides whether they are
    /// handed back instead of retried (each unit carries its write's age for that).
    pub(super) async fn batch(&self, writes: Vec<(Write, Unit)>) -> Vec<(Key, KeyEnd)> {
        let mut units = Vec::with_capacity(writes.len());
        let mut request = BatchWrite::new(writes.into_iter().map(|(write, unit)| {
            let key = unit.key.clone();
            units.push(unit);
            (key, write)
        }));
        let ends = self.settle(&mut request, units).await;
        ends.into_iter()
            .map(|(unit, end)| {
                let key_end = KeyEnd::new(&unit, end, || request.write(&unit.key).cloned());
                (unit.key, key_end)
            })
            .collect()
    }
}
