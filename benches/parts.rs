//! The per-event CPU cost of each step of the write path, one criterion group per step, no I/O:
//!
//! - `guid`: EMQX message ids, hex → u128 → base62 (what planning does to every message id) and
//!   base62 → u128 (what lookups do to order offline messages), over 1,000 realistic ids;
//! - `plan`: `RuleSet::default().plan` over a fixed, seeded EMQX-like mix of 10,000 events
//!   (publishes QoS 0/1/2, some retained, acks of earlier publishes, connects, disconnects);
//! - `encode`: `dynamo::to_attrs` of 1,000 mqtt_msg items (200-byte payloads), the conversion to
//!   the SDK's `AttributeValue` map every put pays before it is serialized;
//! - `pack`: 10,000 unique-key puts pushed into a `Coalescer` and taken out in 25-request,
//!   4 MiB batches until it is empty (nothing merges: the packing cost alone);
//! - `topic`: 10 wildcard filters against 1,000 topics, by `topic::matches` on every pair (one
//!   element is one filter–topic pair: what a lookup does to each topic its index Query reads).
//!
//! Throughput is in elements (ids, events, items, puts, pairs or filters) per second. Run with
//! `cargo bench --bench parts`; a single group with `cargo bench --bench parts -- plan`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::guid;
use mqtt_dynamo::rules::{RuleSet, StorageFormat};
use mqtt_dynamo::storage::dynamo;
use mqtt_dynamo::storage::item::{Item, Op, Table, Write};
use mqtt_dynamo::topic;

#[path = "support/drain.rs"]
mod drain;
#[path = "support/mix.rs"]
mod mix;

use mix::*;

fn bench_guid(c: &mut Criterion) {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let ids = guids(1_000, &mut rng);
    let hex: Vec<String> = ids.iter().map(|&g| guid::to_hex(g)).collect();
    let base62: Vec<String> = ids.iter().map(|&g| guid::to_base62(g)).collect();
    let mut group = c.benchmark_group("guid");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("hex_to_base62", |b| {
        b.iter(|| {
            for h in &hex {
                black_box(guid::to_base62(guid::from_hex(h).unwrap()));
            }
        })
    });
    group.bench_function("base62_to_u128", |b| {
        b.iter(|| {
            for s in &base62 {
                black_box(guid::from_base62(s).unwrap());
            }
        })
    });
    group.finish();
}

fn bench_plan(c: &mut Criterion) {
    let events = mix(10_000);
    let rules = RuleSet::default();
    let format = StorageFormat::default();
    let mut group = c.benchmark_group("plan");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("emqx_mix", |b| {
        b.iter(|| {
            for e in &events {
                black_box(rules.plan(e, &format).unwrap());
            }
        })
    });
    group.finish();
}

/// The mqtt_msg puts the planner makes for `n` QoS 1 publishes of the mix's shape.
fn msg_puts(n: usize) -> Vec<Op> {
    let rules = RuleSet::default();
    let format = StorageFormat::default();
    mix(n * 3)
        .iter()
        .filter(|e| matches!(e, HookEvent::MessagePublish { message } if message.qos > 0))
        .flat_map(|e| rules.plan(e, &format).unwrap())
        .filter(|op| op.key.table == Table::Msg && matches!(op.write, Write::Put { .. }))
        .take(n)
        .collect()
}

fn bench_encode(c: &mut Criterion) {
    let items: Vec<Item> = msg_puts(1_000)
        .into_iter()
        .map(|op| match op.write {
            Write::Put { item, .. } => item,
            _ => unreachable!("msg_puts returns puts"),
        })
        .collect();
    assert_eq!(items.len(), 1_000);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(items.len() as u64));
    group.bench_function("mqtt_msg_to_attrs", |b| {
        b.iter(|| {
            for item in &items {
                black_box(dynamo::to_attrs(item));
            }
        })
    });
    group.finish();
}

fn bench_pack(c: &mut Criterion) {
    let ops = msg_puts(10_000);
    assert_eq!(ops.len(), 10_000);
    let mut group = c.benchmark_group("pack");
    group.throughput(Throughput::Elements(ops.len() as u64));
    group.bench_function("unique_puts_into_25_request_batches", |b| {
        b.iter_batched(
            || ops.clone(),
            |ops| drain::push_and_drain(ops, 4 * 1024 * 1024),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// 1,000 topics: 10 sites × 25 devices × 4 kinds.
fn topics() -> Vec<String> {
    let mut out = Vec::with_capacity(1_000);
    for s in 0..10 {
        for d in 0..25 {
            for kind in ["telemetry", "state", "alarm", "config"] {
                out.push(format!("site/{s}/dev/{d}/{kind}"));
            }
        }
    }
    out
}

/// Subscription filters from one device to everything (the last matches nothing).
const FILTERS: [&str; 10] = [
    "site/3/dev/7/+",
    "site/3/dev/+/telemetry",
    "site/+/dev/7/state",
    "site/+/dev/+/alarm",
    "site/3/#",
    "site/+/dev/12/#",
    "#",
    "+/+/dev/+/config",
    "site/9/dev/+/+",
    "other/#",
];

fn bench_topic(c: &mut Criterion) {
    let topics = topics();
    let mut group = c.benchmark_group("topic");
    group.throughput(Throughput::Elements((FILTERS.len() * topics.len()) as u64));
    group.bench_function("matches_every_pair", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for f in FILTERS {
                for t in &topics {
                    hits += usize::from(topic::matches(f, t));
                }
            }
            black_box(hits)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_guid,
    bench_plan,
    bench_encode,
    bench_pack,
    bench_topic
);
criterion_main!(benches);
