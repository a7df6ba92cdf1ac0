//! The read side against real DynamoDB implementations on loopback (dynoxide in-process,
//! dynalite as a node process): wildcard retained lookups, offline fetch order and limits,
//! read-your-writes against writes still pending in the pipeline, pagination past 1 MB pages,
//! and the HTTP and CLI interfaces.

mod support;

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
use mqtt_dynamo::test_util::{Backend, SubmitExt};

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

/// A reader with no pipeline behind it: what a fresh process sees (indexes loaded by Scan).
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
    let reader = fresh_reader(&cfg).await;
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
    assert_eq!(reader.state().indexed_topics().0, 6, "{name}");
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
    reader.load_indexes().await.unwrap();
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

/// More than 1 MB of subscriptions (Query pages) and of retained messages (Scan pages for the
/// index, several BatchGetItems for the lookup).
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
