//! The seeded EMQX-like event mix both write-path benches use (`parts` plans it, `end_to_end`
//! sends it through the pipeline): included with `#[path]`, so each bench uses what it needs.

#![allow(dead_code)]

use std::collections::VecDeque;

use mqtt_dynamo::event::{ClientInfo, HookEvent, Message};
use mqtt_dynamo::guid;

/// Seed of every generated input, so runs compare.
pub const SEED: u64 = 0x6d71_7474;
/// The broker's µs clock at the first generated id (November 2023).
pub const START_MICROS: u64 = 1_700_000_000_000_000;
pub const DEVICES: u32 = 1_000;
pub const SUBSCRIBERS: u32 = 20;

/// `n` GUIDs as EMQX makes them: µs timestamp (a few µs apart) in the top 64 bits, then a
/// random 48-bit node+pid of one of four nodes and a 16-bit sequence.
pub fn guids(n: usize, rng: &mut fastrand::Rng) -> Vec<u128> {
    let nodes: Vec<u64> = (0..4).map(|_| rng.u64(..1 << 48)).collect();
    let mut micros = START_MICROS;
    (0..n)
        .map(|i| {
            micros += rng.u64(1..100);
            guid::compose(micros, nodes[i % nodes.len()], i as u16)
        })
        .collect()
}

pub fn device(n: u32) -> ClientInfo {
    ClientInfo {
        node: format!("emqx@10.0.0.{}", n % 4 + 1),
        clientid: format!("dev-{n:04}"),
        username: Some("fleet".into()),
        peerhost: Some(format!("10.1.{}.{}", n / 250, n % 250)),
    }
}

/// About 200 bytes of JSON telemetry.
pub fn payload(seq: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut p = format!(
        r#"{{"seq":{seq},"temp":{:.2},"hum":{:.1},"bat":{},"fw":"2.4.1","pad":""#,
        rng.f64() * 40.0,
        rng.f64() * 100.0,
        rng.u8(..=100)
    );
    while p.len() < 198 {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

/// A seeded EMQX-like event mix: 60% publishes (QoS 0 a third, QoS 1 a half, QoS 2 a sixth; 5%
/// retained, a tenth of those clearing the retained message), 30% acks by one of 20 subscribers
/// of the oldest QoS > 0 publish not yet acked, 5% connects and 5% disconnects of connected
/// devices. 1,000 devices each publish to their own topic.
pub fn mix(n: usize) -> Vec<HookEvent> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let ids = guids(n, &mut rng);
    let mut unacked: VecDeque<Message> = VecDeque::new();
    let mut connected: Vec<u32> = Vec::new();
    let mut events = Vec::with_capacity(n);
    for (i, id) in ids.into_iter().enumerate() {
        let now_ms = guid::timestamp_micros(id) / 1000;
        let roll = rng.u32(..100);
        let event = if roll < 5 || (roll < 10 && connected.is_empty()) {
            let d = rng.u32(..DEVICES);
            connected.push(d);
            HookEvent::ClientConnected {
                client: device(d),
                connected_at_ms: now_ms,
            }
        } else if roll < 10 {
            let d = connected.swap_remove(rng.usize(..connected.len()));
            HookEvent::ClientDisconnected {
                client: device(d),
                reason: "normal".into(),
                disconnected_at_ms: now_ms,
            }
        } else if roll < 40 && !unacked.is_empty() {
            let message = unacked.pop_front().expect("checked non-empty");
            let k = rng.u32(..SUBSCRIBERS);
            HookEvent::MessageAcked {
                client: ClientInfo {
                    node: format!("emqx@10.0.0.{}", k % 4 + 1),
                    clientid: format!("app-{k:02}"),
                    ..Default::default()
                },
                message,
            }
        } else {
            let d = rng.u32(..DEVICES);
            let qos = match rng.u8(..6) {
                0 | 1 => 0,
                2..=4 => 1,
                _ => 2,
            };
            let retain = rng.u8(..20) == 0;
            let message = Message {
                node: format!("emqx@10.0.0.{}", d % 4 + 1),
                id: guid::to_hex(id),
                qos,
                from: format!("dev-{d:04}"),
                topic: format!("site/{}/dev/{d:04}/telemetry", d % 10),
                payload: if retain && rng.u8(..10) == 0 {
                    Vec::new()
                } else {
                    payload(i, &mut rng)
                },
                retain,
                timestamp_ms: now_ms,
                username: Some("fleet".into()),
                expiry_interval_s: None,
            };
            if qos > 0 {
                unacked.push_back(message.clone());
            }
            HookEvent::MessagePublish { message }
        };
        events.push(event);
    }
    events
}
