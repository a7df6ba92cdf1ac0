//! The shared topic index, `mqtt_topic_index`: the topics of `mqtt_retain` and
//! `mqtt_topic_msg_map`, in a key shape that answers "which topics could match this filter" with
//! Queries, so every instance's wildcard lookups see every instance's topics without a Scan.
//!
//! Key shape (both attributes strings):
//!
//! | item | `bucket` (HASH) | `topic` (RANGE) |
//! |---|---|---|
//! | a topic | `<kind>\|<first level>` | the topic name |
//! | its first level, in the directory | `<kind>` | the first level and its separator (`a/`; `/` for topics beginning with `/`) |
//!
//! `kind` is `retain` for `mqtt_retain`'s topics and `msg` for `mqtt_topic_msg_map`'s. A
//! filter with a literal first level reads one bucket, only the range starting with its literal
//! prefix (`begins_with(topic, "a/b/")` for `a/b/+/c`); a filter starting with `+` or `#` reads
//! the kind's directory first, then the bucket of each first level it lists. The directory's
//! range key carries the separator because DynamoDB key strings cannot be empty, and the first
//! level of `/x` is. The directory's hash key has no `|`, so it never meets a bucket.
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

/// The bucket (hash key) of the topics of `kind` whose first level is `level`.
pub fn bucket(kind: IndexKind, level: &str) -> String {
    format!("{}|{level}", kind.tag())
}

/// The directory's hash key for `kind`: its range keys are the first levels of its topics.
pub fn directory(kind: IndexKind) -> &'static str {
    kind.tag()
}

/// The directory range key of a first level (the level and its separator).
pub fn directory_entry(level: &str) -> String {
    format!("{level}/")
}

/// The first level a directory range key names (the inverse of [`directory_entry`]).
pub fn level_of_entry(entry: &str) -> &str {
    entry.strip_suffix('/').unwrap_or(entry)
}

/// The key of `topic`'s entry.
pub fn topic_key(kind: IndexKind, topic: &str) -> Key {
    Key::with_range(Table::TopicIndex, bucket(kind, first_level(topic)), topic)
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
        assert_eq!(first_level("a"), "a");
        assert!(entries(IndexKind::Retained, &"x".repeat(1024)).is_empty());
        assert_eq!(entries(IndexKind::Retained, &"x".repeat(1023)).len(), 2);
        assert!(entries(IndexKind::Retained, "").is_empty());
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
