//! The storage contract in types: the six seed tables and the shared topic index, their keys, attribute values and the write
//! operations the pipeline sends.
//!
//! These types are independent of the AWS SDK so the coalescer, the model and the tests can use them
//! without I/O; [`crate::storage::dynamo`] converts them to `AttributeValue`s at the edge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use super::limits::{
    KeyError, MAX_HASH_KEY_BYTES, MAX_ITEM_BYTES, MAX_RANGE_KEY_BYTES, check_key_part,
};

/// The seed's tables, and the topic index wildcard lookups read (`mqtt_topic_index`, not in the
/// seed: see [`crate::storage::topic_index`]). `mqtt_sub` is written by the subscription API, not
/// by hook actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `mqtt_client`: clientid (HASH).
    Client,
    /// `mqtt_sub`: clientid (HASH), topic (RANGE).
    Sub,
    /// `mqtt_msg`: msgid (HASH).
    Msg,
    /// `mqtt_topic_msg_map`: topic (HASH), `MsgId` string set.
    TopicMsgMap,
    /// `mqtt_retain`: topic (HASH).
    Retain,
    /// `mqtt_acked`: topic (HASH), clientid (RANGE).
    Acked,
    /// `mqtt_topic_index`: bucket (HASH), topic (RANGE); the topics of `mqtt_retain` and
    /// `mqtt_topic_msg_map`, shared by every instance (see [`crate::storage::topic_index`]).
    TopicIndex,
}

impl Table {
    /// How many tables there are: the size of every per-table array.
    pub const COUNT: usize = 7;

    /// Every table: the seed's six in the order the seed documents them, then the topic index.
    /// The spool encodes a table by its position here, so new tables go at the end.
    pub const ALL: [Table; Table::COUNT] = [
        Table::Client,
        Table::Sub,
        Table::Msg,
        Table::TopicMsgMap,
        Table::Retain,
        Table::Acked,
        Table::TopicIndex,
    ];

    /// The table's position in [`Table::ALL`] (the index of per-table arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The seed's table name (before any configured prefix).
    pub fn base_name(self) -> &'static str {
        match self {
            Table::Client => "mqtt_client",
            Table::Sub => "mqtt_sub",
            Table::Msg => "mqtt_msg",
            Table::TopicMsgMap => "mqtt_topic_msg_map",
            Table::Retain => "mqtt_retain",
            Table::Acked => "mqtt_acked",
            Table::TopicIndex => "mqtt_topic_index",
        }
    }

    /// Attribute names of the hash key and, for composite keys, the range key.
    pub fn key_names(self) -> (&'static str, Option<&'static str>) {
        match self {
            Table::Client => ("clientid", None),
            Table::Sub => ("clientid", Some("topic")),
            Table::Msg => ("msgid", None),
            Table::TopicMsgMap => ("topic", None),
            Table::Retain => ("topic", None),
            Table::Acked => ("topic", Some("clientid")),
            Table::TopicIndex => ("bucket", Some("topic")),
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base_name())
    }
}

/// The primary key of one item. Every key attribute of the tables is a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub table: Table,
    pub hash: String,
    pub range: Option<String>,
}

impl Key {
    pub fn new(table: Table, hash: impl Into<String>) -> Self {
        Key {
            table,
            hash: hash.into(),
            range: None,
        }
    }

    pub fn with_range(table: Table, hash: impl Into<String>, range: impl Into<String>) -> Self {
        Key {
            table,
            hash: hash.into(),
            range: Some(range.into()),
        }
    }

    /// The key as item attributes.
    pub fn to_item(&self) -> Item {
        let (hash_name, range_name) = self.table.key_names();
        let mut item = Item::new();
        item.insert(hash_name.to_string(), Value::S(self.hash.clone()));
        if let (Some(name), Some(range)) = (range_name, &self.range) {
            item.insert(name.to_string(), Value::S(range.clone()));
        }
        item
    }

    /// Bytes the key contributes to an item's size.
    pub fn size(&self) -> usize {
        let (hash_name, range_name) = self.table.key_names();
        hash_name.len()
            + self.hash.len()
            + range_name.map_or(0, str::len)
            + self.range.as_ref().map_or(0, String::len)
    }
}

/// An attribute value, restricted to the types the seed tables use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    S(String),
    /// DynamoDB numbers travel as strings; every number we write is an integer.
    N(i64),
    B(Vec<u8>),
    Ss(BTreeSet<String>),
}

