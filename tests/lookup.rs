//! The read side against real DynamoDB implementations on loopback (dynoxide in-process,
//! dynalite as a node process): wildcard retained lookups, offline fetch order and limits,
//! read-your-writes against writes still pending in the pipeline, pagination past 1 MB pages,
//! the shared topic index (two instances, one put per entry, building it for old tables, no
//! Scan), and the HTTP and CLI interfaces.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value as Json, json};

use mqtt_dynamo::broker::Listeners;
use mqtt_dynamo::config::{Config, MatchMode};
use mqtt_dynamo::event::{HookEvent, Message};
use mqtt_dynamo::guid;
use mqtt_dynamo::lookup::{OfflineQuery, Payload, ReadState, Reader};
use mqtt_dynamo::pipeline::Admit;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::item::{Item, Key, Op, Table, Value, Write};

use mqtt_dynamo::test_util::guids::hex_at;
use mqtt_dynamo::test_util::{Backend, SubmitExt, item, s, scan_all};

fn publish(id: &str, qos: u8, topic: &str, payload: &[u8], retain: bool) -> HookEvent {
    HookEvent::MessagePublish {
        message: Message {
            node: "emqx@n1".into(),
            id: id.into(),
            qos,
            from: "pub1".into(),
            topic: topic.into(),
            payload: payload.to_vec(),
            retain,
            timestamp_ms: 1_700_000_000_000,
            username: None,
            expiry_interval_s: None,
        },
    }
}

fn acked(id: &str, topic: &str) -> HookEvent {
    HookEvent::MessageAcked {
        client: mqtt_dynamo::event::ClientInfo {
            node: "emqx@n1".into(),
            clientid: "sub1".into(),
            username: None,
            peerhost: None,
        },
        message: match publish(id, 1, topic, b"", false) {
            HookEvent::MessagePublish { message } => message,
            _ => unreachable!(),
        },
    }
}

/// Runs `events` through a pipeline and drains it, so everything is in DynamoDB.
async fn write_all(backend: &Backend, cfg: &Config, events: &[HookEvent]) {
    let (client, _) = backend.prepare(cfg).await;
    let pipeline = Pipeline::from_config(cfg, client).unwrap();
    let handle = pipeline.handle();
    handle.submit_all(events);
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.dropped(), 0, "{stats}");
}

/// A reader with no pipeline behind it: what a fresh process sees (only what is in DynamoDB).
async fn fresh_reader(cfg: &Config) -> Reader {
    let client = mqtt_dynamo::storage::dynamo::client(
        &cfg.dynamodb,
        None,
        mqtt_dynamo::storage::dynamo::SdkRetries::Standard,
    )
    .await;
    Reader::new(
        client,
        &cfg.dynamodb,
        std::sync::Arc::new(ReadState::new(false)),
        cfg.lookup.clone(),
    )
}

/// `tables build-index` as a library call: the shared topic index from the tables as they are.
async fn build_index(cfg: &Config) -> Vec<mqtt_dynamo::storage::tables::IndexBuild> {
    let admin = mqtt_dynamo::storage::dynamo::client(
        &cfg.dynamodb,
        None,
        mqtt_dynamo::storage::dynamo::SdkRetries::Standard,
    )
    .await;
    mqtt_dynamo::storage::tables::build_topic_index(&admin, &cfg.dynamodb, 3)
        .await
        .expect("the index builds")
}

async fn retained_topics(reader: &Reader, filter: &str) -> Vec<String> {
    let r = reader.retained(filter).await.expect("retained lookup");
    r.messages.into_iter().map(|m| m.topic).collect()
}

async fn retained_wildcards(backend: Backend) {
    let cfg = backend.config();
    let id = |n: u64| hex_at(1_700_000_000_000_000 + n, 1);
    let events = vec![
        publish(&id(1), 0, "a", b"top", true),
        publish(&id(2), 1, "a/b", b"ab", true),
        publish(&id(3), 1, "a/c", b"ac", true),
        publish(&id(4), 2, "a/b/c", b"abc", true),
        publish(&id(6), 1, "x/y", &[0xff, 0x00, 0xfe], true),
        // Clearing a/c: an empty retained payload deletes it.
        publish(&id(8), 1, "a/c", b"", true),
        // Not retained: not in mqtt_retain.
        publish(&id(9), 1, "a/d", b"plain", false),
    ];
    write_all(&backend, &cfg, &events).await;
    // The seed's rules ("#") never store $-topics; a retained $SYS message written by another
    // tool is still found by a $SYS filter, and only by one.
    let (client, _) = backend.prepare(&cfg).await;
    // Likewise a retained message under the literal topic `a/+` (the service refuses publishes
    // to topics with wildcards; an older tool may have stored one): only a literal lookup finds
    // it, never a wildcard subscription, since nothing was ever published to a matching topic.
    for (topic, n, payload) in [("$SYS/broker/uptime", 5, "42"), ("a/+", 7, "literal plus")] {
        let key = Key::new(Table::Retain, topic);
        let mut item: Item = key.to_item();
        item.insert("msgid".into(), Value::S(id(n)));
        item.insert("payload".into(), Value::S(payload.into()));
        client
            .put_item()
            .table_name(cfg.dynamodb.table_name(Table::Retain))
            .set_item(Some(mqtt_dynamo::storage::dynamo::to_attrs(&item)))
            .send()
            .await
            .unwrap();
    }
    // Written around the service: not in the shared index until `tables build-index` runs.
    let reader = fresh_reader(&cfg).await;
    assert!(retained_topics(&reader, "$SYS/#").await.is_empty());
    let builds = build_index(&cfg).await;
    assert_eq!(
        (builds[0].topics, builds[0].skipped),
        (6, 1),
        "a, a/b, a/b/c, x/y, $SYS/broker/uptime; `a/+` is no topic name"
    );
    let name = backend.name();
    assert_eq!(
        retained_topics(&reader, "a/+").await,
        ["a/b"],
        "{name}: a stored `a/+` is no topic a subscription to a/+ matches"
    );
    assert_eq!(
        retained_topics(&reader, "a/#").await,
        ["a", "a/b", "a/b/c"],
        "{name}"
    );
    assert_eq!(
        retained_topics(&reader, "#").await,
        ["a", "a/b", "a/b/c", "x/y"],
        "{name}: # excludes $SYS"
    );
    assert_eq!(
        retained_topics(&reader, "+/broker/+").await,
        Vec::<String>::new(),
        "{name}: a leading + does not match $SYS"
    );
    assert_eq!(
        retained_topics(&reader, "$SYS/#").await,
        ["$SYS/broker/uptime"],
        "{name}"
    );
    assert_eq!(retained_topics(&reader, "a/c").await, Vec::<String>::new());
    assert_eq!(
        retained_topics(&reader, "$share/g/a/b").await,
        Vec::<String>::new()
    );
    // The attributes as stored, binary payloads as bytes.
    let r = reader.retained("x/#").await.unwrap();
    let m = &r.messages[0];
    assert_eq!(m.payload, Some(Payload::Binary(vec![0xff, 0x00, 0xfe])));
    assert_eq!(
        (m.qos, m.retain, m.sender.as_deref()),
        (Some(1), Some(true), Some("pub1"))
    );
    assert_eq!(m.msgid, guid::to_base62(guid::from_hex(&id(6)).unwrap()));
    assert_eq!(m.time_us, Some(1_700_000_000_000_006));
    let r = reader.retained("a/b").await.unwrap();
    assert_eq!(r.messages[0].payload, Some(Payload::Text("ab".into())));
    // The seed's literal mode: the filter is a key.
    let mut literal = cfg.clone();
    literal.lookup.retained = MatchMode::Literal;
    let reader = fresh_reader(&literal).await;
    assert_eq!(retained_topics(&reader, "a/+").await, ["a/+"]);
    assert_eq!(retained_topics(&reader, "a/#").await, Vec::<String>::new());
    assert!(matches!(
        reader.retained("a/#/b").await,
        Err(mqtt_dynamo::lookup::LookupError::Filter(_))
    ));
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    retained_wildcards;
}

