//! What the pipeline tests share: running events through pipelines on a backend, the hot-key
//! stream, and the tables a sequence of events must leave (the sequential model).

use std::collections::BTreeMap;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::rules::RuleSet;
use mqtt_dynamo::storage::item::{Item, Key};
use mqtt_dynamo::storage::model::TableModel;
use mqtt_dynamo::storage::topic_index;
use mqtt_dynamo::telemetry::stats::StatsSnapshot;
use mqtt_dynamo::test_util::events::{ack, connect, disconnect, publish};
use mqtt_dynamo::test_util::{Backend, RequestCounter, SubmitExt};

/// Runs `events` through pipelines on `backend`: all in one pipeline run (free to coalesce), or
/// with `drain_each`, one pipeline run per event (so every write reaches DynamoDB in order).
pub(crate) async fn run(
    backend: &Backend,
    cfg: &Config,
    events: &[HookEvent],
    drain_each: bool,
) -> (StatsSnapshot, RequestCounter) {
    let (client, counter) = backend.prepare(cfg).await;
    let start = || Pipeline::from_config(cfg, client.clone()).unwrap();
    let mut last = None;
    let groups: Vec<&[HookEvent]> = if drain_each {
        events.chunks(1).collect()
    } else {
        vec![events]
    };
    for group in groups {
        let pipeline = start();
        let handle = pipeline.handle();
        handle.submit_all(group);
        last = Some(pipeline.shutdown().await);
    }
    (last.expect("at least one run"), counter)
}

/// A stream on 50 hot topics and 50 clients: connects and disconnects from two nodes (late
/// disconnects included), retained messages set and cleared, QoS 1 publishes and their acks.
pub(crate) fn hot_key_events(n: u32) -> Vec<HookEvent> {
    let mut events = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = i % 100;
        let m = (i % 60_000) as u16;
        let ts = 1_700_000_000_000 + u64::from(i);
        events.push(match i % 5 {
            0 => connect(
                &format!("hc{}", k % 50),
                &format!("emqx@n{}", (i / 100) % 2),
                ts,
            ),
            1 => disconnect(
                &format!("hc{}", k % 50),
                &format!("emqx@n{}", (i / 7) % 2),
                ts,
            ),
            2 => publish(
                m,
                (i % 2) as u8,
                &format!("hot/{}", k % 50),
                format!("p{i}").as_bytes(),
                true,
                ts,
            ),
            3 => publish(
                m,
                1,
                &format!("hot/{}", k % 50),
                format!("q{i}").as_bytes(),
                false,
                ts,
            ),
            _ => ack(
                &format!("s{k}"),
                ((i - 1) % 60_000) as u16,
                &format!("hot/{}", (k - 1) % 50),
            ),
        });
    }
    events
}

/// What the tables must hold after `events`, applied one by one: their writes, and the shared
/// topic index's entries of every topic they stored a retained message or message ids under
/// (entries stay when the message is cleared or the set emptied).
pub(crate) fn expected(events: &[HookEvent], cfg: &Config) -> BTreeMap<Key, Item> {
    let mut model = TableModel::new();
    let rules = RuleSet::default();
    for e in events {
        let ops = rules.plan(e, &cfg.storage.format()).unwrap();
        for op in ops.iter().chain(&topic_index::index_ops(&ops)) {
            model.apply(op);
        }
    }
    model.normalized()
}

pub(crate) use mqtt_dynamo::test_util::index_items;
