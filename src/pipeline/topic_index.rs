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
//! current generation (found in the previous one, it is moved up). Entries are remembered by
//! their unspread key, so a level spread later does not put its known topics again.
//!
//! **Spreading a level.** One bucket (a DynamoDB partition key) takes 1,000 write units a
//! second; a first level whose new topics come faster would hold every submission behind its
//! throttled puts. So [`Levels`] counts each level's new topics over one-second windows, and
//! when a window's count passes `spread_rate` per bucket the level is spread over twice the
//! buckets (and counted anew from then): the ingest's [`Spreader`] puts the directory entry recording the new count (see the
//! storage module's "Spread levels"), and only once DynamoDB has taken it do new topics go to
//! the new buckets, so no reader misses one. A spread that fails (retries exhausted) is logged
//! and counted, and the level keeps its count until a later window asks again. The count is this
//! process's, from 1 at start: instances spread independently, by their own rates, which is
//! safe (readers take the largest count any instance recorded) but means several instances each
//! under the rate do not spread a level that together they overload. At most [`TRACKED_LEVELS`]
//! levels are counted at once; past that, unspread levels' windows are dropped (they start
//! again), and levels beyond the bound are not counted until room frees.
//!
//! **Concurrent submitters.** An entry's shard is chosen by its key's hash, and each shard has
//! its own mutex, held for a hash lookup or insert, never across I/O; so submitters for
//! different topics rarely meet, and there is no global lock. The level counts are one mutex,
//! taken only for topics not remembered. Two submissions of one new topic
//! racing each other can both put its entries (an idempotent repeat); an entry is remembered only
//! after its submission is accepted, so a refused submission never leaves a topic unindexed.
//!
//! **What it does not know.** An entry is remembered once its put is accepted, not once it is
//! in DynamoDB; a put that is later given up (retries exhausted without the spool, counted in
//! `mqtt_dynamo_writes_dropped_total` and dead-lettered like any write) is not put again while
//! remembered. `mqtt-dynamo tables build-index` repairs that, as it fills the index for tables
//! written without it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::storage::item::{Key, MAX_RANGE_KEY_BYTES, Op};
use crate::storage::topic_index::{self, IndexKind, MAX_BUCKETS};
use crate::telemetry::stats::Stats;

/// Shards per kind.
pub const SHARDS: usize = 16;
/// Entries one generation of one shard holds.
pub const GENERATION: usize = 2048;
/// Entries remembered per kind at most (two generations per shard): 65,536, about 10 MB with
/// 40-byte topics (a key of two strings and the hash set's slot, ~140 bytes an entry).
pub const REMEMBERED_PER_KIND: usize = SHARDS * GENERATION * 2;
/// The window over which a level's new topics are counted.
pub const SPREAD_WINDOW: Duration = Duration::from_secs(1);
/// First levels counted at once (see the module docs).
pub const TRACKED_LEVELS: usize = 4096;

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

/// One index put a submission needs: the entry as remembered (its unspread key) and the put
/// (to the bucket its level's current count gives).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexPut {
    pub kind: IndexKind,
    pub entry: Key,
    pub op: Op,
}

/// A level to spread: put the directory entry recording `buckets`, then tell
/// [`Levels::spread_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadRequest {
    pub kind: IndexKind,
    pub level: String,
    pub buckets: u32,
}

/// One level's count: its buckets, the current window's new topics, whether a spread is out.
#[derive(Debug, Clone)]
struct LevelCount {
    buckets: u32,
    window_start: Instant,
    new_topics: u64,
    spreading: bool,
}

/// The bucket counts of this process's first levels and their new-topic rates (see the module
/// docs). Shared by the ingest (counting, under one mutex held for a map lookup) and the
/// spreads in flight (which report back through [`Levels::spread_done`]).
///
/// - `spread_rate`: new topics a second per bucket that spread a level; 0 never spreads.
#[derive(Debug)]
pub struct Levels {
    counts: Mutex<HashMap<(IndexKind, String), LevelCount>>,
    spread_rate: u64,
}

impl Levels {
    pub fn new(spread_rate: u64) -> Self {
        Levels {
            counts: Mutex::new(HashMap::new()),
            spread_rate,
        }
    }