/// Message ids whose base62 strings do not sort in time order (checked), published in an
/// order that is neither.
fn shuffled_ids() -> Vec<(u64, String)> {
    let base = 1_700_000_000_000_000u64;
    let mut ids: Vec<(u64, String)> = (0..12u64)
        .map(|i| {
            let t = base + i * 7_777_777 + (i * i * 1_234_567) % 999_983;
            (t, hex_at(t, i as u16))
        })
        .collect();
    let as_base62: Vec<String> = ids
        .iter()
        .map(|(_, h)| guid::to_base62(guid::from_hex(h).unwrap()))
        .collect();
    let mut sorted = as_base62.clone();
    sorted.sort();
    assert_ne!(
        sorted, as_base62,
        "the ids must not sort by time as strings"
    );
    // Publish order: a fixed shuffle.
    ids.swap(0, 7);
    ids.swap(3, 10);
    ids.swap(5, 1);
    ids
}

async fn offline_order_and_limits(backend: Backend) {
    let cfg = backend.config();
    let ids = shuffled_ids();
    let mut events = Vec::new();
    for (i, (_, id)) in ids.iter().enumerate() {
        let topic = if i % 2 == 0 { "q/1" } else { "q/2" };
        events.push(publish(id, 1, topic, format!("m{i}").as_bytes(), false));
    }
    // QoS 0 is not stored for offline delivery; an acked message is gone.
    events.push(publish(
        &hex_at(1_800_000_000_000_000, 1),
        0,
        "q/1",
        b"q0",
        false,
    ));
    events.push(acked(&ids[4].1, "q/1"));
    events.push(publish(
        &hex_at(1_700_000_000_000_000, 99),
        1,
        "other",
        b"o",
        false,
    ));
    write_all(&backend, &cfg, &events).await;

    let mut expected: Vec<(u64, String)> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, x)| x.clone())
        .collect();
    expected.sort();
    let expected_times: Vec<u64> = expected.iter().map(|(t, _)| *t).collect();

    let reader = fresh_reader(&cfg).await;
    let query = |filter: &str, limit: Option<usize>, since_us: Option<u64>| OfflineQuery {
        filter: filter.into(),
        qos: 1,
        limit,
        since_us,
    };
    let times = |o: &mqtt_dynamo::lookup::Offline| -> Vec<u64> {
        o.messages.iter().map(|m| m.time_us.unwrap()).collect()
    };
    let name = backend.name();
    let all = reader.offline(&query("q/+", Some(0), None)).await.unwrap();
    assert_eq!(
        times(&all),
        expected_times,
        "{name}: oldest first, by GUID time"
    );
    assert_eq!((all.topics, all.ids, all.truncated), (2, 11, false));
    // Each message is the one published with that id, with its topic.
    for m in &all.messages {
        let (i, _) = ids
            .iter()
            .enumerate()
            .find(|(_, (t, _))| Some(*t) == m.time_us)
            .unwrap();
        assert_eq!(m.payload, Some(Payload::Text(format!("m{i}"))));
        assert_eq!(m.topic, if i % 2 == 0 { "q/1" } else { "q/2" });
    }
    // The newest 3, oldest first.
    let newest = reader.offline(&query("q/#", Some(3), None)).await.unwrap();
    assert_eq!(times(&newest), expected_times[8..], "{name}");
    assert!(newest.truncated);
    // Since the 6th message (inclusive).
    let since = reader
        .offline(&query("q/+", Some(0), Some(expected_times[5])))
        .await
        .unwrap();
    assert_eq!(times(&since), expected_times[5..], "{name}");
    // The configured default limit applies when the request sets none.
    let mut limited = cfg.clone();
    limited.lookup.max_returned_count = 2;
    let r2 = fresh_reader(&limited).await;
    assert_eq!(
        times(&r2.offline(&query("q/+", None, None)).await.unwrap()),
        expected_times[9..]
    );
    // A single topic, a shared subscription, QoS 0, and the seed's literal mode.
    let q2 = reader.offline(&query("q/2", Some(0), None)).await.unwrap();
    assert_eq!(q2.messages.len(), 6);
    let shared = reader
        .offline(&query("$share/g/q/+", Some(0), None))
        .await
        .unwrap();
    assert_eq!(times(&shared), expected_times);
    let mut qos0 = query("q/+", Some(0), None);
    qos0.qos = 0;
    assert!(reader.offline(&qos0).await.unwrap().messages.is_empty());
    let mut literal = cfg.clone();
    literal.lookup.offline = MatchMode::Literal;
    let lit = fresh_reader(&literal).await;
    assert!(
        lit.offline(&query("q/+", Some(0), None))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(
        lit.offline(&query("q/1", Some(0), None))
            .await
            .unwrap()
            .messages
            .len(),
        5
    );
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    offline_order_and_limits;
}

fn sub_op(clientid: &str, topic: &str, qos: i64) -> Op {
    let key = Key::with_range(Table::Sub, clientid, topic);
    let mut item: Item = key.to_item();
    item.insert("qos".into(), Value::N(qos));
    Op {
        key,
        write: Write::Put { item, fresh: false },
    }
}

