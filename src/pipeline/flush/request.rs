//! Request building: table names both ways, the put/delete requests of a BatchWriteItem, and the
//! UpdateItem expressions of an update or a set delta (and what is left of a write when only some
//! of its UpdateItems went out).

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};

use crate::config::DynamoConfig;
use crate::storage::dynamo;
use crate::storage::item::{CONNECTED_MS, EVENT_MS, Key, Order, Table, Timed, Value, Write};

/// Table names as configured, both ways.
#[derive(Debug, Clone)]
pub struct TableNames {
    names: [String; Table::COUNT],
    by_name: HashMap<String, Table>,
}

impl TableNames {
    pub fn new(cfg: &DynamoConfig) -> Self {
        let names = Table::ALL.map(|t| cfg.table_name(t));
        let by_name = Table::ALL
            .iter()
            .map(|t| (cfg.table_name(*t), *t))
            .collect();
        TableNames { names, by_name }
    }

    pub fn name(&self, table: Table) -> &str {
        &self.names[table.index()]
    }

    pub fn table(&self, name: &str) -> Option<Table> {
        self.by_name.get(name).copied()
    }
}

/// The BatchWriteItem request of a put or a delete.
pub(super) fn write_request(key: &Key, write: &Write) -> WriteRequest {
    let builder = WriteRequest::builder();
    match write {
        Write::Put { item, .. } => builder.put_request(
            PutRequest::builder()
                .set_item(Some(dynamo::to_attrs(item)))
                .build()
                .expect("item is set"),
        ),
        _ => builder.delete_request(
            DeleteRequest::builder()
                .set_key(Some(dynamo::key_attrs(key)))
                .build()
                .expect("key is set"),
        ),
    }
    .build()
}

/// The key a BatchWriteItem request (as DynamoDB returns it in UnprocessedItems) writes to.
pub(super) fn request_key(
    tables: &TableNames,
    table_name: &str,
    req: &WriteRequest,
) -> Option<Key> {
    let table = tables.table(table_name)?;
    if let Some(put) = req.put_request() {
        dynamo::key_of_attrs(table, put.item())
    } else {
        req.delete_request()
            .and_then(|d| dynamo::key_of_attrs(table, d.key()))
    }
}

