//! GetItem, BatchGetItem, Query and Scan: key conditions, 1 MB pages, cursors, segments.
//!
//! Query and Scan walk the store's global order `(hash, partition key, sort key)` (see
//! [`crate::store`]); `LastEvaluatedKey` is the last item evaluated, and the next page starts
//! strictly after it. A page stops after `Limit` items evaluated or once the evaluated items
//! reach 1 MB (the item that crosses the line is included), like DynamoDB.

use std::collections::HashSet;
use std::ops::Bound;

use serde_json::{Map, Value as Json, json};

use super::{Req, enum_error};
use crate::error::ApiError;
use crate::expr::{CmpOp, Cond, ExprKind, Operand, Path, project};
use crate::state::Shared;
use crate::stats::add;
use crate::store::{KeyPart, SHARDS, Schema, StoreKey, Stored, Table, hash_key, shard_of};
use crate::value::{Item, Value, item_to_json, parse_item};

/// Query and Scan pages hold at most 1 MB of (pre-filter, pre-projection) item data.
const PAGE_BYTES: usize = 1024 * 1024;
/// BatchGetItem reads at most 100 keys ...
const MAX_BATCH_GET_KEYS: usize = 100;
/// ... and returns at most 16 MB; the rest goes to `UnprocessedKeys`.
const BATCH_GET_BYTES: usize = 16 * 1024 * 1024;

pub fn get_item(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    req.reject_legacy()?;
    let table = req.table(sim)?;
    let key = req.key(&table)?;
    let mut ctx = req.expr_context()?;
    let projection = req.projection(&mut ctx)?;
    ctx.finish()?;
    req.bool("ConsistentRead")?;
    let shard = table.read_shard(key.shard());
    let Some(stored) = shard.items().get(&key) else {
        return Ok(json!({}));
    };
    let item = shape(&stored.item, projection.as_deref());
    drop(shard);
    add(&sim.stats.items_read, 1);
    Ok(json!({ "Item": item_to_json(&item) }))
}

fn shape(item: &Item, projection: Option<&[Path]>) -> Item {
    match projection {
        Some(paths) => project(item, paths),
        None => item.clone(),
    }
}

/// One table's part of a BatchGetItem.
struct GetRequest<'a> {
    table: std::sync::Arc<Table>,
    keys: Vec<(StoreKey, &'a Json)>,
    projection: Option<Vec<Path>>,
    /// `KeysAndAttributes` minus `Keys`, echoed in `UnprocessedKeys`.
    options: Map<String, Json>,
}

pub fn batch_get_item(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    let request_items = req.request_items()?;
    check_key_counts(request_items)?;
    let requests = request_items
        .iter()
        .map(|(name, kaa)| get_request(sim, name, kaa))
        .collect::<Result<Vec<_>, _>>()?;

    let (_, rate) = sim.faults.batch_rates();
    let mut responses = Map::new();
    let mut unprocessed = Map::new();
    let mut bytes = 0usize;
    let (mut read, mut left) = (0u64, 0u64);
    for r in &requests {
        let mut items = Vec::new();
        let mut later = Vec::new();
        for (key, raw) in &r.keys {
            if sim.faults.roll(rate) {
                later.push((*raw).clone());
                continue;
            }
            let shard = r.table.read_shard(key.shard());
            let Some(stored) = shard.items().get(key) else {
                continue;
            };
            if bytes + stored.size > BATCH_GET_BYTES {
                later.push((*raw).clone());
                continue;
            }
            bytes += stored.size;
            items.push(item_to_json(&shape(&stored.item, r.projection.as_deref())));
            read += 1;
        }
        responses.insert(r.table.name().to_owned(), Json::Array(items));
        if !later.is_empty() {
            left += later.len() as u64;
            let mut kaa = r.options.clone();
            kaa.insert("Keys".into(), Json::Array(later));
            unprocessed.insert(r.table.name().to_owned(), Json::Object(kaa));
        }
    }
    add(&sim.stats.items_read, read);
    add(&sim.stats.unprocessed_keys, left);
    Ok(json!({ "Responses": responses, "UnprocessedKeys": unprocessed }))
}

