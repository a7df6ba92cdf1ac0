//! Faults DynamoDB answers with: server errors, resets, stalls, throttling and UnprocessedItems
//! from a proxy, refused credentials, and a poison write in a full batch.

use std::time::Duration;

use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::item::{Key, Table};
use mqtt_dynamo::storage::tables;
use mqtt_dynamo::test_util::events::{ack, connect, disconnect, publish};
use mqtt_dynamo::test_util::{Backend, SubmitExt, normalized, scan_all};

use crate::support;

use super::common::{expected, hot_key_events, run};

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
    handle.submit_all(&events);
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
    pipeline.handle().submit_all(&events);
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

    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(normalized(&got), expected(&events, &cfg));
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
    // Connects as the seed's puts, so that the 25 go in one BatchWriteItem.
    cfg.storage.event_time_order = false;
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
