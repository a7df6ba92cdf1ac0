//! Tables and their items, sharded so concurrent requests rarely contend.
//!
//! Every item is filed under a [`StoreKey`] `(hash(partition key), partition key, sort key)`.
//! A table's items live in [`SHARDS`] shards split by the top bits of that hash, each a
//! `BTreeMap` behind its own `RwLock`. Because shards split the hash space into contiguous ranges,
//! "shard order, then key order" is one global, stable order: Scan pages and parallel-scan
//! segments (contiguous hash ranges) are plain range walks, and a cursor (`LastEvaluatedKey`) never
//! skips or repeats an item that exists for the whole scan, whatever is written meanwhile. All of
//! one partition key's items share a shard, so a Query is a range walk in one map.
//!
//! Locks are `std::sync` ones: they are never held across an `.await`, and critical sections are
//! one item write or one page of reads. Lock order: the table registry, then a shard, then the
//! table's token bucket.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use crate::capacity::Bucket;
use crate::config::Limits;
use crate::error::{ApiError, ThrottleKind};
use crate::number::Number;
use crate::value::{Item, Value};

/// Shards per table (a power of two; the shard is the hash's top `SHARD_BITS` bits).
pub const SHARDS: usize = 16;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// Partition keys are at most 2048 bytes, sort keys at most 1024.
const MAX_HASH_KEY_BYTES: usize = 2048;
const MAX_RANGE_KEY_BYTES: usize = 1024;

/// Above this many remembered key buckets a shard forgets the ones that are full again.
const KEY_BUCKET_PRUNE_START: usize = 4096;

/// The ARN the simulator reports for a table (account 000000000000, us-east-1).
pub fn table_arn(table: &str) -> String {
    format!("arn:aws:dynamodb:us-east-1:000000000000:table/{table}")
}

/// The scalar types a key attribute can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    S,
    N,
    B,
}

impl KeyType {
    pub fn parse(s: &str) -> Option<KeyType> {
        match s {
            "S" => Some(KeyType::S),
            "N" => Some(KeyType::N),
            "B" => Some(KeyType::B),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::S => "S",
            KeyType::N => "N",
            KeyType::B => "B",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttr {
    pub name: String,
    pub ty: KeyType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    PayPerRequest,
    Provisioned { read: u64, write: u64 },
}

/// What CreateTable fixed about a table.
#[derive(Debug, Clone)]
pub struct Schema {
    pub name: String,
    pub hash: KeyAttr,
    pub range: Option<KeyAttr>,
    pub billing: Billing,
    /// Seconds since the epoch (DescribeTable's `CreationDateTime`).
    pub created: f64,
    pub id: String,
}

/// One key attribute's value as it orders in the table. `Lo`/`Hi` are bounds for range walks
/// and never stored; `Absent` is the sort key of a hash-only table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    Lo,
    Absent,
    S(String),
    N(Number),
    B(Vec<u8>),
    Hi,
}

impl KeyPart {
    /// The attribute value of a stored key part.
    pub fn to_value(&self) -> Option<Value> {
        match self {
            KeyPart::S(s) => Some(Value::S(s.clone())),
            KeyPart::N(n) => Some(Value::N(n.clone())),
            KeyPart::B(b) => Some(Value::B(b.clone())),
            KeyPart::Lo | KeyPart::Absent | KeyPart::Hi => None,
        }
    }

    /// The key part of `value` when it has the key's type.
    pub fn of(value: &Value, ty: KeyType) -> Option<KeyPart> {
        match (value, ty) {
            (Value::S(s), KeyType::S) => Some(KeyPart::S(s.clone())),
            (Value::N(n), KeyType::N) => Some(KeyPart::N(n.clone())),
            (Value::B(b), KeyType::B) => Some(KeyPart::B(b.clone())),
            _ => None,
        }
    }
}

/// Where an item is filed; ordered by hash, then partition key, then sort key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreKey {
    pub hash: u64,
    pub pk: KeyPart,
    pub sk: KeyPart,
}

impl StoreKey {
    /// The lowest key with this hash (a segment or shard start).
    pub fn hash_start(hash: u64) -> StoreKey {
        StoreKey {
            hash,
            pk: KeyPart::Lo,
            sk: KeyPart::Lo,
        }
    }

