//! The shared topic index, `mqtt_topic_index`: the topics of `mqtt_retain` and
//! `mqtt_topic_msg_map`, in a key shape that answers "which topics could match this filter" with
//! Queries, so every instance's wildcard lookups see every instance's topics without a Scan.
//!
//! Key shape (both attributes strings):
//!
//! | item | `bucket` (HASH) | `topic` (RANGE) |
//! |---|---|---|
//! | a topic | `<kind>\|<first level>`, or `<kind>\|<first level>/<shard>` once the level is spread | the topic name |
//! | its first level, in the directory | `<kind>` | the first level and its separator (`a/`; `/` for topics beginning with `/`) |
//! | a first level's spread, in the directory | `<kind>` | the level, its separator and the bucket count (`a/8`) |
//!
//! `kind` is `retain` for `mqtt_retain`'s topics and `msg` for `mqtt_topic_msg_map`'s. A
//! filter with a literal first level reads that level's buckets, only the range starting with
//! its literal prefix (`begins_with(topic, "a/b/")` for `a/b/+/c`); a filter starting with `+`
//! or `#` reads the kind's directory first, then the buckets of each first level it lists. The
//! directory's range key carries the separator because DynamoDB key strings cannot be empty, and
//! the first level of `/x` is. The directory's hash key has no `|`, so it never meets a bucket.
//!
//! **Spread levels.** One partition key takes at most 1,000 write units a second, so a first
//! level whose new topics arrive faster than that (a fleet of devices coming online under
//! `devices/`) is spread over `n` buckets, `n` a power of two up to [`MAX_BUCKETS`]: bucket 0 is
//! the unsuffixed `<kind>|<level>` (so a table written before spreading, or by
//! `tables build-index`, is read the same way), bucket `s > 0` is `<kind>|<level>/<s>`, and a
//! topic goes to bucket [`bucket_of`]`(topic, n)`. A level never contains `/`, so neither
//! suffix can be mistaken for another level's bucket. The directory records the spread as the
//! entry `<level>/<n>`; a level's bucket count is the largest its entries record (1 without
//! any). Counts only grow, and a writer puts the entry `<level>/<n>` (and sees it succeed)
//! before it writes to any bucket at or beyond the old count; so a reader that takes the count
//! from the directory and reads buckets `0..n` finds every topic put before its read, whichever
//! count the writer used (a topic put under a smaller count sits in a bucket below it). A topic
//! can end up in two buckets (put again after its level spread); readers merge them.
//! `pipeline::topic_index` decides when to spread.
//!
//! Items carry nothing but their key (about 30 bytes plus twice the topic: one write unit per
//! put). Entries are never deleted: once a topic's retained message is cleared or its message set
//! emptied its entry stays, and a lookup reading it finds no item behind it (harmless, costing a
//! key in a BatchGetItem). Topics longer than DynamoDB's 1,024-byte limit on a range key cannot be
//! indexed: a wildcard lookup does not find them (a literal one does).
//!
//! This module is pure (no I/O): the key shape, and which index puts a batch of writes calls
//! for. The pipeline (`pipeline::topic_index`) adds those puts to submissions, once per topic;
//! the lookups (`lookup::index`) query the table; `tables::build_topic_index` fills it from
//! tables written without it.

use super::item::{Item, Key, MAX_RANGE_KEY_BYTES, Op, Table, Write};

/// Which table's topics an entry lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKind {
    /// `mqtt_retain`'s topics (retained messages).
    Retained,
    /// `mqtt_topic_msg_map`'s topics (offline message sets).
    Offline,
}

impl IndexKind {
    pub const ALL: [IndexKind; 2] = [IndexKind::Retained, IndexKind::Offline];