    /// The buckets `level` of `kind` is spread over in this process (1 when not spread).
    pub fn buckets(&self, kind: IndexKind, level: &str) -> u32 {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.get(&(kind, level.to_string())).map(|l| l.buckets))
            .unwrap_or(1)
    }

    /// Counts `new` new topics of `level` at `now`, and returns the level's bucket count and the
    /// spread to start, if the window's count has passed the rate.
    fn count(
        &self,
        kind: IndexKind,
        level: &str,
        new: u64,
        now: Instant,
    ) -> (u32, Option<SpreadRequest>) {
        let Ok(mut counts) = self.counts.lock() else {
            return (1, None);
        };
        if self.spread_rate == 0 {
            return (
                counts
                    .get(&(kind, level.to_string()))
                    .map_or(1, |l| l.buckets),
                None,
            );
        }
        let id = (kind, level.to_string());
        if !counts.contains_key(&id) {
            if counts.len() >= TRACKED_LEVELS {
                counts.retain(|_, l| l.buckets > 1 || l.spreading);
            }
            if counts.len() >= TRACKED_LEVELS {
                return (1, None);
            }
            counts.insert(
                id.clone(),
                LevelCount {
                    buckets: 1,
                    window_start: now,
                    new_topics: 0,
                    spreading: false,
                },
            );
        }
        let Some(l) = counts.get_mut(&id) else {
            return (1, None);
        };
        if now.saturating_duration_since(l.window_start) >= SPREAD_WINDOW {
            l.window_start = now;
            l.new_topics = 0;
        }
        l.new_topics += new;
        let spread = (!l.spreading
            && l.buckets < MAX_BUCKETS
            && l.new_topics > self.spread_rate * u64::from(l.buckets)
            && topic_index::spread_entry(level, MAX_BUCKETS).len() <= MAX_RANGE_KEY_BYTES)
            .then(|| {
                l.spreading = true;
                SpreadRequest {
                    kind,
                    level: level.to_string(),
                    buckets: l.buckets * 2,
                }
            });
        (l.buckets, spread)
    }

    /// A spread's outcome: taken by DynamoDB (new topics go to its buckets from now on) or not.
    pub fn spread_done(&self, request: &SpreadRequest, taken: bool) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(l) = counts.get_mut(&(request.kind, request.level.clone()))
        {
            l.spreading = false;
            if taken {
                l.buckets = l.buckets.max(request.buckets);
                // Counted anew against the new count.
                l.new_topics = 0;
            }
        }
    }
}

/// The index entries this process has submitted (see the module docs). Shared by every
/// submitter through the ingest (`pipeline::ingest`).
///
/// - `shards`: per kind, [`SHARDS`] mutex-guarded shards; a lock is held for one set operation.
/// - `hasher`: picks an entry's shard (one random state for the process, so shard choice is
///   stable while it runs).
/// - `levels`: the bucket counts and rates of first levels, shared with spreads in flight.
#[derive(Debug)]
pub struct IndexedTopics {
    shards: [Vec<Mutex<Generations>>; 2],
    hasher: RandomState,
    levels: Arc<Levels>,
}

impl Default for IndexedTopics {
    fn default() -> Self {
        IndexedTopics::new(0)
    }
}

fn kind_index(kind: IndexKind) -> usize {
    match kind {
        IndexKind::Retained => 0,
        IndexKind::Offline => 1,
    }
}

impl IndexedTopics {
    /// Remembers nothing yet; spreads a level past `spread_rate` new topics a second per bucket
    /// (0: never).
    pub fn new(spread_rate: u64) -> Self {
        let shards = || (0..SHARDS).map(|_| Mutex::default()).collect();
        IndexedTopics {
            shards: [shards(), shards()],
            hasher: RandomState::new(),
            levels: Arc::new(Levels::new(spread_rate)),
        }
    }

    /// The levels' bucket counts, for spreads to report back to.
    pub fn levels(&self) -> &Arc<Levels> {
        &self.levels
    }

    fn shard(&self, kind: IndexKind, key: &Key) -> &Mutex<Generations> {
        let shard = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.shards[kind_index(kind)][shard]
    }

    /// Whether the entry `key` (unspread) is remembered. A poisoned shard (a panic while held)
    /// counts as not remembered: the cost is a repeated put.
    fn known(&self, kind: IndexKind, key: &Key) -> bool {
        self.shard(kind, key)
            .lock()
            .is_ok_and(|mut shard| shard.check(key))
    }

    /// The index puts `ops` call for whose entries are not remembered, each entry once, and the
    /// spreads their levels' rates call for.
    pub fn missing(&self, ops: &[Op]) -> (Vec<IndexPut>, Vec<SpreadRequest>) {
        self.missing_at(ops, Instant::now())
    }

