//! Writers to compare mqtt-dynamo with, driven by the same recorded stream (`loadgen --ops-out`).
//!
//! - `seed`: the EMQX 4.x backend's behaviour: every action one synchronous request
//!   (the calls EMQX 4's DynamoDB backend made: PutItem, DeleteItem, UpdateItem SET / ADD / DELETE), a pool of
//!   8 connections. As in EMQX, one client's hooks run one after another (a client maps to one
//!   worker) and an ack never overtakes the publish it acknowledges.
//! - `bare`: the client-side ceiling: pre-built 25-item BatchWriteItems sent as fast as the SDK
//!   goes, no pipeline, no coalescing.
//!
//! Each prints one JSON object (and writes it to `--json`): events, seconds, requests, latency.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use base64::Engine;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};
use tokio::sync::{Notify, mpsc};

use mqtt_dynamo::config::{Config, Secret};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};

/// mimalloc instead of glibc malloc: under load glibc's allocator took about a third of the CPU
/// (perf; ARCHITECTURE.md, "Measuring").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "peer-writers", about = "Writers to compare mqtt-dynamo with")]
struct Cli {
    /// The DynamoDB endpoint (the simulator).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8000")]
    endpoint: String,
    /// Where to write the result as JSON.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One synchronous request per action, a pool of 8, as the 4.x backend.
    Seed {
        /// The ops stream (`loadgen --ops-out`).
        #[arg(long)]
        ops: PathBuf,
        #[arg(long, default_value_t = 8)]
        pool: usize,
        /// Stop taking events after this long (the events taken are a prefix of the stream).
        #[arg(long, default_value_t = 20.0)]
        max_seconds: f64,
    },
    /// Pre-built 25-item BatchWriteItems as fast as possible.
    Bare {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Item payload bytes (about the default mix's mqtt_msg item).
        #[arg(long, default_value_t = 300)]
        item_bytes: usize,
    },
}

fn attr(v: &Json) -> Result<AttributeValue, String> {
    let o = v.as_object().ok_or("a value is not an object")?;
    let (k, x) = o.iter().next().ok_or("an empty value")?;
    Ok(match (k.as_str(), x) {
        ("S", Json::String(s)) => AttributeValue::S(s.clone()),
        ("N", Json::String(n)) => AttributeValue::N(n.clone()),
        ("B", Json::String(b)) => AttributeValue::B(Blob::new(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| e.to_string())?,
        )),
        ("SS", Json::Array(items)) => AttributeValue::Ss(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        _ => return Err(format!("unsupported value {v}")),
    })
}

fn attrs(v: &Json) -> Result<HashMap<String, AttributeValue>, String> {
    v.as_object()
        .ok_or("not an object")?
        .iter()
        .map(|(k, v)| Ok((k.clone(), attr(v)?)))
        .collect()
}

/// One event's writes, with what orders it against other events.
struct Event {
    index: u64,
    client: String,
    /// The message this event acknowledges (wait for its publish).
    waits_for: Option<String>,
    /// The message this event publishes (QoS > 0).
    publishes: Option<String>,
    ops: Vec<Json>,
}

fn read_events(path: &PathBuf) -> Result<Vec<Event>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let v: Json = serde_json::from_str(&line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
        out.push(Event {
            index: i as u64,
            client: v["client"].as_str().unwrap_or_default().to_string(),
            waits_for: v["waits_for"].as_str().map(str::to_string),
            publishes: v["publishes"].as_str().map(str::to_string),
            ops: v["ops"].as_array().cloned().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Sends one op as the seed did: one request, awaited. Conditional failures are outcomes.
async fn send_op(client: &Client, prefix: &str, op: &Json) -> Result<(), String> {
    let table = format!("{prefix}{}", op["table"].as_str().unwrap_or_default());
    let e = |e: String| format!("{} on {table}: {e}", op["kind"]);
    match op["kind"].as_str().unwrap_or_default() {
        "put" => client
            .put_item()
            .table_name(&table)
            .set_item(Some(attrs(&op["item"])?))
            .send()
            .await
            .map(|_| ())
            .map_err(|x| e(dynamo::error_text(&x))),
        "delete" => client
            .delete_item()
            .table_name(&table)
            .set_key(Some(attrs(&op["key"])?))
            .send()
            .await
            .map(|_| ())
            .map_err(|x| e(dynamo::error_text(&x))),
        "update" => {
            let mut req = client
                .update_item()
                .table_name(&table)
                .set_key(Some(attrs(&op["key"])?));
            let mut parts = Vec::new();
            for (i, (name, value)) in op["set"].as_object().ok_or("set")?.iter().enumerate() {
                req = req
                    .expression_attribute_names(format!("#a{i}"), name)
                    .expression_attribute_values(format!(":a{i}"), attr(value)?);
                parts.push(format!("#a{i} = :a{i}"));
            }
            req = req.update_expression(format!("SET {}", parts.join(", ")));
            if let Some(g) = op["guard"].as_array() {
                req = req
                    .condition_expression("#g = :g")
                    .expression_attribute_names("#g", g[0].as_str().unwrap_or_default())
                    .expression_attribute_values(":g", attr(&g[1])?);
            }
            match req.send().await {
                Ok(_) => Ok(()),
                Err(x) if dynamo::error_text(&x).starts_with("ConditionalCheckFailed") => Ok(()),
                Err(x) => Err(e(dynamo::error_text(&x))),
            }
        }
        kind @ ("add" | "remove") => {
            let members: Vec<String> = op["members"]
                .as_array()
                .ok_or("members")?
                .iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect();
            let verb = if kind == "add" { "ADD" } else { "DELETE" };
            client
                .update_item()
                .table_name(&table)
                .set_key(Some(attrs(&op["key"])?))
                .update_expression(format!("{verb} #s :m"))
                .expression_attribute_names("#s", op["attr"].as_str().unwrap_or("MsgId"))
                .expression_attribute_values(":m", AttributeValue::Ss(members))
                .send()
                .await
                .map(|_| ())
                .map_err(|x| e(dynamo::error_text(&x)))
        }
        other => Err(format!("unknown op kind {other:?}")),
    }
}

/// Publishes answered, for the acks waiting on them.
#[derive(Default)]
struct Published {
    ids: Mutex<HashSet<String>>,
    changed: Notify,
}

async fn client_for(endpoint: &str) -> Client {
    let mut cfg = Config::default();
    cfg.dynamodb.endpoint_url = Some(endpoint.to_string());
    cfg.dynamodb.access_key_id = Some("peer".into());
    cfg.dynamodb.secret_access_key = Some(Secret::new("peer"));
    dynamo::client(&cfg.dynamodb, None, SdkRetries::Standard).await
}

async fn seed(
    endpoint: &str,
    ops: &PathBuf,
    pool: usize,
    max_seconds: f64,
) -> Result<Json, String> {
    let events = read_events(ops)?;
    let client = client_for(endpoint).await;
    let published = Arc::new(Published::default());
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..pool.max(1) {
        let (tx, mut rx) = mpsc::channel::<Event>(64);
        senders.push(tx);
        let client = client.clone();
        let published = Arc::clone(&published);
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            let mut requests = 0u64;
            let mut errors = Vec::new();
            while let Some(ev) = rx.recv().await {
                if let Some(id) = &ev.waits_for {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let notified = published.changed.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if published.ids.lock().is_ok_and(|mut s| s.remove(id)) {
                            break;
                        }
                        if tokio::time::timeout_at(deadline.into(), notified)
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                let t0 = Instant::now();
                for op in &ev.ops {
                    requests += 1;
                    if let Err(e) = send_op(&client, "", op).await
                        && errors.len() < 5
                    {
                        errors.push(format!("event {}: {e}", ev.index));
                    }
                }
                h.saturating_record(t0.elapsed().as_micros() as u64);
                if let Some(id) = ev.publishes {
                    if let Ok(mut s) = published.ids.lock() {
                        s.insert(id);
                    }
                    published.changed.notify_waiters();
                }
            }
            (h, requests, errors)
        }));
    }
    let start = Instant::now();
    let mut taken = 0u64;
    for ev in events {
        if start.elapsed().as_secs_f64() >= max_seconds {
            break;
        }
        let mut h = DefaultHasher::new();
        ev.client.hash(&mut h);
        let w = (h.finish() % senders.len() as u64) as usize;
        senders[w]
            .send(ev)
            .await
            .map_err(|_| "a worker stopped".to_string())?;
        taken += 1;
    }
    drop(senders);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let (mut requests, mut errors) = (0u64, Vec::new());
    for t in tasks {
        let (h, r, e) = t.await.map_err(|e| e.to_string())?;
        let _ = latency.add(&h);
        requests += r;
        errors.extend(e);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(json!({
        "writer": "seed", "events": taken, "seconds": seconds,
        "events_per_s": taken as f64 / seconds, "requests": requests,
        "p50_ms": latency.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": latency.value_at_quantile(0.99) as f64 / 1000.0,
        "errors": errors,
    }))
}

async fn bare(
    endpoint: &str,
    seconds: f64,
    concurrency: usize,
    item_bytes: usize,
) -> Result<Json, String> {
    let client = client_for(endpoint).await;
    let payload = "x".repeat(item_bytes);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency.max(1) {
        let client = client.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            let (mut items, mut requests, mut unprocessed) = (0u64, 0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Built outside the timed part: the ceiling is the client and the wire.
                let batch: Vec<WriteRequest> = (0..25)
                    .map(|i| {
                        let id = format!("bare-{worker}-{n}-{i}");
                        let item = HashMap::from([
                            ("msgid".to_string(), AttributeValue::S(id)),
                            ("payload".to_string(), AttributeValue::S(payload.clone())),
                        ]);
                        WriteRequest::builder()
                            .put_request(
                                PutRequest::builder()
                                    .set_item(Some(item))
                                    .build()
                                    .expect("item set"),
                            )
                            .build()
                    })
                    .collect();
                n += 1;
                let t0 = Instant::now();
                let r = client
                    .batch_write_item()
                    .request_items("mqtt_msg", batch)
                    .send()
                    .await;
                h.saturating_record(t0.elapsed().as_micros() as u64);
                requests += 1;
                if let Ok(out) = r {
                    let left = out
                        .unprocessed_items()
                        .and_then(|u| u.get("mqtt_msg"))
                        .map_or(0, |v| v.len() as u64);
                    unprocessed += left;
                    items += 25 - left;
                }
            }
            (h, items, requests, unprocessed)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let (mut items, mut requests, mut unprocessed) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (h, i, r, u) = t.await.map_err(|e| e.to_string())?;
        let _ = latency.add(&h);
        items += i;
        requests += r;
        unprocessed += u;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(json!({
        "writer": "bare_sdk", "seconds": seconds, "items": items, "requests": requests,
        "unprocessed": unprocessed, "items_per_s": items as f64 / seconds,
        "p99_ms": latency.value_at_quantile(0.99) as f64 / 1000.0,
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Seed {
                ops,
                pool,
                max_seconds,
            } => seed(&cli.endpoint, ops, *pool, *max_seconds).await,
            Command::Bare {
                seconds,
                concurrency,
                item_bytes,
            } => bare(&cli.endpoint, *seconds, *concurrency, *item_bytes).await,
        }
    });
    match result {
        Ok(v) => {
            println!("{v}");
            if let Some(path) = &cli.json
                && let Err(e) = std::fs::write(path, v.to_string())
            {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
