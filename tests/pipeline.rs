//! The write pipeline against real DynamoDB implementations over HTTP on loopback, through the
//! AWS SDK: dynoxide (in-process) and dynalite (node; rejects duplicate keys and oversized batches
//! like DynamoDB). Final table contents are asserted item by item.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::event::{ClientInfo, HookEvent, Message};
use mqtt_dynamo::guid;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::pipeline::{Admit, Receipt};
use mqtt_dynamo::rules::{MsgIdFormat, RuleSet, TimeUnit};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::item::{Item, Key, Table, Value};
use mqtt_dynamo::storage::model::TableModel;
use mqtt_dynamo::storage::tables::{self, Capacity, Created};
use mqtt_dynamo::telemetry::stats::StatsSnapshot;

use support::{Backend, normalized, scan_all};

fn client(id: &str, node: &str) -> ClientInfo {
    ClientInfo {
        node: node.into(),
        clientid: id.into(),
        username: Some("user".into()),
        peerhost: Some("127.0.0.1".into()),
    }
}

/// A GUID in hex whose timestamp is 2023-11-14 and whose sequence is `n`.
fn msgid(n: u16) -> String {
    guid::to_hex((1_700_000_000_000_000u128 << 64) | u128::from(n))
}

fn b62(n: u16) -> String {
    guid::to_base62(guid::from_hex(&msgid(n)).unwrap())
}

fn message(
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
        id: msgid(n),
        qos,
        from: from.into(),
        topic: topic.into(),
        payload: payload.to_vec(),
        retain,
        timestamp_ms: ts,
        username: None,
    }
}

fn publish(n: u16, qos: u8, topic: &str, payload: &[u8], retain: bool, ts: u64) -> HookEvent {
    HookEvent::MessagePublish {
        message: message(n, qos, "c1", topic, payload, retain, ts),
    }
}

fn ack(by: &str, n: u16, topic: &str) -> HookEvent {
    HookEvent::MessageAcked {
        client: client(by, "emqx@n1"),
        message: message(n, 1, "c1", topic, b"ignored", false, 0),
    }
}

fn connect(id: &str, node: &str, ms: u64) -> HookEvent {
    HookEvent::ClientConnected {
        client: client(id, node),
        connected_at_ms: ms,
    }
}

fn disconnect(id: &str, node: &str, ms: u64) -> HookEvent {
    HookEvent::ClientDisconnected {
        client: client(id, node),
        reason: "normal".into(),
        disconnected_at_ms: ms,
    }
}

fn item(table: Table, attrs: &[(&str, Value)]) -> (Key, Item) {
    let item: Item = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let key =
        mqtt_dynamo::storage::dynamo::key_of(table, &item).expect("expected items carry their key");
    (key, item)
}

fn s(v: &str) -> Value {
    Value::S(v.into())
}

/// Runs `events` through pipelines on `backend`: all in one pipeline run (free to coalesce), or
/// with `drain_each`, one pipeline run per event (so every write reaches DynamoDB in order).
async fn run(
    backend: &Backend,
    cfg: &Config,
    events: &[HookEvent],
    drain_each: bool,
) -> (StatsSnapshot, support::RequestCounter) {
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
        for e in group {
            handle
                .submit(e, Admit::within(Duration::from_secs(10)))
                .and_then(Receipt::wait)
                .expect("event accepted");
        }
        last = Some(pipeline.shutdown().await);
    }
    (last.expect("at least one run"), counter)
}

/// The scripted sequence of the write-pipeline issue, in the seed's formats (base62, seconds).
fn scenario() -> Vec<HookEvent> {
    vec![
        connect("c1", "emqx@n1", 1_700_000_000_000),
        disconnect("c1", "emqx@n1", 1_700_000_005_000),
        connect("c1", "emqx@n2", 1_700_000_010_000),
        // Late disconnect from the node c1 left: must not mark it offline.
        disconnect("c1", "emqx@n1", 1_700_000_011_000),
        connect("c2", "emqx@n1", 1_700_000_020_000),
        disconnect("c2", "emqx@n1", 1_700_000_030_000),
        HookEvent::SessionSubscribed {
            client: client("c2", "emqx@n1"),
            topic: "t/#".into(),
            qos: 1,
        },
        publish(1, 0, "t/0", b"zero", false, 1_700_000_039_000),
        publish(2, 1, "t/1", b"hello", false, 1_700_000_040_123),
        publish(3, 2, "t/1", &[0xff, 0x00, 0x80], false, 1_700_000_041_000),
        publish(4, 1, "r/1", b"on", true, 1_700_000_042_000),
        publish(5, 0, "r/2", b"x", true, 1_700_000_043_000),
        publish(6, 1, "r/2", b"", true, 1_700_000_044_000),
        ack("c2", 2, "t/1"),
        ack("c3", 4, "r/1"),
        HookEvent::SessionUnsubscribed {
            client: client("c2", "emqx@n1"),
            topic: "t/1".into(),
        },
    ]
}

