//! Set changes and guarded disconnects by BatchExecuteStatement (PartiQL `UPDATE`s, up to 25 per
//! request) on dynoxide, whose PartiQL follows behaviour captured from AWS: the final tables equal
//! the sequential model and the UpdateItem path's; the statements DynamoDB answers
//! ConditionalCheckFailed are the no-ops they stand for, or (an ADD to a topic with no item)
//! go on as UpdateItems.

use std::time::Duration;

use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::test_util::events::{ack, disconnect, publish};
use mqtt_dynamo::test_util::{Backend, SubmitExt, normalized, scan_all};

use super::common::{expected, hot_key_events, run};

/// The same 4,000 hot-key events with statements on and off, side by side on one dynoxide: the
/// same final tables (the model's), and statements on takes fewer requests, UpdateItem only for
/// what BatchExecuteStatement diverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_write_what_update_items_write_in_fewer_requests() {
    let events = hot_key_events(4_000);
    let mut requests = Vec::new();
    for on in [true, false] {
        let backend = Backend::dynoxide().await;
        let mut cfg = backend.config();
        cfg.pipeline.max_batch_age = Duration::from_millis(20);
        cfg.pipeline.batch_statements = on;
        // 40 pipelines of 100 events each, one after the other, so that writes meet items the
        // earlier ones left (a stream submitted at once would mostly fold in memory).
        let (client, counter) = backend.prepare(&cfg).await;
        let mut totals = std::collections::HashMap::<&str, u64>::new();
        let (mut statement_requests, mut diverted_updates) = (0, 0);
        for chunk in events.chunks(100) {
            let pipeline = Pipeline::from_config(&cfg, client.clone()).expect("starts");
            pipeline.handle().submit_all(chunk);
            let stats = pipeline.shutdown().await;
            assert_eq!(stats.dropped(), 0, "{stats}");
            assert_eq!(stats.failed_requests, 0, "{stats}");
            for (name, n) in stats.statements {
                *totals.entry(name).or_default() += n;
            }
            statement_requests += stats.statement_requests;
            diverted_updates += stats.update_requests;
        }
        let outcome = |name: &str| totals.get(name).copied().unwrap_or(0);
        let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
        assert_eq!(normalized(&got), expected(&events, &cfg), "statements {on}");
        assert_eq!(counter.get("BatchExecuteStatement"), statement_requests);
        if on {
            assert!(statement_requests > 0);
            assert!(outcome("applied") > 0, "{totals:?}");
            // A topic's first ADD, a client's first connect and a retained topic's first write
            // find no item (a PartiQL UPDATE never creates one) at most once per key (a topic
            // whose set empties keeps its key-only item): each goes again as an INSERT, batched,
            // and applies, since nothing else writes these tables. No UpdateItem at all.
            let missing = outcome("missing");
            assert!((1..=150).contains(&missing), "{totals:?}");
            assert_eq!(outcome("inserted"), missing, "{totals:?}");
            assert_eq!(outcome("diverted"), 0, "{totals:?}");
            // Late disconnects from a node the client left fail their guard as statements.
            assert!(outcome("condition_failed") > 0, "{totals:?}");
            assert_eq!(outcome("throttled"), 0, "{totals:?}");
            assert_eq!(counter.get("UpdateItem"), 0, "first writes go as INSERTs");
            assert_eq!(diverted_updates, 0);
        } else {
            assert_eq!(statement_requests, 0);
        }
        requests.push(counter.total());
    }
    assert!(
        requests[0] * 2 < requests[1],
        "statements on: {} requests, off: {}",
        requests[0],
        requests[1]
    );
}

/// A disconnect of a client with no item (its guard cannot hold) and a DELETE of an id from a
/// topic with no item are ConditionalCheckFailed statements that create nothing; an ADD to a
/// missing topic creates it with a PartiQL INSERT, in a second BatchExecuteStatement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_conditions_create_nothing_and_a_first_add_creates_its_topic() {
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_millis(10);
    let events = [
        disconnect("ghost", "emqx@n1", 1_700_000_000_000),
        publish(7, 1, "fresh/topic", b"x", false, 1_700_000_000_001),
        ack("s1", 9, "empty/topic"),
    ];
    // One pipeline per event, drained before the next.
    let (stats, counter) = run(&backend, &cfg, &events, true).await;
    assert_eq!(stats.dropped(), 0, "{stats}");
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
    assert!(
        !got.keys().any(|k| k.hash == "ghost"
            || (k.table == mqtt_dynamo::storage::item::Table::TopicMsgMap
                && k.hash == "empty/topic")),
        "nothing created for a failed condition: {got:?}"
    );
    assert!(got.keys().any(|k| k.hash == "fresh/topic"));
    assert_eq!(
        counter.get("BatchExecuteStatement"),
        4,
        "one per drained event, and the first ADD's INSERT"
    );
    assert_eq!(counter.get("UpdateItem"), 0, "fresh/topic was INSERTed");
}