    /// [`IndexedTopics::missing`] at `now`.
    pub fn missing_at(&self, ops: &[Op], now: Instant) -> (Vec<IndexPut>, Vec<SpreadRequest>) {
        let mut out: Vec<IndexPut> = Vec::new();
        let mut spreads = Vec::new();
        for (kind, topic) in ops.iter().filter_map(topic_index::indexed_topic) {
            if !topic_index::indexable(topic) {
                continue;
            }
            let entry = topic_index::topic_key(kind, topic);
            if !self.known(kind, &entry) && !out.iter().any(|p| p.entry == entry) {
                let (buckets, spread) =
                    self.levels
                        .count(kind, topic_index::first_level(topic), 1, now);
                spreads.extend(spread);
                let key = topic_index::spread_topic_key(kind, topic, buckets);
                out.push(IndexPut {
                    kind,
                    entry,
                    op: topic_index::put(key),
                });
            }
            let dir = topic_index::directory_key(kind, topic);
            if !self.known(kind, &dir) && !out.iter().any(|p| p.entry == dir) {
                out.push(IndexPut {
                    kind,
                    entry: dir.clone(),
                    op: topic_index::put(dir),
                });
            }
        }
        (out, spreads)
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

/// Puts the directory entries of spreads (see the module docs), from tasks on the pipeline's
/// runtime; the ingest hands it the requests [`IndexedTopics::missing`] returns.
///
/// - `runtime`: where the puts run (submitters may be on any thread).
/// - `client`, `table`: the index table.
/// - `levels`: told each spread's outcome.
/// - `stats`: counts spreads taken and failed.
#[derive(Debug, Clone)]
pub struct Spreader {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) client: Client,
    pub(crate) table: String,
    pub(crate) levels: Arc<Levels>,
    pub(crate) stats: Arc<Stats>,
}

/// Attempts at a spread's directory put (a one-item BatchWriteItem) before it is given up (backing off 50 ms, doubling, up to
/// 2 s between them).
const SPREAD_ATTEMPTS: u32 = 8;

impl Spreader {
    /// Starts `request`'s directory put.
    pub fn spread(&self, request: SpreadRequest) {
        let this = self.clone();
        self.runtime.spawn(async move {
            let result = this.put_entry(&request).await;
            let taken = result.is_ok();
            match result {
                Ok(()) => tracing::info!(index = request.kind.as_str(), level = %request.level,
                    buckets = request.buckets, "topic index level spread over more buckets"),
                Err(e) => tracing::warn!(index = request.kind.as_str(), level = %request.level,
                    buckets = request.buckets, error = %e,
                    "topic index level not spread (its new topics stay in fewer buckets; asked again while the rate lasts)"),
            }
            this.stats.topic_index_spread(request.kind, taken);
            this.levels.spread_done(&request, taken);
        });
    }

    async fn put_entry(&self, request: &SpreadRequest) -> Result<(), String> {
        let mut backoff = Duration::from_millis(50);
        let mut last = String::new();
        for attempt in 0..SPREAD_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            // BatchWriteItem, which serving is already granted, rather than PutItem.
            let put = aws_sdk_dynamodb::types::PutRequest::builder()
                .item(
                    "bucket",
                    AttributeValue::S(topic_index::directory(request.kind).to_string()),
                )
                .item(
                    "topic",
                    AttributeValue::S(topic_index::spread_entry(&request.level, request.buckets)),
                )
                .build()
                .map_err(|e| e.to_string())?;
            let sent = self
                .client
                .batch_write_item()
                .request_items(
                    &self.table,
                    vec![
                        aws_sdk_dynamodb::types::WriteRequest::builder()
                            .put_request(put)
                            .build(),
                    ],
                )
                .send()
                .await;
            match sent {
                Ok(out) if out.unprocessed_items().is_none_or(|u| u.is_empty()) => return Ok(()),
                Ok(_) => last = "unprocessed (throttled)".to_string(),
                Err(e) => {
                    last = aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string();
                }
            }
        }
        Err(last)
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

    fn remember_all(ix: &IndexedTopics, puts: &[IndexPut]) {
        ix.remember(puts.iter().map(|p| (p.kind, &p.entry)));
    }

    #[test]
    fn puts_each_entry_once_until_forgotten() {
        let ix = IndexedTopics::new(0);
        let ops = [retain("a/1"), retain("a/2"), retain("a/1")];
        let (first, spreads) = ix.missing(&ops);
        assert!(spreads.is_empty());
        // a/1, a/2 and the directory entry of "a", once each.
        assert_eq!(first.len(), 3);
        // Not accepted yet: asked again, the same.
        assert_eq!(ix.missing(&ops).0.len(), 3);
        remember_all(&ix, &first);
        assert!(ix.missing(&ops).0.is_empty());
        assert_eq!(ix.len(IndexKind::Retained), 3);
        assert_eq!(ix.len(IndexKind::Offline), 0);
        // A new topic under a known first level needs only its own entry.
        let more = ix.missing(&[retain("a/3")]).0;
        assert_eq!(
            more.iter().map(|p| p.op.key.clone()).collect::<Vec<_>>(),
            [Key::with_range(Table::TopicIndex, "retain|a", "a/3")]
        );
    }