/// Checks that every table asks for 1 or more keys, and at most 100 in all.
fn check_key_counts(request_items: &Map<String, Json>) -> Result<(), ApiError> {
    super::count_batch(
        request_items,
        MAX_BATCH_GET_KEYS,
        "BatchGetItem",
        |name, kaa| {
            let keys = Req(kaa
                .as_object()
                .ok_or_else(|| ApiError::serialization("KeysAndAttributes must be an object"))?)
            .arr("Keys")?
            .ok_or_else(|| ApiError::missing(&format!("requestItems.{name}.member.keys")))?;
            if keys.is_empty() {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '[]' at 'requestItems.{name}.member.keys' failed to satisfy constraint: Member must have length greater than or equal to 1"
                )));
            }
            Ok(keys)
        },
    )?;
    Ok(())
}

/// One table's part of a BatchGetItem, validated (`kaa` is its `KeysAndAttributes`).
fn get_request<'a>(sim: &Shared, name: &str, kaa: &'a Json) -> Result<GetRequest<'a>, ApiError> {
    super::check_table_name(name)?;
    let table = sim.store.get(name).ok_or_else(ApiError::not_found)?;
    let kaa_map = kaa.as_object().expect("checked by check_key_counts");
    let r = Req(kaa_map);
    r.reject_legacy()?;
    if r.get("ExpressionAttributeValues").is_some() {
        return Err(ApiError::validation(
            "ExpressionAttributeValues can only be specified when using expressions",
        ));
    }
    let mut ctx = r.expr_context()?;
    let projection = r.projection(&mut ctx)?;
    ctx.finish()?;
    r.bool("ConsistentRead")?;
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for raw in r.arr("Keys")?.into_iter().flatten() {
        let key = table.schema.key_of_key(&parse_item(raw)?)?;
        if !seen.insert(key.clone()) {
            return Err(ApiError::validation(
                "Provided list of item keys contains duplicates",
            ));
        }
        keys.push((key, raw));
    }
    let mut options = kaa_map.clone();
    options.remove("Keys");
    Ok(GetRequest {
        table,
        keys,
        projection,
        options,
    })
}

/// What Query and Scan share: filter, projection, Select, Limit, and the page being built.
struct Page {
    filter: Option<Cond>,
    projection: Option<Vec<Path>>,
    count_only: bool,
    limit: usize,
    items: Vec<Json>,
    count: usize,
    scanned: usize,
    bytes: usize,
    last: Option<StoreKey>,
}

impl Page {
    fn new(
        req: &Req,
        kind_for_filter: ExprKind,
    ) -> Result<(Page, crate::expr::ExprContext), ApiError> {
        let mut ctx = req.expr_context()?;
        let filter = req.condition(&mut ctx, "FilterExpression", kind_for_filter)?;
        let projection = req.projection(&mut ctx)?;
        let select = req.str("Select")?;
        let count_only = match select {
            None | Some("ALL_ATTRIBUTES") | Some("SPECIFIC_ATTRIBUTES") => false,
            Some("COUNT") => true,
            Some("ALL_PROJECTED_ATTRIBUTES") => {
                return Err(ApiError::validation(
                    "ALL_PROJECTED_ATTRIBUTES can be used only when Querying using an IndexName",
                ));
            }
            Some(other) => {
                return Err(enum_error(
                    "select",
                    other,
                    "[SPECIFIC_ATTRIBUTES, COUNT, ALL_ATTRIBUTES, ALL_PROJECTED_ATTRIBUTES]",
                ));
            }
        };
        if projection.is_some() && matches!(select, Some("ALL_ATTRIBUTES") | Some("COUNT")) {
            return Err(ApiError::validation(format!(
                "Cannot specify the ProjectionExpression when choosing to get {}",
                select.unwrap_or_default()
            )));
        }
        let limit = match req.int("Limit")? {
            None => usize::MAX,
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
                )));
            }
        };
        req.bool("ConsistentRead")?;
        Ok((
            Page {
                filter,
                projection,
                count_only,
                limit,
                items: Vec::new(),
                count: 0,
                scanned: 0,
                bytes: 0,
                last: None,
            },
            ctx,
        ))
    }

    /// Evaluates one item; false once the page is full (its cursor is then set).
    fn visit(&mut self, key: &StoreKey, stored: &Stored) -> bool {
        self.scanned += 1;
        self.bytes += stored.size;
        if self.filter.as_ref().is_none_or(|f| f.eval(&stored.item)) {
            self.count += 1;
            if !self.count_only {
                let item = match &self.projection {
                    Some(paths) => item_to_json(&project(&stored.item, paths)),
                    None => item_to_json(&stored.item),
                };
                self.items.push(item);
            }
        }
        if self.scanned >= self.limit || self.bytes >= PAGE_BYTES {
            self.last = Some(key.clone());
            return false;
        }
        true
    }

    fn finish(self, sim: &Shared, table: &Table) -> Json {
        add(&sim.stats.items_read, self.scanned as u64);
        let mut out = json!({ "Count": self.count, "ScannedCount": self.scanned });
        if !self.count_only {
            out["Items"] = Json::Array(self.items);
        }
        if let Some(last) = &self.last {
            out["LastEvaluatedKey"] = item_to_json(&table.schema.key_item(last));
        }
        out
    }
}

