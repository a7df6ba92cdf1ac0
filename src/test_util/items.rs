//! Items as the tests expect them (written out by hand) and as the tables hold them (every page
//! of every table scanned back through the SDK), with the model's documented equivalence.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::Client;

use crate::config::Config;
use crate::storage::dynamo;
use crate::storage::item::{Item, Key, Table, Value};

/// A string attribute.
pub fn s(v: &str) -> Value {
    Value::S(v.into())
}

/// An expected item of `table` from its attributes, keyed as DynamoDB keys it.
pub fn item(table: Table, attrs: &[(&str, Value)]) -> (Key, Item) {
    let item: Item = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let key = dynamo::key_of(table, &item).expect("expected items carry their key");
    (key, item)
}

/// An item of the shared topic index as the table holds it: its key (bucket, topic), both
/// strings, and nothing else.
pub fn index_item(bucket: &str, topic: &str) -> (Key, Item) {
    item(
        Table::TopicIndex,
        &[("bucket", s(bucket)), ("topic", s(topic))],
    )
}

/// [`index_item`] of each (bucket, topic) pair.
pub fn index_items(entries: &[(&str, &str)]) -> Vec<(Key, Item)> {
    entries
        .iter()
        .map(|(bucket, topic)| index_item(bucket, topic))
        .collect()
}

/// Every item of every table, read back through the SDK with all pages; panics if a scan fails
/// or an item does not have the contract's types.
pub async fn scan_all(client: &Client, cfg: &Config) -> BTreeMap<Key, Item> {
    try_scan_all(client, cfg).await.expect("scans succeed")
}

/// Every item of every table (all pages, consistent reads), or what failed, naming the table.
pub async fn try_scan_all(client: &Client, cfg: &Config) -> Result<BTreeMap<Key, Item>, String> {
    let mut out = BTreeMap::new();
    for table in Table::ALL {
        let mut start = None;
        loop {
            let page = client
                .scan()
                .table_name(cfg.dynamodb.table_name(table))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| format!("scan {table}: {}", dynamo::error_text(&e)))?;
            for attrs in page.items() {
                let (key, item) =
                    dynamo::from_attrs(table, attrs).map_err(|e| format!("{table}: {e}"))?;
                out.insert(key, item);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

/// The documented equivalence (see `model`): a topic map item without ids reads as no item.
pub fn normalized(items: &BTreeMap<Key, Item>) -> BTreeMap<Key, Item> {
    let mut model = crate::storage::model::TableModel::new();
    for (k, v) in items {
        model.insert(k.clone(), v.clone());
    }
    model.normalized()
}
