//! Hook RPC latency as EMQX sees it, with a fast DynamoDB and with every DynamoDB request slowed
//! to 200 ms, side by side in one run. The broker never waits on DynamoDB, so the two latency
//! distributions should be the same within noise.
//!
//! Setup per case: dynoxide in-process behind a proxy that delays every request by 0 ms or 200 ms
//! (the same path both times, so only the delay differs), the pipeline, and the ExHook server on
//! loopback; then 8 gRPC channels (EMQX's default
//! pool) send `OnMessagePublish` (QoS 1, 100 topics) as unary calls, each awaited before the next,
//! paced to a fixed total rate. Run with `cargo bench --bench hook_latency`.

#[path = "../tests/support/faults.rs"]
#[allow(dead_code)]
mod faults;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use mqtt_dynamo::broker::Listeners;
use mqtt_dynamo::broker::exhook::v3;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::embedded::EmbeddedDynamo;
use mqtt_dynamo::test_util::{Backend, backend};

const CHANNELS: usize = 8;
/// Seconds of calls per case.
const SECONDS: f64 = 8.0;

struct Case {
    latency: Histogram<u64>,
    durable: String,
    /// Calls that found the ingest queue full and waited.
    waited: u64,
}

async fn run_case(delay: Duration, rate: f64) -> Case {
    let calls = (rate * SECONDS) as u64;
    let db = EmbeddedDynamo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    // Both cases go through the same proxy, so the only difference is the delay.
    let proxy = faults::FaultProxy::start_with(db.endpoint(), faults::Mode::Delay(delay)).await;
    let mut cfg = backend::config_at(db.endpoint());
    Backend::create_tables(&cfg).await;
    cfg.dynamodb.endpoint_url = Some(proxy.endpoint());
    cfg.exhook.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.enabled = false;
    let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let listeners = Listeners::start(&cfg, pipeline.handle()).await.unwrap();
    let url = format!("http://{}", listeners.exhook_addr.unwrap());

    let start = Instant::now();
    let mut tasks = Vec::new();
    for ch in 0..CHANNELS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // EMQX's gRPC client sets nodelay; so must this one, or Nagle adds ~40 ms a call.
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap();
            let mut client = v3::hook_provider_client::HookProviderClient::new(channel);
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut n = ch as u64;
            while n < calls {
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let message = v3::Message {
                    node: "emqx@127.0.0.1".into(),
                    id: mqtt_dynamo::guid::to_hex(mqtt_dynamo::test_util::guids::nth(n)),
                    qos: 1,
                    r#from: format!("c{}", n % 1000),
                    topic: format!("bench/{}", n % 100),
                    payload: vec![b'x'; 200],
                    timestamp: 1_700_000_000_000 + n,
                    headers: Default::default(),
                };
                let t0 = Instant::now();
                client
                    .on_message_publish(v3::MessagePublishRequest {
                        message: Some(message),
                        meta: None,
                        props: vec![],
                        user_props: vec![],
                    })
                    .await
                    .unwrap();
                h.record(t0.elapsed().as_micros() as u64).unwrap();
                n += CHANNELS as u64;
            }
            h
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        latency.add(t.await.unwrap()).unwrap();
    }
    let waited = listeners
        .exhook_admission
        .as_ref()
        .map_or(0, |a| a.waited());
    listeners.stop().await;
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.dropped(), 0);
    let durable = stats
        .durable_latency
        .map(|h| {
            format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    db.stop().await;
    Case {
        latency,
        durable,
        waited,
    }
}

fn main() {
    // `cargo bench` passes harness flags such as --bench; nothing to configure.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64;
    // 300 calls/s leaves the 2-core machine idle enough to see the RPC path alone; at 1,000 the
    // emulator, the proxy, the pipeline, the server and the client compete for the CPU.
    for rate in [300.0, 1_000.0] {
        let fast = rt.block_on(run_case(Duration::ZERO, rate));
        let slow = rt.block_on(run_case(Duration::from_millis(200), rate));
        println!(
            "OnMessagePublish latency, {SECONDS} s at {rate} calls/s over {CHANNELS} channels (µs)"
        );
        println!(
            "{:<22} {:>8} {:>8} {:>8} {:>8} {:>7}   ingest→durable",
            "DynamoDB", "p50", "p99", "p99.9", "max", "waited"
        );
        for (name, c) in [("fast (0 ms added)", &fast), ("200 ms per request", &slow)] {
            println!(
                "{:<22} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7}   {}",
                name,
                q(&c.latency, 0.5),
                q(&c.latency, 0.99),
                q(&c.latency, 0.999),
                c.latency.max() as f64,
                c.waited,
                c.durable
            );
        }
        println!(
            "ratio slow/fast: p50 {:.2}, p99 {:.2}\n",
            q(&slow.latency, 0.5) / q(&fast.latency, 0.5),
            q(&slow.latency, 0.99) / q(&fast.latency, 0.99)
        );
    }
}