/// `ExclusiveStartKey`, checked against the schema.
fn start_key(req: &Req, table: &Table) -> Result<Option<StoreKey>, ApiError> {
    req.get("ExclusiveStartKey")
        .map(|k| {
            parse_item(k)
                .and_then(|k| table.schema.key_of_key(&k))
                .map_err(|e| {
                    ApiError::validation(format!(
                        "The provided starting key is invalid: {}",
                        e.message
                    ))
                })
        })
        .transpose()
}

/// The sort-key range of a key condition: bounds plus, for `begins_with`, the prefix.
struct RangeCond {
    lo: Bound<KeyPart>,
    hi: Bound<KeyPart>,
    prefix: Option<KeyPart>,
}

fn invalid_operator(what: &str) -> ApiError {
    ApiError::validation(format!(
        "Invalid operator used in KeyConditionExpression: {what}"
    ))
}

fn key_condition(table: &Table, cond: Cond) -> Result<(KeyPart, RangeCond), ApiError> {
    let schema = &table.schema;
    let mut hash = None;
    let mut range = RangeCond {
        lo: Bound::Unbounded,
        hi: Bound::Unbounded,
        prefix: None,
    };
    let mut has_range = false;
    for term in key_terms(cond)? {
        let term = path_first(term);
        if let Cond::Cmp(Operand::Path(p), CmpOp::Eq, Operand::Value(v)) = &term
            && p.as_attr() == Some(schema.hash.name.as_str())
            && hash.is_none()
        {
            hash = Some(key_part(schema, &schema.hash.name, v)?);
            continue;
        }
        if !has_range && let Some(r) = range_cond(schema, &term)? {
            range = r;
            has_range = true;
            continue;
        }
        return Err(match term {
            Cond::Cmp(Operand::Path(p), ..)
            | Cond::Between(Operand::Path(p), ..)
            | Cond::BeginsWith(Operand::Path(p), ..)
                if !schema.is_key_attr(p.top()) =>
            {
                missed_hash_key(schema)
            }
            _ => ApiError::validation("Query key condition not supported"),
        });
    }
    Ok((hash.ok_or_else(|| missed_hash_key(schema))?, range))
}

fn missed_hash_key(schema: &Schema) -> ApiError {
    ApiError::validation(format!(
        "Query condition missed key schema element: {}",
        schema.hash.name
    ))
}

/// The terms of a key condition joined by AND: at most two, and no OR or NOT.
fn key_terms(cond: Cond) -> Result<Vec<Cond>, ApiError> {
    let mut terms = Vec::new();
    let mut stack = vec![cond];
    while let Some(c) = stack.pop() {
        match c {
            Cond::And(a, b) => {
                stack.push(*b);
                stack.push(*a);
            }
            Cond::Or(..) => return Err(invalid_operator("OR")),
            Cond::Not(..) => return Err(invalid_operator("NOT")),
            other => terms.push(other),
        }
    }
    if terms.len() > 2 {
        return Err(ApiError::validation(
            "Invalid KeyConditionExpression: The expression has too many conditions; a key condition names the partition key and at most one sort key condition",
        ));
    }
    Ok(terms)
}

/// Normalises `:v op path` to `path op' :v`.
fn path_first(term: Cond) -> Cond {
    match term {
        Cond::Cmp(Operand::Value(v), op, Operand::Path(p)) => {
            let flipped = match op {
                CmpOp::Lt => CmpOp::Gt,
                CmpOp::Le => CmpOp::Ge,
                CmpOp::Gt => CmpOp::Lt,
                CmpOp::Ge => CmpOp::Le,
                other => other,
            };
            Cond::Cmp(Operand::Path(p), flipped, Operand::Value(v))
        }
        other => other,
    }
}

