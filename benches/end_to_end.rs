//! Events per second through the whole write path in one process: `PipelineHandle::submit` (waiting for room)
//! (planning, the ingest queue) → router → shards (coalescing, batching) → the SDK over HTTP on
//! loopback → the `dynamo_sim` DynamoDB simulator, with no latency, no throttling and no faults —
//! the ceiling of this machine, not of DynamoDB.
//!
//! Each iteration starts a fresh simulator (the six tables pre-created) and a fresh pipeline from
//! `Config::default()`, submits 20,000 events of a seeded EMQX-like mix (publishes QoS 0/1/2, some
//! retained, acks of earlier QoS > 0 publishes, connects and disconnects), then shuts the pipeline
//! down, which writes everything accepted. The time is from the first submit to `shutdown()`
//! returning; setup and teardown are not timed. The simulator's request and item counts of the
//! first run are printed on stderr, to put the throughput in DynamoDB requests.
//!
//! Throughput is in events per second. Run with `cargo bench --bench end_to_end` (under a
//! minute: about 20 runs of a second each on a 2-core machine). The coalescer's savings depend on
//! timing (an ack cancels its publish's mqtt_msg put only if both are pending together), so the
//! request and item counts vary a little from run to run.

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use dynamo_sim::{Limits, SimConfig, Simulator, TableDef};

use mqtt_dynamo::config::{Config, Secret};
use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::pipeline::Admit;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::test_util::SubmitExt;

/// Events per iteration.
const EVENTS: usize = 20_000;
/// How long one submit may wait for room in the ingest queue (20,000 events fit in the default
/// queue, so it never waits).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[path = "support/mix.rs"]
mod mix;

use mix::*;

/// What one run measured, and what it cost in DynamoDB terms.
struct Run {
    elapsed: Duration,
    ops_planned: u64,
    requests: u64,
    items_written: u64,
}

fn run_once(rt: &tokio::runtime::Runtime, events: &[HookEvent]) -> Run {
    let (sim, pipeline) = rt.block_on(async {
        let sim = Simulator::start(
            SimConfig {
                limits: Limits {
                    key_wcu: None,
                    ..Limits::default()
                },
                tables: TableDef::project_tables(""),
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let mut cfg = Config::default();
        cfg.dynamodb.endpoint_url = Some(sim.endpoint());
        cfg.dynamodb.access_key_id = Some("bench".into());
        cfg.dynamodb.secret_access_key = Some(Secret::new("bench"));
        cfg.dynamodb.embedded = Some(false);
        let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
        (sim, Pipeline::from_config(&cfg, client).unwrap())
    });
    // Submitting blocks (on a full queue), so it runs on this thread, outside the runtime.
    let handle = pipeline.handle();
    let start = Instant::now();
    for e in events {
        handle.accept(e, Admit::within(SUBMIT_TIMEOUT)).unwrap();
    }
    let stats = rt.block_on(pipeline.shutdown());
    let elapsed = start.elapsed();
    assert_eq!(stats.dropped(), 0, "{stats}");
    let sim_stats = sim.stats();
    assert_eq!(sim_stats.throttled_requests + sim_stats.throttled_items, 0);
    rt.block_on(sim.shutdown());
    Run {
        elapsed,
        ops_planned: stats.ops_planned,
        requests: sim_stats.requests_total,
        items_written: sim_stats.items_written,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = mix(EVENTS);
    let mut reported = false;
    let mut group = c.benchmark_group("end_to_end");
    // One iteration is a whole run (about a second): few samples, each of the same size.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("pipeline_into_simulator", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let run = run_once(&rt, &events);
                if !reported {
                    reported = true;
                    let per_event = |n: u64| n as f64 / EVENTS as f64;
                    eprintln!(
                        "one run: {EVENTS} events, {} writes planned; simulator: {} requests \
                         ({:.3} per event), {} items written ({:.3} per event)",
                        run.ops_planned,
                        run.requests,
                        per_event(run.requests),
                        run.items_written,
                        per_event(run.items_written),
                    );
                }
                total += run.elapsed;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
