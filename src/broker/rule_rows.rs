//! The EMQX 5 rule-engine translator: one row as EMQX's HTTP action posts it (`SELECT *`, an
//! empty body template) into a [`HookEvent`].

use serde_json::{Map, Value};

use super::http::{FieldError, Row};
use crate::event::{ClientInfo, HookEvent, Message};

/// `"10.0.0.5:51000"` or `"[::1]:51000"` → the host part.
fn host_of(peername: &str) -> String {
    if let Some(rest) = peername.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match peername.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => peername.to_string(),
    }
}

/// The client a row names in `id_field`.
fn client(row: &Row<'_>, id_field: &str) -> Result<ClientInfo, FieldError> {
    Ok(ClientInfo {
        node: row.str("node")?,
        clientid: row.str(id_field)?,
        username: row.opt_nonempty("username")?,
        peerhost: match row.opt_str("peerhost")? {
            Some(h) => Some(h),
            None => row.opt_str("peername")?.map(|p| host_of(&p)),
        },
    })
}

/// The message of a publish or ack row, sent by the client named in `from_field`.
fn message(row: &Row<'_>, from_field: &str) -> Result<Message, FieldError> {
    let retain = match row.map.get("flags") {
        None | Some(Value::Null) => false,
        Some(Value::Object(f)) => match f.get("retain") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(row.err("flags.retain", "must be a boolean")),
        },
        Some(_) => return Err(row.err("flags", "must be an object")),
    };
    Ok(Message {
        node: row.str("node")?,
        id: row.str("id")?,
        qos: row.qos("qos")?,
        from: row.str(from_field)?,
        topic: row.str("topic")?,
        payload: row.payload("payload")?,
        retain,
        timestamp_ms: row.time_ms(&["publish_received_at", "timestamp"])?,
        username: row.opt_nonempty("username")?,
        expiry_interval_s: expiry_interval(row)?,
    })
}

/// MQTT 5's Message-Expiry-Interval from the row's `pub_props` (EMQX renders the publish's
/// properties there: `{"Message-Expiry-Interval": 60, "User-Property": {..}}`).
fn expiry_interval(row: &Row<'_>) -> Result<Option<u32>, FieldError> {
    const NAME: &str = "Message-Expiry-Interval";
    let field = format!("pub_props.{NAME}");
    let props = match row.map.get("pub_props") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(row.err("pub_props", "must be an object")),
    };
    let invalid = || row.err(&field, "must be an integer of 0 to 4294967295 (seconds)");
    match props.get(NAME) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(invalid),
        Some(Value::String(s)) => s.trim().parse::<u32>().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

/// The `event` values this translator reads.
const EVENTS: [&str; 6] = [
    "client.connected",
    "client.disconnected",
    "session.subscribed",
    "session.unsubscribed",
    "message.publish",
    "message.acked",
];

/// One EMQX 5 rule-engine row as an event.
pub fn rule_row_event(
    map: &Map<String, Value>,
    index: usize,
    base64: bool,
) -> Result<HookEvent, FieldError> {
    let row = Row::new(map, index, base64);
    let event = row.str("event")?;
    Ok(match event.as_str() {
        "client.connected" => HookEvent::ClientConnected {
            client: client(&row, "clientid")?,
            connected_at_ms: row.time_ms(&["connected_at", "timestamp"])?,
        },
        "client.disconnected" => HookEvent::ClientDisconnected {
            client: client(&row, "clientid")?,
            reason: row.opt_str("reason")?.unwrap_or_default(),
            disconnected_at_ms: row.time_ms(&["disconnected_at", "timestamp"])?,
        },
        "session.subscribed" => HookEvent::SessionSubscribed {
            client: client(&row, "clientid")?,
            topic: row.str("topic")?,
            qos: row.qos("qos")?,
        },
        "session.unsubscribed" => HookEvent::SessionUnsubscribed {
            client: client(&row, "clientid")?,
            topic: row.str("topic")?,
        },
        "message.publish" => HookEvent::MessagePublish {
            message: message(&row, "clientid")?,
        },
        "message.acked" => HookEvent::MessageAcked {
            client: client(&row, "clientid")?,
            message: message(&row, "from_clientid")?,
        },
        other => return Err(row.unsupported("event", other, &EVENTS)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::http::tests::{obj, row0};
    use serde_json::json;

    #[test]
    fn rule_rows_translate() {
        let e = row0(
            rule_row_event,
            json!({
                "event": "client.connected", "node": "emqx@n1", "clientid": "c1", "username": "u",
                "peername": "10.0.0.5:51000", "connected_at": 1700000000123u64, "timestamp": 1
            }),
        )
        .unwrap();
        assert_eq!(
            e,
            HookEvent::ClientConnected {
                client: ClientInfo {
                    node: "emqx@n1".into(),
                    clientid: "c1".into(),
                    username: Some("u".into()),
                    peerhost: Some("10.0.0.5".into())
                },
                connected_at_ms: 1700000000123
            }
        );
        let e = rule_row_event(
            &obj(json!({"event": "message.publish", "node": "n", "id": "0005F65F239F03FEF44300000BB40002",
                        "clientid": "p", "topic": "t", "qos": 1, "payload": "aGk=", "flags": {"retain": true, "dup": false},
                        "publish_received_at": 5})),
            0,
            true,
        )
        .unwrap();
        let HookEvent::MessagePublish { message } = e else {
            panic!()
        };
        assert!(message.retain);
        assert_eq!(message.payload, b"hi");
        assert_eq!(message.timestamp_ms, 5);
        let err = rule_row_event(
            &obj(json!({"event": "session.subscribed", "node": "n", "topic": "t"})),
            3,
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            FieldError {
                field: "[3].clientid".into(),
                error: "is required".into()
            }
        );
        let err = row0(rule_row_event, json!({"event": "message.delivered"})).unwrap_err();
        assert_eq!(err.field, "[0].event");
        assert_eq!(
            err.error,
            "unsupported event \"message.delivered\" (expected client.connected, client.disconnected, session.subscribed, session.unsubscribed, message.publish or message.acked)"
        );
        let err = row0(
            rule_row_event,
            json!({
                "event": "session.subscribed", "node": "n", "clientid": "c", "topic": "t", "qos": 7
            }),
        )
        .unwrap_err();
        assert_eq!(err.error, "7 is not 0, 1 or 2");
    }

    #[test]
    fn peer_hosts() {
        assert_eq!(host_of("10.0.0.5:51000"), "10.0.0.5");
        assert_eq!(host_of("[::1]:51000"), "::1");
        assert_eq!(host_of("host"), "host");
    }
}