/// Lookups answer with writes the pipeline accepted and has not sent: flushes wait an hour.
async fn read_your_writes(backend: Backend) {
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_secs(3600);
    let (client, counter) = backend.prepare(&cfg).await;
    // Already in DynamoDB: a retained message and a subscription.
    let old = publish(&hex_at(1_700_000_000_000_000, 1), 1, "r/old", b"old", true);
    write_all(&backend, &cfg, std::slice::from_ref(&old)).await;
    let admin = fresh_reader(&cfg).await;
    assert_eq!(retained_topics(&admin, "r/#").await, ["r/old"]);
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let handle = pipeline.handle();
    let reader = handle.reader().expect("lookups are on by default").clone();
    let sent_before = counter.total();
    let new_id = hex_at(1_700_000_000_500_000, 2);
    for e in [
        publish(&new_id, 1, "r/new", b"new", true),
        publish(&hex_at(1_700_000_000_600_000, 3), 1, "r/old", b"", true),
        publish(
            &hex_at(1_700_000_000_700_000, 4),
            1,
            "o/1",
            b"offline",
            false,
        ),
        publish(&hex_at(1_700_000_000_800_000, 5), 1, "o/2", b"acked", false),
        acked(&hex_at(1_700_000_000_800_000, 5), "o/2"),
    ] {
        handle.accept_now(&e).unwrap();
    }
    handle
        .accept_now(vec![sub_op("c9", "s/1", 1), sub_op("c9", "s/2", 2)])
        .unwrap();
    handle
        .accept_now(vec![Op {
            key: Key::with_range(Table::Sub, "c9", "s/2"),
            write: Write::Delete,
        }])
        .unwrap();
    let name = backend.name();
    // A retained message published a moment ago is found; one just cleared is not.
    let r = reader.retained("r/#").await.unwrap();
    assert_eq!(
        r.messages
            .iter()
            .map(|m| m.topic.as_str())
            .collect::<Vec<_>>(),
        ["r/new"],
        "{name}"
    );
    assert_eq!(r.messages[0].payload, Some(Payload::Text("new".into())));
    assert!(reader.retained("r/old").await.unwrap().messages.is_empty());
    let subs = reader.subscriptions("c9").await.unwrap();
    assert_eq!(
        subs.iter()
            .map(|s| (s.topic.as_str(), s.qos))
            .collect::<Vec<_>>(),
        [("s/1", 1)],
        "{name}"
    );
    let o = reader
        .offline(&OfflineQuery {
            filter: "o/#".into(),
            qos: 1,
            limit: None,
            since_us: None,
        })
        .await
        .unwrap();
    assert_eq!(
        o.messages
            .iter()
            .map(|m| m.payload.clone())
            .collect::<Vec<_>>(),
        [Some(Payload::Text("offline".into()))],
        "{name}"
    );
    // None of it was written yet (only the lookups' reads went out).
    assert_eq!(counter.get("BatchWriteItem") + counter.get("UpdateItem"), 0);
    assert!(counter.total() > sent_before);
    assert!(reader.state().pending_ops() > 0);
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.dropped(), 0);
    assert_eq!(reader.state().pending_ops(), 0, "every write settled");
    // Durable now: a fresh process sees the same.
    let fresh = fresh_reader(&cfg).await;
    assert_eq!(retained_topics(&fresh, "r/#").await, ["r/new"]);
    assert_eq!(fresh.subscriptions("c9").await.unwrap(), subs);
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    read_your_writes;
}

/// More than 1 MB of subscriptions (Query pages) and of retained messages (several
/// BatchGetItems for the lookup).
async fn pagination(backend: Backend) {
    let cfg = backend.config();
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let handle = pipeline.handle();
    let long = "x".repeat(1000);
    let subs: Vec<Op> = (0..1100)
        .map(|i| sub_op("big", &format!("t/{i:04}/{long}"), i % 3))
        .collect();
    for chunk in subs.chunks(50) {
        handle
            .accept(
                chunk.to_vec(),
                Some(std::time::Instant::now() + Duration::from_secs(10))
                    .map_or_else(Admit::now, Admit::until),
            )
            .unwrap();
    }
    let payload = vec![b'p'; 10_000];
    for i in 0..150 {
        let e = publish(
            &hex_at(1_700_000_000_000_000 + i, 1),
            1,
            &format!("big/{i:03}"),
            &payload,
            true,
        );
        handle
            .accept(&e, Admit::within(Duration::from_secs(10)))
            .unwrap();
    }
    assert_eq!(pipeline.shutdown().await.dropped(), 0);
    let reader = fresh_reader(&cfg).await;
    let got = reader.subscriptions("big").await.unwrap();
    assert_eq!(got.len(), 1100, "{}", backend.name());
    assert_eq!(got[7].topic, format!("t/0007/{long}"));
    assert_eq!(got[7].qos, 1);
    let r = reader.retained("big/+").await.unwrap();
    assert_eq!(r.messages.len(), 150, "{}", backend.name());
    assert!(
        r.messages
            .iter()
            .all(|m| m.payload == Some(Payload::Binary(payload.clone()))
                || m.payload == Some(Payload::Text(String::from_utf8(payload.clone()).unwrap())))
    );
    assert_eq!(r.messages[149].topic, "big/149");
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    pagination;
}

// The shared topic index (`mqtt_topic_index`).

/// Every item of `mqtt_topic_index`.
async fn index_items(client: &aws_sdk_dynamodb::Client, cfg: &Config) -> BTreeMap<Key, Item> {
    scan_all(client, cfg)
        .await
        .into_iter()
        .filter(|(k, _)| k.table == Table::TopicIndex)
        .collect()
}

/// Index items as the table must hold them: (bucket, topic), both strings, nothing else.
fn index_of(entries: &[(&str, &str)]) -> BTreeMap<Key, Item> {
    mqtt_dynamo::test_util::index_items(entries)
        .into_iter()
        .collect()
}

fn payloads(r: &mqtt_dynamo::lookup::Retained) -> Vec<(String, Option<Payload>)> {
    r.messages
        .iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect()
}

fn text(t: &str) -> Option<Payload> {
    Some(Payload::Text(t.into()))
}

