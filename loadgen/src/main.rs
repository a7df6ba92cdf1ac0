//! loadgen: drives mqtt-dynamo with a seeded, EMQX-like workload and reports what it cost.
//!
//! By default it starts the embedded DynamoDB (dynoxide, in memory) on an ephemeral loopback port,
//! creates the six tables, runs the pipeline in-process (the same code `mqtt-dynamo serve` runs),
//! submits the workload as fast as the pipeline accepts it (or at `--rate`), drains, and then
//! verifies that the tables hold exactly what the workload model says they must: nothing lost,
//! nothing resurrected. The report is printed as a table and written as JSON.

mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::dynamo::{self, SdkRetries};
use mqtt_dynamo::embedded::EmbeddedDynamo;
use mqtt_dynamo::item::{Item, Key, Table};
use mqtt_dynamo::model::TableModel;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::tables::{self, Capacity};

use workload::{Workload, WorkloadConfig};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Drive mqtt-dynamo with a seeded MQTT hook workload and report"
)]
struct Args {
    /// Events to generate.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Target events per second; 0 submits as fast as the pipeline accepts (closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Workload seed; the same seed gives the same event stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 2_000)]
    clients: usize,
    #[arg(long, default_value_t = 500)]
    topics: usize,
    /// An external DynamoDB endpoint (its tables are created if missing); default: embedded.
    #[arg(long)]
    endpoint: Option<String>,
    /// mqtt-dynamo configuration file for the pipeline settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/loadgen/report.json")]
    json: PathBuf,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

fn quantiles_ms(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0})
}

fn fmt_q(h: &Histogram<u64>, unit_div: f64, unit: &str) -> String {
    let v = |q: f64| h.value_at_quantile(q) as f64 / unit_div;
    format!(
        "p50 {:.2} {unit}, p99 {:.2} {unit}, p99.9 {:.2} {unit}",
        v(0.5),
        v(0.99),
        v(0.999)
    )
}

