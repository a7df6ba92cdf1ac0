//! PutItem, DeleteItem, UpdateItem and BatchWriteItem: validation, capacity charging, conditions.
//!
//! Every write follows the same steps under its shard's write lock: read the old item, evaluate
//! the condition, compute the write units (larger of old and new size, rounded up to 1 KB, at
//! least 1), charge the token buckets, apply. A failed condition is charged too (DynamoDB charges
//! the write it would have done), a throttled write is not.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value as Json, json};

use super::{MAX_ITEM_BYTES, NO_ITEM, Req, write_capacity};
use crate::capacity::write_units;
use crate::error::{ApiError, ThrottleKind};
use crate::expr::{Cond, ExprKind};
use crate::state::Shared;
use crate::stats::add;
use crate::store::{Shard, StoreKey, Stored, Table};
use crate::value::{Item, item_size, item_to_json, parse_item};

/// At most 25 put/delete requests per BatchWriteItem.
const MAX_BATCH_WRITES: usize = 25;

fn item_too_large() -> ApiError {
    ApiError::validation("Item size has exceeded the maximum allowed size")
}

/// Parses and validates an item to be put; returns it with its key and size.
fn checked_item(table: &Table, json: &Json) -> Result<(Item, StoreKey, usize), ApiError> {
    let item = parse_item(json)?;
    let key = table.schema.key_of_item(&item)?;
    let size = item_size(&item);
    if size > MAX_ITEM_BYTES {
        return Err(item_too_large());
    }
    Ok((item, key, size))
}

/// Charges a failed condition (what the write would have cost against the old item), then
/// reports the failure — or the throttle, if even that cannot be charged.
fn fail_condition(
    sim: &Shared,
    table: &Table,
    shard: &mut Shard,
    key: &StoreKey,
    old_size: usize,
) -> ApiError {
    let units = write_units(old_size);
    match table.try_charge(shard, &key.pk, units, &sim.limits(), Instant::now()) {
        Ok(()) => {
            add(&sim.stats.write_units, units);
            ApiError::conditional_failed()
        }
        Err(kind) => ApiError::throttled(vec![(kind, table.name().to_owned())]),
    }
}

fn charge(
    sim: &Shared,
    table: &Table,
    shard: &mut Shard,
    key: &StoreKey,
    units: u64,
) -> Result<(), ApiError> {
    table
        .try_charge(shard, &key.pk, units, &sim.limits(), Instant::now())
        .map_err(|kind| ApiError::throttled(vec![(kind, table.name().to_owned())]))?;
    add(&sim.stats.write_units, units);
    add(&sim.stats.items_written, 1);
    Ok(())
}

/// The response of a single-item write.
fn single_response(attributes: Option<&Item>, capacity: Option<(&str, u64)>) -> Json {
    let mut out = Map::new();
    if let Some(a) = attributes.filter(|a| !a.is_empty()) {
        out.insert("Attributes".into(), item_to_json(a));
    }
    if let Some((table, units)) = capacity {
        out.insert("ConsumedCapacity".into(), write_capacity(table, units));
    }
    Json::Object(out)
}

pub fn put_item(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    req.reject_legacy()?;
    let table = req.table(sim)?;
    let item_json = req.get("Item").ok_or_else(|| ApiError::missing("item"))?;
    let (item, key, size) = checked_item(&table, item_json)?;
    put_or_delete(sim, req, &table, key, Some((item, size)))
}

pub fn delete_item(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    req.reject_legacy()?;
    let table = req.table(sim)?;
    let key = req.key(&table)?;
    put_or_delete(sim, req, &table, key, None)
}

/// PutItem (`put` is the item and its size) or DeleteItem (`put` is `None`) once the item or
/// key is read: the condition, the charge (the larger of the old and the new item, a missing
/// item counting 0), the write and the response.
fn put_or_delete(
    sim: &Shared,
    req: &Req,
    table: &Table,
    key: StoreKey,
    put: Option<(Item, usize)>,
) -> Result<Json, ApiError> {
    let mut ctx = req.expr_context()?;
    let cond = req.condition(&mut ctx, "ConditionExpression", ExprKind::Condition)?;
    ctx.finish()?;
    let return_values = req.return_values(&["NONE", "ALL_OLD"])?;
    let wants_capacity = req.wants_capacity()?;

    let mut shard = table.write_shard(key.shard());
    let old_size = shard.items().get(&key).map_or(0, |s| s.size);
    if let Some(cond) = &cond
        && !condition_holds(cond, shard.items().get(&key))
    {
        return Err(fail_condition(sim, table, &mut shard, &key, old_size));
    }
    let new_size = put.as_ref().map_or(0, |(_, size)| *size);
    let units = write_units(new_size.max(old_size));
    charge(sim, table, &mut shard, &key, units)?;
    let old = apply(&mut shard, key, put);
    drop(shard);
    Ok(single_response(
        old.as_ref()
            .map(|o| &o.item)
            .filter(|_| return_values == "ALL_OLD"),
        wants_capacity.then_some((table.name(), units)),
    ))
}