impl Value {
    /// Size by DynamoDB's rules (the DynamoDB Developer Guide, "Item sizes and formats"): strings UTF-8 bytes, binary raw
    /// bytes, numbers about one byte per two significant digits plus one.
    pub fn size(&self) -> usize {
        match self {
            Value::S(s) => s.len(),
            Value::B(b) => b.len(),
            Value::N(n) => {
                // Significant digits (trailing zeros do not count), without allocating: this
                // runs for every attribute of every write, several times on its way.
                let mut v = n.unsigned_abs();
                while v != 0 && v % 10 == 0 {
                    v /= 10;
                }
                let digits = if v == 0 { 1 } else { v.ilog10() as usize + 1 };
                digits.div_ceil(2) + 1
            }
            Value::Ss(set) => set.iter().map(String::len).sum(),
        }
    }
}

/// One item: attribute name → value, key attributes included.
pub type Item = BTreeMap<String, Value>;

/// Item size by DynamoDB's rules: attribute names plus values.
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value.size())
        .sum()
}

/// One pending write to one key. [`crate::pipeline::coalesce`] merges these; [`crate::storage::dynamo`] sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Replace the whole item (BatchWriteItem PutRequest).
    Put {
        item: Item,
        /// Certain not to be in the table: the key is a message id (EMQX generates one per
        /// publish), no earlier write of it was seen, and no attempt that carried this put can
        /// have been applied. It lets put∘delete cancel to no write at all. Cleared by
        /// [`Write::maybe_applied`] (the certainty rule in [`crate::pipeline::coalesce`]).
        fresh: bool,
    },
    /// Remove the item (BatchWriteItem DeleteRequest).
    Delete,
    /// `SET` the given attributes (UpdateItem). With a guard, only if the item exists and the guard
    /// attribute currently holds the guard value; without one, an upsert.
    Update {
        set: BTreeMap<String, Value>,
        guard: Option<(String, Value)>,
    },
    /// `ADD` members to and `DELETE` members from one string-set attribute (UpdateItem). The two
    /// sets are disjoint, so their order does not matter; they go out as two requests because one
    /// expression cannot ADD and DELETE the same attribute.
    SetDelta {
        attr: String,
        add: BTreeSet<String>,
        del: BTreeSet<String>,
        /// Certain that no member of `add` is in the stored set (members are unique message ids
        /// and no attempt that carried them can have been applied), so a later DELETE of one
        /// simply withdraws the add. Cleared by [`Write::maybe_applied`]; then the DELETE is kept.
        fresh: bool,
    },
    /// A change ordered by the broker's event time (presence, retained messages; see [`Timed`]):
    /// an UpdateItem whose condition keeps an older event from overwriting a newer one.
    Timed(Timed),
}

/// The attribute holding the event time (broker milliseconds) of the last presence event or
/// retained message applied to an item: additive to the seed's schema.
pub const EVENT_MS: &str = "event_ms";
/// The attribute of `mqtt_client` holding the time of the connect applied last (milliseconds).
pub const CONNECTED_MS: &str = "connected_ms";

/// Which event-time condition a [`Timed`] write carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Applies unless a newer event is stored: `event_ms` missing or `<=` the write's time
    /// (retained set and clear).
    Newest,
    /// A connect on `node`: [`Order::Newest`], or the newer event stored is a disconnect from
    /// another node whose connect is older than this one (a takeover whose disconnect from the
    /// old node reached DynamoDB first, stamped after the new node's connect).
    Connect { node: String },
    /// A disconnect from `node`: only if the item exists, still names `node` (a late disconnect
    /// after a takeover is a no-op) and holds no newer event.
    Disconnect { node: String },
}

/// A write ordered by event time. `set` holds every attribute it writes (never the key's), the
/// event time included under [`EVENT_MS`]; `remove` the attributes it removes (a retained
/// message without an expiry removes the expiry of the one it replaces; a clear leaves a
/// tombstone holding only the key and [`EVENT_MS`]). A write whose condition fails is a no-op,
/// counted, never retried — unless it has an `or_else`, which is then sent in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    /// The broker's event time in milliseconds: what the condition compares (the `set` of a
    /// folded connect-then-disconnect stamps the disconnect's later time).
    pub at: u64,
    pub order: Order,
    pub set: BTreeMap<String, Value>,
    pub remove: BTreeSet<String>,
    /// Applied instead when the condition fails: a connect folded with its disconnect is
    /// "both, if the connect holds; else the disconnect alone, on its own condition".
    pub or_else: Option<Box<Timed>>,
}

/// Whether `item`'s `node` attribute is `node`.
pub fn names_node(item: &Item, node: &str) -> bool {
    matches!(item.get("node"), Some(Value::S(n)) if n == node)
}