/// Two instances (two pipelines and readers, each with its own ReadState and its own index
/// memory, as two processes) on one DynamoDB: what A publishes, B's wildcard lookups find,
/// exactly, beside what B accepted itself and has not written; B's lookups Query the index
/// (one Query per bucket, the directory first for a leading wildcard) and never Scan.
async fn shared_index_across_instances(backend: Backend) {
    let cfg = backend.config();
    let name = backend.name();
    let id = |n: u64| hex_at(1_700_000_000_000_000 + n * 1000, 7);
    // B: its writes wait (an hour's batch age), so its own topic is only in its overlay.
    let mut cfg_b = cfg.clone();
    cfg_b.pipeline.max_batch_age = Duration::from_secs(3600);
    let (client_b, counter_b) = backend.prepare(&cfg_b).await;
    let b = Pipeline::from_config(&cfg_b, client_b).unwrap();
    let reader_b = b.handle().reader().expect("lookups are on").clone();
    assert!(reader_b.retained("a/+").await.unwrap().messages.is_empty());
    // A publishes and its writes land (drained, as a process whose writes are done).
    let (client_a, _) = backend.prepare(&cfg).await;
    let a = Pipeline::from_config(&cfg, client_a).unwrap();
    a.handle().submit_all(&[
        publish(&id(1), 0, "a/b", b"ab", true),
        publish(&id(2), 0, "a/c/d", b"acd", true),
        publish(&id(3), 0, "x/b", b"xb", true),
        publish(&id(4), 0, "/lead", b"lead", true),
        publish(&id(5), 1, "q/1", b"q1", false),
        publish(&id(6), 1, "q/2", b"q2", false),
        publish(&id(7), 1, "x/q", b"xq", false),
        publish(&id(8), 1, "q/1", b"q1b", false),
    ]);
    let stats_a = a.shutdown().await;
    assert_eq!(stats_a.dropped(), 0, "{name}: {stats_a}");
    // B's own retained message, accepted and not written.
    b.handle()
        .accept_now(&publish(&id(9), 0, "b/own", b"own", true))
        .unwrap();

    let queries = || counter_b.get("Query");
    let q0 = queries();
    let r = reader_b.retained("a/+").await.unwrap();
    assert_eq!(payloads(&r), [("a/b".to_string(), text("ab"))], "{name}");
    assert_eq!(
        queries() - q0,
        2,
        "{name}: a/+ is a Query of the directory's entries of a (its bucket count) and one of bucket retain|a"
    );
    let q0 = queries();
    let r = reader_b.retained("#").await.unwrap();
    assert_eq!(
        payloads(&r),
        [
            ("/lead".to_string(), text("lead")),
            ("a/b".to_string(), text("ab")),
            ("a/c/d".to_string(), text("acd")),
            ("b/own".to_string(), text("own")),
            ("x/b".to_string(), text("xb")),
        ],
        "{name}: A's topics and B's own pending one"
    );
    assert_eq!(
        queries() - q0,
        5,
        "{name}: # is the directory and the buckets of \"\", a, b (pending) and x"
    );
    let r = reader_b.retained("+/b").await.unwrap();
    assert_eq!(
        payloads(&r),
        [
            ("a/b".to_string(), text("ab")),
            ("x/b".to_string(), text("xb"))
        ],
        "{name}"
    );
    assert_eq!(
        retained_topics(&reader_b, "a/#").await,
        ["a/b", "a/c/d"],
        "{name}"
    );
    assert_eq!(
        retained_topics(&reader_b, "+/+").await,
        ["/lead", "a/b", "b/own", "x/b"],
        "{name}"
    );
    assert_eq!(retained_topics(&reader_b, "/+").await, ["/lead"], "{name}");
    let offline = |filter: &str| OfflineQuery {
        filter: filter.into(),
        qos: 1,
        limit: Some(0),
        since_us: None,
    };
    let o = reader_b.offline(&offline("q/+")).await.unwrap();
    assert_eq!(
        o.messages
            .iter()
            .map(|m| (m.topic.as_str(), m.payload.clone()))
            .collect::<Vec<_>>(),
        [
            ("q/1", text("q1")),
            ("q/2", text("q2")),
            ("q/1", text("q1b"))
        ],
        "{name}: oldest first"
    );
    assert_eq!((o.topics, o.ids), (2, 3));
    let o = reader_b.offline(&offline("+/q")).await.unwrap();
    assert_eq!(o.messages.len(), 1);
    assert_eq!(o.messages[0].payload, text("xq"), "{name}");
    assert_eq!(
        counter_b.get("Scan"),
        0,
        "{name}: no lookup scans a table (requests: Query {}, BatchGetItem {})",
        counter_b.get("Query"),
        counter_b.get("BatchGetItem")
    );
    assert_eq!(
        counter_b.get("BatchWriteItem"),
        0,
        "{name}: B wrote nothing yet"
    );
    let stats_b = b.shutdown().await;
    assert_eq!(stats_b.dropped(), 0);
    // A third process sees B's topic once B's writes landed.
    let fresh = fresh_reader(&cfg).await;
    assert_eq!(retained_topics(&fresh, "b/+").await, ["b/own"], "{name}");
    let (client, _) = backend.prepare(&cfg).await;
    assert_eq!(
        index_items(&client, &cfg).await,
        index_of(&[
            ("msg", "q/"),
            ("msg", "x/"),
            ("msg|q", "q/1"),
            ("msg|q", "q/2"),
            ("msg|x", "x/q"),
            ("retain", "/"),
            ("retain", "a/"),
            ("retain", "b/"),
            ("retain", "x/"),
            ("retain|", "/lead"),
            ("retain|a", "a/b"),
            ("retain|a", "a/c/d"),
            ("retain|b", "b/own"),
            ("retain|x", "x/b"),
        ]),
        "{name}"
    );
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    shared_index_across_instances;
}

