//! The seed's actions bound to hook points with optional topic filters, and the planner that turns
//! one hook event into the writes its rules call for.
//!
//! Each write-side action does exactly what the 4.x backend did (BRIEF §4, reference/emqx.md §1.3),
//! producing the items of the storage contract (BRIEF §3). The read-side actions
//! (`on_subscribe_lookup`, `on_message_fetch_for_queue`, `on_retain_lookup`) are accepted in rule
//! sets so seed configurations load unchanged, but produce no writes: they are served as queries.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::event::{HookEvent, HookPoint, Message};
use crate::guid::{self, GuidError};
use crate::storage::item::{Item, Key, MAX_ITEM_BYTES, Op, Table, Value, Write, item_size};
use crate::topic::{FilterError, TopicFilter};

/// The seed's action functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    OnClientConnected,
    OnClientDisconnected,
    OnSubscribeLookup,
    OnMessageFetchForQueue,
    OnRetainLookup,
    OnAckedDelete,
    OnMessagePublish,
    OnMessageStore,
    OnMessageRetain,
    OnRetainDelete,
    OnMessageAckedForQueue,
}

impl Action {
    /// The hook point the action belongs to. `on_subscribe_lookup` is documented on
    /// `client.connected` (the seed's config block also names `session.created`, see
    /// reference/emqx.md §1.6; both are accepted by [`Rule::new`]).
    pub fn hook(self) -> HookPoint {
        match self {
            Action::OnClientConnected | Action::OnSubscribeLookup => HookPoint::ClientConnected,
            Action::OnClientDisconnected => HookPoint::ClientDisconnected,
            Action::OnMessageFetchForQueue | Action::OnRetainLookup => HookPoint::SessionSubscribed,
            Action::OnAckedDelete => HookPoint::SessionUnsubscribed,
            Action::OnMessagePublish
            | Action::OnMessageStore
            | Action::OnMessageRetain
            | Action::OnRetainDelete => HookPoint::MessagePublish,
            Action::OnMessageAckedForQueue => HookPoint::MessageAcked,
        }
    }

    /// The seed's function name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::OnClientConnected => "on_client_connected",
            Action::OnClientDisconnected => "on_client_disconnected",
            Action::OnSubscribeLookup => "on_subscribe_lookup",
            Action::OnMessageFetchForQueue => "on_message_fetch_for_queue",
            Action::OnRetainLookup => "on_retain_lookup",
            Action::OnAckedDelete => "on_acked_delete",
            Action::OnMessagePublish => "on_message_publish",
            Action::OnMessageStore => "on_message_store",
            Action::OnMessageRetain => "on_message_retain",
            Action::OnRetainDelete => "on_retain_delete",
            Action::OnMessageAckedForQueue => "on_message_acked_for_queue",
        }
    }

    /// Whether the action writes (the others are read-side lookups).
    pub fn writes(self) -> bool {
        !matches!(
            self,
            Action::OnSubscribeLookup | Action::OnMessageFetchForQueue | Action::OnRetainLookup
        )
    }
}

/// Why a rule is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(
        "unknown hook point {0:?} (expected one of client.connected, client.disconnected, session.subscribed, session.unsubscribed, message.publish, message.acked)"
    )]
    UnknownHook(String),
    #[error("action {action} belongs to hook {expected}, not {got}")]
    WrongHook {
        action: &'static str,
        expected: HookPoint,
        got: String,
    },
    #[error("rule {action}: {source}")]
    Filter {
        action: &'static str,
        #[source]
        source: FilterError,
    },
}

/// One `backend.dynamo.hook.<hook>.<n>` line: an action on a hook point, optionally only for
/// topics matching a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub hook: HookPoint,
    pub action: Action,
    /// For message hooks the message topic must match; for session hooks the subscription's
    /// filter, taken literally. Client hooks have no topic, so a filter there is ignored.
    pub topic: Option<TopicFilter>,
}