    #[test]
    fn memory_is_bounded_and_recent_entries_stay() {
        let ix = IndexedTopics::new(0);
        let hot = retain("hot/x");
        for i in 0..(REMEMBERED_PER_KIND * 2) {
            let ops = [retain(&format!("t{i}/x")), hot.clone()];
            let missing = ix.missing(&ops).0;
            remember_all(&ix, &missing);
            if i > 0 {
                assert!(
                    missing.iter().all(|p| !p.op.key.range_is("hot/x")),
                    "a topic written steadily is not put again"
                );
            }
        }
        assert!(ix.len(IndexKind::Retained) <= REMEMBERED_PER_KIND);
        // The oldest were forgotten: a repeated (idempotent) put.
        assert_eq!(ix.missing(&[retain("t0/x")]).0.len(), 2);
    }

    #[test]
    fn concurrent_submitters_agree_on_what_is_remembered() {
        let ix = std::sync::Arc::new(IndexedTopics::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ix = std::sync::Arc::clone(&ix);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let ops = [retain(&format!("c/{}", (i * 7 + t) % 500))];
                        let missing = ix.missing(&ops).0;
                        remember_all(&ix, &missing);
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

    /// The buckets of the topic puts among `puts`.
    fn buckets_of(puts: &[IndexPut]) -> std::collections::BTreeSet<String> {
        puts.iter()
            .filter(|p| p.op.key.hash.contains('|'))
            .map(|p| p.op.key.hash.clone())
            .collect()
    }

    #[test]
    fn a_level_is_spread_when_its_new_topics_pass_the_rate_and_only_once_the_spread_is_taken() {
        let ix = IndexedTopics::new(10);
        let t0 = Instant::now();
        let batch = |from: usize, n: usize| -> Vec<Op> {
            (from..from + n)
                .map(|i| retain(&format!("d/{i}")))
                .collect()
        };
        // Ten new topics in the window: not past the rate.
        let (puts, spreads) = ix.missing_at(&batch(0, 10), t0);
        assert!(spreads.is_empty());
        remember_all(&ix, &puts);
        // The eleventh asks for two buckets, once, while the spread is out.
        let (puts, spreads) = ix.missing_at(&batch(10, 5), t0 + Duration::from_millis(10));
        assert_eq!(
            spreads,
            [SpreadRequest {
                kind: IndexKind::Retained,
                level: "d".into(),
                buckets: 2
            }]
        );
        // Not taken yet: still the one bucket.
        assert_eq!(buckets_of(&puts), ["retain|d".to_string()].into());
        remember_all(&ix, &puts);
        ix.levels().spread_done(&spreads[0], false);
        assert_eq!(ix.levels().buckets(IndexKind::Retained, "d"), 1);
        // Failed: asked again by the next new topic past the rate; taken this time.
        let (_, again) = ix.missing_at(&batch(15, 1), t0 + Duration::from_millis(20));
        assert_eq!(again, spreads);
        ix.levels().spread_done(&again[0], true);
        assert_eq!(ix.levels().buckets(IndexKind::Retained, "d"), 2);
        let (puts, spreads) = ix.missing_at(&batch(100, 20), t0 + Duration::from_millis(30));
        assert!(
            spreads.is_empty(),
            "20 new topics since the spread, not past 2 × 10"
        );
        assert_eq!(
            buckets_of(&puts),
            ["retain|d".to_string(), "retain|d/1".to_string()].into()
        );
        for p in &puts {
            let topic = p.op.key.range.as_deref().unwrap();
            if p.op.key.hash.contains('|') {
                assert_eq!(
                    p.op.key,
                    topic_index::spread_topic_key(IndexKind::Retained, topic, 2)
                );
                // Remembered unspread.
                assert_eq!(p.entry, topic_index::topic_key(IndexKind::Retained, topic));
            }
        }
        // A new window starts the count again; other levels and kinds are not spread.
        let (_, spreads) = ix.missing_at(&batch(200, 20), t0 + Duration::from_millis(1100));
        assert!(spreads.is_empty());
        assert_eq!(ix.levels().buckets(IndexKind::Offline, "d"), 1);
        assert_eq!(ix.levels().buckets(IndexKind::Retained, "e"), 1);
        // Known topics are not counted.
        let (_, spreads) = ix.missing_at(&batch(0, 10), t0 + Duration::from_millis(1200));
        assert!(spreads.is_empty());
    }

    #[test]
    fn a_zero_rate_never_spreads() {
        let ix = IndexedTopics::new(0);
        let ops: Vec<Op> = (0..5000).map(|i| retain(&format!("z/{i}"))).collect();
        let (puts, spreads) = ix.missing(&ops);
        assert!(spreads.is_empty());
        assert_eq!(buckets_of(&puts), ["retain|z".to_string()].into());
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