/// Stores `put` under `key`, or deletes `key` if `put` is `None`; returns the old item.
fn apply(shard: &mut Shard, key: StoreKey, put: Option<(Item, usize)>) -> Option<Stored> {
    match put {
        Some((item, size)) => shard.put(key, Stored { item, size }),
        None => shard.remove(&key),
    }
}

fn condition_holds(cond: &Cond, old: Option<&Stored>) -> bool {
    cond.eval(old.map_or(&NO_ITEM, |s| &s.item))
}

pub fn update_item(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    req.reject_legacy()?;
    let table = req.table(sim)?;
    let key = req.key(&table)?;
    let mut ctx = req.expr_context()?;
    let update = req
        .str("UpdateExpression")?
        .map(|u| ctx.update(u))
        .transpose()?;
    let cond = req.condition(&mut ctx, "ConditionExpression", ExprKind::Condition)?;
    ctx.finish()?;
    if let Some(update) = &update {
        for path in update.paths() {
            if table.schema.is_key_attr(path.top()) {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: Cannot update attribute {}. This attribute is part of the key",
                    path.top()
                )));
            }
        }
    }
    let return_values =
        req.return_values(&["NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"])?;
    let wants_capacity = req.wants_capacity()?;

    let mut shard = table.write_shard(key.shard());
    let old = shard.items().get(&key).cloned();
    let old_size = old.as_ref().map_or(0, |s| s.size);
    if let Some(cond) = &cond
        && !condition_holds(cond, old.as_ref())
    {
        return Err(fail_condition(sim, &table, &mut shard, &key, old_size));
    }
    // An update of a missing item creates it from its key (an upsert).
    let mut new = match &old {
        Some(old) => old.item.clone(),
        None => table.schema.key_item(&key),
    };
    if let Some(update) = &update {
        update.apply(&mut new)?;
    }
    let new_size = item_size(&new);
    if new_size > MAX_ITEM_BYTES {
        return Err(ApiError::validation(
            "Item size to update has exceeded the maximum allowed size",
        ));
    }
    let units = write_units(new_size.max(old_size));
    charge(sim, &table, &mut shard, &key, units)?;
    shard.put(
        key,
        Stored {
            item: new.clone(),
            size: new_size,
        },
    );
    drop(shard);

    let touched: HashSet<&str> = update
        .iter()
        .flat_map(|u| u.paths().map(|p| p.top()))
        .collect();
    let pick = |item: &Item| -> Item {
        item.iter()
            .filter(|(k, _)| touched.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let old_item = old.map(|o| o.item);
    let attributes = match return_values {
        "ALL_OLD" => old_item,
        "UPDATED_OLD" => old_item.as_ref().map(pick),
        "ALL_NEW" => Some(new),
        "UPDATED_NEW" => Some(pick(&new)),
        _ => None,
    };
    Ok(single_response(
        attributes.as_ref(),
        wants_capacity.then_some((table.name(), units)),
    ))
}

/// One validated request of a batch.
struct Planned<'a> {
    table: Arc<Table>,
    key: StoreKey,
    /// The item and its size for a put, `None` for a delete.
    put: Option<(Item, usize)>,
    /// The request as sent, echoed in `UnprocessedItems`.
    raw: &'a Json,
}

pub fn batch_write_item(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    let request_items = req.request_items()?;
    let total = count_write_requests(request_items)?;
    let wants_capacity = req.wants_capacity()?;
    // Validate everything before writing anything: any failure rejects the whole batch.
    let planned = plan_batch(sim, request_items, total)?;

    let mut units_by_table: BTreeMap<&str, u64> = request_items
        .keys()
        .map(|name| (name.as_str(), 0))
        .collect();
    let unprocessed = write_batch(sim, &planned, &mut units_by_table)?;
    let unprocessed_count: usize = unprocessed.values().map(Vec::len).sum();
    add(&sim.stats.throttled_items, unprocessed_count as u64);

    let mut out = json!({ "UnprocessedItems": unprocessed });
    if wants_capacity {
        out["ConsumedCapacity"] = units_by_table
            .iter()
            .map(|(t, u)| write_capacity(t, *u))
            .collect();
    }
    Ok(out)
}

