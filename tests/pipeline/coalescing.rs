//! Coalescing on the wire: hot keys into dynalite (which rejects duplicate keys in a batch), and a
//! publish acked before its flush.

use std::collections::BTreeMap;
use std::time::Duration;

use mqtt_dynamo::storage::item::{Item, Key, Table};
use mqtt_dynamo::test_util::events::{ack, publish};
use mqtt_dynamo::test_util::guids::msgid_b62;
use mqtt_dynamo::test_util::{Backend, item, normalized, s, scan_all};

use super::common::{expected, hot_key_events, index_items, run};

/// 10,000 events on 100 hot keys through the real flusher into dynalite, which rejects duplicate
/// keys in a batch and more than 25 requests like DynamoDB: no request fails, nothing is dropped,
/// and the tables equal the sequential model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_on_hot_keys_into_dynalite() {
    let backend = Backend::dynalite().await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_millis(20);
    let events = hot_key_events(10_000);
    let (stats, counter) = run(&backend, &cfg, &events, false).await;
    assert_eq!(stats.events_received, 10_000);
    assert_eq!(
        stats.failed_requests, 0,
        "no request may be rejected: {stats}"
    );
    assert_eq!(stats.dropped(), 0);
    assert_eq!(counter.get("BatchWriteItem"), stats.batch_write_requests);
    assert_eq!(counter.get("UpdateItem"), stats.update_requests);
    assert!(stats.coalesced > 0, "hot keys coalesce: {stats}");
    let want = expected(&events, &cfg);
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), want);
    assert!(want.len() > 100);
}

/// A publish followed by its ack before the flush costs no mqtt_msg or topic-map write at all:
/// what goes out is the mqtt_acked put and, once for the topic (new to this process), its two
/// topic index entries, which stay (a lookup finds no message behind them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_acked_before_flush_costs_no_write() {
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_secs(3600);
    let events = vec![
        publish(1, 1, "q/1", b"x", false, 1_700_000_000_000),
        ack("s1", 1, "q/1"),
    ];
    let (stats, counter) = run(&backend, &cfg, &events, false).await;
    let written = |table: Table| {
        stats
            .items_written
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        (written(Table::Acked), written(Table::TopicIndex)),
        (1, 2),
        "the acked put and the topic's index entries: {stats}"
    );
    assert_eq!(written(Table::Msg) + written(Table::TopicMsgMap), 0);
    assert_eq!(counter.get("UpdateItem"), 0, "no topic-map update");
    // Puts only: their shards' BatchWriteItems (one per shard they hash to), nothing else.
    assert!((1..=3).contains(&counter.get("BatchWriteItem")), "{stats}");
    assert_eq!(counter.total(), counter.get("BatchWriteItem"));
    assert_eq!(
        stats.cancelled, 2,
        "the mqtt_msg put and the MsgId ADD cancelled"
    );
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    let expected: BTreeMap<Key, Item> = [item(
        Table::Acked,
        &[
            ("topic", s("q/1")),
            ("clientid", s("s1")),
            ("msgid", s(&msgid_b62(1))),
        ],
    )]
    .into_iter()
    .chain(index_items(&[("msg", "q/"), ("msg|q", "q/1")]))
    .collect();
    assert_eq!(got, expected);
}