impl Rule {
    /// Builds a rule from the seed's names, checking that the action belongs to the hook.
    pub fn new(hook: &str, action: Action, topic: Option<&str>) -> Result<Self, RuleError> {
        // The seed's sample binds on_subscribe_lookup to session.created; it runs per client
        // session, which is client.connected here.
        let hook_point = if hook == "session.created" && action == Action::OnSubscribeLookup {
            HookPoint::ClientConnected
        } else {
            HookPoint::parse(hook).ok_or_else(|| RuleError::UnknownHook(hook.to_string()))?
        };
        if hook_point != action.hook() {
            return Err(RuleError::WrongHook {
                action: action.as_str(),
                expected: action.hook(),
                got: hook.to_string(),
            });
        }
        let topic = topic
            .map(|t| {
                TopicFilter::new(t).map_err(|source| RuleError::Filter {
                    action: action.as_str(),
                    source,
                })
            })
            .transpose()?;
        Ok(Rule {
            hook: hook_point,
            action,
            topic,
        })
    }
}

/// How message ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgIdFormat {
    /// EMQX's base62 text (47 characters), what the 4.x backend stored.
    #[default]
    Base62,
    /// The 32-digit upper-case hex form EMQX 5 uses.
    Hex,
}

/// Unit of `online_at`, `offline_at` and `arrived`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds, as the seed's samples show.
    #[default]
    Seconds,
    Milliseconds,
}

/// How values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StorageFormat {
    pub msgid: MsgIdFormat,
    pub time: TimeUnit,
}