/// Scans every table (all pages) into a model for comparison.
async fn read_tables(
    client: &aws_sdk_dynamodb::Client,
    cfg: &Config,
) -> Result<TableModel, String> {
    let mut model = TableModel::new();
    for table in Table::ALL {
        let mut start = None;
        loop {
            let page = client
                .scan()
                .table_name(cfg.dynamodb.table_name(table))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "scan {table}: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                    )
                })?;
            for attrs in page.items() {
                let (key, item) =
                    dynamo::from_attrs(table, attrs).map_err(|e| format!("{table}: {e}"))?;
                model.insert(key, item);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    Ok(model)
}

/// Differences between what the tables hold and what they must hold.
struct Verification {
    expected: usize,
    missing: usize,
    unexpected: usize,
    different: usize,
    examples: Vec<String>,
}

fn verify(expected: &BTreeMap<Key, Item>, got: &BTreeMap<Key, Item>) -> Verification {
    let mut v = Verification {
        expected: expected.len(),
        missing: 0,
        unexpected: 0,
        different: 0,
        examples: Vec::new(),
    };
    for (k, item) in expected {
        match got.get(k) {
            None => {
                v.missing += 1;
                if v.examples.len() < 5 {
                    v.examples.push(format!("missing {} {}", k.table, k.hash));
                }
            }
            Some(g) if g != item => {
                v.different += 1;
                if v.examples.len() < 5 {
                    v.examples.push(format!("different {} {}", k.table, k.hash));
                }
            }
            Some(_) => {}
        }
    }
    for k in got.keys() {
        if !expected.contains_key(k) {
            v.unexpected += 1;
            if v.examples.len() < 5 {
                v.examples
                    .push(format!("unexpected {} {}", k.table, k.hash));
            }
        }
    }
    v
}

async fn run(args: Args) -> Result<bool, String> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::from_env(),
    };
    let embedded = match &args.endpoint {
        Some(url) => {
            cfg.dynamodb.endpoint_url = Some(url.clone());
            None
        }
        None => {
            let server = EmbeddedDynamo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(|e| e.to_string())?;
            Some(server)
        }
    };
    let endpoint = embedded.as_ref().map(EmbeddedDynamo::endpoint);
    let where_ = endpoint
        .clone()
        .map(|e| format!("embedded DynamoDB (dynoxide, in memory) at {e}"))
        .unwrap_or_else(|| {
            format!(
                "DynamoDB at {}",
                cfg.dynamodb.endpoint_url.clone().unwrap_or_default()
            )
        });
    let admin = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand)
        .await
        .map_err(|e| e.to_string())?;
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Disabled).await;
    let rules = cfg.rule_set().map_err(|e| e.to_string())?;
    let format = cfg.storage.format();

    let wl_cfg = WorkloadConfig {
        clients: args.clients,
        topics: args.topics,
        seed: args.seed,
        ..WorkloadConfig::default()
    };
    let wl_cfg_again = wl_cfg.clone();
    let pipeline = Pipeline::from_config(&cfg, client).map_err(|e| e.to_string())?;
    let handle = pipeline.handle();

    println!(
        "mqtt-dynamo loadgen: {} events, seed {}, {}",
        args.events, args.seed, where_
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.events)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} events  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // Submitting blocks (up to 4 s per event, below EMQX's 5 s hook timeout) when the pipeline is
    // full, so run it on a blocking thread.
    let rate = args.rate;
    let events = args.events;
    let bar2 = bar.clone();
    let submitter = tokio::task::spawn_blocking(move || {
        let mut workload = Workload::new(wl_cfg);
        let mut refused_at = Vec::new();
        let mut submit_latency =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        let mut refused = 0u64;
        let start = Instant::now();
        for i in 0..events {
            if rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let event = workload.next_event();
            let t0 = Instant::now();
            match handle.submit_timeout(&event, Duration::from_secs(4)) {
                Ok(()) => submit_latency.saturating_record(t0.elapsed().as_nanos() as u64),
                Err(_) => {
                    refused += 1;
                    refused_at.push(i);
                }
            }
            if i % 1024 == 0 {
                let (depth, cap) = handle.queue_depth();
                bar2.set_position(i);
                bar2.set_message(format!("queue {depth}/{cap}  refused {refused}"));
            }
        }
        (refused_at, submit_latency, refused, start.elapsed())
    });
    let (refused_at, submit_latency, refused, submit_time) =
        submitter.await.map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let run_start = Instant::now() - submit_time;
    let stats = pipeline.shutdown().await;
    let total_time = run_start.elapsed();

    // The expected final state: the same stream (same seed) applied sequentially, less what was
    // refused at the door.
    let mut model = TableModel::new();
    let mut workload = Workload::new(wl_cfg_again);
    let mut refused_iter = refused_at.iter().peekable();
    for i in 0..args.events {
        let event = workload.next_event();
        if refused_iter.peek() == Some(&&i) {
            refused_iter.next();
            continue;
        }
        for op in rules.plan(&event, &format).map_err(|e| e.to_string())? {
            model.apply(&op);
        }
    }
    let verify_client =
        dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let got = read_tables(&verify_client, &cfg).await?;
    let v = verify(&model.normalized(), &got.normalized());
    let ok = v.missing == 0 && v.unexpected == 0 && v.different == 0 && refused == 0;

    let per_k = |n: u64| n as f64 * 1000.0 / args.events.max(1) as f64;
    let naive = stats.ops_planned;
    println!();
    println!(
        "events                 {} accepted, {} refused",
        stats.events_received, refused
    );
    println!(
        "throughput             {:.0} events/s submitted, {:.0} events/s durable (incl. drain, {:.2} s)",
        args.events as f64 / submit_time.as_secs_f64(),
        args.events as f64 / total_time.as_secs_f64(),
        total_time.as_secs_f64()
    );
    println!(
        "hook submit latency    {}",
        fmt_q(&submit_latency, 1000.0, "µs")
    );
    if let Some(h) = stats.durable_latency.as_ref().filter(|h| !h.is_empty()) {
        println!("ingest→durable         {}", fmt_q(h, 1000.0, "ms"));
    }
    println!(
        "DynamoDB requests      {} ({:.1} per 1,000 events); one request per write, as the 4.x backend sends: {} ({:.1} per 1,000) → {:.1}× fewer",
        stats.requests(),
        per_k(stats.requests()),
        naive,
        per_k(naive),
        naive as f64 / stats.requests().max(1) as f64
    );
    println!(
        "write units            {} ({:.1} per 1,000 events)",
        stats.consumed_wcu,
        per_k(stats.consumed_wcu)
    );
    println!("\npipeline counters\n{stats}");
    println!(
        "verification           {}: {} items expected, {} missing, {} unexpected, {} different",
        if ok { "PASS" } else { "FAIL" },
        v.expected,
        v.missing,
        v.unexpected,
        v.different
    );
    for e in &v.examples {
        println!("  {e}");
    }

    let report = json!({
        "events": args.events,
        "seed": args.seed,
        "endpoint": where_,
        "accepted": stats.events_received,
        "refused": refused,
        "submit_seconds": submit_time.as_secs_f64(),
        "total_seconds": total_time.as_secs_f64(),
        "events_per_s": args.events as f64 / total_time.as_secs_f64(),
        "submit_latency_us": {
            "p50": submit_latency.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": submit_latency.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": submit_latency.value_at_quantile(0.999) as f64 / 1000.0,
        },
        "ingest_to_durable_ms": stats.durable_latency.as_ref().map(quantiles_ms),
        "requests": stats.requests(),
        "requests_per_1k_events": per_k(stats.requests()),
        "naive_requests_per_1k_events": per_k(naive),
        "wru_per_1k_events": per_k(stats.consumed_wcu),
        "coalesced": stats.coalesced,
        "cancelled": stats.cancelled,
        "throttles": stats.throttles,
        "retries": stats.retries,
        "dropped": stats.dropped(),
        "verified": ok,
        "verification": {"expected": v.expected, "missing": v.missing, "unexpected": v.unexpected, "different": v.different},
    });
    if let Some(dir) = args.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", args.json.display()))?;
    println!("report written to {}", args.json.display());
    if let Some(server) = embedded {
        server.stop().await;
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dynoxide=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