impl Timed {
    /// Whether DynamoDB's condition holds on the stored `item` (`None`: no item).
    pub fn holds(&self, item: Option<&Item>) -> bool {
        let at = i64::try_from(self.at).unwrap_or(i64::MAX);
        let number = |item: &Item, name: &str| match item.get(name) {
            Some(Value::N(n)) => Some(*n),
            _ => None,
        };
        let newest = |item: &Item| number(item, EVENT_MS).is_none_or(|ev| ev <= at);
        match (&self.order, item) {
            (Order::Newest | Order::Connect { .. }, None) => true,
            (Order::Disconnect { .. }, None) => false,
            (Order::Newest, Some(item)) => newest(item),
            (Order::Connect { node }, Some(item)) => {
                newest(item)
                    || (!names_node(item, node)
                        && number(item, CONNECTED_MS).is_some_and(|c| c <= at))
            }
            (Order::Disconnect { node }, Some(item)) => names_node(item, node) && newest(item),
        }
    }

    /// `item` after this write: changed if its condition holds on it, else what its `or_else`
    /// makes of it (`None`: no item).
    pub fn apply(&self, key: &Key, item: Option<&Item>) -> Option<Item> {
        if !self.holds(item) {
            return match &self.or_else {
                Some(fallback) => fallback.apply(key, item),
                None => item.cloned(),
            };
        }
        let mut out = item.cloned().unwrap_or_else(|| key.to_item());
        for name in &self.remove {
            out.remove(name);
        }
        out.extend(self.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        Some(out)
    }

    /// Bytes it carries (its fallback's included), for the queue limits.
    pub fn size(&self) -> usize {
        self.set
            .iter()
            .map(|(k, v)| k.len() + v.size())
            .sum::<usize>()
            + self.remove.iter().map(String::len).sum::<usize>()
            + self.node().map_or(0, str::len)
            + self.or_else.as_ref().map_or(0, |f| f.size())
    }

    /// The node a presence write names, if any.
    pub fn node(&self) -> Option<&str> {
        match &self.order {
            Order::Newest => None,
            Order::Connect { node } | Order::Disconnect { node } => Some(node),
        }
    }
}

impl Write {
    /// Marks the write as possibly applied already (an attempt ended ambiguously, or it was
    /// replayed from the spool, or its key may have been written before): from now on a later
    /// delete of what it adds must be written, never cancelled (see [`crate::pipeline::coalesce`]).
    pub fn maybe_applied(&mut self) {
        match self {
            Write::Put { fresh, .. } | Write::SetDelta { fresh, .. } => *fresh = false,
            Write::Delete | Write::Update { .. } | Write::Timed(_) => {}
        }
    }

    /// Whether nothing this write adds can already be in the table (see [`Write::maybe_applied`]).
    pub fn is_fresh(&self) -> bool {
        matches!(
            self,
            Write::Put { fresh: true, .. } | Write::SetDelta { fresh: true, .. }
        )
    }

    /// Whether this write can travel in a BatchWriteItem (puts and deletes only).
    pub fn is_batchable(&self) -> bool {
        matches!(self, Write::Put { .. } | Write::Delete)
    }

    /// Number of DynamoDB requests the write takes.
    pub fn request_count(&self) -> usize {
        match self {
            Write::SetDelta { add, del, .. } => {
                set_chunks(add).max(usize::from(!add.is_empty()))
                    + set_chunks(del).max(usize::from(!del.is_empty()))
            }
            _ => 1,
        }
    }