    /// The kind as it starts a bucket name.
    pub fn tag(self) -> &'static str {
        match self {
            IndexKind::Retained => "retain",
            IndexKind::Offline => "msg",
        }
    }

    /// The table whose topics the kind lists.
    pub fn table(self) -> Table {
        match self {
            IndexKind::Retained => Table::Retain,
            IndexKind::Offline => Table::TopicMsgMap,
        }
    }

    /// The kind listing `table`'s topics, if any.
    pub fn of(table: Table) -> Option<IndexKind> {
        match table {
            Table::Retain => Some(IndexKind::Retained),
            Table::TopicMsgMap => Some(IndexKind::Offline),
            _ => None,
        }
    }

    /// As a metric label (`mqtt_dynamo_topic_index_writes_total{index}`).
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::Retained => "retained",
            IndexKind::Offline => "offline",
        }
    }
}

/// A topic's first level: up to the first `/` (empty for `/x`).
pub fn first_level(topic: &str) -> &str {
    topic.split('/').next().unwrap_or(topic)
}

/// The most buckets one first level is spread over (each takes 1,000 write units a second).
pub const MAX_BUCKETS: u32 = 256;

/// Bucket `shard` (hash key) of the topics of `kind` whose first level is `level`: bucket 0 is
/// the level's unspread bucket.
pub fn bucket(kind: IndexKind, level: &str, shard: u32) -> String {
    if shard == 0 {
        format!("{}|{level}", kind.tag())
    } else {
        format!("{}|{level}/{shard}", kind.tag())
    }
}

/// The bucket `topic` goes to in a level spread over `buckets` (a power of two; 1 for an unspread
/// level): FNV-1a of the topic's bytes, so every instance and version agrees.
pub fn bucket_of(topic: &str, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(buckets)) as u32
}

/// The directory's hash key for `kind`: its range keys are the first levels of its topics.
pub fn directory(kind: IndexKind) -> &'static str {
    kind.tag()
}

/// The directory range key of a first level (the level and its separator).
pub fn directory_entry(level: &str) -> String {
    format!("{level}/")
}

/// The directory range key recording that `level` is spread over `buckets` buckets.
pub fn spread_entry(level: &str, buckets: u32) -> String {
    format!("{level}/{buckets}")
}

/// The first level a directory range key names and the bucket count it records (1 for the
/// level's plain entry, and for a suffix that is not a count, which no writer puts).
pub fn parse_entry(entry: &str) -> (&str, u32) {
    match entry.split_once('/') {
        Some((level, count)) => (level, count.parse().unwrap_or(1).clamp(1, MAX_BUCKETS)),
        None => (entry, 1),
    }
}

/// The first level a directory range key names (the inverse of [`directory_entry`] and
/// [`spread_entry`]).
pub fn level_of_entry(entry: &str) -> &str {
    parse_entry(entry).0
}

/// The key of `topic`'s entry in an unspread level.
pub fn topic_key(kind: IndexKind, topic: &str) -> Key {
    spread_topic_key(kind, topic, 1)
}

/// The key of `topic`'s entry when its level is spread over `buckets` buckets.
pub fn spread_topic_key(kind: IndexKind, topic: &str, buckets: u32) -> Key {
    Key::with_range(
        Table::TopicIndex,
        bucket(kind, first_level(topic), bucket_of(topic, buckets)),
        topic,
    )
}

/// The key an index item would have had its level never been spread: a topic entry in bucket 0,
/// the directory entry of its level; `None` for an entry recording a spread. What a comparison of
/// tables that must list the same topics compares (where the writer spread a level is its own
/// affair).
pub fn unspread(key: &Key) -> Option<Key> {
    let range = key.range.as_deref()?;
    match key.hash.split_once('|') {
        Some((tag, level_and_shard)) => {
            let level = level_and_shard.split('/').next().unwrap_or(level_and_shard);
            Some(Key::with_range(
                Table::TopicIndex,
                format!("{tag}|{level}"),
                range,
            ))
        }
        None => {
            let (level, _) = range.split_once('/')?;
            (range.len() == level.len() + 1).then(|| key.clone())
        }
    }
}