/// A first level whose new topics come faster than `[storage] topic_index_spread_rate` per
/// bucket is spread over twice the buckets, three times here: at a rate of 20, rounds of 21, 41
/// and 81 new topics each pass the rate at their last topic, and the next round waits for that
/// spread; 50 more at 8 buckets stay under the 160 that calls for. The directory records each
/// count, each round's topics lie in the buckets of its count, a reader with nothing pending
/// (another instance) finds all of them with one Query per bucket and the directory's, and the
/// index read unspread is exactly the plain one.
async fn spread_levels(backend: Backend) {
    use mqtt_dynamo::storage::topic_index::{self, IndexKind};
    let mut cfg = backend.config();
    let name = backend.name();
    cfg.storage.topic_index_spread_rate = 20;
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    let handle = pipeline.handle();
    let topic = |i: u64| format!("fleet/{i}");
    // (first topic, topics, bucket count they are put under)
    let rounds = [(0u64, 21u64, 1u32), (21, 41, 2), (62, 81, 4), (143, 50, 8)];
    for (round, (first, n, _)) in rounds.iter().enumerate() {
        let events: Vec<HookEvent> = (*first..first + n)
            .map(|i| {
                let id = hex_at(1_700_000_000_000_000 + i * 1000, 9);
                publish(&id, 0, &topic(i), b"v", true)
            })
            .collect();
        handle.submit_all(&events);
        if round == 3 {
            break;
        }
        // The spread this round set off, taken (its directory put is one request).
        tokio::time::timeout(Duration::from_secs(20), async {
            while handle.stats().topic_index_spreads < round as u64 + 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: spread {} taken", round + 1));
    }
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.dropped(), 0, "{name}: {stats}");
    assert_eq!(stats.topic_index_spreads, 3, "{name}");
    let items = index_items(&client, &cfg).await;
    let directory: Vec<&str> = items
        .keys()
        .filter(|k| k.hash == "retain")
        .filter_map(|k| k.range.as_deref())
        .collect();
    assert_eq!(
        directory,
        ["fleet/", "fleet/2", "fleet/4", "fleet/8"],
        "{name}"
    );
    let mut buckets = std::collections::BTreeSet::new();
    for key in items.keys().filter(|k| k.hash.starts_with("retain|")) {
        let t = key.range.as_deref().unwrap();
        let i: u64 = t.strip_prefix("fleet/").unwrap().parse().unwrap();
        let (_, _, count) = rounds
            .iter()
            .find(|(first, n, _)| (*first..first + n).contains(&i))
            .unwrap();
        assert_eq!(
            *key,
            topic_index::spread_topic_key(IndexKind::Retained, t, *count),
            "{name}: in a bucket of its round's count"
        );
        buckets.insert(key.hash.clone());
    }
    assert_eq!(buckets.len(), 8, "{name}: {buckets:?}");
    let unspread: BTreeMap<Key, Item> = items
        .keys()
        .filter_map(topic_index::unspread)
        .map(|k| {
            let item = k.to_item();
            (k, item)
        })
        .collect();
    let topics: Vec<u64> = (0..193).collect();
    let plain: Vec<(String, String)> = topics
        .iter()
        .map(|i| ("retain|fleet".to_string(), topic(*i)))
        .chain([("retain".to_string(), "fleet/".to_string())])
        .collect();
    let plain: Vec<(&str, &str)> = plain
        .iter()
        .map(|(b, t)| (b.as_str(), t.as_str()))
        .collect();
    let expected_msg: BTreeMap<Key, Item> = unspread
        .iter()
        .filter(|(k, _)| k.hash.starts_with("msg"))
        .map(|(k, i)| (k.clone(), i.clone()))
        .collect();
    let mut expected = index_of(&plain);
    expected.extend(expected_msg);
    assert_eq!(unspread, expected, "{name}");

    // Another instance: nothing pending, only the table.
    let (client_b, counter_b) = backend.prepare(&cfg).await;
    let reader = Reader::new(
        client_b,
        &cfg.dynamodb,
        std::sync::Arc::new(ReadState::new(false)),
        cfg.lookup.clone(),
    );
    let all: Vec<String> = {
        let mut t: Vec<String> = topics.iter().map(|i| topic(*i)).collect();
        t.sort();
        t
    };
    let q0 = counter_b.get("Query");
    assert_eq!(retained_topics(&reader, "fleet/+").await, all, "{name}");
    assert_eq!(
        counter_b.get("Query") - q0,
        9,
        "{name}: fleet/+ is the directory's entries of fleet and its 8 buckets"
    );
    assert_eq!(retained_topics(&reader, "#").await, all, "{name}");
    assert_eq!(
        retained_topics(&reader, "fleet/7").await,
        ["fleet/7".to_string()],
        "{name}"
    );
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    spread_levels;
}

/// `mqtt_dynamo_topic_index_writes_total{index}` as the service at `metrics` exports it.
async fn index_writes(metrics: &str, index: &str) -> u64 {
    let name = mqtt_dynamo::telemetry::catalogue::TOPIC_INDEX_WRITES_TOTAL;
    counter_sum(metrics, name, &[("index", index)]).await
}

/// The sum of counter `name`'s series carrying every label pair of `labels`, as the service at
/// `metrics` exports them.
async fn counter_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let client: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(format!("http://{metrics}/metrics").parse().unwrap())
        .await
        .expect("the metrics listener answers");
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Twenty QoS 1 retained publishes to one topic and five to a second under the same first level:
/// each index entry is put once (the metric and the table say so), in the BatchWriteItems the
/// messages go in, at one write unit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_index_entries_are_put_once() {
    use mqtt_dynamo::test_util::service;
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    cfg.exhook.enabled = false;
    Backend::create_tables(&cfg).await;
    let svc = service::start(&cfg).await;
    let metrics = service::addr(svc.addrs().metrics);
    let mut n = 0u64;
    for (topic, times) in [("d/1", 20), ("d/2", 5)] {
        for _ in 0..times {
            n += 1;
            let e = publish(
                &hex_at(1_700_000_000_000_000 + n * 1000, 3),
                1,
                topic,
                format!("v{n}").as_bytes(),
                true,
            );
            svc.handle().accept_now(&e).unwrap();
        }
    }
    // Counted at acceptance: d/1, d/2 and the first level d, in each index.
    assert_eq!(index_writes(&metrics, "retained").await, 3);
    assert_eq!(index_writes(&metrics, "offline").await, 3);
    let stats = svc.shutdown().await;
    assert_eq!(stats.dropped(), 0, "{stats}");
    assert_eq!(stats.topic_index_writes, 6);
    let index_wcu = stats
        .consumed_wcu_by_table
        .iter()
        .find(|(t, _)| *t == Table::TopicIndex)
        .map_or(0, |(_, u)| *u);
    let written = stats
        .items_written
        .iter()
        .find(|(t, _)| *t == Table::TopicIndex)
        .map_or(0, |(_, n)| *n);
    eprintln!(
        "25 publishes on 2 new topics: {} index puts, {written} index items written, {index_wcu} index write units reported; requests: BatchWriteItem {}, BatchExecuteStatement {}, UpdateItem {}",
        stats.topic_index_writes,
        stats.batch_write_requests,
        stats.statement_requests,
        stats.update_requests
    );
    assert_eq!(written, 6);
    assert_eq!(index_wcu, 6, "one write unit per entry");
    let (client, _) = backend.prepare(&cfg).await;
    // What a lookup's Queries cost: d/+ reads bucket retain|d; # reads the directory first.
    for (bucket, what) in [("retain|d", "bucket"), ("retain", "directory")] {
        let out = client
            .query()
            .table_name(cfg.dynamodb.table_name(Table::TopicIndex))
            .key_condition_expression("#b = :b")
            .expression_attribute_names("#b", "bucket")
            .expression_attribute_values(
                ":b",
                aws_sdk_dynamodb::types::AttributeValue::S(bucket.into()),
            )
            .consistent_read(true)
            .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
            .send()
            .await
            .unwrap();
        eprintln!(
            "Query of the {what} {bucket}: {} items, {:?} read units (strongly consistent)",
            out.count(),
            out.consumed_capacity().and_then(|c| c.capacity_units())
        );
    }
    assert_eq!(
        index_items(&client, &cfg).await,
        index_of(&[
            ("msg", "d/"),
            ("msg|d", "d/1"),
            ("msg|d", "d/2"),
            ("retain", "d/"),
            ("retain|d", "d/1"),
            ("retain|d", "d/2"),
        ])
    );
}

/// Tables written without the index (an older version, another tool): wildcard lookups find
/// nothing until `tables build-index` fills it; then they find every valid topic, `$SYS` only by
/// a `$SYS` filter. Building twice leaves the same index.
async fn build_index_for_old_tables(backend: Backend) {
    let cfg = backend.config();
    let name = backend.name();
    let (client, _) = backend.prepare(&cfg).await;
    // The reader's own client, so its requests are counted alone.
    let (reader_client, counter) = backend.prepare(&cfg).await;
    let id = |n: u64| hex_at(1_700_000_000_000_000 + n, 1);
    let put = |table: Table, item: Item| {
        let client = client.clone();
        let name = cfg.dynamodb.table_name(table);
        async move {
            client
                .put_item()
                .table_name(name)
                .set_item(Some(mqtt_dynamo::storage::dynamo::to_attrs(&item)))
                .send()
                .await
                .unwrap();
        }
    };
    for (n, topic) in [(1, "m/1"), (2, "m/2/x"), (3, "$SYS/up"), (4, "bad/+")] {
        let (_, item) = item(
            Table::Retain,
            &[
                ("topic", s(topic)),
                ("msgid", s(&id(n))),
                ("payload", s(topic)),
            ],
        );
        put(Table::Retain, item).await;
    }
    let (_, msg) = item(
        Table::Msg,
        &[
            ("msgid", s(&id(5))),
            ("topic", s("o/1")),
            ("qos", Value::N(1)),
            ("payload", s("o")),
        ],
    );
    put(Table::Msg, msg).await;
    let (_, set) = item(
        Table::TopicMsgMap,
        &[("topic", s("o/1")), ("MsgId", Value::Ss([id(5)].into()))],
    );
    put(Table::TopicMsgMap, set).await;

    let reader = Reader::new(
        reader_client,
        &cfg.dynamodb,
        std::sync::Arc::new(ReadState::new(false)),
        cfg.lookup.clone(),
    );
    let offline = OfflineQuery {
        filter: "o/#".into(),
        qos: 1,
        limit: None,
        since_us: None,
    };
    assert!(retained_topics(&reader, "m/#").await.is_empty(), "{name}");
    assert!(reader.offline(&offline).await.unwrap().messages.is_empty());
    for round in 0..2 {
        let builds = build_index(&cfg).await;
        let counts: Vec<(String, u64, u64, u64)> = builds
            .iter()
            .map(|b| (b.source.clone(), b.topics, b.skipped, b.entries))
            .collect();
        assert_eq!(
            counts,
            [
                ("mqtt_retain".to_string(), 4, 1, 5),
                ("mqtt_topic_msg_map".to_string(), 1, 0, 2),
            ],
            "{name}, round {round}"
        );
        assert_eq!(
            index_items(&client, &cfg).await,
            index_of(&[
                ("msg", "o/"),
                ("msg|o", "o/1"),
                ("retain", "$SYS/"),
                ("retain", "m/"),
                ("retain|$SYS", "$SYS/up"),
                ("retain|m", "m/1"),
                ("retain|m", "m/2/x"),
            ]),
            "{name}, round {round}"
        );
    }
    assert_eq!(
        retained_topics(&reader, "m/#").await,
        ["m/1", "m/2/x"],
        "{name}"
    );
    assert_eq!(
        retained_topics(&reader, "#").await,
        ["m/1", "m/2/x"],
        "{name}"
    );
    assert_eq!(
        retained_topics(&reader, "$SYS/+").await,
        ["$SYS/up"],
        "{name}"
    );
    let o = reader.offline(&offline).await.unwrap();
    assert_eq!(o.messages.len(), 1);
    assert_eq!(o.messages[0].payload, text("o"), "{name}");
    assert_eq!(counter.get("Scan"), 0, "{name}: the lookups never scan");
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    build_index_for_old_tables;
}

