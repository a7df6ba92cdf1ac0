//! Lookup latency with 100,000 retained topics, side by side in one run:
//!
//! 1. retained lookups end to end on dynoxide in-process (Queries of the shared topic index +
//!    BatchGetItem), for filters matching 1, 10, 100 and 1,000 topics;
//! 2. the alternative without an index: a full parallel Scan of `mqtt_retain` filtered in the
//!    client, which is what wildcard lookups would cost otherwise;
//! 3. the seed's literal-key lookup of one topic, for reference.
//!
//! Topics are `site/<s>/floor/<f>/dev/<d>` (100 sites × 10 floors × 100 devices). Run with
//! `cargo bench --bench lookup`. Figures are printed as a table (and are measurements, not
//! assertions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use mqtt_dynamo::config::MatchMode;
use mqtt_dynamo::event::{HookEvent, Message};
use mqtt_dynamo::lookup::{ReadState, Reader};
use mqtt_dynamo::pipeline::Admit;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::embedded::EmbeddedDynamo;
use mqtt_dynamo::storage::item::Table;
use mqtt_dynamo::test_util::SubmitExt;
use mqtt_dynamo::test_util::guids;
use mqtt_dynamo::test_util::{Backend, backend};

const SITES: usize = 100;
const FLOORS: usize = 10;
const DEVICES: usize = 100;

fn topics() -> Vec<String> {
    let mut out = Vec::with_capacity(SITES * FLOORS * DEVICES);
    for s in 0..SITES {
        for f in 0..FLOORS {
            for d in 0..DEVICES {
                out.push(format!("site/{s:03}/floor/{f}/dev/{d:03}"));
            }
        }
    }
    out
}

/// (filter, expected matches)
const FILTERS: [(&str, usize); 5] = [
    ("site/042/floor/3/dev/007", 1),
    ("site/042/floor/+/dev/007", 10),
    ("site/042/floor/3/dev/+", 100),
    ("site/+/floor/3/dev/007", 100),
    ("site/042/#", 1000),
];

fn micros(h: &Histogram<u64>, q: f64) -> String {
    let us = h.value_at_quantile(q);
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

async fn end_to_end(all: &[String]) {
    let db = EmbeddedDynamo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let mut cfg = backend::config_at(db.endpoint());
    Backend::create_tables(&cfg).await;
    // Only the retained action: 100k retained messages.
    cfg.rules = Some(vec![mqtt_dynamo::config::RuleConfig {
        hook: "message.publish".into(),
        action: mqtt_dynamo::rules::Action::OnMessageRetain,
        topic: None,
    }]);
    let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
    let t0 = Instant::now();
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    let handle = pipeline.handle();
    for (i, topic) in all.iter().enumerate() {
        let e = HookEvent::MessagePublish {
            message: Message {
                node: "emqx@bench".into(),
                id: guids::hex_at(guids::EPOCH_MICROS + i as u64, 0),
                qos: 1,
                from: "bench".into(),
                topic: topic.clone(),
                payload: format!("{{\"temp\": {}}}", i % 40).into_bytes(),
                retain: true,
                timestamp_ms: 1_700_000_000_000,
                username: None,
                expiry_interval_s: None,
            },
        };
        handle
            .accept(&e, Admit::within(Duration::from_secs(30)))
            .unwrap();
    }
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.dropped(), 0);
    println!(
        "\nloaded {} retained messages into dynoxide in {:.1} s",
        all.len(),
        t0.elapsed().as_secs_f64()
    );
    let reader = Reader::new(
        client.clone(),
        &cfg.dynamodb,
        Arc::new(ReadState::new(false)),
        cfg.lookup.clone(),
    );
    println!(
        "\n{:<28} {:>8} {:>10} {:>10} {:>6}",
        "retained lookup (index)", "matches", "p50", "p99", "runs"
    );
    let mut p50_by_filter = Vec::new();
    for (filter, expected) in FILTERS {
        let runs = if expected >= 1000 { 20 } else { 100 };
        let mut h = Histogram::<u64>::new(3).unwrap();
        for _ in 0..runs {
            let t = Instant::now();
            let r = reader.retained(filter).await.unwrap();
            h.record(t.elapsed().as_micros() as u64).unwrap();
            assert_eq!(r.messages.len(), expected, "{filter}");
        }
        p50_by_filter.push(h.value_at_quantile(0.5));
        println!(
            "{filter:<28} {expected:>8} {:>10} {:>10} {runs:>6}",
            micros(&h, 0.5),
            micros(&h, 0.99)
        );
    }
    // Without an index: Scan everything, filter in the client.
    let table = cfg.dynamodb.table_name(Table::Retain);
    let mut h = Histogram::<u64>::new(3).unwrap();
    let filter = FILTERS[1].0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut found = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for segment in 0..4 {
            let client = client.clone();
            let table = table.clone();
            tasks.spawn(async move {
                let mut found = 0;
                let mut start = None;
                loop {
                    let page = client
                        .scan()
                        .table_name(&table)
                        .segment(segment)
                        .total_segments(4)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .unwrap();
                    for item in page.items() {
                        if let Some(aws_sdk_dynamodb::types::AttributeValue::S(t)) =
                            item.get("topic")
                            && mqtt_dynamo::topic::matches(filter, t)
                        {
                            found += 1;
                        }
                    }
                    start = page.last_evaluated_key().cloned();
                    if start.is_none() {
                        break found;
                    }
                }
            });
        }
        while let Some(n) = tasks.join_next().await {
            found += n.unwrap();
        }
        assert_eq!(found, FILTERS[1].1);
        h.record(t.elapsed().as_micros() as u64).unwrap();
    }
    println!(
        "{:<28} {:>8} {:>10} {:>10} {:>6}",
        format!("{filter} (full Scan)"),
        FILTERS[1].1,
        micros(&h, 0.5),
        micros(&h, 0.99),
        3
    );
    println!(
        "  → the index answers this filter {:.0}× faster than a Scan per lookup",
        h.value_at_quantile(0.5) as f64 / p50_by_filter[1].max(1) as f64
    );
    let mut literal = cfg.lookup.clone();
    literal.retained = MatchMode::Literal;
    let lit = Reader::new(
        client,
        &cfg.dynamodb,
        Arc::new(ReadState::new(false)),
        literal,
    );
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..100 {
        let t = Instant::now();
        let r = lit.retained(FILTERS[0].0).await.unwrap();
        h.record(t.elapsed().as_micros() as u64).unwrap();
        assert_eq!(r.messages.len(), 1);
    }
    println!(
        "{:<28} {:>8} {:>10} {:>10} {:>6}",
        "literal key (seed mode)",
        1,
        micros(&h, 0.5),
        micros(&h, 0.99),
        100
    );
    db.stop().await;
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let all = topics();
    if quick {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(end_to_end(&all));
}