/// What the scenario must leave, written out by hand from BRIEF §3–§4.
fn scenario_expected() -> BTreeMap<Key, Item> {
    [
        item(
            Table::Client,
            &[
                ("clientid", s("c1")),
                ("connect_state", Value::N(1)),
                ("node", s("emqx@n2")),
                ("online_at", Value::N(1_700_000_010)),
                ("offline_at", Value::N(0)),
            ],
        ),
        item(
            Table::Client,
            &[
                ("clientid", s("c2")),
                ("connect_state", Value::N(0)),
                ("node", s("emqx@n1")),
                ("online_at", Value::N(1_700_000_020)),
                ("offline_at", Value::N(1_700_000_030)),
            ],
        ),
        item(
            Table::Msg,
            &[
                ("msgid", s(&b62(3))),
                ("topic", s("t/1")),
                ("sender", s("c1")),
                ("qos", Value::N(2)),
                ("retain", Value::N(0)),
                ("payload", Value::B(vec![0xff, 0x00, 0x80])),
                ("arrived", Value::N(1_700_000_041)),
            ],
        ),
        item(
            Table::TopicMsgMap,
            &[
                ("topic", s("t/1")),
                ("MsgId", Value::Ss(BTreeSet::from([b62(3)]))),
            ],
        ),
        item(
            Table::Retain,
            &[
                ("topic", s("r/1")),
                ("msgid", s(&b62(4))),
                ("sender", s("c1")),
                ("qos", Value::N(1)),
                ("retain", Value::N(1)),
                ("payload", s("on")),
                ("arrived", Value::N(1_700_000_042)),
            ],
        ),
        item(
            Table::Acked,
            &[
                ("topic", s("r/1")),
                ("clientid", s("c3")),
                ("msgid", s(&b62(4))),
            ],
        ),
    ]
    .into_iter()
    .collect()
}

async fn scripted_sequence(backend: Backend) {
    let cfg = backend.config();
    let expected = scenario_expected();

    // Event by event: every write reaches DynamoDB, in order.
    let (stats, _) = run(&backend, &cfg, &scenario(), true).await;
    assert_eq!(stats.dropped(), 0);
    let sequential = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    // DynamoDB leaves the key behind when the last id leaves a set: the documented equivalence.
    let mut with_stub = expected.clone();
    let (k, i) = item(Table::TopicMsgMap, &[("topic", s("r/1"))]);
    with_stub.insert(k, i);
    assert_eq!(sequential, with_stub, "on {}", backend.name());
}

async fn scripted_sequence_coalesced(backend: Backend) {
    let cfg = backend.config();
    let (stats, counter) = run(&backend, &cfg, &scenario(), false).await;
    assert_eq!(stats.dropped(), 0);
    assert_eq!(stats.failed_requests, 0);
    assert_eq!(
        counter.total() - tables_setup_requests(&counter),
        stats.requests()
    );
    let coalesced = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(
        normalized(&coalesced),
        scenario_expected(),
        "on {}",
        backend.name()
    );
}

