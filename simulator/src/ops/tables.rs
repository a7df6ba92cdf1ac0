//! CreateTable, DescribeTable, ListTables, DeleteTable. Tables are ACTIVE at once.

use std::sync::Arc;

use serde_json::{Map, Value as Json, json};

use super::{Req, enum_error};
use crate::error::ApiError;
use crate::state::{Shared, now_epoch_seconds};
use crate::store::{Billing, KeyAttr, KeyType, Schema, Table, table_arn};

pub fn create_table(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    let name = req.table_name()?;
    let defs = req
        .arr("AttributeDefinitions")?
        .ok_or_else(|| ApiError::missing("attributeDefinitions"))?;
    let keys = req
        .arr("KeySchema")?
        .ok_or_else(|| ApiError::missing("keySchema"))?;
    for index in ["GlobalSecondaryIndexes", "LocalSecondaryIndexes"] {
        if req.arr(index)?.is_some_and(|a| !a.is_empty()) {
            return Err(ApiError::validation(
                "dynamo-sim does not implement secondary indexes",
            ));
        }
    }
    let types = attribute_types(defs)?;
    let key_attrs = key_schema(keys, &types)?;
    if types.len() != key_attrs.len() {
        return Err(ApiError::validation(
            "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match number of attributes defined in AttributeDefinitions",
        ));
    }
    let billing = billing(req)?;
    let mut key_attrs = key_attrs.into_iter();
    let schema = Schema {
        name: name.to_owned(),
        hash: key_attrs.next().expect("one key at least"),
        range: key_attrs.next(),
        billing,
        created: now_epoch_seconds(),
        id: sim.table_id(),
    };
    let table = sim.store.create(schema)?;
    Ok(json!({ "TableDescription": describe(&table, "ACTIVE") }))
}

/// `AttributeDefinitions`: each attribute's name and scalar type.
fn attribute_types(defs: &[Json]) -> Result<Vec<(String, KeyType)>, ApiError> {
    let mut types = Vec::with_capacity(defs.len());
    for (i, def) in defs.iter().enumerate() {
        let def = Req(def.as_object().ok_or_else(|| {
            ApiError::serialization("AttributeDefinitions members must be objects")
        })?);
        let member = |field: &str| format!("attributeDefinitions.{}.member.{field}", i + 1);
        let attr = def.required_str("AttributeName", &member("attributeName"))?;
        let ty = def.required_str("AttributeType", &member("attributeType"))?;
        let ty = KeyType::parse(ty)
            .ok_or_else(|| enum_error(&member("attributeType"), ty, "[B, N, S]"))?;
        types.push((attr.to_owned(), ty));
    }
    Ok(types)
}

/// `KeySchema`: a HASH key, then optionally a RANGE key, each defined in `types`.
fn key_schema(keys: &[Json], types: &[(String, KeyType)]) -> Result<Vec<KeyAttr>, ApiError> {
    if keys.is_empty() || keys.len() > 2 {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'keySchema' failed to satisfy constraint: Member must have length less than or equal to 2 and greater than or equal to 1",
            keys.len()
        )));
    }
    let mut key_attrs = Vec::with_capacity(2);
    for (i, key) in keys.iter().enumerate() {
        let key = Req(key
            .as_object()
            .ok_or_else(|| ApiError::serialization("KeySchema members must be objects"))?);
        let member = |field: &str| format!("keySchema.{}.member.{field}", i + 1);
        let attr = key.required_str("AttributeName", &member("attributeName"))?;
        let kind = key.required_str("KeyType", &member("keyType"))?;
        let expected = if i == 0 { "HASH" } else { "RANGE" };
        if !matches!(kind, "HASH" | "RANGE") {
            return Err(enum_error(&member("keyType"), kind, "[HASH, RANGE]"));
        }
        if kind != expected {
            return Err(ApiError::validation(if i == 0 {
                "Invalid KeySchema: The first KeySchemaElement is not a HASH key type"
            } else {
                "Invalid KeySchema: The second KeySchemaElement is not a RANGE key type"
            }));
        }
        let ty = types
            .iter()
            .find(|(n, _)| n == attr)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "One or more parameter values were invalid: Some index key attributes are not defined in AttributeDefinitions. Keys: [{attr}], AttributeDefinitions: [{}]",
                    types.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?;
        key_attrs.push(KeyAttr {
            name: attr.to_owned(),
            ty,
        });
    }
    if key_attrs.len() == 2 && key_attrs[0].name == key_attrs[1].name {
        return Err(ApiError::validation(
            "Invalid KeySchema: Some index key attribute have no definition",
        ));
    }
    Ok(key_attrs)
}

