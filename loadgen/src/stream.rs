//! Event streams on disk, one JSON object per line, so a run can be recorded and replayed (and
//! the same stream fed to other writers for a comparison).
//!
//! - **Events** (`--record` / `--replay`): a hook event with every field, payloads base64:
//!   `{"hook":"message.publish","node":…,"id":…,"qos":1,"from":…,"topic":…,"payload_b64":…,
//!   "retain":false,"ts":…}`.
//! - **Ops** (`loadgen plan`): the writes the seed's actions make for each event, one line per
//!   event, in DynamoDB JSON (`{"S": …}`, `{"N": "…"}`, `{"B": base64}`, `{"SS": […]}`), tables by
//!   their base names: `{"ops":[{"table":"mqtt_msg","kind":"put","item":{…}}, …]}` with kinds
//!   `put`, `delete` (`key`), `update` (`key`, `set`, optional `guard` `[attr, value]`), `add` and
//!   `remove` (`key`, `attr`, `members`). Writers that are not mqtt-dynamo read these.

use std::io::{BufRead, Write as _};

use base64::Engine;
use serde_json::{Map, Value as Json, json};

use mqtt_dynamo::event::{ClientInfo, HookEvent, Message};
use mqtt_dynamo::storage::item::{Item, Key, Op, Value, Write};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn client_json(c: &ClientInfo, obj: &mut Map<String, Json>) {
    obj.insert("node".into(), json!(c.node));
    obj.insert("clientid".into(), json!(c.clientid));
    if let Some(u) = &c.username {
        obj.insert("username".into(), json!(u));
    }
    if let Some(p) = &c.peerhost {
        obj.insert("peerhost".into(), json!(p));
    }
}

fn message_json(m: &Message) -> Json {
    let mut obj = json!({
        "node": m.node, "id": m.id, "qos": m.qos, "from": m.from, "topic": m.topic,
        "payload_b64": B64.encode(&m.payload), "retain": m.retain, "ts": m.timestamp_ms,
    });
    if let Some(u) = &m.username {
        obj["username"] = json!(u);
    }
    obj
}

/// One event as a JSON line.
pub fn event_to_json(e: &HookEvent) -> Json {
    let mut obj = Map::new();
    obj.insert("hook".into(), json!(e.hook().as_str()));
    match e {
        HookEvent::ClientConnected {
            client,
            connected_at_ms,
        } => {
            client_json(client, &mut obj);
            obj.insert("ts".into(), json!(connected_at_ms));
        }
        HookEvent::ClientDisconnected {
            client,
            reason,
            disconnected_at_ms,
        } => {
            client_json(client, &mut obj);
            obj.insert("reason".into(), json!(reason));
            obj.insert("ts".into(), json!(disconnected_at_ms));
        }
        HookEvent::SessionSubscribed { client, topic, qos } => {
            client_json(client, &mut obj);
            obj.insert("topic".into(), json!(topic));
            obj.insert("qos".into(), json!(qos));
        }
        HookEvent::SessionUnsubscribed { client, topic } => {
            client_json(client, &mut obj);
            obj.insert("topic".into(), json!(topic));
        }
        HookEvent::MessagePublish { message } => {
            obj.insert("message".into(), message_json(message));
        }
        HookEvent::MessageAcked { client, message } => {
            client_json(client, &mut obj);
            obj.insert("message".into(), message_json(message));
        }
    }
    Json::Object(obj)
}

fn s(o: &Map<String, Json>, k: &str) -> Result<String, String> {
    o.get(k)
        .and_then(Json::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("missing string {k:?}"))
}

fn u(o: &Map<String, Json>, k: &str) -> Result<u64, String> {
    o.get(k)
        .and_then(Json::as_u64)
        .ok_or_else(|| format!("missing number {k:?}"))
}

fn client_from(o: &Map<String, Json>) -> Result<ClientInfo, String> {
    Ok(ClientInfo {
        node: s(o, "node")?,
        clientid: s(o, "clientid")?,
        username: o.get("username").and_then(Json::as_str).map(str::to_string),
        peerhost: o.get("peerhost").and_then(Json::as_str).map(str::to_string),
    })
}

fn message_from(o: &Map<String, Json>) -> Result<Message, String> {
    let m = o
        .get("message")
        .and_then(Json::as_object)
        .ok_or("missing \"message\"")?;
    Ok(Message {
        node: s(m, "node")?,
        id: s(m, "id")?,
        qos: u8::try_from(u(m, "qos")?).map_err(|_| "qos out of range")?,
        from: s(m, "from")?,
        topic: s(m, "topic")?,
        payload: B64
            .decode(s(m, "payload_b64")?)
            .map_err(|e| format!("payload_b64: {e}"))?,
        retain: m.get("retain").and_then(Json::as_bool).unwrap_or(false),
        timestamp_ms: u(m, "ts")?,
        username: m.get("username").and_then(Json::as_str).map(str::to_string),
        expiry_interval_s: None,
    })
}