/// Requests `prepare` itself does not send through the counting client: none (it uses its own).
fn tables_setup_requests(_: &support::RequestCounter) -> u64 {
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sequence_on_dynoxide() {
    scripted_sequence(Backend::dynoxide().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sequence_on_dynalite() {
    scripted_sequence(Backend::dynalite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sequence_coalesced_on_dynoxide() {
    scripted_sequence_coalesced(Backend::dynoxide().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sequence_coalesced_on_dynalite() {
    scripted_sequence_coalesced(Backend::dynalite().await).await;
}

/// The other formats: hex message ids and millisecond times.
async fn hex_and_milliseconds(backend: Backend) {
    let mut cfg = backend.config();
    cfg.storage.msgid_format = MsgIdFormat::Hex;
    cfg.storage.time_unit = TimeUnit::Milliseconds;
    let events = vec![
        connect("c9", "emqx@n1", 1_700_000_000_123),
        publish(7, 1, "h/1", "é".as_bytes(), false, 1_700_000_000_456),
    ];
    run(&backend, &cfg, &events, false).await;
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    let expected: BTreeMap<Key, Item> = [
        item(
            Table::Client,
            &[
                ("clientid", s("c9")),
                ("connect_state", Value::N(1)),
                ("node", s("emqx@n1")),
                ("online_at", Value::N(1_700_000_000_123)),
                ("offline_at", Value::N(0)),
            ],
        ),
        item(
            Table::Msg,
            &[
                ("msgid", s(&msgid(7))),
                ("topic", s("h/1")),
                ("sender", s("c1")),
                ("qos", Value::N(1)),
                ("retain", Value::N(0)),
                ("payload", s("é")),
                ("arrived", Value::N(1_700_000_000_456)),
            ],
        ),
        item(
            Table::TopicMsgMap,
            &[
                ("topic", s("h/1")),
                ("MsgId", Value::Ss(BTreeSet::from([msgid(7)]))),
            ],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected, "on {}", backend.name());
    assert_eq!(msgid(7).len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hex_ids_and_milliseconds_on_dynoxide() {
    hex_and_milliseconds(Backend::dynoxide().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hex_ids_and_milliseconds_on_dynalite() {
    hex_and_milliseconds(Backend::dynalite().await).await;
}

/// A stream on 50 hot topics and 50 clients: connects and disconnects from two nodes (late
/// disconnects included), retained messages set and cleared, QoS 1 publishes and their acks.
fn hot_key_events(n: u32) -> Vec<HookEvent> {
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

/// What the tables must hold after `events`, applied one by one.
fn expected(events: &[HookEvent], cfg: &Config) -> BTreeMap<Key, Item> {
    let mut model = TableModel::new();
    let rules = RuleSet::default();
    for e in events {
        for op in rules.plan(e, &cfg.storage.format()).unwrap() {
            model.apply(&op);
        }
    }
    model.normalized()
}

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

/// A fifth of the batched writes come back unprocessed and hot keys run into a per-key write
/// limit (ThrottlingException on UpdateItem), with hot-key windows off (the flusher retries) or
/// on (throttled writes go back to their shard and wait their key's window).
async fn twenty_percent_throttled(hot_key_window: Duration) -> StatsSnapshot {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        faults: dynamo_sim::FaultConfig {
            throttle_rate: 0.2,
            ..Default::default()
        },
        limits: dynamo_sim::Limits {
            key_wcu: Some(10),
            ..Default::default()
        },
        seed: Some(7),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_millis(5);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(5);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(100);
    cfg.pipeline.hot_key_window = hot_key_window;
    let events = hot_key_events(10_000);
    let started = std::time::Instant::now();
    let (stats, _) = run(&backend, &cfg, &events, false).await;
    let elapsed = started.elapsed();
    let sim = backend.sim_stats().unwrap();
    assert!(
        sim.throttled_items > 0 && sim.throttled_requests > 0,
        "both kinds of throttling happened: {sim:?}"
    );
    assert_eq!(stats.dropped(), 0, "{stats}");
    assert!(stats.throttles > 0, "{stats}");
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
    eprintln!(
        "hot_key_window {hot_key_window:?}: goodput {} items written in {} write requests ({:.0} items/s over {:.1} s); {} items and {} requests throttled; {} retries, {} requeues",
        sim.items_written,
        sim.requests_by_operation["BatchWriteItem"] + sim.requests_by_operation["UpdateItem"],
        sim.items_written as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        sim.throttled_items,
        sim.throttled_requests,
        stats.retries,
        stats.requeued
    );
    stats
}

/// 20 % of batched writes throttled for the whole run: everything is written in the end, a put
/// that was throttled never lands after a later delete of its key (0 lost, 0 resurrected), and
/// the tables equal the model, whether the flusher retries (windows off) …
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_throttled_then_tables_equal_the_model() {
    let stats = twenty_percent_throttled(Duration::ZERO).await;
    assert!(stats.retries > 0 && stats.requeued == 0, "{stats}");
}

/// … or throttled writes go back to their shard to merge with their key's newer ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_throttled_with_hot_key_windows_then_tables_equal_the_model() {
    let stats = twenty_percent_throttled(Duration::from_millis(100)).await;
    assert!(stats.requeued > 0, "{stats}");
}

/// A table write limit (60 WCU/s per table) DynamoDB enforces (ProvisionedThroughputExceeded
/// and UnprocessedItems):
/// the flushes in flight drop from 32 towards the floor instead of hammering it, and everything
/// is still written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_halves_the_flushes_in_flight() {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        limits: dynamo_sim::Limits {
            table_wcu: Some(60),
            key_wcu: None,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_millis(2);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(5);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(200);
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    let handle = pipeline.handle();
    assert_eq!(handle.in_flight_limit(), 32);
    let events = hot_key_events(1_500);
    for e in &events {
        handle
            .submit(e, Admit::within(Duration::from_secs(10)))
            .and_then(Receipt::wait)
            .unwrap();
    }
    // Watch the limit while the pipeline works through the backlog.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let handle = handle.clone();
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut lowest = usize::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                lowest = lowest.min(handle.in_flight_limit());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lowest.min(handle.in_flight_limit())
        })
    };
    let stats = pipeline.shutdown().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lowest = watcher.await.unwrap();
    assert!(lowest <= 4, "the limit came down to {lowest}: {stats}");
    assert!(stats.throttles > 0, "{stats}");
    assert_eq!(stats.dropped(), 0, "{stats}");
    let got = scan_all(&client, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
}

/// 5xx answers, connection resets and responses stalled past the attempt timeout: every write
/// is retried within its deadline and applied once in effect (the tables equal the model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_resets_and_stalls_are_retried_without_duplicate_effects() {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        seed: Some(11),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.dynamodb.attempt_timeout = Duration::from_millis(300);
    cfg.pipeline.max_batch_age = Duration::from_millis(5);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(5);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(100);
    let (client, _) = backend.prepare(&cfg).await;
    // Faults only for the pipeline's writes, not for creating the tables.
    backend.set_faults(dynamo_sim::FaultConfig {
        error_rate: 0.05,
        reset_rate: 0.03,
        stall_rate: 0.02,
        stall: Duration::from_secs(2),
        ..Default::default()
    });
    let events = hot_key_events(3_000);
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    let handle = pipeline.handle();
    for e in &events {
        handle
            .submit(e, Admit::within(Duration::from_secs(10)))
            .and_then(Receipt::wait)
            .unwrap();
    }
    let stats = pipeline.shutdown().await;
    backend.set_faults(dynamo_sim::FaultConfig::default());
    let faults = backend.sim_stats().unwrap().faults;
    assert!(
        faults.errors > 0 && faults.resets > 0 && faults.stalls > 0,
        "every fault kind happened: {faults:?}"
    );
    assert_eq!(stats.dropped(), 0, "{stats}");
    assert!(stats.retries > 0, "{stats}");
    let got = scan_all(&client, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
}

/// Credentials DynamoDB refuses: a clear error (readiness's table check names it, every
/// dead-lettered write carries it) and no retry storm — refused requests wait the longest
/// backoff, so each write is tried about `max_elapsed / max_backoff` times, not dozens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_clear_error_not_a_retry_storm() {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        access_key: Some("the-right-key".into()),
        tables: dynamo_sim::TableDef::project_tables(""),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config(); // signs with the key "test"
    let dlq = std::env::temp_dir().join(format!("mqtt-dynamo-auth-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&dlq);
    cfg.pipeline.dead_letter_path = Some(dlq.clone());
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(10);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(400);
    cfg.pipeline.retry.max_elapsed = Duration::from_secs(2);
    cfg.pipeline.max_batch_age = Duration::from_millis(5);
    let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
    // What `serve`'s readiness check reports.
    let ready = tables::check_exist(&client, &cfg.dynamodb).await;
    let why = ready.expect_err("readiness fails").to_string();
    assert!(why.contains("UnrecognizedClientException"), "{why}");
    let events = hot_key_events(60);
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    for e in &events {
        pipeline
            .handle()
            .submit(e, Admit::within(Duration::from_secs(10)))
            .and_then(Receipt::wait)
            .unwrap();
    }
    let stats = pipeline.shutdown().await;
    let refused = backend.sim_stats().unwrap().auth_failures;
    assert!(stats.dropped() > 0, "{stats}");
    // Every request was refused (and the readiness check's DescribeTable before them).
    assert_eq!(refused, stats.requests() + 1, "{stats}");
    // Each write is tried at most about 2 s / 400 ms + 1 times.
    let first_tries = stats.requests() - stats.retries;
    assert!(
        stats.retries <= 6 * first_tries,
        "{} retries for {first_tries} first tries: {stats}",
        stats.retries
    );
    let lines = std::fs::read_to_string(&dlq).unwrap();
    assert_eq!(lines.lines().count() as u64, stats.dropped());
    assert!(
        lines
            .lines()
            .all(|l| l.contains("UnrecognizedClientException")),
        "{lines}"
    );
    let _ = std::fs::remove_file(&dlq);
}

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
    assert!(set.contains(&b62(n)), "the newest id is kept");
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
    let mut want: Vec<String> = ((n - set.len() as u16 + 1)..=n).map(b62).collect();
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

/// A publish followed by its ack before the flush costs no mqtt_msg or topic-map write at all:
/// the only request on the wire is the mqtt_acked put.
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
    assert_eq!(counter.get("BatchWriteItem"), 1, "one batch: the acked put");
    assert_eq!(counter.get("UpdateItem"), 0, "no topic-map update");
    assert_eq!(counter.total(), 1);
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
            ("msgid", s(&b62(1))),
        ],
    )]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
}

/// `tables create` is idempotent and waits for ACTIVE (dynalite keeps new tables CREATING).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_create_is_idempotent_on_dynalite() {
    let backend = Backend::dynalite().await;
    let mut cfg = backend.config();
    cfg.dynamodb.table_prefix = "idem_".into();
    let admin = mqtt_dynamo::storage::dynamo::client(
        &cfg.dynamodb,
        None,
        mqtt_dynamo::storage::dynamo::SdkRetries::Standard,
    )
    .await;
    let first = tables::create_all(
        &admin,
        &cfg.dynamodb,
        Capacity::Provisioned { read: 5, write: 5 },
    )
    .await
    .unwrap();
    assert!(
        first.iter().all(|(_, c)| *c == Created::Created),
        "{first:?}"
    );
    assert_eq!(first[0].0, "idem_mqtt_client");
    let second = tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand)
        .await
        .unwrap();
    assert!(
        second.iter().all(|(_, c)| *c == Created::AlreadyExisted),
        "{second:?}"
    );
    let lines = tables::describe_all(&admin, &cfg.dynamodb).await.unwrap();
    assert_eq!(lines.len(), 6);
    assert!(
        lines[3].starts_with("idem_mqtt_topic_msg_map: ACTIVE keys [topic HASH]"),
        "{}",
        lines[3]
    );
    assert!(
        lines[5].contains("keys [topic HASH, clientid RANGE]"),
        "{}",
        lines[5]
    );
}

/// Invalid events are refused with a reason and counted; nothing else is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused_and_the_rest_is_written() {
    let backend = Backend::dynoxide().await;
    let cfg = backend.config();
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    let h = pipeline.handle();
    let mut bad = message(1, 1, "c1", "t", b"x", false, 0);
    bad.id = "zz".into();
    let err = h
        .submit(&HookEvent::MessagePublish { message: bad }, Admit::now())
        .and_then(Receipt::wait)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid event: message id \"zz\" is not a 32-digit hex GUID"
    );
    let big = publish(2, 1, "t", &vec![b'a'; 400 * 1024], false, 0);
    let err = h
        .submit(&big, Admit::now())
        .and_then(Receipt::wait)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("DynamoDB items are limited to 409600 bytes"),
        "{err}"
    );
    h.submit(&connect("ok", "emqx@n1", 1_000), Admit::now())
        .and_then(Receipt::wait)
        .unwrap();
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.rejected_invalid, 1, "the bad message id");
    assert_eq!(stats.rejected_other, 1, "the item over 400 KB (too_large)");
    assert_eq!(stats.events_received, 1);
    let got = scan_all(&client, &cfg).await;
    assert_eq!(got.len(), 1);
}

