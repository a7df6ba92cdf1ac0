//! A topic's `MsgId` set against DynamoDB's 400 KB item limit: the cap, trimming, and merged
//! deltas split into requests DynamoDB accepts.

use std::time::Duration;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::storage::item::{Key, Table, Value};
use mqtt_dynamo::telemetry::stats::StatsSnapshot;
use mqtt_dynamo::test_util::events::publish;
use mqtt_dynamo::test_util::guids::msgid_b62;
use mqtt_dynamo::test_util::{Backend, scan_all};

use super::common::run;

/// Publishes `n` QoS 1 messages to one topic (never acked) into the simulator with
/// `max_msgid_set_kb = cap_kb`, drains, and returns the topic's set and the pipeline's counters.
async fn one_topic_set(n: u16, cap_kb: usize) -> (Vec<String>, StatsSnapshot, Config, Backend) {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        limits: dynamo_sim::Limits {
            key_wcu: None,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.storage.max_msgid_set_kb = cap_kb;
    cfg.pipeline.max_batch_age = Duration::from_millis(2);
    let events: Vec<HookEvent> = (1..=n)
        .map(|i| publish(i, 1, "big/topic", b"x", false, 1_700_000_000_000))
        .collect();
    let (stats, _) = run(&backend, &cfg, &events, false).await;
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    let set = match got
        .get(&Key::new(Table::TopicMsgMap, "big/topic"))
        .and_then(|i| i.get("MsgId"))
    {
        Some(Value::Ss(ids)) => ids.iter().cloned().collect(),
        other => panic!("no MsgId set: {other:?}"),
    };
    let msgs = got.keys().filter(|k| k.table == Table::Msg).count();
    assert_eq!(msgs, usize::from(n), "every message stays in mqtt_msg");
    (set, stats, cfg, backend)
}

/// A hot topic's `MsgId` ADDs merged while its key is in flight (DynamoDB at 400 ms) grow past
/// what one request may add to a 400 KB item (10,000 ids, 470 KB): the merged delta goes out in
/// 64 KB UpdateItems, so nothing is refused as a whole; at DynamoDB's 400 KB the set is trimmed
/// (the cap is off here) and the newest ids stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_merged_msgid_delta_goes_out_in_requests_dynamodb_accepts() {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        latency: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.storage.max_msgid_set_kb = 0;
    cfg.pipeline.max_batch_age = Duration::from_millis(2);
    let n: u16 = 10_000;
    let events: Vec<HookEvent> = (1..=n)
        .map(|i| publish(i, 1, "big/merged", b"x", false, 1_700_000_000_000))
        .collect();
    let (stats, counter) = run(&backend, &cfg, &events, false).await;
    assert_eq!(stats.dropped(), 0, "no ADD is refused as a whole: {stats}");
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    let Some(Value::Ss(set)) = got
        .get(&Key::new(Table::TopicMsgMap, "big/merged"))
        .and_then(|i| i.get("MsgId"))
    else {
        panic!("no MsgId set");
    };
    let bytes: usize = set.iter().map(String::len).sum();
    assert!(set.contains(&msgid_b62(n)), "the newest id is kept");
    assert!(
        bytes > 200 * 1024 && bytes <= 400 * 1024,
        "trimmed at 400 KB, not emptied: {bytes} bytes"
    );
    assert!(
        counter.get("UpdateItem") >= 7,
        "the merged delta went out in 64 KB requests: {} UpdateItems",
        counter.get("UpdateItem")
    );
    assert!(stats.msgids_trimmed > 0, "{stats}");
}

/// The ids left are the newest ones, in GUID time order (the test ids are 1..=n).
fn newest(set: &[String], n: u16) -> bool {
    let mut want: Vec<String> = ((n - set.len() as u16 + 1)..=n).map(msgid_b62).collect();
    let mut got = set.to_vec();
    want.sort();
    got.sort();
    got == want
}

/// A topic whose MsgId set passes `max_msgid_set_kb` is trimmed to the newest ids (three
/// quarters of the cap), nothing is dropped, and the messages stay in mqtt_msg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgid_sets_stop_at_their_cap() {
    let (set, stats, _, _) = one_topic_set(600, 10).await;
    let bytes: usize = "topic".len()
        + "big/topic".len()
        + "MsgId".len()
        + set.iter().map(String::len).sum::<usize>();
    assert!(bytes <= 10 * 1024, "{bytes} bytes");
    assert!(stats.msgids_trimmed > 0 && stats.dropped() == 0, "{stats}");
    assert_eq!(set.len() as u64 + stats.msgids_trimmed, 600, "{stats}");
    assert!(newest(&set, 600), "the newest ids are kept");
}

/// Without a cap, the set still never fails at DynamoDB's 400 KB: the refused ADD trims the
/// set to 300 KB and is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_refused_at_400_kb_is_trimmed_and_the_add_retried() {
    let (set, stats, _, backend) = one_topic_set(9_000, 0).await;
    let sim = backend.sim_stats().unwrap();
    assert!(
        sim.validation_errors > 0,
        "DynamoDB's limit was hit: {sim:?}"
    );
    assert!(stats.msgids_trimmed > 0 && stats.dropped() == 0, "{stats}");
    assert_eq!(set.len() as u64 + stats.msgids_trimmed, 9_000, "{stats}");
    assert!(newest(&set, 9_000));
}
