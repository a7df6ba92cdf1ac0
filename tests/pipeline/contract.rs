//! The storage contract item by item, on dynoxide and dynalite: the scripted sequence (event by
//! event and coalesced), the other id and time formats, refused events, and table creation.

use std::collections::{BTreeMap, BTreeSet};

use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::rules::{MsgIdFormat, TimeUnit};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::item::{Item, Key, Table, Value};
use mqtt_dynamo::storage::tables::{self, Capacity, Created};
use mqtt_dynamo::test_util::events::{
    ack, connect, disconnect, message, publish, subscribe, unsubscribe,
};
use mqtt_dynamo::test_util::guids::{msgid, msgid_b62};
use mqtt_dynamo::test_util::{Backend, RequestCounter, SubmitExt, item, normalized, s, scan_all};

use super::common::{index_items, run};

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
        subscribe("c2", "emqx@n1", "t/#", 1),
        publish(1, 0, "t/0", b"zero", false, 1_700_000_039_000),
        publish(2, 1, "t/1", b"hello", false, 1_700_000_040_123),
        publish(3, 2, "t/1", &[0xff, 0x00, 0x80], false, 1_700_000_041_000),
        publish(4, 1, "r/1", b"on", true, 1_700_000_042_000),
        publish(5, 0, "r/2", b"x", true, 1_700_000_043_000),
        publish(6, 1, "r/2", b"", true, 1_700_000_044_000),
        ack("c2", 2, "t/1"),
        ack("c3", 4, "r/1"),
        unsubscribe("c2", "emqx@n1", "t/1"),
    ]
}

/// What the scenario must leave under event-time order (the default), written out by hand from
/// the storage contract (README, "What is stored"): the seed's attributes, `event_ms` on
/// mqtt_client and mqtt_retain items, `connected_ms` on mqtt_client, and a tombstone for the
/// cleared retained message.
fn scenario_expected() -> BTreeMap<Key, Item> {
    let mut expected = seed_scenario_expected();
    let mut add = |table: Table, hash: &str, attrs: &[(&str, Value)]| {
        let item = expected.entry(Key::new(table, hash)).or_insert_with(|| {
            let (hash_name, _) = table.key_names();
            [(hash_name.to_string(), s(hash))].into()
        });
        for (name, value) in attrs {
            item.insert(name.to_string(), value.clone());
        }
    };
    add(
        Table::Client,
        "c1",
        &[
            ("event_ms", Value::N(1_700_000_010_000)),
            ("connected_ms", Value::N(1_700_000_010_000)),
        ],
    );
    add(
        Table::Client,
        "c2",
        &[
            ("event_ms", Value::N(1_700_000_030_000)),
            ("connected_ms", Value::N(1_700_000_020_000)),
        ],
    );
    add(
        Table::Retain,
        "r/1",
        &[("event_ms", Value::N(1_700_000_042_000))],
    );
    // The clear of r/2: a tombstone, expiring a day after the clear.
    add(
        Table::Retain,
        "r/2",
        &[
            ("event_ms", Value::N(1_700_000_044_000)),
            ("expires_at", Value::N(1_700_000_044 + 86_400)),
        ],
    );
    expected
}

/// What the scenario must leave with `event_time_order = false`: the seed's writes exactly.
fn seed_scenario_expected() -> BTreeMap<Key, Item> {
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
                ("msgid", s(&msgid_b62(3))),
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
                ("MsgId", Value::Ss(BTreeSet::from([msgid_b62(3)]))),
            ],
        ),
        item(
            Table::Retain,
            &[
                ("topic", s("r/1")),
                ("msgid", s(&msgid_b62(4))),
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
                ("msgid", s(&msgid_b62(4))),
            ],
        ),
    ]
    .into_iter()
    // The topic index: every topic a message id was added under (t/1, r/1) or a retained
    // message stored under (r/1, r/2), with their first levels; r/2's entry stays after its
    // clear, r/1's offline entry after its ack.
    .chain(index_items(&[
        ("msg", "r/"),
        ("msg", "t/"),
        ("msg|r", "r/1"),
        ("msg|t", "t/1"),
        ("retain", "r/"),
        ("retain|r", "r/1"),
        ("retain|r", "r/2"),
    ]))
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

/// The scripted sequence coalesced with `event_time_order = false`: the seed's items.
async fn scripted_sequence_in_seed_order(backend: Backend) {
    let mut cfg = backend.config();
    cfg.storage.event_time_order = false;
    let (stats, _) = run(&backend, &cfg, &scenario(), false).await;
    assert_eq!(stats.dropped(), 0);
    assert_eq!(stats.superseded, 0);
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(
        normalized(&got),
        seed_scenario_expected(),
        "on {}",
        backend.name()
    );
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
fn tables_setup_requests(_: &RequestCounter) -> u64 {
    0
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
                ("event_ms", Value::N(1_700_000_000_123)),
                ("connected_ms", Value::N(1_700_000_000_123)),
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
    .chain(index_items(&[("msg", "h/"), ("msg|h", "h/1")]))
    .collect();
    assert_eq!(got, expected, "on {}", backend.name());
    assert_eq!(msgid(7).len(), 32);
}

/// `tables create` is idempotent and waits for ACTIVE (dynalite keeps new tables CREATING).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_create_is_idempotent_on_dynalite() {
    let backend = Backend::dynalite().await;
    let mut cfg = backend.config();
    cfg.dynamodb.table_prefix = "idem_".into();
    let admin = dynamo::client(&cfg.dynamodb, None, SdkRetries::Standard).await;
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
    assert_eq!(lines.len(), 7);
    assert!(
        lines[6].starts_with("idem_mqtt_topic_index: ACTIVE keys [bucket HASH, topic RANGE]"),
        "{}",
        lines[6]
    );
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
        .accept_now(&HookEvent::MessagePublish { message: bad })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid event: message id \"zz\" is not a 32-digit hex GUID"
    );
    let big = publish(2, 1, "t", &vec![b'a'; 400 * 1024], false, 0);
    let err = h.accept_now(&big).unwrap_err();
    assert!(
        err.to_string()
            .contains("DynamoDB items are limited to 409600 bytes"),
        "{err}"
    );
    h.accept_now(&connect("ok", "emqx@n1", 1_000)).unwrap();
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.rejected_invalid, 1, "the bad message id");
    assert_eq!(stats.rejected_other, 1, "the item over 400 KB (too_large)");
    assert_eq!(stats.events_received, 1);
    let got = scan_all(&client, &cfg).await;
    assert_eq!(got.len(), 1);
}

mqtt_dynamo::on_dynoxide_and_dynalite! {
    /// The scripted sequence event by event.
    scripted_sequence;
    /// The scripted sequence in one pipeline run, free to coalesce.
    scripted_sequence_coalesced;
    /// The same without event-time order: the seed's items.
    scripted_sequence_in_seed_order;
    /// Hex message ids and millisecond times.
    hex_and_milliseconds;
}
