//! The planner: one hook event into the writes its rules call for, checked against DynamoDB's
//! key and item limits before anything is queued.

use std::collections::BTreeSet;

use thiserror::Error;

use super::{Action, ActionScope, RuleSet, StorageFormat};
use crate::event::{ClientInfo, HookEvent, Message};
use crate::guid::GuidError;
use crate::storage::item::{
    CONNECTED_MS, EVENT_MS, Item, Key, MAX_ITEM_BYTES, Op, Order, Table, Timed, Value, Write,
    item_size,
};

/// Why an event cannot be planned. The event is refused as a whole; nothing of it is queued.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventError {
    #[error(transparent)]
    MessageId(#[from] GuidError),
    #[error(transparent)]
    Key(#[from] crate::storage::item::KeyError),
    #[error(
        "{table} item would be {size} bytes; DynamoDB items are limited to {MAX_ITEM_BYTES} bytes"
    )]
    ItemTooLarge { table: Table, size: usize },
    /// A publish or ack to a topic MQTT does not allow (a wildcard, NUL, empty, too long).
    #[error(transparent)]
    Topic(#[from] crate::topic::TopicNameError),
    /// A subscription filter MQTT does not allow.
    #[error(transparent)]
    Filter(#[from] crate::topic::FilterError),
}

impl EventError {
    /// Too large to store (rather than malformed): counted as `too_large`.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            EventError::ItemTooLarge { .. }
                | EventError::Key(crate::storage::item::KeyError::TooLong { .. })
        )
    }
}

impl RuleSet {
    /// The writes `event` calls for under these rules, in the order the rules are listed.
    pub fn plan(&self, event: &HookEvent, format: &StorageFormat) -> Result<Vec<Op>, EventError> {
        self.plan_scoped(event, format, ActionScope::All)
    }

    /// Like [`RuleSet::plan`], for the rules `scope` admits.
    pub fn plan_scoped(
        &self,
        event: &HookEvent,
        format: &StorageFormat,
        scope: ActionScope,
    ) -> Result<Vec<Op>, EventError> {
        let hook = event.hook();
        let topic = event.filter_topic();
        // Whatever the rules: an event MQTT forbids is stored nowhere.
        match event {
            HookEvent::MessagePublish { message } | HookEvent::MessageAcked { message, .. } => {
                crate::topic::validate_name(&message.topic)?;
            }
            HookEvent::SessionSubscribed { topic, .. }
            | HookEvent::SessionUnsubscribed { topic, .. } => {
                crate::topic::TopicFilter::new(topic)?;
            }
            HookEvent::ClientConnected { .. } | HookEvent::ClientDisconnected { .. } => {}
        }
        let mut ops = Vec::new();
        for rule in self
            .rules()
            .iter()
            .filter(|r| r.hook == hook && r.action.writes() && scope.allows(r.action))
        {
            if let (Some(filter), Some(topic)) = (&rule.topic, topic)
                && !filter.matches(topic)
            {
                continue;
            }
            plan_action(rule.action, event, format, &mut ops)?;
        }
        for op in &ops {
            check_op(op)?;
        }
        Ok(ops)
    }
}

/// DynamoDB's key and item limits, checked at ingest so a bad event is refused with a clear error
/// instead of poisoning a batch later.
fn check_op(op: &Op) -> Result<(), EventError> {
    let (hash_name, range_name) = op.key.table.key_names();
    crate::storage::item::check_key_part(
        hash_name,
        &op.key.hash,
        crate::storage::item::MAX_HASH_KEY_BYTES,
    )?;
    if let Some(range) = &op.key.range {
        crate::storage::item::check_key_part(
            range_name.unwrap_or("range key"),
            range,
            crate::storage::item::MAX_RANGE_KEY_BYTES,
        )?;
    }
    if let Write::Put { item, .. } = &op.write {
        let size = item_size(item);
        if size > MAX_ITEM_BYTES {
            return Err(EventError::ItemTooLarge {
                table: op.key.table,
                size,
            });
        }
    }
    Ok(())
}