/// `mqtt-dynamo serve` on the embedded DynamoDB creates the tables, and SIGTERM drains and exits 0
/// with the report; against an endpoint without tables it names the missing ones and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_starts_drains_and_checks_tables() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("serve.toml");
    std::fs::write(
        &conf,
        "[dynamodb]\nembedded_listen = \"127.0.0.1:0\"\n[exhook]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
        .args(["serve", "--config"])
        .arg(&conf)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in &mut stderr {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("serving;") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("embedded DynamoDB (in memory) is listening")),
        "{seen:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    seen.extend(stderr.map_while(Result::ok));
    assert!(out.status.success(), "{out:?} {seen:?}");
    assert!(seen.iter().any(|l| l.contains("draining")), "{seen:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("events received        0"),
        "{out:?}"
    );

    let backend = Backend::dynoxide().await;
    std::fs::write(
        &conf,
        format!(
            "[dynamodb]\nendpoint_url = \"{}\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\n[exhook]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            backend.endpoint()
        ),
    )
    .unwrap();
    let out = support::serve_output(&conf).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "missing tables: mqtt_client, mqtt_sub, mqtt_msg, mqtt_topic_msg_map, mqtt_retain, mqtt_acked; \
             create them with `mqtt-dynamo tables create`"
        ),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Throttling errors, server errors and UnprocessedItems (injected by a proxy in front of dynoxide)
