//! Writing the shared topic index (`mqtt_topic_index`, see [`crate::storage::topic_index`]) once
//! per new topic: the ingest asks [`IndexedTopics::missing`] which entries a submission's writes
//! call for that this process has not already submitted, adds their puts to the same submission
//! (so they are queued, spooled, batched, retried and counted like every write), and once the
//! submission is accepted tells [`IndexedTopics::remember`].
//!
//! **Bounded.** Each kind (retained, offline) remembers at most [`REMEMBERED_PER_KIND`] entries:
//! [`SHARDS`] shards, each two generations of at most [`GENERATION`] entries; when the current
//! generation of a shard fills, the previous one is dropped and the current one becomes it.
//! Forgetting an entry only costs a repeated put of it the next time its topic is written (puts
//! of the same item are idempotent; one write unit each); a topic written steadily stays in the
//! current generation (found in the previous one, it is moved up).
//!
//! **Concurrent submitters.** An entry's shard is chosen by its key's hash, and each shard has
//! its own mutex, held for a hash lookup or insert, never across I/O; so submitters for
//! different topics rarely meet, and there is no global lock. Two submissions of one new topic
//! racing each other can both put its entries (an idempotent repeat); an entry is remembered only
//! after its submission is accepted, so a refused submission never leaves a topic unindexed.
//!
//! **What it does not know.** An entry is remembered once its put is accepted, not once it is
//! in DynamoDB; a put that is later given up (retries exhausted without the spool, counted in
//! `mqtt_dynamo_writes_dropped_total` and dead-lettered like any write) is not put again while
//! remembered. `mqtt-dynamo tables build-index` repairs that, as it fills the index for tables
//! written without it.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use crate::storage::item::{Key, Op};
use crate::storage::topic_index::{self, IndexKind};

/// Shards per kind.
pub const SHARDS: usize = 16;
/// Entries one generation of one shard holds.
pub const GENERATION: usize = 2048;
/// Entries remembered per kind at most (two generations per shard): 65,536, about 10 MB with
/// 40-byte topics (a key of two strings and the hash set's slot, ~140 bytes an entry).
pub const REMEMBERED_PER_KIND: usize = SHARDS * GENERATION * 2;

/// One shard: entries submitted recently (`current`) and before that (`previous`).
#[derive(Debug, Default)]
struct Generations {
    current: HashSet<Key>,
    previous: HashSet<Key>,
}

impl Generations {
    /// Whether `key` is remembered; one found in the previous generation moves to the current.
    fn check(&mut self, key: &Key) -> bool {
        if self.current.contains(key) {
            return true;
        }
        if self.previous.remove(key) {
            self.insert(key.clone());
            return true;
        }
        false
    }

    fn insert(&mut self, key: Key) {
        if self.current.contains(&key) {
            return;
        }
        self.previous.remove(&key);
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key);
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The index entries this process has submitted (see the module docs). Shared by every
/// submitter through the ingest (`pipeline::ingest`).
///
/// - `shards`: per kind, [`SHARDS`] mutex-guarded shards; a lock is held for one set operation.
/// - `hasher`: picks an entry's shard (one random state for the process, so shard choice is
///   stable while it runs).
#[derive(Debug)]
pub struct IndexedTopics {
    shards: [Vec<Mutex<Generations>>; 2],
    hasher: RandomState,
}

impl Default for IndexedTopics {
    fn default() -> Self {
        IndexedTopics::new()
    }
}

fn kind_index(kind: IndexKind) -> usize {
    match kind {
        IndexKind::Retained => 0,
        IndexKind::Offline => 1,
    }
}

impl IndexedTopics {
    pub fn new() -> Self {
        let shards = || (0..SHARDS).map(|_| Mutex::default()).collect();
        IndexedTopics {
            shards: [shards(), shards()],
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, kind: IndexKind, key: &Key) -> &Mutex<Generations> {
        let shard = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.shards[kind_index(kind)][shard]
    }

    /// The index puts `ops` call for whose entries are not remembered, each entry once, with
    /// the kind of each.
    pub fn missing(&self, ops: &[Op]) -> Vec<(IndexKind, Op)> {
        let mut out: Vec<(IndexKind, Op)> = Vec::new();
        for (kind, topic) in ops.iter().filter_map(topic_index::indexed_topic) {
            for key in topic_index::entries(kind, topic) {
                // A poisoned shard (a panic while held) counts as not remembered: the cost is
                // a repeated put.
                let known = self
                    .shard(kind, &key)
                    .lock()
                    .is_ok_and(|mut shard| shard.check(&key));
                if !known && !out.iter().any(|(_, op)| op.key == key) {
                    out.push((kind, topic_index::put(key)));
                }
            }
        }
        out
    }

    /// Remembers the entries of accepted index puts.
    pub fn remember<'a>(&self, puts: impl IntoIterator<Item = (IndexKind, &'a Key)>) {
        for (kind, key) in puts {
            if let Ok(mut shard) = self.shard(kind, key).lock() {
                shard.insert(key.clone());
            }
        }
    }