async fn request(method: &str, url: &str, token: Option<&str>) -> (u16, Json) {
    let client: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("the HTTP listener answers");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
}

/// The HTTP lookup API end to end: subscriptions stored and removed through it, wildcard
/// retained and offline lookups, errors, and the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lookup_api() {
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    cfg.exhook.enabled = false;
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.token = Some(mqtt_dynamo::config::Secret::new("s3cret"));
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let handle = pipeline.handle();
    let listeners = Listeners::start(&cfg, handle.clone()).await.unwrap();
    let base = format!("http://{}", listeners.http_addr.unwrap());
    let tok = Some("s3cret");
    for e in [
        publish(&hex_at(1_700_000_000_000_000, 1), 1, "h/a", b"one", true),
        publish(
            &hex_at(1_700_000_000_100_000, 2),
            1,
            "h/b",
            &[0xc3, 0x28],
            true,
        ),
        publish(&hex_at(1_700_000_000_200_000, 3), 1, "h/a", b"two", false),
    ] {
        handle.accept_now(&e).unwrap();
    }
    // PUT, GET, DELETE a subscription whose topic has '/', '+' and '#' (one encoded segment).
    let sub = format!("{base}/v1/clients/c%201/subscriptions/h%2F%2B%2F%23");
    assert_eq!(request("PUT", &format!("{sub}?qos=2"), tok).await.0, 204);
    let (status, body) = request(
        "GET",
        &format!("{base}/v1/clients/c%201/subscriptions"),
        tok,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"clientid": "c 1", "subscriptions": [{"topic": "h/+/#", "qos": 2}]})
        )
    );
    assert_eq!(request("DELETE", &sub, tok).await.0, 204);
    let (_, body) = request(
        "GET",
        &format!("{base}/v1/clients/c%201/subscriptions"),
        tok,
    )
    .await;
    assert_eq!(body["subscriptions"], json!([]));
    // Retained with a wildcard (URL-encoded: a bare + is a space in a query string).
    let (status, body) = request("GET", &format!("{base}/v1/retained?filter=h%2F%2B"), tok).await;
    assert_eq!(status, 200, "{body}");
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["topic"], "h/a");
    assert_eq!(msgs[0]["payload"], "one");
    assert_eq!(msgs[0]["retain"], true);
    assert_eq!(msgs[1]["payload_base64"], "wyg=");
    assert_eq!(body["truncated"], false);
    // Offline: both QoS 1 messages of h/a... only the non-retained one and the retained one
    // on h/a are in the map; limit 1 keeps the newest.
    let (status, body) = request(
        "GET",
        &format!("{base}/v1/offline?filter=h%2F%23&limit=1"),
        tok,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(body["messages"][0]["payload"], "two");
    assert_eq!(body["messages"][0]["time_us"], 1_700_000_000_200_000u64);
    assert_eq!(body["truncated"], true);
    // Errors name the parameter; nothing works without the token.
    let (status, body) = request(
        "GET",
        &format!("{base}/v1/retained?filter=a%2F%23%2Fb"),
        tok,
    )
    .await;
    assert_eq!((status, body["field"].clone()), (400, json!("filter")));
    let (status, body) = request(
        "GET",
        &format!("{base}/v1/offline?filter=a&since=yesterday"),
        tok,
    )
    .await;
    assert_eq!((status, body["field"].clone()), (400, json!("since")));
    let (status, body) = request("GET", &format!("{base}/v1/retained"), tok).await;
    assert_eq!((status, body["field"].clone()), (400, json!("filter")));
    let (status, _) = request(
        "PUT",
        &format!("{base}/v1/clients/c/subscriptions/a%23b"),
        tok,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        request("GET", &format!("{base}/v1/retained?filter=h%2F%2B"), None)
            .await
            .0,
        401
    );
    listeners.stop().await;
    assert_eq!(pipeline.shutdown().await.dropped(), 0);
    // Durable: the subscription removal and both retained messages.
    let fresh = fresh_reader(&cfg).await;
    assert!(fresh.subscriptions("c 1").await.unwrap().is_empty());
    assert_eq!(retained_topics(&fresh, "h/#").await, ["h/a", "h/b"]);
}