/// are retried with backoff until every write lands, and per-key order survives the retries: the
/// final tables equal the sequential model (nothing lost, nothing resurrected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_converge_under_throttling_and_unprocessed_items() {
    let backend = Backend::dynoxide().await;
    let proxy = support::faults::FaultProxy::start(backend.endpoint()).await;
    let mut cfg = backend.config();
    cfg.dynamodb.endpoint_url = Some(proxy.endpoint());
    cfg.pipeline.max_batch_age = Duration::from_millis(2);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(1);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(10);
    let mut events = Vec::new();
    for r in 0..1500u32 {
        let topic = format!("o/{}", r % 7);
        let ts = 1_700_000_000_000 + u64::from(r);
        let n = r as u16;
        events.push(match r % 6 {
            0 | 1 => publish(n, 1, &topic, format!("v{r}").as_bytes(), true, ts),
            2 => publish(n, 1, &topic, b"", true, ts),
            3 => connect(&format!("oc{}", r % 5), &format!("emqx@n{}", r % 2), ts),
            4 => disconnect(
                &format!("oc{}", r % 5),
                &format!("emqx@n{}", (r / 6) % 2),
                ts,
            ),
            _ => ack(&format!("s{}", r % 3), n - 5, &format!("o/{}", (r - 5) % 7)),
        });
    }
    let (stats, _) = run(&backend, &cfg, &events, false).await;
    assert_eq!(stats.dropped(), 0, "{stats}");
    assert!(
        stats.throttles > 0 && stats.unprocessed > 0 && stats.retries > 0,
        "{stats}"
    );
    assert_eq!(
        stats.throttles,
        proxy
            .counts
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(
        stats.unprocessed,
        proxy
            .counts
            .withheld_items
            .load(std::sync::atomic::Ordering::Relaxed)
    );

    let mut model = TableModel::new();
    for e in &events {
        for op in RuleSet::default().plan(e, &cfg.storage.format()).unwrap() {
            model.apply(&op);
        }
    }
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), model.normalized());
}

