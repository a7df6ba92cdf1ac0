//! The EMQX 4 web-hook translator: one `emqx_web_hook` JSON object (`action` =
//! `client_connected`, …, `message_acked`) into a [`HookEvent`].

use serde_json::{Map, Value};

use super::http::{FieldError, Row};
use super::now_ms;
use crate::event::{ClientInfo, HookEvent, Message};

/// EMQX 4 web hooks carry no message id. One is derived so that a publish and its ack agree: the
/// timestamp in the GUID's time bits, a hash of publisher, topic and payload below.
fn derived_id(ts_ms: u64, from: &str, topic: &str, payload: &[u8]) -> String {
    // Wrapping, as the time bits always kept only the low 64 bits of the microseconds.
    let micros = ts_ms.wrapping_mul(1000);
    crate::guid::to_hex(crate::guid::derive(
        micros,
        &[from.as_bytes(), topic.as_bytes(), payload],
    ))
}

/// Web hook times: milliseconds, or seconds for values too small to be milliseconds.
fn web_hook_ms(v: u64) -> u64 {
    if v < 100_000_000_000 { v * 1000 } else { v }
}

/// A time in milliseconds from the first of `names` present (seconds or milliseconds), else now.
fn time(row: &Row<'_>, names: &[&str]) -> Result<u64, FieldError> {
    for n in names {
        if let Some(v) = row.opt_u64(n)? {
            return Ok(web_hook_ms(v));
        }
    }
    Ok(now_ms())
}

/// The client an object names in `id_field`, on `node`.
fn client(row: &Row<'_>, node: &str, id_field: &str) -> Result<ClientInfo, FieldError> {
    Ok(ClientInfo {
        node: node.to_string(),
        clientid: row.str(id_field)?,
        username: row.opt_nonempty("username")?,
        peerhost: row.opt_str("ipaddress")?,
    })
}

/// The message of a publish or ack object, with its id derived when it has none.
fn message(row: &Row<'_>, node: &str) -> Result<Message, FieldError> {
    let from = row.str("from_client_id")?;
    let topic = row.str("topic")?;
    let payload = row.payload("payload")?;
    let ts = time(row, &["ts"])?;
    let id = match row.opt_str("id")? {
        Some(id) => id,
        None => derived_id(ts, &from, &topic, &payload),
    };
    Ok(Message {
        node: node.to_string(),
        id,
        qos: row.qos("qos")?,
        from,
        topic,
        payload,
        retain: row.opt_bool("retain")?.unwrap_or(false),
        timestamp_ms: ts,
        username: row.opt_nonempty("from_username")?,
        expiry_interval_s: None,
    })
}

/// A subscription's QoS from `opts.qos` (0 when there are no options).
fn subscribe_qos(map: &Map<String, Value>, index: usize) -> Result<u8, FieldError> {
    match map.get("opts") {
        Some(Value::Object(o)) => Row::new(o, index, false)
            .qos("qos")
            .map_err(|e| FieldError {
                field: format!("[{index}].opts.qos"),
                error: e.error,
            }),
        _ => Ok(0),
    }
}

/// The `action` values this translator reads.
const ACTIONS: [&str; 6] = [
    "client_connected",
    "client_disconnected",
    "session_subscribed",
    "session_unsubscribed",
    "message_publish",
    "message_acked",
];

/// One EMQX 4 web-hook object as an event.
pub fn webhook_event(
    map: &Map<String, Value>,
    index: usize,
    base64: bool,
) -> Result<HookEvent, FieldError> {
    let row = Row::new(map, index, base64);
    let action = row.str("action")?;
    let node = row.opt_str("node")?.unwrap_or_default();
    Ok(match action.as_str() {
        "client_connected" => HookEvent::ClientConnected {
            client: client(&row, &node, "clientid")?,
            connected_at_ms: time(&row, &["connected_at"])?,
        },
        "client_disconnected" => HookEvent::ClientDisconnected {
            client: client(&row, &node, "clientid")?,
            reason: row.opt_str("reason")?.unwrap_or_default(),
            disconnected_at_ms: time(&row, &["disconnected_at"])?,
        },
        "session_subscribed" => {
            let qos = subscribe_qos(map, index)?;
            HookEvent::SessionSubscribed {
                client: client(&row, &node, "clientid")?,
                topic: row.str("topic")?,
                qos,
            }
        }
        "session_unsubscribed" => HookEvent::SessionUnsubscribed {
            client: client(&row, &node, "clientid")?,
            topic: row.str("topic")?,
        },
        "message_publish" => HookEvent::MessagePublish {
            message: message(&row, &node)?,
        },
        "message_acked" => HookEvent::MessageAcked {
            client: client(&row, &node, "clientid")?,
            message: message(&row, &node)?,
        },
        other => return Err(row.unsupported("action", other, &ACTIONS)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::http::tests::{obj, row0};
    use serde_json::json;

    #[test]
    fn webhook_publish_and_ack_agree_on_the_derived_id() {
        let publish = row0(webhook_event, json!({
            "action": "message_publish", "node": "emqx@n1", "from_client_id": "p", "from_username": "u",
            "topic": "t/1", "qos": 1, "retain": false, "payload": "x", "ts": 1700000000123u64
        }))
        .unwrap();
        let ack = row0(webhook_event, json!({
            "action": "message_acked", "node": "emqx@n1", "clientid": "s", "from_client_id": "p",
            "topic": "t/1", "qos": 1, "retain": false, "payload": "x", "ts": 1700000000123u64
        }))
        .unwrap();
        let (
            HookEvent::MessagePublish { message: m1 },
            HookEvent::MessageAcked { message: m2, .. },
        ) = (publish, ack)
        else {
            panic!()
        };
        assert_eq!(m1.id, m2.id);
        // The id every earlier release derived for this message (FNV-1a of publisher, topic
        // and payload below the time bits).
        assert_eq!(m1.id, "00060A2418202078541CFBED9D84EC08");
        assert_eq!(
            crate::guid::timestamp_micros(crate::guid::from_hex(&m1.id).unwrap()),
            1700000000123000
        );
        // Seconds are read as seconds.
        let e = row0(
            webhook_event,
            json!({"action": "client_connected", "clientid": "c", "connected_at": 1700000000u64}),
        )
        .unwrap();
        assert!(matches!(
            e,
            HookEvent::ClientConnected {
                connected_at_ms: 1700000000000,
                ..
            }
        ));
        let err =
            webhook_event(&obj(json!({"action": "message_delivered"})), 2, false).unwrap_err();
        assert_eq!(err.field, "[2].action");
        assert_eq!(
            err.error,
            "unsupported action \"message_delivered\" (expected client_connected, client_disconnected, session_subscribed, session_unsubscribed, message_publish or message_acked)"
        );
    }
}