/// A key attribute's value as a key part of the schema's type.
fn key_part(schema: &Schema, name: &str, value: &Value) -> Result<KeyPart, ApiError> {
    let ty = if name == schema.hash.name {
        schema.hash.ty
    } else {
        schema
            .range
            .as_ref()
            .map(|r| r.ty)
            .expect("range key checked")
    };
    KeyPart::of(value, ty).ok_or_else(|| {
        ApiError::validation(
            "One or more parameter values were invalid: Condition parameter type does not match schema type",
        )
    })
}

/// The sort-key range of `term` if it is a condition on the sort key, `None` otherwise.
fn range_cond(schema: &Schema, term: &Cond) -> Result<Option<RangeCond>, ApiError> {
    let is_range = |p: &Path| {
        schema
            .range
            .as_ref()
            .is_some_and(|r| p.as_attr() == Some(r.name.as_str()))
    };
    let (lo, hi, prefix) = match term {
        Cond::Cmp(Operand::Path(p), op, Operand::Value(v)) if is_range(p) => {
            let k = key_part(schema, p.top(), v)?;
            let (lo, hi) = match op {
                CmpOp::Eq => (Bound::Included(k.clone()), Bound::Included(k)),
                CmpOp::Lt => (Bound::Unbounded, Bound::Excluded(k)),
                CmpOp::Le => (Bound::Unbounded, Bound::Included(k)),
                CmpOp::Gt => (Bound::Excluded(k), Bound::Unbounded),
                CmpOp::Ge => (Bound::Included(k), Bound::Unbounded),
                CmpOp::Ne => return Err(invalid_operator("<>")),
            };
            (lo, hi, None)
        }
        Cond::Between(Operand::Path(p), Operand::Value(a), Operand::Value(b)) if is_range(p) => {
            let (a, b) = (key_part(schema, p.top(), a)?, key_part(schema, p.top(), b)?);
            if a > b {
                return Err(ApiError::validation(
                    "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal to lower bound",
                ));
            }
            (Bound::Included(a), Bound::Included(b), None)
        }
        Cond::BeginsWith(Operand::Path(p), Operand::Value(v)) if is_range(p) => {
            let k = key_part(schema, p.top(), v)?;
            if matches!(k, KeyPart::N(_)) {
                return Err(ApiError::validation(
                    "Invalid KeyConditionExpression: Incorrect operand type for operator or function; operator or function: begins_with, operand type: N",
                ));
            }
            (Bound::Included(k.clone()), Bound::Unbounded, Some(k))
        }
        _ => return Ok(None),
    };
    Ok(Some(RangeCond { lo, hi, prefix }))
}

fn has_prefix(sk: &KeyPart, prefix: &KeyPart) -> bool {
    match (sk, prefix) {
        (KeyPart::S(s), KeyPart::S(p)) => s.starts_with(p.as_str()),
        (KeyPart::B(s), KeyPart::B(p)) => s.starts_with(p),
        _ => false,
    }
}

fn bound_key(b: &Bound<StoreKey>) -> Option<&StoreKey> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

/// The first hash of shard `s`.
fn shard_start(s: usize) -> u64 {
    (s as u64) << (64 - SHARDS.trailing_zeros())
}

/// Whether `[lo, hi]` is a non-empty, well-formed range (`BTreeMap::range` panics otherwise).
fn valid_range(lo: &Bound<StoreKey>, hi: &Bound<StoreKey>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a < b,
        _ => true,
    }
}