/// Statements under faults on dynamo-sim: a random fifth of statements answered ThrottlingError
/// (the others of each request applied), and a fifth of requests applied and then answered 500
/// (every write in them ambiguous): each throttled statement is resent, each ambiguous one
/// resent or sent on as UpdateItem, and the tables equal the model with nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_applied_then_failed_statements_end_as_the_model() {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        seed: Some(23),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.pipeline.max_batch_age = Duration::from_millis(5);
    cfg.pipeline.linger = mqtt_dynamo::config::LingerConfig::none();
    cfg.pipeline.ambiguous_hold = Duration::from_millis(20);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(2);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(50);
    let (client, _) = backend.prepare(&cfg).await;
    backend.set_faults(dynamo_sim::FaultConfig {
        throttle_rate: 0.2,
        apply_then_error_rate: 0.2,
        ..Default::default()
    });
    let events = hot_key_events(3_000);
    let mut totals = std::collections::HashMap::<&str, u64>::new();
    for chunk in events.chunks(300) {
        let pipeline = Pipeline::from_config(&cfg, client.clone()).expect("starts");
        pipeline.handle().submit_all(chunk);
        let stats = pipeline.shutdown().await;
        assert_eq!(stats.dropped(), 0, "{stats}");
        for (name, n) in stats.statements {
            *totals.entry(name).or_default() += n;
        }
    }
    backend.set_faults(dynamo_sim::FaultConfig::default());
    let sim = backend.sim_stats().expect("the simulator's stats");
    assert!(
        sim.requests_by_operation
            .get("BatchExecuteStatement")
            .is_some_and(|n| *n > 0),
        "{sim:?}"
    );
    assert!(sim.faults.applied_then_failed > 0, "{:?}", sim.faults);
    assert!(
        totals.get("throttled").is_some_and(|n| *n > 0),
        "{totals:?}"
    );
    assert!(totals.get("applied").is_some_and(|n| *n > 0), "{totals:?}");
    eprintln!("statements under faults: {totals:?}");
    // First writes found their items missing and went again as INSERTs; an INSERT whose item
    // was there by then (an earlier attempt applied and then answered 500) went as UpdateItem.
    let got_of = |name: &str| totals.get(name).copied().unwrap_or(0);
    assert!(got_of("inserted") > 0, "{totals:?}");
    assert!(got_of("inserted") <= got_of("missing"), "{totals:?}");
    let got = scan_all(&client, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
}

/// Costly keys, side by side with cost windows off and on: a topic whose `MsgId` set holds 3,000
/// ids (~70 write units per UpdateItem) gets an ADD and a DELETE every 4 ms for 1.2 s. With
/// windows off each 20 ms flush rewrites the whole item; with them on the key waits ~10 ms per
/// unit between writes, so its changes merge: at least 3× fewer write units for the same final
/// table (the model's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costly_key_waits_between_writes_and_costs_a_fraction_of_the_units() {
    let seed: Vec<mqtt_dynamo::event::HookEvent> = (0..3_000u16)
        .map(|n| publish(n, 1, "big", b"x", false, 1_700_000_000_000))
        .collect();
    let paced: Vec<mqtt_dynamo::event::HookEvent> = (0..150u16)
        .flat_map(|i| {
            [
                publish(3_000 + i, 1, "big", b"y", false, 1_700_000_100_000),
                ack("s1", i, "big"),
            ]
        })
        .collect();
    let mut units = Vec::new();
    for window in [Duration::ZERO, Duration::from_millis(10)] {
        let backend = Backend::simulator(dynamo_sim::SimConfig::default()).await;
        let mut cfg = backend.config();
        cfg.pipeline.max_batch_age = Duration::from_millis(20);
        cfg.pipeline.linger = mqtt_dynamo::config::LingerConfig::none();
        cfg.pipeline.cost_window = window;
        let (client, _) = backend.prepare(&cfg).await;
        let pipeline = Pipeline::from_config(&cfg, client.clone()).expect("starts");
        pipeline.handle().submit_all(&seed);
        assert_eq!(pipeline.shutdown().await.dropped(), 0);
        let pipeline = Pipeline::from_config(&cfg, client.clone()).expect("starts");
        let handle = pipeline.handle();
        let events = paced.clone();
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            for (i, e) in events.iter().enumerate() {
                handle.submit_all(std::slice::from_ref(e));
                let due = start + Duration::from_millis(4) * (i as u32 + 1);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
        })
        .await
        .expect("the pacer ends");
        let stats = pipeline.shutdown().await;
        assert_eq!(stats.dropped(), 0, "{stats}");
        let all: Vec<_> = seed.iter().chain(&paced).cloned().collect();
        let got = scan_all(&client, &cfg).await;
        assert_eq!(normalized(&got), expected(&all, &cfg), "window {window:?}");
        units.push(stats.consumed_wcu);
    }
    eprintln!(
        "write units of the paced phase: windows off {}, on {}",
        units[0], units[1]
    );
    assert!(
        units[1] * 3 < units[0],
        "windows off {} units, on {}",
        units[0],
        units[1]
    );
}

