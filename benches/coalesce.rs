//! The coalescer's cost per write: planning an event's writes and folding them into the pending
//! table, then taking them out in 25-request flushes — on hot keys (100 topics and clients, where
//! most writes merge) and on unique keys (nothing merges). No I/O.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use mqtt_dynamo::event::{ClientInfo, HookEvent, Message};
use mqtt_dynamo::rules::{RuleSet, StorageFormat};
use mqtt_dynamo::storage::item::Op;

#[path = "support/drain.rs"]
mod drain;

fn events(n: u32, keys: u32) -> Vec<HookEvent> {
    (0..n)
        .map(|i| {
            let k = i % keys;
            let client = ClientInfo {
                node: "emqx@n1".into(),
                clientid: format!("c{k}"),
                ..Default::default()
            };
            let message = Message {
                node: "emqx@n1".into(),
                id: mqtt_dynamo::guid::to_hex(mqtt_dynamo::test_util::guids::nth(u64::from(i))),
                qos: 1,
                from: format!("c{k}"),
                topic: format!("t/{k}"),
                payload: vec![b'x'; 100],
                retain: i % 10 == 0,
                timestamp_ms: 1_700_000_000_000,
                username: None,
                expiry_interval_s: None,
            };
            match i % 4 {
                0 => HookEvent::ClientConnected {
                    client,
                    connected_at_ms: 1,
                },
                1 | 2 => HookEvent::MessagePublish { message },
                _ => HookEvent::MessageAcked { client, message },
            }
        })
        .collect()
}

fn ops(events: &[HookEvent]) -> Vec<Op> {
    let rules = RuleSet::default();
    let format = StorageFormat::default();
    events
        .iter()
        .flat_map(|e| rules.plan(e, &format).unwrap())
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("coalescer");
    for (name, keys) in [("hot_100_keys", 100), ("unique_keys", u32::MAX)] {
        let ops = ops(&events(10_000, keys));
        group.throughput(Throughput::Elements(ops.len() as u64));
        group.bench_function(format!("push_and_drain/{name}"), |b| {
            b.iter_batched(
                || ops.clone(),
                |ops| drain::push_and_drain(ops, usize::MAX),
                BatchSize::LargeInput,
            )
        });
    }
    let evs = events(10_000, 100);
    group.throughput(Throughput::Elements(evs.len() as u64));
    group.bench_function("plan_events", |b| {
        let rules = RuleSet::default();
        let format = StorageFormat::default();
        b.iter(|| {
            for e in &evs {
                black_box(rules.plan(e, &format).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