impl StorageFormat {
    fn time(&self, ms: u64) -> Value {
        let v = match self.time {
            TimeUnit::Seconds => ms / 1000,
            TimeUnit::Milliseconds => ms,
        };
        Value::N(i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// The stored form of a hex message id.
    pub fn msgid(&self, hex: &str) -> Result<String, GuidError> {
        let guid = guid::from_hex(hex)?;
        Ok(match self.msgid {
            MsgIdFormat::Base62 => guid::to_base62(guid),
            MsgIdFormat::Hex => guid::to_hex(guid),
        })
    }
}

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

/// Which of the matching rules an event feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActionScope {
    /// Every rule bound to the event's hook.
    #[default]
    All,
    /// Only `on_message_retain` and `on_retain_delete`: for retained publishes posted by an EMQX
    /// rule while ExHook (which cannot see the retain flag) feeds every other action, so the
    /// message is not stored twice.
    RetainedOnly,
}

impl ActionScope {
    fn allows(self, action: Action) -> bool {
        match self {
            ActionScope::All => true,
            ActionScope::RetainedOnly => {
                matches!(action, Action::OnMessageRetain | Action::OnRetainDelete)
            }
        }
    }
}

/// The configured rules, grouped for lookup per hook point.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl Default for RuleSet {
    /// The seed's configuration (seeds/emqx-dynamodb-backend.en.txt): every action but the
    /// optional `on_message_store`, with topic `#` on the session and message hooks.
    fn default() -> Self {
        let rule = |hook: &str, action, topic: Option<&str>| {
            Rule::new(hook, action, topic).expect("the built-in rules are valid")
        };
        RuleSet::new(vec![
            rule("client.connected", Action::OnClientConnected, None),
            rule("client.connected", Action::OnSubscribeLookup, None),
            rule("client.disconnected", Action::OnClientDisconnected, None),
            rule(
                "session.subscribed",
                Action::OnMessageFetchForQueue,
                Some("#"),
            ),
            rule("session.subscribed", Action::OnRetainLookup, Some("#")),
            rule("session.unsubscribed", Action::OnAckedDelete, Some("#")),
            rule("message.publish", Action::OnMessagePublish, Some("#")),
            rule("message.publish", Action::OnMessageRetain, Some("#")),
            rule("message.publish", Action::OnRetainDelete, Some("#")),
            rule("message.acked", Action::OnMessageAckedForQueue, Some("#")),
        ])
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        RuleSet { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The hook points some rule is bound to, so adapters register only those.
    pub fn hooks(&self) -> BTreeSet<HookPoint> {
        self.rules.iter().map(|r| r.hook).collect()
    }

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
            .rules
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
    item
}

const MSGID_SET: &str = "MsgId";

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
        ) => {
            let key = Key::new(Table::Client, &client.clientid);
            let mut item = key.to_item();
            item.insert("connect_state".into(), Value::N(1));
            item.insert("node".into(), Value::S(client.node.clone()));
            item.insert("online_at".into(), format.time(*connected_at_ms));
            item.insert("offline_at".into(), Value::N(0));
            ops.push(Op {
                key,
                write: Write::Put { item, fresh: false },
            });
        }
        (
            Action::OnClientDisconnected,
            HookEvent::ClientDisconnected {
                client,
                disconnected_at_ms,
                ..
            },
        ) => {
            // Guarded by node: a late disconnect from the node a client left (takeover) must not
            // mark the client offline on its new node.
            let set = [
                ("connect_state".to_string(), Value::N(0)),
                ("offline_at".to_string(), format.time(*disconnected_at_ms)),
            ]
            .into();
            ops.push(Op {
                key: Key::new(Table::Client, &client.clientid),
                write: Write::Update {
                    set,
                    guard: Some(("node".into(), Value::S(client.node.clone()))),
                },
            });
        }
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
            let msgid = format.msgid(&message.id)?;
            let key = Key::new(Table::Msg, &msgid);
            let item = message_item(key.to_item(), &msgid, message, format);
            ops.push(Op {
                key,
                write: Write::Put { item, fresh: true },
            });
            ops.push(Op {
                key: Key::new(Table::TopicMsgMap, &message.topic),
                write: Write::SetDelta {
                    attr: MSGID_SET.into(),
                    add: [msgid].into(),
                    del: BTreeSet::new(),
                    fresh: true,
                },
            });
        }
        (Action::OnMessageStore, HookEvent::MessagePublish { message }) => {
            if message.retain && message.payload.is_empty() {
                return Ok(());
            }
            let msgid = format.msgid(&message.id)?;
            let key = Key::new(Table::Msg, &msgid);
            let item = message_item(key.to_item(), &msgid, message, format);
            ops.push(Op {
                key,
                write: Write::Put { item, fresh: true },
            });
        }
        (Action::OnMessageRetain, HookEvent::MessagePublish { message }) => {
            if !message.retain || message.payload.is_empty() {
                return Ok(());
            }
            let msgid = format.msgid(&message.id)?;
            let key = Key::new(Table::Retain, &message.topic);
            let item = message_item(key.to_item(), &msgid, message, format);
            ops.push(Op {
                key,
                write: Write::Put { item, fresh: false },
            });
        }
        (Action::OnRetainDelete, HookEvent::MessagePublish { message })
            if message.retain && message.payload.is_empty() =>
        {
            ops.push(Op {
                key: Key::new(Table::Retain, &message.topic),
                write: Write::Delete,
            });
        }
        (Action::OnMessageAckedForQueue, HookEvent::MessageAcked { client, message }) => {
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
            ops.push(Op {
                key: Key::new(Table::TopicMsgMap, &message.topic),
                write: Write::SetDelta {
                    attr: MSGID_SET.into(),
                    add: BTreeSet::new(),
                    del: [msgid].into(),
                    fresh: true,
                },
            });
        }
        // A rule only reaches here for its own hook, so the event kind always fits; read-side
        // actions were filtered out by the caller.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ClientInfo;

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
        }
    }

    #[test]
    fn rules_check_their_hook() {
        assert!(Rule::new("client.connected", Action::OnClientConnected, None).is_ok());
        assert!(Rule::new("session.created", Action::OnSubscribeLookup, None).is_ok());
        assert_eq!(
            Rule::new("message.publish", Action::OnClientConnected, None),
            Err(RuleError::WrongHook {
                action: "on_client_connected",
                expected: HookPoint::ClientConnected,
                got: "message.publish".into()
            })
        );
        assert!(matches!(
            Rule::new("client.foo", Action::OnClientConnected, None),
            Err(RuleError::UnknownHook(_))
        ));
        assert!(matches!(
            Rule::new("message.publish", Action::OnMessagePublish, Some("a/#/b")),
            Err(RuleError::Filter { .. })
        ));
    }

    #[test]
    fn default_rules_are_the_seed_configuration() {
        let rules = RuleSet::default();
        assert_eq!(rules.rules().len(), 10);
        assert!(
            !rules
                .rules()
                .iter()
                .any(|r| r.action == Action::OnMessageStore)
        );
        assert_eq!(rules.hooks().len(), 6);
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
