//! What lookups need from the write path: the ops accepted but not yet settled in DynamoDB
//! (read-your-writes), the puts of the shared topic index's entries among them.
//!
//! The ingest numbers every accepted op (`seq`, one counter for the whole pipeline) and, for the
//! tables lookups read, records a copy here before queueing it. The op travels through the
//! coalescer with its number; when the write it was folded into settles (written, refused or
//! cancelled out), the shard calls `ReadState::settled` with the numbers folded into it and the
//! copies are dropped. A lookup takes a snapshot of a key's recorded ops **before** reading
//! DynamoDB and replays them over what it read: an op that settled before the snapshot is in the
//! table by then, an op still recorded is replayed, and replaying an op the table already has is
//! harmless because every recorded op is idempotent (puts, deletes, set ADD/DELETE of unique
//! message ids). So a lookup sees at least everything accepted before it started.
//!
//! The shared topic index (`mqtt_topic_index`) is recorded like the tables it lists: a wildcard
//! lookup takes the pending entry puts of a bucket ([`ReadState::pending_under`]) before it
//! queries the bucket, so a topic this process accepted is found before its entry is written.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::coalesce::Seqs;
use crate::storage::item::{Key, Op, Table, Write};

/// Stripes of the overlay; a key's stripe is chosen by (table, hash key), so all of one client's
/// subscriptions share a stripe and can be listed with one range scan.
const STRIPES: usize = 32;

/// Recorded ops by key, in acceptance order.
type Stripe = BTreeMap<Key, Vec<(u64, Write)>>;

/// Shared by the ingest (records), the shards (settle) and the [`super::Reader`] (reads).
///
/// - `next_seq`: the op counter; starts at 1 so 0 means "not numbered".
/// - `overlay`: `None` when read-your-writes is off (nothing is copied then).
///
/// Every lock is held for a map operation, never across I/O.
#[derive(Debug)]
pub struct ReadState {
    next_seq: AtomicU64,
    overlay: Option<Vec<Mutex<Stripe>>>,
}

/// Whether lookups read `table` (only those tables' ops are recorded).
pub(crate) fn tracked(table: Table) -> bool {
    matches!(
        table,
        Table::Retain | Table::Msg | Table::TopicMsgMap | Table::Sub | Table::TopicIndex
    )
}

fn stripe_of(key: &Key) -> usize {
    let mut h = DefaultHasher::new();
    key.table.hash(&mut h);
    key.hash.hash(&mut h);
    (h.finish() % STRIPES as u64) as usize
}

impl ReadState {
    pub fn new(read_your_writes: bool) -> Self {
        ReadState {
            next_seq: AtomicU64::new(1),
            overlay: read_your_writes.then(|| (0..STRIPES).map(|_| Mutex::default()).collect()),
        }
    }

    pub fn read_your_writes(&self) -> bool {
        self.overlay.is_some()
    }

    /// Takes `n` numbers without recording anything (ops replayed from the spool, numbered before
    /// any new event); returns the first.
    pub(crate) fn reserve(&self, n: u64) -> u64 {
        self.next_seq.fetch_add(n, Ordering::Relaxed)
    }

    /// Numbers `ops` (the first gets the returned number, the next one more, …) and records the
    /// tracked ones. Called before they are queued.
    pub(crate) fn record(&self, ops: &[Op]) -> u64 {
        let first = self.next_seq.fetch_add(ops.len() as u64, Ordering::Relaxed);
        if let Some(stripes) = &self.overlay {
            for (i, op) in ops.iter().enumerate() {
                if !tracked(op.key.table) {
                    continue;
                }
                if let Ok(mut stripe) = stripes[stripe_of(&op.key)].lock() {
                    stripe
                        .entry(op.key.clone())
                        .or_default()
                        .push((first + i as u64, op.write.clone()));
                }
            }
        }
        first
    }

    /// Records ops replayed from the spool, numbered from `first` (numbers below any new op's),
    /// so lookups see them before they are fed again: each is inserted in number order, ahead
    /// of newer ops of its key recorded meanwhile.
    pub(crate) fn record_replayed(&self, ops: &[Op], first: u64) {
        let Some(stripes) = &self.overlay else {
            return;
        };
        for (i, op) in ops.iter().enumerate() {
            if !tracked(op.key.table) {
                continue;
            }
            let seq = first + i as u64;
            if let Ok(mut stripe) = stripes[stripe_of(&op.key)].lock() {
                let recorded = stripe.entry(op.key.clone()).or_default();
                let at = recorded.partition_point(|(s, _)| *s < seq);
                recorded.insert(at, (seq, op.write.clone()));
            }
        }
    }