/// Retained QoS 1 publishes to topics seen for the first time, on dynamo-sim and dynoxide: the
/// retained item (a timed write) and the `MsgId` ADD of each topic are both statements that find
/// no item, so both go on as UpdateItems; the tables equal the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_writes_of_new_keys_by_statement_end_as_the_model() {
    for backend in [
        Backend::simulator(dynamo_sim::SimConfig::default()).await,
        Backend::dynoxide().await,
    ] {
        let mut cfg = backend.config();
        cfg.pipeline.max_batch_age = Duration::from_millis(5);
        let events: Vec<_> = (0..300u16)
            .map(|i| {
                publish(
                    i,
                    1,
                    &format!("new/{i}"),
                    b"x",
                    true,
                    1_700_000_000_000 + u64::from(i),
                )
            })
            .collect();
        let (stats, _) = run(&backend, &cfg, &events, false).await;
        assert_eq!(stats.dropped(), 0, "{stats}");
        let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
        assert_eq!(
            normalized(&got),
            expected(&events, &cfg),
            "on {}: {stats}",
            backend.name()
        );
    }
}

/// A connect and its disconnect within one flush window fold into one write with a fallback:
/// both on the connect's condition, else the disconnect alone. Against an item another instance
/// stamped between the two (online on the same node, newer than the connect, older than the
/// disconnect), the connect loses and the disconnect still lands; against an empty table both
/// land in one write; on dynoxide and dynamo-sim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folded_connect_and_disconnect_falls_back_to_the_disconnect_when_the_connect_loses() {
    use mqtt_dynamo::storage::item::{Key, Table, Value};
    use mqtt_dynamo::test_util::events::connect;
    for backend in [
        Backend::dynoxide().await,
        Backend::simulator(dynamo_sim::SimConfig::default()).await,
    ] {
        let mut cfg = backend.config();
        cfg.pipeline.max_batch_age = Duration::from_millis(50);
        let (client, _) = backend.prepare(&cfg).await;
        // Written by another instance: online on n1, connected at 1.5 s.
        let newer = connect("stamped", "emqx@n1", 1_700_000_001_500);
        let pipeline = Pipeline::from_config(&cfg, client.clone()).expect("starts");
        pipeline.handle().submit_all(&[newer]);
        pipeline.shutdown().await;
        let events = [
            connect("stamped", "emqx@n1", 1_700_000_001_000),
            disconnect("stamped", "emqx@n1", 1_700_000_002_000),
            connect("fresh", "emqx@n1", 1_700_000_001_000),
            disconnect("fresh", "emqx@n1", 1_700_000_002_000),
        ];
        let pipeline = Pipeline::from_config(&cfg, client.clone()).expect("starts");
        pipeline.handle().submit_all(&events);
        let stats = pipeline.shutdown().await;
        assert_eq!(stats.dropped(), 0, "{stats}");
        assert_eq!(stats.coalesced, 2, "each pair folded: {stats}");
        assert_eq!(stats.superseded, 1, "the stale connect: {stats}");
        let got = scan_all(&client, &cfg).await;
        let get = |id: &str, attr: &str| got[&Key::new(Table::Client, id)].get(attr).cloned();
        for id in ["stamped", "fresh"] {
            assert_eq!(get(id, "connect_state"), Some(Value::N(0)), "{id}");
            assert_eq!(
                get(id, "event_ms"),
                Some(Value::N(1_700_000_002_000)),
                "{id}"
            );
        }
        // The stale connect left the other instance's connect time; the fresh pair wrote its own.
        assert_eq!(
            get("stamped", "connected_ms"),
            Some(Value::N(1_700_000_001_500))
        );
        assert_eq!(
            get("fresh", "connected_ms"),
            Some(Value::N(1_700_000_001_000))
        );
        let mut model = expected(&events, &cfg);
        model.retain(|k, _| k.hash == "fresh");
        let mut fresh = normalized(&got);
        fresh.retain(|k, _| k.hash == "fresh");
        assert_eq!(fresh, model, "on {}", backend.name());
    }
}