    pub fn shard(&self) -> usize {
        shard_of(self.hash)
    }
}

pub fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARD_BITS)) as usize
}

/// Stable hash of a partition key: FNV-1a over a type tag and the canonical bytes, then the
/// SplitMix64 finaliser so the top bits (shard, segment) are well spread.
pub fn hash_key(pk: &KeyPart) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match pk {
        KeyPart::S(s) => {
            feed(b"S");
            feed(s.as_bytes());
        }
        KeyPart::N(n) => {
            feed(b"N");
            feed(n.to_string().as_bytes());
        }
        KeyPart::B(b) => {
            feed(b"B");
            feed(b);
        }
        KeyPart::Lo | KeyPart::Absent | KeyPart::Hi => feed(b"-"),
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An item with its size computed once.
#[derive(Debug, Clone)]
pub struct Stored {
    pub item: Item,
    pub size: usize,
}

/// One shard: its items and the token buckets of its partition keys.
#[derive(Debug, Default)]
pub struct Shard {
    /// Written only through [`Shard::put`] / [`Shard::remove`], which keep `bytes` in step.
    items: BTreeMap<StoreKey, Stored>,
    /// Total item bytes, so stats and DescribeTable need not walk the items.
    bytes: u64,
    /// Per partition key, only while `key_wcu` is set; forgotten once full again (pruned when
    /// the map grows past `prune_at`, which then doubles), so memory follows the hot keys.
    key_buckets: HashMap<KeyPart, Bucket>,
    prune_at: usize,
}

/// A table: schema, shards and the table-wide token bucket.
#[derive(Debug)]
pub struct Table {
    pub schema: Schema,
    pub shards: Vec<RwLock<Shard>>,
    /// The `table_wcu` bucket, created full on first use.
    bucket: Mutex<Option<Bucket>>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding a lock cannot leave an item half-written (writes are single
    // inserts/removes), so a poisoned lock is still consistent.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Table {
    pub fn new(schema: Schema) -> Table {
        Table {
            schema,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            bucket: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.schema.name
    }

    pub fn read_shard(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        read(&self.shards[shard])
    }

    pub fn write_shard(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        write(&self.shards[shard])
    }

    /// Item count and total item bytes.
    pub fn totals(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(n, bytes), s| {
            let s = read(s);
            (n + s.items.len() as u64, bytes + s.bytes)
        })
    }

    /// Charges `units` to the key's and the table's buckets, or says which one is short.
    /// Both are checked before either is charged, so a rejected write costs nothing.
    pub fn try_charge(
        &self,
        shard: &mut Shard,
        pk: &KeyPart,
        units: u64,
        limits: &Limits,
        now: Instant,
    ) -> Result<(), ThrottleKind> {
        let cost = units as f64;
        let key_limit = limits.key_wcu.map(|rate| {
            let rate = f64::from(rate);
            (rate, rate * limits.burst_seconds)
        });
        let table_limit = limits.table_wcu.map(|rate| {
            let rate = f64::from(rate);
            (rate, rate * limits.burst_seconds)
        });
        if let Some((rate, capacity)) = key_limit {
            shard.prune_key_buckets(rate, capacity, now);
            let bucket = shard
                .key_buckets
                .entry(pk.clone())
                .or_insert_with(|| Bucket::full(capacity, now));
            bucket.refill(rate, capacity, now);
        }
        let mut table_bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((rate, capacity)) = table_limit {
            let bucket = table_bucket.get_or_insert_with(|| Bucket::full(capacity, now));
            bucket.refill(rate, capacity, now);
            if !bucket.fits(cost, capacity) {
                return Err(ThrottleKind::Table);
            }
        }
        if let Some((_, capacity)) = key_limit {
            let bucket = &shard.key_buckets[pk];
            if !bucket.fits(cost, capacity) {
                return Err(ThrottleKind::Key);
            }
        }
        if table_limit.is_some()
            && let Some(bucket) = table_bucket.as_mut()
        {
            bucket.take(cost);
        }
        if key_limit.is_some()
            && let Some(bucket) = shard.key_buckets.get_mut(pk)
        {
            bucket.take(cost);
        }
        Ok(())
    }
}

impl Shard {
    pub fn items(&self) -> &BTreeMap<StoreKey, Stored> {
        &self.items
    }

    pub fn put(&mut self, key: StoreKey, stored: Stored) -> Option<Stored> {
        self.bytes += stored.size as u64;
        let old = self.items.insert(key, stored);
        if let Some(old) = &old {
            self.bytes -= old.size as u64;
        }
        old
    }

    pub fn remove(&mut self, key: &StoreKey) -> Option<Stored> {
        let old = self.items.remove(key);
        if let Some(old) = &old {
            self.bytes -= old.size as u64;
        }
        old
    }

    fn prune_key_buckets(&mut self, rate: f64, capacity: f64, now: Instant) {
        if self.key_buckets.len() < self.prune_at.max(KEY_BUCKET_PRUNE_START) {
            return;
        }
        self.key_buckets.retain(|_, b| {
            b.refill(rate, capacity, now);
            !b.is_full(capacity)
        });
        self.prune_at = (self.key_buckets.len() * 2).max(KEY_BUCKET_PRUNE_START);
    }
}

impl Schema {
    /// Key of an item being put: every key attribute present, of its type, non-empty, in size.
    pub fn key_of_item(&self, item: &Item) -> Result<StoreKey, ApiError> {
        let part = |attr: &KeyAttr| -> Result<KeyPart, ApiError> {
            let value = item.get(&attr.name).ok_or_else(|| {
                ApiError::validation(format!(
                    "One or more parameter values were invalid: Missing the key {} in the item",
                    attr.name
                ))
            })?;
            KeyPart::of(value, attr.ty).ok_or_else(|| {
                ApiError::validation(format!(
                    "One or more parameter values were invalid: Type mismatch for key {} expected: {} actual: {}",
                    attr.name,
                    attr.ty.as_str(),
                    value.type_name()
                ))
            })
        };
        let pk = part(&self.hash)?;
        let sk = match &self.range {
            Some(r) => part(r)?,
            None => KeyPart::Absent,
        };
        self.finish_key(pk, sk)
    }

    /// Key of a `Key` parameter: exactly the key attributes, of their types.
    pub fn key_of_key(&self, key: &Item) -> Result<StoreKey, ApiError> {
        let mismatch =
            || ApiError::validation("The provided key element does not match the schema");
        let expected = 1 + usize::from(self.range.is_some());
        if key.len() != expected {
            return Err(mismatch());
        }
        let part = |attr: &KeyAttr| {
            key.get(&attr.name)
                .and_then(|v| KeyPart::of(v, attr.ty))
                .ok_or_else(mismatch)
        };
        let pk = part(&self.hash)?;
        let sk = match &self.range {
            Some(r) => part(r)?,
            None => KeyPart::Absent,
        };
        self.finish_key(pk, sk)
    }

    fn finish_key(&self, pk: KeyPart, sk: KeyPart) -> Result<StoreKey, ApiError> {
        check_key_part(&self.hash.name, &pk, MAX_HASH_KEY_BYTES)?;
        if let Some(r) = &self.range {
            check_key_part(&r.name, &sk, MAX_RANGE_KEY_BYTES)?;
        }
        Ok(StoreKey {
            hash: hash_key(&pk),
            pk,
            sk,
        })
    }

    /// The key attributes of a stored key, as an item (`LastEvaluatedKey`, `UnprocessedKeys`).
    pub fn key_item(&self, key: &StoreKey) -> Item {
        let mut item = Item::new();
        if let Some(v) = key.pk.to_value() {
            item.insert(self.hash.name.clone(), v);
        }
        if let (Some(r), Some(v)) = (&self.range, key.sk.to_value()) {
            item.insert(r.name.clone(), v);
        }
        item
    }

    /// Whether `name` is one of the key attributes.
    pub fn is_key_attr(&self, name: &str) -> bool {
        self.hash.name == name || self.range.as_ref().is_some_and(|r| r.name == name)
    }
}

fn check_key_part(name: &str, part: &KeyPart, max: usize) -> Result<(), ApiError> {
    let (len, kind) = match part {
        KeyPart::S(s) => (s.len(), "string"),
        KeyPart::B(b) => (b.len(), "binary"),
        KeyPart::N(n) => (n.size(), "number"),
        _ => return Ok(()),
    };
    if len == 0 {
        return Err(ApiError::validation(format!(
            "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {kind} value. Key: {name}"
        )));
    }
    if len > max {
        return Err(ApiError::validation(if max == MAX_HASH_KEY_BYTES {
            format!(
                "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of {MAX_HASH_KEY_BYTES} bytes"
            )
        } else {
            format!(
                "One or more parameter values were invalid: Aggregated size of all range keys has exceeded the size limit of {MAX_RANGE_KEY_BYTES} bytes"
            )
        }));
    }
    Ok(())
}

/// All tables, by name (ordered for ListTables).
#[derive(Debug, Default)]
pub struct Store {
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
}

impl Store {
    pub fn get(&self, name: &str) -> Option<Arc<Table>> {
        read(&self.tables).get(name).cloned()
    }

    pub fn create(&self, schema: Schema) -> Result<Arc<Table>, ApiError> {
        let mut tables = write(&self.tables);
        if tables.contains_key(&schema.name) {
            return Err(ApiError::in_use(format!(
                "Table already exists: {}",
                schema.name
            )));
        }
        let table = Arc::new(Table::new(schema));
        tables.insert(table.name().to_owned(), table.clone());
        Ok(table)
    }

    pub fn delete(&self, name: &str) -> Option<Arc<Table>> {
        write(&self.tables).remove(name)
    }

    pub fn names(&self) -> Vec<String> {
        read(&self.tables).keys().cloned().collect()
    }

    pub fn tables(&self) -> Vec<Arc<Table>> {
        read(&self.tables).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_hash_space_in_order() {
        assert_eq!(shard_of(0), 0);
        assert_eq!(shard_of(u64::MAX), SHARDS - 1);
        assert_eq!(shard_of(1 << 60), 1);
        let a = hash_key(&KeyPart::S("a".into()));
        assert_eq!(a, hash_key(&KeyPart::S("a".into())));
        assert_ne!(a, hash_key(&KeyPart::S("b".into())));
    }

    #[test]
    fn shard_keeps_byte_totals() {
        let key = |s: &str| {
            let pk = KeyPart::S(s.into());
            StoreKey {
                hash: hash_key(&pk),
                pk,
                sk: KeyPart::Absent,
            }
        };
        let stored = |size| Stored {
            item: Item::new(),
            size,
        };
        let mut shard = Shard::default();
        shard.put(key("a"), stored(100));
        shard.put(key("b"), stored(50));
        shard.put(key("a"), stored(30));
        assert_eq!(shard.bytes, 80);
        shard.remove(&key("b"));
        shard.remove(&key("missing"));
        assert_eq!((shard.items().len(), shard.bytes), (1, 30));
    }

    #[test]
    fn bounds_enclose_stored_parts() {
        let s = KeyPart::S(String::new());
        assert!(KeyPart::Lo < KeyPart::Absent && KeyPart::Absent < s && s < KeyPart::Hi);
        let n = KeyPart::N(Number::parse("-1e100").unwrap());
        assert!(KeyPart::Lo < n && n < KeyPart::Hi);
    }
}