/// With DynamoDB unreachable (a listener that accepts and never answers) and tiny queues, `submit`
/// refuses with a typed `Full` error instead of blocking, `submit_timeout` gives up at its
/// deadline, every refusal is counted, and the writes that were accepted are dropped only after
/// the retry budget, counted under `retries_exhausted` — nothing disappears silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_and_outage_drops_are_counted() {
    let stalled = support::Stalled::start().await;
    let cfg = stalled.tiny_config();
    let client = mqtt_dynamo::storage::dynamo::client(
        &cfg.dynamodb,
        None,
        mqtt_dynamo::storage::dynamo::SdkRetries::Disabled,
    )
    .await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let h = pipeline.handle();
    // Fill everything: ingest queue, router, shard inbox, pending table and the one flush in flight.
    let mut accepted = 0u64;
    let mut refused = None;
    for i in 0..200 {
        match h
            .submit(
                &connect(&format!("k{i}"), "emqx@n1", 1_000),
                Admit::within(Duration::from_millis(20)),
            )
            .and_then(Receipt::wait)
        {
            Ok(()) => accepted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the queues must fill");
    assert!(
        matches!(err, mqtt_dynamo::pipeline::ingest::SubmitError::Full),
        "{err}"
    );
    assert_eq!(err.to_string(), "ingest queue is full");
    // The non-blocking variant refuses at once.
    let err = h
        .submit(&connect("late", "emqx@n1", 1), Admit::now())
        .and_then(Receipt::wait)
        .unwrap_err();
    assert!(
        matches!(err, mqtt_dynamo::pipeline::ingest::SubmitError::Full),
        "{err}"
    );
    let full = 2;
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.rejected_full, full);
    assert_eq!(stats.events_received, accepted);
    assert_eq!(stats.written(), 0);
    assert_eq!(stats.dropped_retries_exhausted, accepted, "{stats}");
}

