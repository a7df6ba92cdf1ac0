//! Hook events as the tests build them: a client `c1` publishing on node `emqx@n1`, message ids
//! from [`guids::msgid`] (stable: the same `n` is the same id in every run).

use crate::event::{ClientInfo, HookEvent, Message};
use crate::test_util::guids;

/// A client on `node` with user name `user` from 127.0.0.1.
pub fn client(id: &str, node: &str) -> ClientInfo {
    ClientInfo {
        node: node.into(),
        clientid: id.into(),
        username: Some("user".into()),
        peerhost: Some("127.0.0.1".into()),
    }
}

/// A client on `emqx@n1` with no user name or peer host.
pub fn bare_client(id: &str) -> ClientInfo {
    ClientInfo {
        node: "emqx@n1".into(),
        clientid: id.into(),
        ..Default::default()
    }
}

/// Message `n` (id [`guids::msgid`]`(n)`) on node `emqx@n1`.
pub fn message(
    n: u16,
    qos: u8,
    from: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
    ts: u64,
) -> Message {
    Message {
        node: "emqx@n1".into(),
        id: guids::msgid(n),
        qos,
        from: from.into(),
        topic: topic.into(),
        payload: payload.to_vec(),
        retain,
        timestamp_ms: ts,
        username: None,
        expiry_interval_s: None,
    }
}

/// `c1` publishes message `n`.
pub fn publish(n: u16, qos: u8, topic: &str, payload: &[u8], retain: bool, ts: u64) -> HookEvent {
    HookEvent::MessagePublish {
        message: message(n, qos, "c1", topic, payload, retain, ts),
    }
}

/// `c1` publishes message `n` as a retained QoS 1 message (an empty payload clears it).
pub fn retained(n: u16, topic: &str, payload: &[u8], ts: u64) -> HookEvent {
    publish(n, 1, topic, payload, true, ts)
}

/// `by` acks message `n` (a QoS 1 publish of `c1`).
pub fn ack(by: &str, n: u16, topic: &str) -> HookEvent {
    HookEvent::MessageAcked {
        client: client(by, "emqx@n1"),
        message: message(n, 1, "c1", topic, b"ignored", false, 0),
    }
}

pub fn connect(id: &str, node: &str, ms: u64) -> HookEvent {
    HookEvent::ClientConnected {
        client: client(id, node),
        connected_at_ms: ms,
    }
}

/// A disconnect with reason `normal`.
pub fn disconnect(id: &str, node: &str, ms: u64) -> HookEvent {
    HookEvent::ClientDisconnected {
        client: client(id, node),
        reason: "normal".into(),
        disconnected_at_ms: ms,
    }
}

pub fn subscribe(id: &str, node: &str, topic: &str, qos: u8) -> HookEvent {
    HookEvent::SessionSubscribed {
        client: client(id, node),
        topic: topic.into(),
        qos,
    }
}

pub fn unsubscribe(id: &str, node: &str, topic: &str) -> HookEvent {
    HookEvent::SessionUnsubscribed {
        client: client(id, node),
        topic: topic.into(),
    }
}