    /// Entries remembered, of `kind`.
    pub fn len(&self, kind: IndexKind) -> usize {
        self.shards[kind_index(kind)]
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        IndexKind::ALL.iter().all(|k| self.len(*k) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::{Table, Write};

    fn retain(topic: &str) -> Op {
        let key = Key::new(Table::Retain, topic);
        Op {
            write: Write::Put {
                item: key.to_item(),
                fresh: false,
            },
            key,
        }
    }

    #[test]
    fn puts_each_entry_once_until_forgotten() {
        let ix = IndexedTopics::new();
        let ops = [retain("a/1"), retain("a/2"), retain("a/1")];
        let first = ix.missing(&ops);
        // a/1, a/2 and the directory entry of "a", once each.
        assert_eq!(first.len(), 3);
        // Not accepted yet: asked again, the same.
        assert_eq!(ix.missing(&ops).len(), 3);
        ix.remember(first.iter().map(|(k, op)| (*k, &op.key)));
        assert!(ix.missing(&ops).is_empty());
        assert_eq!(ix.len(IndexKind::Retained), 3);
        assert_eq!(ix.len(IndexKind::Offline), 0);
        // A new topic under a known first level needs only its own entry.
        let more = ix.missing(&[retain("a/3")]);
        assert_eq!(
            more.iter()
                .map(|(_, op)| op.key.clone())
                .collect::<Vec<_>>(),
            [Key::with_range(Table::TopicIndex, "retain|a", "a/3")]
        );
    }

    #[test]
    fn memory_is_bounded_and_recent_entries_stay() {
        let ix = IndexedTopics::new();
        let hot = retain("hot/x");
        for i in 0..(REMEMBERED_PER_KIND * 2) {
            let ops = [retain(&format!("t{i}/x")), hot.clone()];
            let missing = ix.missing(&ops);
            ix.remember(missing.iter().map(|(k, op)| (*k, &op.key)));
            if i > 0 {
                assert!(
                    missing.iter().all(|(_, op)| !op.key.range_is("hot/x")),
                    "a topic written steadily is not put again"
                );
            }
        }
        assert!(ix.len(IndexKind::Retained) <= REMEMBERED_PER_KIND);
        // The oldest were forgotten: a repeated (idempotent) put.
        assert_eq!(ix.missing(&[retain("t0/x")]).len(), 2);
    }

    #[test]
    fn concurrent_submitters_agree_on_what_is_remembered() {
        let ix = std::sync::Arc::new(IndexedTopics::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ix = std::sync::Arc::clone(&ix);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let ops = [retain(&format!("c/{}", (i * 7 + t) % 500))];
                        let missing = ix.missing(&ops);
                        ix.remember(missing.iter().map(|(k, op)| (*k, &op.key)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 500 topics and one directory entry.
        assert_eq!(ix.len(IndexKind::Retained), 501);
    }

    trait RangeIs {
        fn range_is(&self, topic: &str) -> bool;
    }

    impl RangeIs for Key {
        fn range_is(&self, topic: &str) -> bool {
            self.range.as_deref() == Some(topic)
        }
    }
}