    /// Approximate bytes the write carries (item size for puts, values for updates).
    pub fn size(&self) -> usize {
        match self {
            Write::Put { item, .. } => item_size(item),
            Write::Delete => 0,
            Write::Update { set, guard } => {
                set.iter().map(|(k, v)| k.len() + v.size()).sum::<usize>()
                    + guard.as_ref().map_or(0, |(k, v)| k.len() + v.size())
            }
            Write::SetDelta { attr, add, del, .. } => {
                attr.len() + add.iter().chain(del.iter()).map(String::len).sum::<usize>()
            }
            Write::Timed(t) => t.size(),
        }
    }
}

/// The most member bytes one UpdateItem of a set delta carries. A set delta merged over a long
/// window (a hot topic's `MsgId` ADDs) can grow past what one request may add to a 400 KB item;
/// it goes out as several UpdateItems of at most this many bytes each, in order.
pub const MAX_SET_CHUNK_BYTES: usize = 64 * 1024;

/// How many UpdateItems the members of `set` take (see [`MAX_SET_CHUNK_BYTES`]); the same count
/// as [`split_set`] without building the chunks (the coalescer asks for every write it takes).
pub fn set_chunks(set: &BTreeSet<String>) -> usize {
    let (mut chunks, mut bytes) = (0usize, 0usize);
    for m in set {
        if chunks > 0 && bytes + m.len() <= MAX_SET_CHUNK_BYTES {
            bytes += m.len();
        } else {
            chunks += 1;
            bytes = m.len();
        }
    }
    chunks
}

/// `set` in chunks of at most [`MAX_SET_CHUNK_BYTES`] member bytes (a member longer than that is
/// a chunk of its own), in member order.
pub fn split_set(set: &BTreeSet<String>) -> Vec<BTreeSet<String>> {
    let mut chunks: Vec<BTreeSet<String>> = Vec::new();
    let mut bytes = 0usize;
    for m in set {
        match chunks.last_mut() {
            Some(last) if bytes + m.len() <= MAX_SET_CHUNK_BYTES => {
                bytes += m.len();
                last.insert(m.clone());
            }
            _ => {
                bytes = m.len();
                chunks.push([m.clone()].into());
            }
        }
    }
    chunks
}

/// A write addressed to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: Key,
    pub write: Write,
}

impl Op {
    /// Bytes accounted for queue limits: key plus write.
    pub fn size(&self) -> usize {
        self.key.size() + self.write.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_size_follows_dynamodb_rules() {
        // The AWS example: {"shirt-color":"R","shirt-size":"M"} is 23 bytes.
        let mut item = Item::new();
        item.insert("shirt-color".into(), Value::S("R".into()));
        item.insert("shirt-size".into(), Value::S("M".into()));
        assert_eq!(item_size(&item), 23);
        assert_eq!(Value::N(0).size(), 2);
        assert_eq!(Value::N(1562308553).size(), 6);
        assert_eq!(Value::N(1000).size(), 2);
        assert_eq!(Value::N(-120).size(), 2);
        assert_eq!(Value::N(123).size(), 3);
        assert_eq!(Value::N(i64::MIN).size(), 11);
    }

    #[test]
    fn set_deltas_split_into_requests_dynamodb_accepts() {
        // 3,000 ids of 47 bytes (141 KB) make three chunks of at most 64 KB, in member order.
        let ids: BTreeSet<String> = (0..3000).map(|i| format!("{i:047}")).collect();
        let chunks = split_set(&ids);
        assert_eq!(chunks.len(), 3);
        assert_eq!(set_chunks(&ids), 3);
        assert!(
            chunks
                .iter()
                .all(|c| c.iter().map(String::len).sum::<usize>() <= MAX_SET_CHUNK_BYTES)
        );
        let joined: BTreeSet<String> = chunks.iter().flatten().cloned().collect();
        assert_eq!(joined, ids);
        assert!(chunks[0].last() < chunks[1].first());
        let w = Write::SetDelta {
            attr: "MsgId".into(),
            add: ids,
            del: ["x".to_string()].into(),
            fresh: true,
        };
        assert_eq!(w.request_count(), 4);
        assert!(split_set(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn maybe_applied_clears_the_certainty_of_puts_and_set_deltas_only() {
        let mut put = Write::Put {
            item: Item::new(),
            fresh: true,
        };
        assert!(put.is_fresh());
        put.maybe_applied();
        assert!(!put.is_fresh());
        let mut delta = Write::SetDelta {
            attr: "MsgId".into(),
            add: ["a".to_string()].into(),
            del: BTreeSet::new(),
            fresh: true,
        };
        delta.maybe_applied();
        assert!(!delta.is_fresh());
        let mut del = Write::Delete;
        del.maybe_applied();
        assert_eq!(del, Write::Delete);
    }

    #[test]
    fn table_positions_index_per_table_arrays() {
        for (i, table) in Table::ALL.iter().enumerate() {
            assert_eq!(table.index(), i, "{table}");
        }
        // The spool encodes tables by position: the seed's six keep theirs.
        assert_eq!(Table::Acked.index(), 5);
        assert_eq!(Table::TopicIndex.index(), Table::COUNT - 1);
    }

    #[test]
    fn set_delta_request_count() {
        let w = Write::SetDelta {
            attr: "MsgId".into(),
            add: ["a".to_string()].into(),
            del: ["b".to_string()].into(),
            fresh: true,
        };
        assert_eq!(w.request_count(), 2);
        assert!(!w.is_batchable());
        assert!(Write::Delete.is_batchable());
    }
}