/// The key of the directory entry of `topic`'s first level.
pub fn directory_key(kind: IndexKind, topic: &str) -> Key {
    Key::with_range(
        Table::TopicIndex,
        directory(kind),
        directory_entry(first_level(topic)),
    )
}

/// Whether `topic` fits the index's keys (non-empty, within the range-key limit, and so is its
/// directory entry; the bucket is always within the 2,048-byte hash-key limit then).
pub fn indexable(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_RANGE_KEY_BYTES
        && directory_entry(first_level(topic)).len() <= MAX_RANGE_KEY_BYTES
}

/// The two entries `topic` of `kind` needs: its own and its first level's in the directory.
/// Empty when the topic cannot be indexed ([`indexable`]).
pub fn entries(kind: IndexKind, topic: &str) -> Vec<Key> {
    if !indexable(topic) {
        return Vec::new();
    }
    vec![topic_key(kind, topic), directory_key(kind, topic)]
}

/// The put of one entry: the item is its key, nothing more.
pub fn put(key: Key) -> Op {
    let item: Item = key.to_item();
    Op {
        key,
        write: Write::Put { item, fresh: false },
    }
}

/// The topic `op` makes a lookup able to find, if any: any write of `mqtt_retain` or
/// `mqtt_topic_msg_map` that can create or fill an item (a retained message stored, message ids
/// added to a set), so everything but a delete, a retained message's tombstone and a set change
/// that only removes ids. Erring
/// towards indexing is safe (a stale entry is harmless, a missing one hides data), so a write
/// kind added later is indexed unless it is listed here as removing.
pub fn indexed_topic(op: &Op) -> Option<(IndexKind, &str)> {
    let kind = IndexKind::of(op.key.table)?;
    let adds = match &op.write {
        Write::Delete => false,
        Write::SetDelta { add, .. } => !add.is_empty(),
        // A retained set under event-time order adds a message; a tombstone (a clear) does not.
        Write::Timed(t) => t.set.contains_key("payload"),
        _ => true,
    };
    adds.then_some((kind, op.key.hash.as_str()))
}