    /// Takes back what [`ReadState::record`] recorded when the ops could not be queued.
    pub(crate) fn forget(&self, ops: &[Op], first: u64) {
        for (i, op) in ops.iter().enumerate() {
            let seq = first + i as u64;
            self.settled(&op.key, Seqs::one(seq));
        }
    }

    /// Drops the recorded ops of `key` numbered within `seqs`: the write they were folded into
    /// is in DynamoDB, was given up, or cancelled out.
    pub(crate) fn settled(&self, key: &Key, seqs: Seqs) {
        let Some(stripes) = &self.overlay else {
            return;
        };
        if !tracked(key.table) {
            return;
        }
        if let Ok(mut stripe) = stripes[stripe_of(key)].lock()
            && let Some(ops) = stripe.get_mut(key)
        {
            ops.retain(|(seq, _)| *seq < seqs.first || *seq > seqs.last);
            if ops.is_empty() {
                stripe.remove(key);
            }
        }
    }

    /// The recorded, unsettled writes of `key`, oldest first.
    pub fn pending(&self, key: &Key) -> Vec<Write> {
        let Some(stripes) = &self.overlay else {
            return Vec::new();
        };
        stripes[stripe_of(key)]
            .lock()
            .ok()
            .and_then(|stripe| {
                stripe
                    .get(key)
                    .map(|ops| ops.iter().map(|(_, w)| w.clone()).collect())
            })
            .unwrap_or_default()
    }

    /// The recorded writes of every key of `table` whose hash key is `hash` (one client's
    /// subscriptions), oldest first per key.
    pub fn pending_under(&self, table: Table, hash: &str) -> Vec<(Key, Vec<Write>)> {
        let Some(stripes) = &self.overlay else {
            return Vec::new();
        };
        let start = Key {
            table,
            hash: hash.to_string(),
            range: None,
        };
        let Ok(stripe) = stripes[stripe_of(&start)].lock() else {
            return Vec::new();
        };
        stripe
            .range(start..)
            .take_while(|(k, _)| k.table == table && k.hash == hash)
            .map(|(k, ops)| (k.clone(), ops.iter().map(|(_, w)| w.clone()).collect()))
            .collect()
    }

    /// Recorded ops not yet settled, over all keys (a gauge, and for tests: 0 once drained).
    pub fn pending_ops(&self) -> usize {
        self.overlay.as_ref().map_or(0, |stripes| {
            stripes
                .iter()
                .filter_map(|s| {
                    s.lock()
                        .ok()
                        .map(|s| s.values().map(Vec::len).sum::<usize>())
                })
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::{Item, Value};

    fn retain_put(topic: &str, payload: &str) -> Op {
        let key = Key {
            table: Table::Retain,
            hash: topic.into(),
            range: None,
        };
        let mut item: Item = key.to_item();
        item.insert("payload".into(), Value::S(payload.into()));
        Op {
            key,
            write: Write::Put { item, fresh: false },
        }
    }

    #[test]
    fn records_until_settled_and_only_tracked_tables() {
        let state = ReadState::new(true);
        let client = Op {
            key: Key {
                table: Table::Client,
                hash: "c".into(),
                range: None,
            },
            write: Write::Delete,
        };
        let ops = vec![retain_put("t", "1"), client, retain_put("t", "2")];
        let first = state.record(&ops);
        assert_eq!(first, 1);
        assert_eq!(state.pending(&ops[0].key).len(), 2);
        assert_eq!(state.pending(&ops[1].key).len(), 0);
        assert_eq!(state.pending_ops(), 2);
        // The first put's write settles; the second is still pending.
        state.settled(&ops[0].key, Seqs::one(first));
        assert_eq!(state.pending(&ops[0].key), vec![ops[2].write.clone()]);
        state.settled(&ops[0].key, Seqs::one(first + 2));
        assert_eq!(state.pending_ops(), 0);
        assert_eq!(state.record(&ops[..1]), 4);
    }

    #[test]
    fn forget_undoes_record_and_off_records_nothing() {
        let state = ReadState::new(true);
        let ops = vec![retain_put("t", "1")];
        let first = state.record(&ops);
        state.forget(&ops, first);
        assert_eq!(state.pending_ops(), 0);
        let off = ReadState::new(false);
        off.record(&ops);
        assert_eq!(off.pending_ops(), 0);
        assert!(off.pending(&ops[0].key).is_empty());
    }
}