pub fn query(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    req.reject_legacy()?;
    let table = req.table(sim)?;
    let (mut page, mut ctx) = Page::new(req, ExprKind::Filter)?;
    let kce = req.str("KeyConditionExpression")?.ok_or_else(|| {
        ApiError::validation(
            "Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.",
        )
    })?;
    let cond = ctx.condition(kce, ExprKind::KeyCondition)?;
    ctx.finish()?;
    let (pk, range) = key_condition(&table, cond)?;
    let forward = req.bool("ScanIndexForward")?.unwrap_or(true);
    let start = start_key(req, &table)?;

    let hash = hash_key(&pk);
    let at = |sk: KeyPart| StoreKey {
        hash,
        pk: pk.clone(),
        sk,
    };
    let mut lo = match range.lo {
        Bound::Included(k) => Bound::Included(at(k)),
        Bound::Excluded(k) => Bound::Excluded(at(k)),
        Bound::Unbounded => Bound::Included(at(KeyPart::Lo)),
    };
    let mut hi = match range.hi {
        Bound::Included(k) => Bound::Included(at(k)),
        Bound::Excluded(k) => Bound::Excluded(at(k)),
        Bound::Unbounded => Bound::Included(at(KeyPart::Hi)),
    };
    if let Some(start) = start {
        if start.pk != pk {
            return Err(ApiError::validation(
                "The provided starting key does not match the range key predicate",
            ));
        }
        // The cursor only narrows the key condition's range.
        if forward {
            if bound_key(&lo).is_none_or(|l| &start >= l) {
                lo = Bound::Excluded(start);
            }
        } else if bound_key(&hi).is_none_or(|h| &start <= h) {
            hi = Bound::Excluded(start);
        }
    }
    if valid_range(&lo, &hi) {
        let shard = table.read_shard(shard_of(hash));
        let walk = shard.items().range((lo, hi));
        let matches = |k: &StoreKey| range.prefix.as_ref().is_none_or(|p| has_prefix(&k.sk, p));
        if forward {
            for (k, stored) in walk {
                if !matches(k) {
                    break;
                }
                if !page.visit(k, stored) {
                    break;
                }
            }
        } else {
            for (k, stored) in walk.rev() {
                if !matches(k) {
                    continue;
                }
                if !page.visit(k, stored) {
                    break;
                }
            }
        }
    }
    Ok(page.finish(sim, &table))
}

pub fn scan(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    req.reject_legacy()?;
    let table = req.table(sim)?;
    let (mut page, ctx) = Page::new(req, ExprKind::Filter)?;
    ctx.finish()?;
    let (segment, total) = match (req.int("Segment")?, req.int("TotalSegments")?) {
        (None, None) => (0, 1),
        (Some(_), None) => {
            return Err(ApiError::validation(
                "The TotalSegments parameter is required but was not present in the request when Segment parameter is present",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::validation(
                "The Segment parameter is required but was not present in the request when parameter TotalSegments is present",
            ));
        }
        (Some(s), Some(t)) => {
            if !(1..=1_000_000).contains(&t) {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{t}' at 'totalSegments' failed to satisfy constraint: Member must have value between 1 and 1000000"
                )));
            }
            if s < 0 || s >= t {
                return Err(ApiError::validation(format!(
                    "The Segment parameter is zero-based and must be less than parameter TotalSegments: Segment: {s} is not less than TotalSegments: {t}"
                )));
            }
            (s as u128, t as u128)
        }
    };
    // Segment `s` of `t` is the contiguous hash range [s·2⁶⁴/t, (s+1)·2⁶⁴/t).
    let seg_lo = ((segment << 64) / total) as u64;
    let seg_end: u128 = ((segment + 1) << 64) / total;
    let mut from = Bound::Included(StoreKey::hash_start(seg_lo));
    if let Some(start) = start_key(req, &table)? {
        if u128::from(start.hash) < u128::from(seg_lo) || u128::from(start.hash) >= seg_end {
            return Err(ApiError::validation(
                "The provided Exclusive start key does not map to the provided segment",
            ));
        }
        from = Bound::Excluded(start);
    }
    let first_shard = bound_key(&from).map_or(0, StoreKey::shard);
    let last_shard = shard_of((seg_end - 1) as u64);
    'shards: for s in first_shard..=last_shard.min(SHARDS - 1) {
        let shard = table.read_shard(s);
        for (k, stored) in shard.items().range((from.clone(), Bound::Unbounded)) {
            if u128::from(k.hash) >= seg_end {
                break 'shards;
            }
            if !page.visit(k, stored) {
                break 'shards;
            }
        }
        drop(shard);
        if s + 1 == SHARDS {
            break;
        }
        from = Bound::Included(StoreKey::hash_start(shard_start(s + 1)));
    }
    Ok(page.finish(sim, &table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_would_panic_are_rejected() {
        let k = |n: u64| StoreKey::hash_start(n);
        assert!(valid_range(&Bound::Included(k(1)), &Bound::Included(k(1))));
        assert!(!valid_range(&Bound::Excluded(k(1)), &Bound::Excluded(k(1))));
        assert!(!valid_range(&Bound::Included(k(2)), &Bound::Included(k(1))));
        assert!(!valid_range(&Bound::Excluded(k(1)), &Bound::Included(k(1))));
    }
}