/// Every index put `ops` call for, without any memory of what is indexed already (each entry
/// once, in order): what the tables must hold beside `ops`' items, for models and tests.
pub fn index_ops(ops: &[Op]) -> Vec<Op> {
    let mut seen = std::collections::BTreeSet::new();
    ops.iter()
        .filter_map(indexed_topic)
        .flat_map(|(kind, topic)| entries(kind, topic))
        .filter(|key| seen.insert(key.clone()))
        .map(put)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::Value;

    #[test]
    fn keys_of_topics_and_directory_entries() {
        assert_eq!(
            entries(IndexKind::Retained, "a/b/c"),
            [
                Key::with_range(Table::TopicIndex, "retain|a", "a/b/c"),
                Key::with_range(Table::TopicIndex, "retain", "a/"),
            ]
        );
        // The empty first level: its bucket ends at the separator, its entry is "/".
        assert_eq!(
            entries(IndexKind::Offline, "/x"),
            [
                Key::with_range(Table::TopicIndex, "msg|", "/x"),
                Key::with_range(Table::TopicIndex, "msg", "/"),
            ]
        );
        assert_eq!(level_of_entry("/"), "");
        assert_eq!(level_of_entry("a/"), "a");
        assert_eq!(parse_entry("a/"), ("a", 1));
        assert_eq!(parse_entry("a/8"), ("a", 8));
        assert_eq!(parse_entry("/4"), ("", 4));
        assert_eq!(parse_entry("a/x"), ("a", 1));
        assert_eq!(parse_entry("a/100000"), ("a", MAX_BUCKETS));
        assert_eq!(first_level("a"), "a");
        assert!(entries(IndexKind::Retained, &"x".repeat(1024)).is_empty());
        assert_eq!(entries(IndexKind::Retained, &"x".repeat(1023)).len(), 2);
        assert!(entries(IndexKind::Retained, "").is_empty());
    }

    #[test]
    fn spread_levels_keep_bucket_zero_unsuffixed_and_agree_on_buckets() {
        assert_eq!(bucket(IndexKind::Retained, "a", 0), "retain|a");
        assert_eq!(bucket(IndexKind::Retained, "a", 3), "retain|a/3");
        assert_eq!(bucket(IndexKind::Offline, "", 1), "msg|/1");
        assert_eq!(spread_entry("a", 8), "a/8");
        // Pinned: every instance and version must agree.
        assert_eq!(
            (0..6)
                .map(|i| bucket_of(&format!("a/{i}"), 8))
                .collect::<Vec<_>>(),
            [3, 0, 1, 6, 7, 4]
        );
        assert_eq!(bucket_of("a/1", 1), 0);
        let spread: std::collections::BTreeSet<u32> =
            (0..1000).map(|i| bucket_of(&format!("d/{i}"), 8)).collect();
        assert_eq!(spread, (0..8).collect());
        assert!((0..1000).all(|i| bucket_of(&format!("d/{i}"), 8) < 8));
        let key = spread_topic_key(IndexKind::Retained, "d/7", 8);
        assert_eq!(key.range.as_deref(), Some("d/7"));
        assert_eq!(key.hash, "retain|d/1");
        // Back to the unspread shape, for comparisons.
        assert_eq!(
            unspread(&Key::with_range(Table::TopicIndex, "retain|d/5", "d/7")),
            Some(Key::with_range(Table::TopicIndex, "retain|d", "d/7"))
        );
        assert_eq!(
            unspread(&Key::with_range(Table::TopicIndex, "msg|/2", "/x")),
            Some(Key::with_range(Table::TopicIndex, "msg|", "/x"))
        );
        let dir = Key::with_range(Table::TopicIndex, "retain", "d/");
        assert_eq!(unspread(&dir), Some(dir));
        assert_eq!(
            unspread(&Key::with_range(Table::TopicIndex, "retain", "d/8")),
            None
        );
    }

    #[test]
    fn which_writes_call_for_entries() {
        let retain = |w: Write| Op {
            key: Key::new(Table::Retain, "r/1"),
            write: w,
        };
        let map = |add: &[&str], del: &[&str]| Op {
            key: Key::new(Table::TopicMsgMap, "m/1"),
            write: Write::SetDelta {
                attr: "MsgId".into(),
                add: add.iter().map(|s| s.to_string()).collect(),
                del: del.iter().map(|s| s.to_string()).collect(),
                fresh: true,
            },
        };
        let put_retain = retain(Write::Put {
            item: Key::new(Table::Retain, "r/1").to_item(),
            fresh: false,
        });
        let ops = vec![
            put_retain.clone(),
            put_retain,
            retain(Write::Delete),
            map(&["id1"], &[]),
            map(&[], &["id2"]),
            Op {
                key: Key::new(Table::Msg, "id1"),
                write: Write::Delete,
            },
        ];
        let got = index_ops(&ops);
        let keys: Vec<&Key> = got.iter().map(|op| &op.key).collect();
        assert_eq!(
            keys,
            [
                &Key::with_range(Table::TopicIndex, "retain|r", "r/1"),
                &Key::with_range(Table::TopicIndex, "retain", "r/"),
                &Key::with_range(Table::TopicIndex, "msg|m", "m/1"),
                &Key::with_range(Table::TopicIndex, "msg", "m/"),
            ]
        );
        match &got[0].write {
            Write::Put { item, fresh } => {
                assert!(!fresh);
                assert_eq!(
                    item,
                    &Item::from([
                        ("bucket".to_string(), Value::S("retain|r".into())),
                        ("topic".to_string(), Value::S("r/1".into())),
                    ])
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