/// A write DynamoDB rejects, in a full 25-request batch: the batch is never retried whole; the 24
/// good writes land, and the poison one is dropped, counted, and appended to the dead-letter file
/// with DynamoDB's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_write_is_isolated_and_dead_lettered() {
    let backend = Backend::dynoxide().await;
    let proxy = support::faults::FaultProxy::start_with(
        backend.endpoint(),
        support::faults::Mode::Poison("poison-client"),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-dlq-{}", std::process::id()));
    let dlq = dir.join("dead-letters.jsonl");
    let mut cfg = backend.config();
    cfg.dynamodb.endpoint_url = Some(proxy.endpoint());
    cfg.pipeline.shards = 1;
    cfg.pipeline.max_batch_age = Duration::from_secs(3600);
    cfg.pipeline.dead_letter_path = Some(dlq.clone());
    let mut events: Vec<HookEvent> = (0..24)
        .map(|i| connect(&format!("c{i}"), "emqx@n1", 1_000))
        .collect();
    events.insert(12, connect("poison-client", "emqx@n1", 1_000));
    let (stats, counter) = run(&backend, &cfg, &events, false).await;
    assert_eq!(stats.flushes[0], ("count", 1), "one full batch: {stats}");
    assert_eq!(stats.dropped_rejected, 1);
    assert_eq!(stats.written(), 24);
    assert_eq!(
        counter.get("BatchWriteItem"),
        1 + 25,
        "the batch, then each write alone"
    );
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(got.len(), 24);
    assert!(!got.contains_key(&Key::new(Table::Client, "poison-client")));
    let text = std::fs::read_to_string(&dlq).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["table"], "mqtt_client");
    assert_eq!(
        lines[0]["key"],
        serde_json::json!({"clientid": {"S": "poison-client"}})
    );
    assert_eq!(lines[0]["reason"], "rejected");
    assert_eq!(
        lines[0]["error"],
        "One or more parameter values were invalid: poisoned item (test)"
    );
    assert_eq!(
        lines[0]["write"]["put"]["connect_state"],
        serde_json::json!({"N": "1"})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One retained QoS 1 publish to a topic of its own: three writes to three new keys, so nothing
/// coalesces and a backlog takes real room.
fn unique_publish(i: u16) -> HookEvent {
    publish(
        i,
        1,
        &format!("steady/{i}"),
        b"x",
        true,
        1_700_000_000_000 + u64::from(i),
    )
}

/// 100 events/s for 70 s through tiny in-memory queues, with DynamoDB (the simulator) answering
/// 503 to everything for the 60 s of events 500..6500. Returns the accepted events, the refusals,
/// the stats and the backend (outage over) to read the tables from.
async fn steady_rate_through_an_outage(
    spool: Option<&std::path::Path>,
) -> (Vec<HookEvent>, u64, StatsSnapshot, Backend, Config) {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        seed: Some(11),
        ..Default::default()
    })
    .await;
    let Backend::Sim(sim) = &backend else {
        unreachable!("a simulator backend")
    };
    let sim = sim.clone();
    let mut cfg = backend.config();
    cfg.pipeline.ingest_capacity_events = 64;
    cfg.pipeline.shard_queue_capacity = 16;
    cfg.pipeline.max_pending_keys = 300;
    cfg.pipeline.max_batch_age = Duration::from_millis(20);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(20);
    cfg.pipeline.retry.max_backoff = Duration::from_secs(1);
    if let Some(dir) = spool {
        cfg.pipeline.spool.enabled = true;
        cfg.pipeline.spool.dir = dir.to_path_buf();
        cfg.pipeline.spool.segment_age = Duration::from_secs(2);
    }
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let handle = pipeline.handle();
    // The submitter paces itself (one event per 10 ms) on its own thread and switches the outage
    // on before event 500 and off before event 6500. A refused event is not retried: the policy
    // under test is "wait 5 ms for room, then give up (counted)".
    let submitter = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut refused = 0u64;
        let start = std::time::Instant::now();
        for i in 0..7000u16 {
            if i == 500 || i == 6500 {
                sim.set_outage(i == 500);
            }
            let e = unique_publish(i);
            match handle
                .submit(&e, Admit::within(Duration::from_millis(5)))
                .and_then(Receipt::wait)
            {
                Ok(()) => accepted.push(e),
                Err(mqtt_dynamo::pipeline::ingest::SubmitError::Full) => refused += 1,
                Err(other) => panic!("unexpected refusal: {other}"),
            }
            let due = start + Duration::from_millis(10) * u32::from(i + 1);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        (accepted, refused)
    });
    let (accepted, refused) = tokio::task::spawn_blocking(move || submitter.join().unwrap())
        .await
        .unwrap();
    let stats = pipeline.shutdown().await;
    (accepted, refused, stats, backend, cfg)
}