/// The mqtt_msg / mqtt_retain attributes of a message.
fn message_item(key: Item, msgid: &str, message: &Message, format: &StorageFormat) -> Item {
    let mut item = key;
    item.insert("msgid".into(), Value::S(msgid.to_string()));
    item.insert("topic".into(), Value::S(message.topic.clone()));
    item.insert("sender".into(), Value::S(message.from.clone()));
    item.insert("qos".into(), Value::N(i64::from(message.qos)));
    item.insert("retain".into(), Value::N(i64::from(message.retain)));
    let payload = match std::str::from_utf8(&message.payload) {
        Ok(text) => Value::S(text.to_string()),
        Err(_) => Value::B(message.payload.clone()),
    };
    item.insert("payload".into(), payload);
    item.insert("arrived".into(), format.time(message.timestamp_ms));
    if let Some(at) = format
        .expiry
        .expires_at(message.timestamp_ms, message.expiry_interval_s)
    {
        item.insert(
            format.expiry.attribute.to_string(),
            Value::N(i64::try_from(at).unwrap_or(i64::MAX)),
        );
    }
    item
}

/// The attribute of mqtt_topic_msg_map holding a topic's message ids.
const MSGID_SET: &str = "MsgId";

/// Appends the writes of one rule's `action` for `event`. A rule only reaches here for its own
/// hook, so the event kind always fits; read-side actions were filtered out by the caller.
fn plan_action(
    action: Action,
    event: &HookEvent,
    format: &StorageFormat,
    ops: &mut Vec<Op>,
) -> Result<(), EventError> {
    match (action, event) {
        (
            Action::OnClientConnected,
            HookEvent::ClientConnected {
                client,
                connected_at_ms,
            },
        ) => ops.push(client_online(client, *connected_at_ms, format)),
        (
            Action::OnClientDisconnected,
            HookEvent::ClientDisconnected {
                client,
                disconnected_at_ms,
                ..
            },
        ) => ops.push(client_offline(client, *disconnected_at_ms, format)),
        (Action::OnAckedDelete, HookEvent::SessionUnsubscribed { client, topic }) => {
            ops.push(Op {
                key: Key::with_range(Table::Acked, topic, &client.clientid),
                write: Write::Delete,
            });
        }
        (Action::OnMessagePublish, HookEvent::MessagePublish { message }) => {
            if message.qos == 0 || (message.retain && message.payload.is_empty()) {
                return Ok(());
            }
            let msgid = store_message(message, format, ops)?;
            ops.push(msgid_set_delta(
                &message.topic,
                [msgid].into(),
                BTreeSet::new(),
            ));
        }
        (Action::OnMessageStore, HookEvent::MessagePublish { message }) => {
            if message.retain && message.payload.is_empty() {
                return Ok(());
            }
            store_message(message, format, ops)?;
        }
        (Action::OnMessageRetain, HookEvent::MessagePublish { message }) => {
            if !message.retain || message.payload.is_empty() {
                return Ok(());
            }
            let msgid = format.msgid(&message.id)?;
            let key = Key::new(Table::Retain, &message.topic);
            let item = message_item(key.to_item(), &msgid, message, format);
            let write = if format.event_time {
                retained_timed(&key, item, message.timestamp_ms, format)
            } else {
                Write::Put { item, fresh: false }
            };
            ops.push(Op { key, write });
        }
        (Action::OnRetainDelete, HookEvent::MessagePublish { message })
            if message.retain && message.payload.is_empty() =>
        {
            let key = Key::new(Table::Retain, &message.topic);
            let write = if format.event_time {
                retained_tombstone(message.timestamp_ms, format)
            } else {
                Write::Delete
            };
            ops.push(Op { key, write });
        }
        (Action::OnMessageAckedForQueue, HookEvent::MessageAcked { client, message }) => {
            message_acked(client, message, format, ops)?;
        }
        _ => {}
    }
    Ok(())
}