/// `BillingMode` (PROVISIONED by default) and, for PROVISIONED, its `ProvisionedThroughput`.
fn billing(req: &Req) -> Result<Billing, ApiError> {
    let throughput = req.obj("ProvisionedThroughput")?;
    match req.str("BillingMode")?.unwrap_or("PROVISIONED") {
        "PAY_PER_REQUEST" => {
            if throughput.is_some() {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST",
                ));
            }
            Ok(Billing::PayPerRequest)
        }
        "PROVISIONED" => {
            let missing = || {
                ApiError::validation(
                    "One or more parameter values were invalid: ReadCapacityUnits and WriteCapacityUnits must both be specified when BillingMode is PROVISIONED",
                )
            };
            let t = Req(throughput.ok_or_else(missing)?);
            let read = t.int("ReadCapacityUnits")?.ok_or_else(missing)?;
            let write = t.int("WriteCapacityUnits")?.ok_or_else(missing)?;
            if read < 1 || write < 1 {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: Provisioned throughput units must be at least 1",
                ));
            }
            Ok(Billing::Provisioned {
                read: read as u64,
                write: write as u64,
            })
        }
        other => Err(enum_error(
            "billingMode",
            other,
            "[PROVISIONED, PAY_PER_REQUEST]",
        )),
    }
}

pub fn describe_table(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    named_table(req, |name| sim.store.get(name), "Table", "ACTIVE")
}

pub fn delete_table(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    named_table(
        req,
        |name| sim.store.delete(name),
        "TableDescription",
        "DELETING",
    )
}

/// DescribeTable and DeleteTable: `find` gets (or removes) the table named by `TableName`,
/// which is described under `member` with `status`.
fn named_table(
    req: &Req,
    find: impl FnOnce(&str) -> Option<Arc<Table>>,
    member: &str,
    status: &str,
) -> Result<Json, ApiError> {
    let name = req.table_name()?;
    let table = find(name).ok_or_else(|| ApiError::table_not_found(name))?;
    let mut out = Map::new();
    out.insert(member.to_owned(), describe(&table, status));
    Ok(Json::Object(out))
}

pub fn list_tables(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    let limit = req.int("Limit")?.unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 100"
        )));
    }
    let start = req.str("ExclusiveStartTableName")?;
    let names: Vec<String> = sim
        .store
        .names()
        .into_iter()
        .filter(|n| start.is_none_or(|s| n.as_str() > s))
        .collect();
    let page: Vec<&String> = names.iter().take(limit as usize).collect();
    let mut out = json!({ "TableNames": page });
    if names.len() > page.len()
        && let Some(last) = page.last()
    {
        out["LastEvaluatedTableName"] = json!(last);
    }
    Ok(out)
}

fn describe(table: &Table, status: &str) -> Json {
    let s = &table.schema;
    let (items, bytes) = table.totals();
    let mut keys = vec![json!({"AttributeName": s.hash.name, "KeyType": "HASH"})];
    let mut defs = vec![json!({"AttributeName": s.hash.name, "AttributeType": s.hash.ty.as_str()})];
    if let Some(r) = &s.range {
        keys.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
        defs.push(json!({"AttributeName": r.name, "AttributeType": r.ty.as_str()}));
    }
    let (mode, read, write) = match s.billing {
        Billing::PayPerRequest => ("PAY_PER_REQUEST", 0, 0),
        Billing::Provisioned { read, write } => ("PROVISIONED", read, write),
    };
    json!({
        "TableName": s.name,
        "TableStatus": status,
        "TableArn": table_arn(&s.name),
        "TableId": s.id,
        "KeySchema": keys,
        "AttributeDefinitions": defs,
        "CreationDateTime": s.created,
        "ItemCount": items,
        "TableSizeBytes": bytes,
        "BillingModeSummary": { "BillingMode": mode },
        "ProvisionedThroughput": {
            "ReadCapacityUnits": read,
            "WriteCapacityUnits": write,
            "NumberOfDecreasesToday": 0,
        },
        "DeletionProtectionEnabled": false,
    })
}