/// Checks the shape of `RequestItems` (arrays of 1 to 25 requests, at most 25 in all) and
/// returns the number of requests.
fn count_write_requests(request_items: &Map<String, Json>) -> Result<usize, ApiError> {
    super::count_batch(
        request_items,
        MAX_BATCH_WRITES,
        "BatchWriteItem",
        |name, requests| {
            let requests = requests.as_array().ok_or_else(|| {
                ApiError::serialization("RequestItems values must be arrays of WriteRequest")
            })?;
            if requests.is_empty() {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{{{name}=[]}}' at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less than or equal to 25, Member must have length greater than or equal to 1]"
                )));
            }
            Ok(requests)
        },
    )
}

/// Validates every request of a batch: tables, items, keys, no key twice.
fn plan_batch<'a>(
    sim: &Shared,
    request_items: &'a Map<String, Json>,
    total: usize,
) -> Result<Vec<Planned<'a>>, ApiError> {
    let mut planned = Vec::with_capacity(total);
    let mut seen = HashSet::with_capacity(total);
    for (name, requests) in request_items {
        super::check_table_name(name)?;
        let table = sim.store.get(name).ok_or_else(ApiError::not_found)?;
        for raw in requests.as_array().into_iter().flatten() {
            let (key, put) = plan_request(&table, raw)?;
            if !seen.insert((name.as_str(), key.clone())) {
                return Err(ApiError::validation(
                    "Provided list of item keys contains duplicates",
                ));
            }
            planned.push(Planned {
                table: table.clone(),
                key,
                put,
                raw,
            });
        }
    }
    Ok(planned)
}

/// One WriteRequest: its key, and for a put the item and its size.
fn plan_request(table: &Table, raw: &Json) -> Result<(StoreKey, Option<(Item, usize)>), ApiError> {
    let r = Req(raw
        .as_object()
        .ok_or_else(|| ApiError::serialization("WriteRequest must be an object"))?);
    match (r.obj("PutRequest")?, r.obj("DeleteRequest")?) {
        (Some(put), None) => {
            let item = Req(put)
                .get("Item")
                .ok_or_else(|| ApiError::missing("requestItems.member.putRequest.item"))?;
            let (item, key, size) = checked_item(table, item)?;
            Ok((key, Some((item, size))))
        }
        (None, Some(delete)) => {
            let key = Req(delete)
                .get("Key")
                .ok_or_else(|| ApiError::missing("requestItems.member.deleteRequest.key"))?;
            Ok((table.schema.key_of_key(&parse_item(key)?)?, None))
        }
        _ => Err(ApiError::validation(
            "Supplied WriteRequest must contain exactly one of PutRequest or DeleteRequest",
        )),
    }
}

/// Writes what fits of a validated batch, adding its units to `units_by_table`; returns the
/// requests left unprocessed (`throttle_rate`, or no capacity), or the throttling exception
/// if no request could be charged.
fn write_batch<'a>(
    sim: &Shared,
    planned: &'a [Planned<'a>],
    units_by_table: &mut BTreeMap<&'a str, u64>,
) -> Result<BTreeMap<&'a str, Vec<Json>>, ApiError> {
    let (throttle_rate, _) = sim.faults.batch_rates();
    let mut unprocessed: BTreeMap<&str, Vec<Json>> = BTreeMap::new();
    let mut reasons: Vec<(ThrottleKind, String)> = Vec::new();
    let mut written = 0usize;
    for p in planned {
        let name = p.table.name();
        if sim.faults.roll(throttle_rate) {
            unprocessed.entry(name).or_default().push(p.raw.clone());
            continue;
        }
        let mut shard = p.table.write_shard(p.key.shard());
        let old_size = shard.items().get(&p.key).map_or(0, |s| s.size);
        let units = write_units(p.put.as_ref().map_or(0, |(_, size)| *size).max(old_size));
        if let Err(kind) =
            p.table
                .try_charge(&mut shard, &p.key.pk, units, &sim.limits(), Instant::now())
        {
            drop(shard);
            reasons.push((kind, name.to_owned()));
            unprocessed.entry(name).or_default().push(p.raw.clone());
            continue;
        }
        apply(&mut shard, p.key.clone(), p.put.clone());
        drop(shard);
        *units_by_table.entry(name).or_default() += units;
        add(&sim.stats.write_units, units);
        written += 1;
    }
    add(&sim.stats.items_written, written as u64);
    if written == 0 && reasons.len() == planned.len() {
        // Nothing could be charged: DynamoDB answers with the exception instead.
        return Err(ApiError::throttled(reasons));
    }
    Ok(unprocessed)
}