/// Milliseconds as a DynamoDB number.
fn millis(ms: u64) -> Value {
    Value::N(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// `on_client_connected`: the client's mqtt_client item, online on its node. Under event-time
/// order, the same attributes plus `event_ms` and `connected_ms`, unless a newer event is stored.
fn client_online(client: &ClientInfo, connected_at_ms: u64, format: &StorageFormat) -> Op {
    let key = Key::new(Table::Client, &client.clientid);
    let mut item = key.to_item();
    item.insert("connect_state".into(), Value::N(1));
    item.insert("node".into(), Value::S(client.node.clone()));
    item.insert("online_at".into(), format.time(connected_at_ms));
    item.insert("offline_at".into(), Value::N(0));
    if !format.event_time {
        return Op {
            key,
            write: Write::Put { item, fresh: false },
        };
    }
    item.remove("clientid");
    item.insert(EVENT_MS.into(), millis(connected_at_ms));
    item.insert(CONNECTED_MS.into(), millis(connected_at_ms));
    Op {
        key,
        write: Write::Timed(Timed {
            at: connected_at_ms,
            order: Order::Connect {
                node: client.node.clone(),
            },
            set: item,
            remove: BTreeSet::new(),
            or_else: None,
        }),
    }
}

/// `on_client_disconnected`: the client marked offline, guarded by node: a late disconnect from
/// the node a client left (takeover) must not mark the client offline on its new node. Under
/// event-time order, also not when a newer event is stored.
fn client_offline(client: &ClientInfo, disconnected_at_ms: u64, format: &StorageFormat) -> Op {
    let mut set: Item = [
        ("connect_state".to_string(), Value::N(0)),
        ("offline_at".to_string(), format.time(disconnected_at_ms)),
    ]
    .into();
    let key = Key::new(Table::Client, &client.clientid);
    if !format.event_time {
        return Op {
            key,
            write: Write::Update {
                set,
                guard: Some(("node".into(), Value::S(client.node.clone()))),
            },
        };
    }
    set.insert(EVENT_MS.into(), millis(disconnected_at_ms));
    Op {
        key,
        write: Write::Timed(Timed {
            at: disconnected_at_ms,
            order: Order::Disconnect {
                node: client.node.clone(),
            },
            set,
            remove: BTreeSet::new(),
            or_else: None,
        }),
    }
}

/// The attributes a stored message may hold that `item` lacks (the optional expiry), so a
/// retained message replacing another removes them as a put would.
fn absent_message_attributes(item: &Item, format: &StorageFormat) -> BTreeSet<String> {
    let expiry = format.expiry.attribute.to_string();
    if item.contains_key(&expiry) {
        BTreeSet::new()
    } else {
        [expiry].into()
    }
}

/// `on_message_retain` under event-time order: the message's attributes (the key's left out)
/// and `event_ms`, unless a newer retained message or clear of the topic is stored.
fn retained_timed(key: &Key, mut item: Item, at_ms: u64, format: &StorageFormat) -> Write {
    let remove = absent_message_attributes(&item, format);
    let (hash_name, _) = key.table.key_names();
    item.remove(hash_name);
    item.insert(EVENT_MS.into(), millis(at_ms));
    Write::Timed(Timed {
        at: at_ms,
        order: Order::Newest,
        set: item,
        remove,
        or_else: None,
    })
}

/// `on_retain_delete` under event-time order: a tombstone (the key, `event_ms`, and the TTL
/// attribute [`super::TOMBSTONE_TTL_S`] past the clear) instead of a delete, so a retained
/// message published before the clear but arriving after it is refused, not resurrected.
fn retained_tombstone(at_ms: u64, format: &StorageFormat) -> Write {
    let expiry = format.expiry.attribute.to_string();
    let remove = ["msgid", "sender", "qos", "retain", "payload", "arrived"]
        .into_iter()
        .map(str::to_string)
        .collect();
    let expires = (at_ms / 1000).saturating_add(super::TOMBSTONE_TTL_S);
    Write::Timed(Timed {
        at: at_ms,
        order: Order::Newest,
        set: [
            (EVENT_MS.to_string(), millis(at_ms)),
            (expiry, millis(expires)),
        ]
        .into(),
        remove,
        or_else: None,
    })
}

/// The message's mqtt_msg item (a fresh put); returns the stored message id.
fn store_message(
    message: &Message,
    format: &StorageFormat,
    ops: &mut Vec<Op>,
) -> Result<String, EventError> {
    let msgid = format.msgid(&message.id)?;
    let key = Key::new(Table::Msg, &msgid);
    let item = message_item(key.to_item(), &msgid, message, format);
    ops.push(Op {
        key,
        write: Write::Put { item, fresh: true },
    });
    Ok(msgid)
}

/// A change to the set of message ids stored for `topic`.
fn msgid_set_delta(topic: &str, add: BTreeSet<String>, del: BTreeSet<String>) -> Op {
    Op {
        key: Key::new(Table::TopicMsgMap, topic),
        write: Write::SetDelta {
            attr: MSGID_SET.into(),
            add,
            del,
            fresh: true,
        },
    }
}

/// `on_message_acked_for_queue`: the client's mqtt_acked item, the message deleted and removed
/// from its topic's set.
fn message_acked(
    client: &ClientInfo,
    message: &Message,
    format: &StorageFormat,
    ops: &mut Vec<Op>,
) -> Result<(), EventError> {
    let msgid = format.msgid(&message.id)?;
    let acked_key = Key::with_range(Table::Acked, &message.topic, &client.clientid);
    let mut acked = acked_key.to_item();
    acked.insert("msgid".into(), Value::S(msgid.clone()));
    ops.push(Op {
        key: acked_key,
        write: Write::Put {
            item: acked,
            fresh: false,
        },
    });
    ops.push(Op {
        key: Key::new(Table::Msg, &msgid),
        write: Write::Delete,
    });
    ops.push(msgid_set_delta(
        &message.topic,
        BTreeSet::new(),
        [msgid].into(),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{MsgIdFormat, Rule, TimeUnit};

    fn client(id: &str) -> ClientInfo {
        ClientInfo {
            node: "emqx@127.0.0.1".into(),
            clientid: id.into(),
            ..Default::default()
        }
    }

    fn message(qos: u8, retain: bool, payload: &[u8]) -> Message {
        Message {
            node: "emqx@127.0.0.1".into(),
            id: "0005F65F239F03FEF44300000BB40002".into(),
            qos,
            from: "pub1".into(),
            topic: "t/1".into(),
            payload: payload.to_vec(),
            retain,
            timestamp_ms: 1678263363503,
            username: None,
            expiry_interval_s: None,
        }
    }

    #[test]
    fn qos1_publish_writes_msg_and_map() {
        let ops = RuleSet::default()
            .plan(
                &HookEvent::MessagePublish {
                    message: message(1, false, b"hello"),
                },
                &StorageFormat::default(),
            )
            .unwrap();
        assert_eq!(ops.len(), 2);
        let Write::Put { item, fresh } = &ops[0].write else {
            panic!("expected a put, got {:?}", ops[0].write)
        };
        assert!(fresh);
        assert_eq!(ops[0].key.table, Table::Msg);
        assert_eq!(item["payload"], Value::S("hello".into()));
        assert_eq!(item["arrived"], Value::N(1678263363));
        assert_eq!(item["retain"], Value::N(0));
        assert_eq!(item["qos"], Value::N(1));
        assert_eq!(item["sender"], Value::S("pub1".into()));
        assert_eq!(item["msgid"], Value::S(ops[0].key.hash.clone()));
        assert_eq!(ops[0].key.hash.len(), 47);
        assert_eq!(ops[1].key, Key::new(Table::TopicMsgMap, "t/1"));
    }

    #[test]
    fn qos0_and_empty_retained_follow_the_seed() {
        let rules = RuleSet::default();
        let fmt = StorageFormat::default();
        let plan = |m| {
            rules
                .plan(&HookEvent::MessagePublish { message: m }, &fmt)
                .unwrap()
        };
        assert!(plan(message(0, false, b"x")).is_empty());
        // Retained QoS 0 with payload: only mqtt_retain.
        let ops = plan(message(0, true, b"x"));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].key.table, Table::Retain);
        // Empty retained clears the retained message and stores nothing else.
        let ops = plan(message(1, true, b""));
        assert_eq!(
            ops,
            vec![Op {
                key: Key::new(Table::Retain, "t/1"),
                write: Write::Delete
            }]
        );
    }

    #[test]
    fn non_utf8_payload_is_binary_and_hex_format_works() {
        let fmt = StorageFormat {
            msgid: MsgIdFormat::Hex,
            time: TimeUnit::Milliseconds,
            expiry: Default::default(),
            event_time: false,
        };
        let ops = RuleSet::default()
            .plan(
                &HookEvent::MessagePublish {
                    message: message(2, false, &[0xff, 0xfe]),
                },
                &fmt,
            )
            .unwrap();
        let Write::Put { item, .. } = &ops[0].write else {
            panic!()
        };
        assert_eq!(item["payload"], Value::B(vec![0xff, 0xfe]));
        assert_eq!(item["arrived"], Value::N(1678263363503));
        assert_eq!(ops[0].key.hash, "0005F65F239F03FEF44300000BB40002");
    }

    #[test]
    fn bad_events_are_refused_with_a_reason() {
        let rules = RuleSet::default();
        let fmt = StorageFormat::default();
        let mut m = message(1, false, b"x");
        m.id = "not-a-guid".into();
        assert_eq!(
            rules.plan(&HookEvent::MessagePublish { message: m }, &fmt),
            Err(EventError::MessageId(GuidError::NotHex(
                "not-a-guid".into()
            )))
        );
        let big = message(1, false, &vec![b'a'; MAX_ITEM_BYTES]);
        assert!(matches!(
            rules.plan(&HookEvent::MessagePublish { message: big }, &fmt),
            Err(EventError::ItemTooLarge {
                table: Table::Msg,
                ..
            })
        ));
        let empty = HookEvent::ClientConnected {
            client: client(""),
            connected_at_ms: 0,
        };
        assert_eq!(
            rules.plan(&empty, &fmt),
            Err(EventError::Key(crate::storage::item::KeyError::Empty {
                field: "clientid"
            }))
        );
    }

    #[test]
    fn publishes_to_topics_mqtt_forbids_are_refused() {
        let rules = RuleSet::default();
        let fmt = StorageFormat::default();
        let to = |topic: &str| HookEvent::MessagePublish {
            message: Message {
                topic: topic.into(),
                ..message(1, false, b"p")
            },
        };
        for (topic, want) in [
            (
                "a/+",
                "topic name \"a/+\" contains a wildcard ('+' or '#'), which only filters may",
            ),
            (
                "w/#",
                "topic name \"w/#\" contains a wildcard ('+' or '#'), which only filters may",
            ),
            ("a\0b", "topic name contains a NUL character"),
            ("", "topic name is empty"),
        ] {
            assert_eq!(
                rules.plan(&to(topic), &fmt).unwrap_err().to_string(),
                want,
                "{topic:?}"
            );
        }
        let long = "t".repeat(65_536);
        assert_eq!(
            rules.plan(&to(&long), &fmt).unwrap_err().to_string(),
            "topic name is 65536 bytes; MQTT allows at most 65535"
        );
        assert!(rules.plan(&to("a/b"), &fmt).is_ok());
    }

    #[test]
    fn topic_filters_select_rules() {
        let rules = RuleSet::new(vec![
            Rule::new(
                "message.publish",
                Action::OnMessagePublish,
                Some("sensors/+/temp"),
            )
            .unwrap(),
        ]);
        let fmt = StorageFormat::default();
        let mut m = message(1, false, b"x");
        m.topic = "sensors/a/temp".into();
        assert_eq!(
            rules
                .plan(&HookEvent::MessagePublish { message: m.clone() }, &fmt)
                .unwrap()
                .len(),
            2
        );
        m.topic = "sensors/a/humidity".into();
        assert!(
            rules
                .plan(&HookEvent::MessagePublish { message: m }, &fmt)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn ack_writes_acked_deletes_msg_and_removes_from_map() {
        let ops = RuleSet::default()
            .plan(
                &HookEvent::MessageAcked {
                    client: client("sub1"),
                    message: message(1, false, b"x"),
                },
                &StorageFormat::default(),
            )
            .unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].key, Key::with_range(Table::Acked, "t/1", "sub1"));
        assert_eq!(ops[1].write, Write::Delete);
        assert!(
            matches!(&ops[2].write, Write::SetDelta { del, add, .. } if del.len() == 1 && add.is_empty())
        );
    }
}