/// One UpdateItem, ready to send (and resend).
#[derive(Debug, Clone)]
pub(super) struct UpdateSpec {
    /// The set attribute this ADDs to (for the MsgId size cap), if it is a set ADD.
    pub adds_to: Option<String>,
    /// For a set delta: the members this request adds (`true`) or deletes, so that what is left
    /// after a hand-back can be rebuilt.
    pub members: Option<(bool, BTreeSet<String>)>,
    pub expression: String,
    pub condition: Option<String>,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

/// The UpdateItems of one update or set delta, in the order they must go (for a set delta: ADD
/// chunks first, then DELETE chunks). Puts and deletes have none (they go by BatchWriteItem).
pub(super) fn update_specs(key: &Key, write: &Write) -> Vec<UpdateSpec> {
    match write {
        Write::Update { set, guard } => vec![set_spec(set, guard.as_ref())],
        Write::SetDelta { attr, add, del, .. } => delta_specs(key, attr, add, del),
        Write::Timed(timed) => vec![timed_spec(timed)],
        // Puts and deletes go through BatchWriteItem.
        _ => Vec::new(),
    }
}

/// A [`Timed`] write's UpdateItem: `SET` its attributes, `REMOVE` the ones it removes, on the
/// condition of its [`Order`] (the README's "Event-time order"):
///
/// - newest: `attribute_not_exists(event_ms) OR event_ms <= :at`
/// - connect: that, `OR (node <> :node AND connected_ms <= :at)`
/// - disconnect: `node = :node AND (attribute_not_exists(event_ms) OR event_ms <= :at)`
fn timed_spec(timed: &Timed) -> UpdateSpec {
    let mut spec = set_spec(&timed.set, None);
    if !timed.remove.is_empty() {
        let mut parts = Vec::with_capacity(timed.remove.len());
        for (i, attr) in timed.remove.iter().enumerate() {
            spec.names.insert(format!("#r{i}"), attr.clone());
            parts.push(format!("#r{i}"));
        }
        spec.expression
            .push_str(&format!(" REMOVE {}", parts.join(", ")));
    }
    spec.names.insert("#ev".into(), EVENT_MS.into());
    spec.values.insert(
        ":at".into(),
        dynamo::to_attr(&Value::N(i64::try_from(timed.at).unwrap_or(i64::MAX))),
    );
    let newest = "(attribute_not_exists(#ev) OR #ev <= :at)";
    let condition = match &timed.order {
        Order::Newest => newest.to_string(),
        Order::Connect { node } => {
            spec.names.insert("#node".into(), "node".into());
            spec.names.insert("#conn".into(), CONNECTED_MS.into());
            spec.values
                .insert(":node".into(), AttributeValue::S(node.clone()));
            format!("{newest} OR (#node <> :node AND #conn <= :at)")
        }
        Order::Disconnect { node } => {
            spec.names.insert("#node".into(), "node".into());
            spec.values
                .insert(":node".into(), AttributeValue::S(node.clone()));
            format!("#node = :node AND {newest}")
        }
    };
    spec.condition = Some(condition);
    spec
}

/// `SET` of every attribute, conditional on the guard if there is one.
fn set_spec(set: &crate::storage::item::Item, guard: Option<&(String, Value)>) -> UpdateSpec {
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut parts = Vec::new();
    for (i, (attr, value)) in set.iter().enumerate() {
        names.insert(format!("#a{i}"), attr.clone());
        values.insert(format!(":a{i}"), dynamo::to_attr(value));
        parts.push(format!("#a{i} = :a{i}"));
    }
    let condition = guard.map(|(attr, value)| {
        names.insert("#g".into(), attr.clone());
        values.insert(":g".into(), dynamo::to_attr(value));
        "#g = :g".to_string()
    });
    UpdateSpec {
        adds_to: None,
        members: None,
        expression: format!("SET {}", parts.join(", ")),
        condition,
        names,
        values,
    }
}

/// `ADD` chunks, then `DELETE` chunks, each at most [`crate::storage::item::MAX_SET_CHUNK_BYTES`].
fn delta_specs(
    key: &Key,
    attr: &str,
    add: &BTreeSet<String>,
    del: &BTreeSet<String>,
) -> Vec<UpdateSpec> {
    let mut specs = Vec::new();
    for chunk in crate::storage::item::split_set(add) {
        specs.push(UpdateSpec {
            adds_to: (key.table == Table::TopicMsgMap).then(|| attr.to_string()),
            expression: "ADD #s :m".into(),
            condition: None,
            names: [("#s".to_string(), attr.to_string())].into(),
            values: [(":m".to_string(), dynamo::to_attr(&Value::Ss(chunk.clone())))].into(),
            members: Some((true, chunk)),
        });
    }
    for chunk in crate::storage::item::split_set(del) {
        // Never create an item just to delete from it.
        specs.push(UpdateSpec {
            adds_to: None,
            expression: "DELETE #s :m".into(),
            condition: Some("attribute_exists(#k)".into()),
            names: [
                ("#s".to_string(), attr.to_string()),
                ("#k".to_string(), key.table.key_names().0.to_string()),
            ]
            .into(),
            values: [(":m".to_string(), dynamo::to_attr(&Value::Ss(chunk.clone())))].into(),
            members: Some((false, chunk)),
        });
    }
    specs
}

/// What is left of `write` when only the UpdateItems `rest` are still to go: for a set delta,
/// the members those requests carry (ADD chunks go first, then DELETE chunks).
pub(super) fn remainder(write: &Write, rest: &[UpdateSpec]) -> Write {
    match write {
        Write::SetDelta { attr, fresh, .. } => {
            let (mut add, mut del) = (BTreeSet::new(), BTreeSet::new());
            for spec in rest {
                if let Some((adds, members)) = &spec.members {
                    if *adds { &mut add } else { &mut del }.extend(members.iter().cloned());
                }
            }
            Write::SetDelta {
                attr: attr.clone(),
                add,
                del,
                fresh: *fresh,
            }
        }
        other => other.clone(),
    }
}

/// One PartiQL statement of a BatchExecuteStatement, ready to send (and resend).
#[derive(Debug, Clone)]
pub(super) struct StatementSpec {
    pub text: String,
    pub params: Vec<AttributeValue>,
    /// The UpdateItem it stands for would create a missing item (a set ADD, an unguarded SET),
    /// which a PartiQL UPDATE never does: DynamoDB answers ConditionalCheckFailed, and the write
    /// then goes as that UpdateItem. Otherwise ConditionalCheckFailed is the write's no-op (a
    /// DELETE from a missing item, a failed node guard).
    pub creates: bool,
}

/// The statement of an update or a set delta that one PartiQL UPDATE can carry: a set delta
/// that only ADDs or only DELETEs, in one chunk, or an update. `None` for the rest (puts and
/// deletes go by BatchWriteItem; a delta that both ADDs and DELETEs, or needs several chunks,
/// goes by UpdateItem, since one statement cannot change a path twice).
pub(super) fn statement_spec(table_name: &str, key: &Key, write: &Write) -> Option<StatementSpec> {
    let mut params = Vec::new();
    let (set, condition, creates) = match write {
        Write::SetDelta { attr, add, del, .. } => {
            let (members, function, creates) = match (add.is_empty(), del.is_empty()) {
                (false, true) => (add, "SET_ADD", true),
                (true, false) => (del, "SET_DELETE", false),
                _ => return None,
            };
            if crate::storage::item::set_chunks(members) != 1 {
                return None;
            }
            params.push(dynamo::to_attr(&Value::Ss(members.clone())));
            let attr = quoted(attr);
            (format!("{attr} = {function}({attr}, ?)"), None, creates)
        }
        Write::Update { set, guard } => {
            let mut parts = Vec::with_capacity(set.len());
            for (attr, value) in set {
                parts.push(format!("{} = ?", quoted(attr)));
                params.push(dynamo::to_attr(value));
            }
            (parts.join(", "), guard.as_ref(), guard.is_none())
        }
        Write::Timed(timed) => return timed_statement(table_name, key, timed),
        Write::Put { .. } | Write::Delete => return None,
    };
    let mut filter = key_filter(key, &mut params);
    if let Some((attr, value)) = condition {
        filter.push_str(&format!(" AND {} = ?", quoted(attr)));
        params.push(dynamo::to_attr(value));
    }
    Some(StatementSpec {
        text: format!("UPDATE {} SET {set} WHERE {filter}", quoted(table_name)),
        params,
        creates,
    })
}

/// The PartiQL INSERT creating the item `write` creates when its key has no item (what its
/// UpdateItem would then write: the key and the SETs, or the ADDed set), for a write whose
/// UPDATE statement found no item ([`StatementSpec::creates`]). `None` for writes that create
/// nothing. An INSERT fails with `DuplicateItem` when the item exists by then (another instance,
/// or an earlier attempt of the same write that was applied and then answered with an error):
/// the write then goes as its UpdateItem, which is right whatever the item holds.
pub(super) fn insert_spec(table_name: &str, key: &Key, write: &Write) -> Option<StatementSpec> {
    let attrs: Vec<(&str, AttributeValue)> = match write {
        Write::SetDelta { attr, add, del, .. }
            if !add.is_empty() && del.is_empty() && crate::storage::item::set_chunks(add) == 1 =>
        {
            vec![(attr.as_str(), dynamo::to_attr(&Value::Ss(add.clone())))]
        }
        Write::Update { set, guard: None } if !set.is_empty() => set
            .iter()
            .map(|(a, v)| (a.as_str(), dynamo::to_attr(v)))
            .collect(),
        Write::Timed(timed)
            if !timed.set.is_empty() && !matches!(timed.order, Order::Disconnect { .. }) =>
        {
            timed
                .set
                .iter()
                .map(|(a, v)| (a.as_str(), dynamo::to_attr(v)))
                .collect()
        }
        _ => return None,
    };
    let (hash_name, range_name) = key.table.key_names();
    let mut fields = vec![format!("{}: ?", literal(hash_name))];
    let mut params = vec![AttributeValue::S(key.hash.clone())];
    if let (Some(name), Some(value)) = (range_name, &key.range) {
        fields.push(format!("{}: ?", literal(name)));
        params.push(AttributeValue::S(value.clone()));
    }
    for (attr, value) in attrs {
        fields.push(format!("{}: ?", literal(attr)));
        params.push(value);
    }
    Some(StatementSpec {
        text: format!(
            "INSERT INTO {} VALUE {{{}}}",
            quoted(table_name),
            fields.join(", ")
        ),
        params,
        creates: false,
    })
}

/// A PartiQL string literal (an INSERT's attribute names are strings), `'` doubled.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A PartiQL identifier. Table and attribute names never hold a double quote (DynamoDB's table
/// names are `[a-zA-Z0-9_.-]`; the attribute names are the storage contract's), but one would
/// be doubled, as PartiQL escapes it.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"hash" = ? [AND "range" = ?]`, the key's values appended to `params`.
fn key_filter(key: &Key, params: &mut Vec<AttributeValue>) -> String {
    let (hash_name, range_name) = key.table.key_names();
    let mut filter = format!("{} = ?", quoted(hash_name));
    params.push(AttributeValue::S(key.hash.clone()));
    if let (Some(name), Some(value)) = (range_name, &key.range) {
        filter.push_str(&format!(" AND {} = ?", quoted(name)));
        params.push(AttributeValue::S(value.clone()));
    }
    filter
}

/// A [`Timed`] write as a PartiQL UPDATE (`SET`s, then one `REMOVE` clause per removed
/// attribute) with its condition in the WHERE clause (the same conditions as [`timed_spec`]). A
/// connect or a retained set (or clear) would create a missing item, which a PartiQL UPDATE
/// never does: ConditionalCheckFailed then sends it as its UpdateItem, which also tells a
/// missing item from a newer event.
fn timed_statement(table_name: &str, key: &Key, timed: &Timed) -> Option<StatementSpec> {
    if timed.set.is_empty() {
        return None;
    }
    let mut params = Vec::with_capacity(timed.set.len() + 5);
    let mut parts = Vec::with_capacity(timed.set.len());
    for (attr, value) in &timed.set {
        parts.push(format!("{} = ?", quoted(attr)));
        params.push(dynamo::to_attr(value));
    }
    let mut filter = key_filter(key, &mut params);
    let at = AttributeValue::N(timed.at.to_string());
    let ev = quoted(EVENT_MS);
    let newest = format!("({ev} IS MISSING OR {ev} <= ?)");
    match &timed.order {
        Order::Newest => {
            filter.push_str(&format!(" AND {newest}"));
            params.push(at);
        }
        Order::Connect { node } => {
            filter.push_str(&format!(
                " AND ({ev} IS MISSING OR {ev} <= ? OR (\"node\" <> ? AND {} <= ?))",
                quoted(CONNECTED_MS)
            ));
            params.extend([at.clone(), AttributeValue::S(node.clone()), at]);
        }
        Order::Disconnect { node } => {
            filter.push_str(&format!(" AND \"node\" = ? AND {newest}"));
            params.extend([AttributeValue::S(node.clone()), at]);
        }
    }
    let removes: String = timed
        .remove
        .iter()
        .map(|attr| format!(" REMOVE {}", quoted(attr)))
        .collect();
    Some(StatementSpec {
        text: format!(
            "UPDATE {} SET {}{removes} WHERE {filter}",
            quoted(table_name),
            parts.join(", ")
        ),
        params,
        creates: !matches!(timed.order, Order::Disconnect { .. }),
    })
}