/// The CLI reads and writes the tables directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subs_and_lookups() {
    let backend = Backend::dynoxide().await;
    let cfg = backend.config();
    write_all(
        &backend,
        &cfg,
        &[
            publish(&hex_at(1_700_000_000_000_000, 1), 1, "k/1", b"r1", true),
            publish(&hex_at(1_700_000_000_000_001, 2), 1, "k/2/x", b"q", false),
        ],
    )
    .await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
            .args(args)
            .env("AWS_ENDPOINT_URL", backend.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("MQTT_DYNAMO_CONFIG")
            .output()
            .expect("the CLI runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Idempotent over what the service indexed already: k/1 in mqtt_retain; k/1 and k/2/x in
    // mqtt_topic_msg_map, with their first level k in each.
    let (code, out, err) = cli(&["tables", "build-index", "--segments", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("indexed mqtt_retain: 1 topics read, 0 skipped")
            && out.contains("2 entries put")
            && out.contains("indexed mqtt_topic_msg_map: 2 topics read, 0 skipped")
            && out.contains("3 entries put"),
        "{out}"
    );
    let (code, out, err) = cli(&["subs", "add", "cli1", "k/#", "--qos", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "stored cli1 k/# qos 1");
    let (code, out, err) = cli(&["lookup", "subs", "cli1"]);
    assert_eq!(code, Some(0), "{err}");
    let body: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(body["subscriptions"], json!([{"topic": "k/#", "qos": 1}]));
    let (code, out, err) = cli(&["lookup", "retained", "k/+"]);
    assert_eq!(code, Some(0), "{err}");
    let body: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(body["messages"][0]["topic"], "k/1");
    assert_eq!(body["messages"][0]["payload"], "r1");
    let (code, out, err) = cli(&["lookup", "offline", "k/#", "--limit", "5"]);
    assert_eq!(code, Some(0), "{err}");
    let body: Json = serde_json::from_str(&out).unwrap();
    let payloads: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["r1", "q"]);
    let (code, out, _) = cli(&["subs", "rm", "cli1", "k/#"]);
    assert_eq!((code, out.trim()), (Some(0), "removed cli1 k/#"));
    let (_, out, _) = cli(&["subs", "list", "cli1"]);
    let body: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(body["subscriptions"], json!([]));
    // Bad input: a clear error and a failing exit code.
    let (code, _, err) = cli(&["lookup", "retained", "a/#/b"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid topic filter"), "{err}");
}

// Subscribe on connect and `retained restore`, against the stand-in for EMQX 5's REST API in
// `support::emqx_api` (written from EMQX's published API documentation, not checked against a
// running EMQX here).

const API_KEY: &str = "mqtt-dynamo-key";
const API_SECRET: &str = "the-api-s3cret";

/// The service's TOML with `[emqx_api]` pointing at `url` (ExHook off: events come over HTTP or
/// the handle).
fn with_emqx_api(url: &str) -> Config {
    mqtt_dynamo::test_util::service::parse(&format!(
        "[emqx_api]\nurl = \"{url}\"\napi_key = \"{API_KEY}\"\n\
         api_secret = \"{API_SECRET}\"\nretry_for = \"20s\"\n"
    ))
}

/// `mqtt_dynamo_emqx_api_calls_total{call="subscribe_bulk", outcome}` as the service exports it.
async fn subscribe_calls(metrics: &str, outcome: &str) -> u64 {
    let name = mqtt_dynamo::telemetry::catalogue::EMQX_API_CALLS_TOTAL;
    counter_sum(
        metrics,
        name,
        &[("call", "subscribe_bulk"), ("outcome", outcome)],
    )
    .await
}

/// Waits (bounded: 30 s) until that counter reaches `n`.
async fn wait_subscribe_calls(metrics: &str, outcome: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = subscribe_calls(metrics, outcome).await;
        if seen >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscribe_bulk outcome={outcome}: {seen}, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stores `subs` as `clientid`'s rows of `mqtt_sub` (PutItem, as `subs add` does).
async fn store_subs(
    client: &aws_sdk_dynamodb::Client,
    cfg: &Config,
    clientid: &str,
    subs: &[(&str, i64)],
) {
    for (topic, qos) in subs {
        let Op { write, .. } = sub_op(clientid, topic, *qos);
        let Write::Put { item, .. } = write else {
            unreachable!()
        };
        client
            .put_item()
            .table_name(cfg.dynamodb.table_name(Table::Sub))
            .set_item(Some(mqtt_dynamo::storage::dynamo::to_attrs(&item)))
            .send()
            .await
            .unwrap();
    }
}

fn bulk_path(clientid: &str) -> String {
    format!(
        "/api/v5/clients/{}/subscribe/bulk",
        mqtt_dynamo::emqx_api::percent_encode(clientid)
    )
}

/// A connecting client is subscribed to its stored subscriptions with one bulk call (basic
/// auth, JSON, the client id percent-encoded); 404 is `client_gone` and not retried; 500s are
/// retried until a 200; 401 is `refused` and not retried; without `[emqx_api]`, or without
/// stored subscriptions, no call is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_connect_through_emqx_api() {
    use mqtt_dynamo::test_util::{SubmitExt as _, events, service};
    let emqx = support::emqx_api::EmqxStandIn::start(API_KEY, API_SECRET).await;

    // (d) A service without [emqx_api]: its connects make no call (checked at the end, after
    // everything below had the time to happen).
    let off_cfg = service::parse("[exhook]\nenabled = false\n");
    let off = service::start(&off_cfg).await;
    let off_client = service::dynamo_client(&off, &off_cfg).await;
    store_subs(&off_client, &off_cfg, "off1", &[("o/1", 1)]).await;
    emqx.connect("off1");
    off.handle()
        .accept_now(&events::connect("off1", "emqx@n1", 1))
        .unwrap();

    let cfg = with_emqx_api(&emqx.url);
    let svc = service::start(&cfg).await;
    let metrics = service::addr(svc.addrs().metrics);
    let http = service::addr(svc.addrs().http);
    let client = service::dynamo_client(&svc, &cfg).await;

    // (a) Two stored rows, the connect over the HTTP ingest (an EMQX rule row): one call with
    // both topics and their QoS. The client id needs percent-encoding.
    let id = "c/1 é";
    store_subs(&client, &cfg, id, &[("x/#", 2), ("a/b", 1)]).await;
    emqx.connect(id);
    let row = json!({"event": "client.connected", "node": "emqx@n1", "clientid": id}).to_string();
    let status = tokio::task::spawn_blocking(move || {
        support::http_post(&http, "/v1/events/emqx-rule", &row)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200);
    wait_subscribe_calls(&metrics, "ok", 1).await;
    let calls = emqx.calls(&bulk_path(id));
    assert_eq!(calls.len(), 1, "exactly one call: {calls:?}");
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/api/v5/clients/c%2F1%20%C3%A9/subscribe/bulk");
    assert_eq!(
        call.authorization.as_deref(),
        Some(support::emqx_api::basic(API_KEY, API_SECRET).as_str())
    );
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        call.body,
        json!([{"topic": "a/b", "qos": 1}, {"topic": "x/#", "qos": 2}])
    );
    assert_eq!(call.status, 200);

    // The same over ExHook v3, as EMQX calls it: one call with both topics.
    store_subs(&client, &cfg, "ex1", &[("e/1", 0), ("e/2", 2)]).await;
    emqx.connect("ex1");
    {
        use mqtt_dynamo::broker::exhook::v3;
        let exhook = service::addr(svc.addrs().exhook);
        let channel = tonic::transport::Channel::from_shared(format!("http://{exhook}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        v3::hook_provider_client::HookProviderClient::new(channel)
            .on_client_connected(v3::ClientConnectedRequest {
                clientinfo: Some(v3::ClientInfo {
                    node: "emqx@n1".into(),
                    clientid: "ex1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    wait_subscribe_calls(&metrics, "ok", 2).await;
    let calls = emqx.calls(&bulk_path("ex1"));
    assert_eq!(calls.len(), 1, "exactly one call: {calls:?}");
    assert_eq!(
        calls[0].body,
        json!([{"topic": "e/1", "qos": 0}, {"topic": "e/2", "qos": 2}])
    );

    // A client with nothing stored: no call (checked at the end).
    svc.handle()
        .accept_now(&events::connect("nosubs", "emqx@n1", 2))
        .unwrap();

    // (b) Not connected any more: 404, counted as client_gone, not retried.
    store_subs(&client, &cfg, "gone1", &[("g/1", 0)]).await;
    svc.handle()
        .accept_now(&events::connect("gone1", "emqx@n1", 3))
        .unwrap();
    wait_subscribe_calls(&metrics, "client_gone", 1).await;
    let calls = emqx.calls(&bulk_path("gone1"));
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [404],
        "{calls:?}"
    );

    // (c) 500 twice, then 200: retried with backoff and done.
    store_subs(&client, &cfg, "flaky1", &[("f/1", 1)]).await;
    emqx.connect("flaky1");
    emqx.script("/clients/flaky1/", 500);
    emqx.script("/clients/flaky1/", 500);
    svc.handle()
        .accept_now(&events::connect("flaky1", "emqx@n1", 4))
        .unwrap();
    wait_subscribe_calls(&metrics, "ok", 3).await;
    let calls = emqx.calls(&bulk_path("flaky1"));
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [500, 500, 200],
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.body == json!([{"topic": "f/1", "qos": 1}]))
    );

    // 401: the key refused; that call is given up, not retried.
    store_subs(&client, &cfg, "badkey1", &[("b/1", 1)]).await;
    emqx.connect("badkey1");
    emqx.script("/clients/badkey1/", 401);
    svc.handle()
        .accept_now(&events::connect("badkey1", "emqx@n1", 5))
        .unwrap();
    wait_subscribe_calls(&metrics, "refused", 1).await;
    let calls = emqx.calls(&bulk_path("badkey1"));
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [401],
        "{calls:?}"
    );

    // (d), and the client without stored subscriptions: no call at all. Every other call above
    // was answered by now; shutting both services down ends their work.
    assert_eq!(subscribe_calls(&metrics, "failed").await, 0);
    assert_eq!(subscribe_calls(&metrics, "dropped").await, 0);
    assert_eq!(svc.shutdown().await.dropped(), 0);
    assert_eq!(off.shutdown().await.dropped(), 0);
    assert!(emqx.calls("/clients/off1/").is_empty());
    assert!(emqx.calls("/clients/nosubs/").is_empty());
    assert_eq!(
        emqx.calls("/subscribe/bulk").len(),
        1 + 1 + 1 + 3 + 1,
        "HTTP, ExHook, 404, 500 500 200, 401"
    );
}

/// `retained restore` republishes every stored retained message matching the filter (retain,
/// stored QoS, payload base64) in batches of `--batch`, reports what EMQX refused and exits 1
/// for it; 0 when all were published. A refused API key stops it; no secret is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_restore_republishes_in_batches() {
    use base64::Engine;
    let emqx = support::emqx_api::EmqxStandIn::start(API_KEY, API_SECRET).await;
    emqx.refuse_topic("r/deny");
    let backend = Backend::dynoxide().await;
    let cfg = backend.config();
    let id = |n: u64| hex_at(1_700_000_000_000_000 + n, 1);
    let stored: [(&str, u8, &[u8]); 6] = [
        ("r/1", 1, b"text one"),
        ("r/2", 2, &[0xff, 0x00, 0xfe]),
        ("r/3", 0, b"{\"json\": true}"),
        ("r/4/deep", 1, &[0x80]),
        ("r/deny", 1, b"refused by EMQX"),
        ("other/x", 1, b"outside the filter"),
    ];
    let events: Vec<HookEvent> = stored
        .iter()
        .enumerate()
        .map(|(n, (topic, qos, payload))| publish(&id(n as u64), *qos, topic, payload, true))
        .collect();
    write_all(&backend, &cfg, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{API_SECRET}\n")).unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "wrong-s3cret").unwrap();
    let endpoint = backend.endpoint();
    let cli = |args: Vec<String>| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
                .args(&args)
                .env("AWS_ENDPOINT_URL", endpoint)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("RUST_LOG", "debug")
                .env_remove("MQTT_DYNAMO_CONFIG")
                .output()
                .expect("the CLI runs");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    };
    let args = |filter: &str, secret: &std::path::Path| -> Vec<String> {
        [
            "retained",
            "restore",
            "--emqx-api",
            &emqx.url,
            "--filter",
            filter,
            "--batch",
            "2",
            "--api-key",
            API_KEY,
            "--api-secret-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([secret.display().to_string()])
        .collect()
    };

    let (code, out, err) = cli(args("r/#", &secret_file)).await.unwrap();
    assert_eq!(code, Some(1), "one message refused: {out}{err}");
    let report: Json = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(
        (&report["published"], &report["refused"], &report["failed"]),
        (&json!(4), &json!(1), &json!(0)),
        "{report}"
    );
    assert_eq!(
        report["refused_messages"],
        json!([{"topic": "r/deny", "reason_code": 135, "message": "not_authorized"}])
    );
    let calls = emqx.calls("/api/v5/publish/bulk");
    assert_eq!(
        calls
            .iter()
            .map(|c| c.body.as_array().map_or(0, Vec::len))
            .collect::<Vec<_>>(),
        [2, 2, 1],
        "batches of --batch 2"
    );
    let auth = support::emqx_api::basic(API_KEY, API_SECRET);
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some(auth.as_str()))
    );
    let sent: Vec<&Json> = calls
        .iter()
        .flat_map(|c| c.body.as_array().unwrap())
        .collect();
    let mut topics: Vec<&str> = sent.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    topics.sort();
    assert_eq!(topics, ["r/1", "r/2", "r/3", "r/4/deep", "r/deny"]);
    for m in &sent {
        let (_, qos, payload) = stored.iter().find(|(t, _, _)| *t == m["topic"]).unwrap();
        assert_eq!(m["retain"], json!(true), "{m}");
        assert_eq!(m["qos"], json!(qos), "{m}");
        assert_eq!(m["payload_encoding"], "base64", "{m}");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(m["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(&decoded, payload, "{m}");
    }

    // Everything published: exit 0.
    let (code, out, err) = cli(args("r/+", &secret_file)).await.unwrap();
    assert_eq!(code, Some(1), "r/deny matches r/+ too: {out}{err}");
    let (code, out, err) = cli(args("r/4/#", &secret_file)).await.unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&report["published"], &report["refused"]),
        (&json!(1), &json!(0))
    );

    // A wrong secret: refused at the first batch, the rest not sent; nothing secret printed.
    let before = emqx.calls("/api/v5/publish/bulk").len();
    let (code, out, err) = cli(args("r/#", &wrong_file)).await.unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    let report: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&report["published"], &report["failed"]),
        (&json!(0), &json!(5))
    );
    assert!(
        err.contains("refused the API key") || out.contains("refused the API key"),
        "{out}{err}"
    );
    assert_eq!(emqx.calls("/api/v5/publish/bulk").len(), before + 1);
    let wrong_auth = support::emqx_api::basic(API_KEY, "wrong-s3cret");
    for secret in ["wrong-s3cret", API_SECRET, &auth[6..], &wrong_auth[6..]] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed: {out}{err}"
        );
    }
}
