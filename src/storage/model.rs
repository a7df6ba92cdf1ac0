//! A sequential model of the six tables: what DynamoDB does with each [`Write`], applied one at a
//! time. The coalescer's property tests compare against it and loadgen uses it to compute the
//! final table contents a workload must leave behind.
//!
//! One equivalence is built in: an item left holding nothing but its key — in practice an
//! `mqtt_topic_msg_map` item whose `MsgId` set is gone (every id acked), as DynamoDB keeps it —
//! reads the same as no item at all: both mean "no offline messages for this topic". The coalescer
//! relies on it when a publish and its ack cancel before either was written.

use std::collections::BTreeMap;

use crate::storage::item::{Item, Key, Op, Table, Value, Write};

/// The contents of all tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableModel {
    items: BTreeMap<Key, Item>,
}

impl TableModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one write as DynamoDB would.
    pub fn apply(&mut self, op: &Op) {
        apply_write(&mut self.items, &op.key, &op.write);
    }

    pub fn get(&self, key: &Key) -> Option<&Item> {
        self.items.get(key)
    }

    /// Puts an item directly (initial state, or contents read back from a table).
    pub fn insert(&mut self, key: Key, item: Item) {
        self.items.insert(key, item);
    }

    /// The items of one table.
    pub fn table(&self, table: Table) -> impl Iterator<Item = (&Key, &Item)> {
        self.items.iter().filter(move |(k, _)| k.table == table)
    }

    /// The contents with the documented equivalences applied, for comparison.
    pub fn normalized(&self) -> BTreeMap<Key, Item> {
        self.items
            .iter()
            // Topic index items hold nothing but their key, and are what they are.
            .filter(|(key, item)| {
                key.table == Table::TopicIndex || item.len() > key.to_item().len()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// DynamoDB's effect of `write` on `items[key]`.
pub fn apply_write(items: &mut BTreeMap<Key, Item>, key: &Key, write: &Write) {
    match write {
        Write::Put { item, .. } => {
            items.insert(key.clone(), item.clone());
        }
        Write::Delete => {
            items.remove(key);
        }
        Write::Update { set, guard } => {
            if let Some((attr, value)) = guard {
                match items.get_mut(key) {
                    Some(item) if item.get(attr) == Some(value) => {
                        for (k, v) in set {
                            item.insert(k.clone(), v.clone());
                        }
                    }
                    // ConditionalCheckFailed: nothing changes.
                    _ => {}
                }
            } else {
                let item = items.entry(key.clone()).or_insert_with(|| key.to_item());
                for (k, v) in set {
                    item.insert(k.clone(), v.clone());
                }
            }
        }
        Write::Timed(timed) => match timed.apply(key, items.get(key)) {
            Some(item) => {
                items.insert(key.clone(), item);
            }
            None => {
                items.remove(key);
            }
        },
        Write::SetDelta { attr, add, del, .. } => {
            // ADD: an upsert that unions the members in.
            if !add.is_empty() {
                let item = items.entry(key.clone()).or_insert_with(|| key.to_item());
                match item.get_mut(attr) {
                    Some(Value::Ss(set)) => set.extend(add.iter().cloned()),
                    _ => {
                        item.insert(attr.clone(), Value::Ss(add.clone()));
                    }
                }
            }
            // DELETE: sent with `attribute_exists` on the key, so it never creates an item; a set
            // left empty disappears, as DynamoDB removes empty sets.
            if !del.is_empty()
                && let Some(item) = items.get_mut(key)
                && let Some(Value::Ss(set)) = item.get_mut(attr)
            {
                for m in del {
                    set.remove(m);
                }
                if set.is_empty() {
                    item.remove(attr);
                }
            }
        }
    }
}