/// One JSON line back into an event.
pub fn event_from_json(v: &Json) -> Result<HookEvent, String> {
    let o = v.as_object().ok_or("not a JSON object")?;
    Ok(match s(o, "hook")?.as_str() {
        "client.connected" => HookEvent::ClientConnected {
            client: client_from(o)?,
            connected_at_ms: u(o, "ts")?,
        },
        "client.disconnected" => HookEvent::ClientDisconnected {
            client: client_from(o)?,
            reason: s(o, "reason")?,
            disconnected_at_ms: u(o, "ts")?,
        },
        "session.subscribed" => HookEvent::SessionSubscribed {
            client: client_from(o)?,
            topic: s(o, "topic")?,
            qos: u8::try_from(u(o, "qos")?).map_err(|_| "qos out of range")?,
        },
        "session.unsubscribed" => HookEvent::SessionUnsubscribed {
            client: client_from(o)?,
            topic: s(o, "topic")?,
        },
        "message.publish" => HookEvent::MessagePublish {
            message: message_from(o)?,
        },
        "message.acked" => HookEvent::MessageAcked {
            client: client_from(o)?,
            message: message_from(o)?,
        },
        other => return Err(format!("unknown hook {other:?}")),
    })
}

/// Writes events as JSON lines.
pub struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
}

impl Recorder {
    pub fn create(path: &std::path::Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = std::fs::File::create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Recorder {
            out: std::io::BufWriter::new(f),
        })
    }

    pub fn write(&mut self, e: &HookEvent) -> Result<(), String> {
        writeln!(self.out, "{}", event_to_json(e)).map_err(|e| format!("recording: {e}"))
    }

    pub fn finish(mut self) -> Result<(), String> {
        self.out.flush().map_err(|e| format!("recording: {e}"))
    }
}

/// Reads a recorded stream, event by event; errors name the line.
pub struct Replay {
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    line: usize,
    path: String,
}

impl Replay {
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Replay {
            lines: std::io::BufReader::new(f).lines(),
            line: 0,
            path: path.display().to_string(),
        })
    }

    pub fn next_event(&mut self) -> Option<Result<HookEvent, String>> {
        loop {
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(e) => return Some(Err(format!("{}: {e}", self.path))),
            };
            self.line += 1;
            if text.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str::<Json>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| event_from_json(&v))
                    .map_err(|e| format!("{} line {}: {e}", self.path, self.line)),
            );
        }
    }
}

/// A value in DynamoDB JSON.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::S(s) => json!({ "S": s }),
        Value::N(n) => json!({ "N": n.to_string() }),
        Value::B(b) => json!({ "B": B64.encode(b) }),
        Value::Ss(set) => json!({ "SS": set.iter().collect::<Vec<_>>() }),
    }
}

fn item_json(item: &Item) -> Json {
    Json::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn key_json(key: &Key) -> Json {
    item_json(&key.to_item())
}

/// One write in the ops format (see the module docs); a set delta that both adds and removes
/// becomes two lines' worth (an `add` then a `remove`).
pub fn op_json(op: &Op) -> Vec<Json> {
    let table = op.key.table.base_name();
    match &op.write {
        Write::Put { item, .. } => {
            vec![json!({"table": table, "kind": "put", "item": item_json(item)})]
        }
        Write::Delete => vec![json!({"table": table, "kind": "delete", "key": key_json(&op.key)})],
        Write::Update { set, guard } => {
            let mut v = json!({"table": table, "kind": "update", "key": key_json(&op.key),
                "set": item_json(set)});
            if let Some((attr, value)) = guard {
                v["guard"] = json!([attr, value_json(value)]);
            }
            vec![v]
        }
        Write::SetDelta { attr, add, del, .. } => {
            let mut out = Vec::new();
            if !add.is_empty() {
                out.push(
                    json!({"table": table, "kind": "add", "key": key_json(&op.key),
                    "attr": attr, "members": add.iter().collect::<Vec<_>>()}),
                );
            }
            if !del.is_empty() {
                out.push(
                    json!({"table": table, "kind": "remove", "key": key_json(&op.key),
                    "attr": attr, "members": del.iter().collect::<Vec<_>>()}),
                );
            }
            out
        }
        // Not in the seed's writes (`loadgen plan` writes those): kept for completeness.
        Write::Timed(t) => vec![
            json!({"table": table, "kind": "timed", "key": key_json(&op.key),
            "at": t.at, "set": item_json(&t.set), "remove": t.remove.iter().collect::<Vec<_>>()}),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadConfig};

    #[test]
    fn events_round_trip_through_json_lines() {
        let mut w = Workload::new(WorkloadConfig::default());
        for _ in 0..5_000 {
            let e = w.next_event();
            let line = event_to_json(&e).to_string();
            let back = event_from_json(&serde_json::from_str(&line).unwrap()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(
            event_from_json(&json!({"hook": "x"}))
                .unwrap_err()
                .contains("unknown hook")
        );
        assert!(
            event_from_json(&json!({"hook": "message.publish"}))
                .unwrap_err()
                .contains("message")
        );
    }

    #[test]
    fn ops_in_dynamodb_json() {
        let key = Key::new(mqtt_dynamo::storage::item::Table::TopicMsgMap, "t");
        let op = Op {
            key,
            write: Write::SetDelta {
                attr: "MsgId".into(),
                add: ["a".to_string()].into(),
                del: ["b".to_string()].into(),
                fresh: true,
            },
        };
        assert_eq!(
            op_json(&op),
            vec![
                json!({"table": "mqtt_topic_msg_map", "kind": "add", "key": {"topic": {"S": "t"}}, "attr": "MsgId", "members": ["a"]}),
                json!({"table": "mqtt_topic_msg_map", "kind": "remove", "key": {"topic": {"S": "t"}}, "attr": "MsgId", "members": ["b"]}),
            ]
        );
    }
}