/// With the spool on, a 60 s outage at a steady 100 events/s through queues that hold a few
/// hundred events: every event is accepted (the spool holds the backlog), the backlog drains
/// once DynamoDB is back, the tables equal the model of all 7,000 events, and the spool directory
/// is empty afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_the_spool_loses_nothing_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (accepted, refused, stats, backend, cfg) =
        steady_rate_through_an_outage(Some(dir.path())).await;
    assert_eq!(refused, 0, "{stats}");
    assert_eq!(accepted.len(), 7000);
    assert_eq!(stats.dropped(), 0, "{stats}");
    assert!(stats.failed_requests > 0, "the outage was felt: {stats}");
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), expected(&accepted, &cfg));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "LOCK")
        .collect();
    assert!(
        left.is_empty(),
        "drained spool segments are deleted: {left:?}"
    );
}

/// The same outage with the spool off: once the in-memory queues are full the configured policy
/// applies (wait 5 ms, then refuse with `Full`); every refusal is counted, and exactly the
/// accepted events are in the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_without_the_spool_refuses_and_counts_every_drop() {
    let (accepted, refused, stats, backend, cfg) = steady_rate_through_an_outage(None).await;
    assert!(
        refused > 4000,
        "most of the outage's 6,000 events are refused: {refused}"
    );
    assert_eq!(stats.rejected_full, refused, "{stats}");
    assert_eq!(accepted.len() as u64 + refused, 7000);
    assert_eq!(stats.events_received, accepted.len() as u64);
    assert_eq!(stats.dropped(), 0, "accepted events are kept: {stats}");
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), expected(&accepted, &cfg));
}

/// Publishes to one hot topic (its retained item and its MsgId set are two hot keys) mixed with
/// connects of 500 clients, paced at 2,000 events/s, into a simulator that allows 10 WCU/s per
/// key. Returns the simulator's counters and the run's stats; the tables must equal the model.
async fn hot_topic_run(hot_key_window: Duration) -> (dynamo_sim::SimStats, StatsSnapshot) {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        limits: dynamo_sim::Limits {
            key_wcu: Some(10),
            ..Default::default()
        },
        seed: Some(5),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_millis(5);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(10);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(200);
    cfg.pipeline.hot_key_window = hot_key_window;
    let events: Vec<HookEvent> = (0..3000u16)
        .map(|i| match i % 3 {
            0 => publish(
                i,
                1,
                "hot",
                format!("p{i}").as_bytes(),
                true,
                1_700_000_000_000,
            ),
            _ => connect(
                &format!("cold{}", i % 500),
                "emqx@n1",
                1_700_000_000_000 + u64::from(i),
            ),
        })
        .collect();
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    let handle = pipeline.handle();
    let submitted = events.clone();
    tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        for (i, e) in submitted.iter().enumerate() {
            handle
                .submit(e, Admit::within(Duration::from_secs(10)))
                .and_then(Receipt::wait)
                .unwrap();
            let due = start + Duration::from_micros(500) * (i as u32 + 1);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
    })
    .await
    .unwrap();
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.dropped(), 0, "{stats}");
    let got = scan_all(&client, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
    (backend.sim_stats().unwrap(), stats)
}

/// A key DynamoDB keeps throttling gets a window of its own: its throttled write goes back to its
/// shard, the key's newer ops merge into it while it waits, and it is sent again after the
/// window, instead of being retried one attempt after another. Same events, same limits, windows
/// off then on: far fewer throttled attempts with them, and the tables equal the model in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_get_a_window_of_their_own() {
    let (off, off_stats) = hot_topic_run(Duration::ZERO).await;
    let (on, on_stats) = hot_topic_run(Duration::from_millis(100)).await;
    let throttled = |s: &dynamo_sim::SimStats| s.throttled_requests + s.throttled_items;
    eprintln!(
        "hot key windows off: {} throttled attempts, {} requests, {} items written; on: {} throttled, {} requests, {} items written",
        throttled(&off),
        off.requests_total,
        off.items_written,
        throttled(&on),
        on.requests_total,
        on.items_written
    );
    assert!(
        throttled(&off) > 20,
        "the limit bites without windows: {off:?}"
    );
    assert!(
        throttled(&on) * 3 < throttled(&off),
        "windows cut the throttled attempts at least threefold: {} vs {}",
        throttled(&on),
        throttled(&off)
    );
    assert_eq!(off_stats.dropped() + on_stats.dropped(), 0);
}
