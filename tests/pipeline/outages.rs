//! DynamoDB unreachable: full in-memory queues refuse (typed, counted), and a steady rate through
//! a 60 s outage with the spool (nothing lost, the spool drains) and without it (refusals counted).

use std::time::Duration;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::pipeline::SubmitError;
use mqtt_dynamo::pipeline::{Admit, Pipeline};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::telemetry::stats::StatsSnapshot;
use mqtt_dynamo::test_util::events::{connect, publish};
use mqtt_dynamo::test_util::stalled::Stalled;
use mqtt_dynamo::test_util::{Backend, SubmitExt, normalized, scan_all};

use super::common::expected;

/// With DynamoDB unreachable (a listener that accepts and never answers) and tiny queues, `submit`
/// with `Admit::now` refuses with a typed `Full` error instead of blocking, `Admit::within` gives
/// up at its deadline, every refusal is counted, and the writes that were accepted are dropped only after
/// the retry budget, counted under `retries_exhausted` — nothing disappears silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_and_outage_drops_are_counted() {
    let stalled = Stalled::start().await;
    let cfg = stalled.tiny_config();
    let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let h = pipeline.handle();
    // Fill everything: ingest queue, router, shard inbox, pending table and the one flush in flight.
    let mut accepted = 0u64;
    let mut refused = None;
    for i in 0..200 {
        match h.accept(
            &connect(&format!("k{i}"), "emqx@n1", 1_000),
            Admit::within(Duration::from_millis(20)),
        ) {
            Ok(()) => accepted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the queues must fill");
    assert!(matches!(err, SubmitError::Full), "{err}");
    assert_eq!(err.to_string(), "ingest queue is full");
    // The non-blocking variant refuses at once.
    let err = h.accept_now(&connect("late", "emqx@n1", 1)).unwrap_err();
    assert!(matches!(err, SubmitError::Full), "{err}");
    let full = 2;
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.rejected_full, full);
    assert_eq!(stats.events_received, accepted);
    assert_eq!(stats.written(), 0);
    assert_eq!(stats.dropped_retries_exhausted, accepted, "{stats}");
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
    // Every topic is new, so the backlog of about 6,000 events drains as about 12,000
    // UpdateItems (a retained item and a MsgId set created under a condition each, which no
    // batch can carry): more than the default 25 s on a loaded 2-core machine.
    cfg.pipeline.shutdown_timeout = Duration::from_secs(60);
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
            match handle.accept(&e, Admit::within(Duration::from_millis(5))) {
                Ok(()) => accepted.push(e),
                Err(SubmitError::Full) => refused += 1,
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
