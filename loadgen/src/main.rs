//! loadgen: drives mqtt-dynamo with a seeded, EMQX-like workload and reports what it cost.
//!
//! Two ways in:
//!
//! - `--via exhook` (default): starts `mqtt-dynamo serve` as its own process (embedded DynamoDB
//!   on 127.0.0.1:8000, or `--endpoint`), and calls it the way EMQX does — ExHook v3 over 8
//!   HTTP/2 channels, one client's calls on one channel and in order, retained publishes also
//!   posted to the HTTP ingest as EMQX's rule would. Reports hook RPC latency, the service's
//!   counters (from its `/metrics`) and its memory.
//! - `--via inprocess`: the pipeline in this process, fed through `PipelineHandle::submit`.
//!
//! Either way it runs for `--duration` or `--events`, closed loop or at `--rate`, then waits
//! for the drain and verifies that the tables hold exactly what the workload model says they
//! must: nothing lost, nothing resurrected. The report is a table and JSON (`--json`). A stream
//! can be recorded (`--record`) and replayed (`--replay`), and turned into the writes other
//! writers send (`--ops-out`, for the peer comparison).
//!
//! Layout: [`workload`] generates events, [`stream`] reads and writes them, [`exhook`] is the
//! EMQX-like client, [`service`] runs and watches `mqtt-dynamo serve`, [`report`] verifies.

mod exhook;
mod report;
mod service;
mod stream;
mod workload;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::event::HookEvent;
use mqtt_dynamo::pipeline::Admit;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::rules::{RuleSet, StorageFormat};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::embedded::EmbeddedDynamo;
use mqtt_dynamo::storage::item::{Item, Key, Table, item_size};
use mqtt_dynamo::storage::model::TableModel;
use mqtt_dynamo::storage::tables::{self, Capacity};
use mqtt_dynamo::telemetry::catalogue;
use mqtt_dynamo::test_util::SubmitExt;

use report::{Verification, fmt_q, quantiles_ms};
use workload::{Workload, WorkloadConfig};

/// mimalloc instead of glibc malloc: under load glibc's allocator took about a third of the CPU
/// (perf; ARCHITECTURE.md, "Measuring").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// ExHook gRPC to a spawned `mqtt-dynamo serve`, as EMQX calls it.
    Exhook,
    /// The pipeline in this process (`PipelineHandle::submit`).
    Inprocess,
}

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Drive mqtt-dynamo with a seeded MQTT hook workload, verify the tables, report"
)]
struct Args {
    #[arg(long, value_enum, default_value = "exhook")]
    via: Via,
    /// Stop after this many events.
    #[arg(long)]
    events: Option<u64>,
    /// Stop after this long (default 30s when --events is not given).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Target events per second (open loop); 0 sends as fast as the service answers (closed).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Workload seed; the same seed gives the same event stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 2_000)]
    clients: usize,
    #[arg(long, default_value_t = 500)]
    topics: usize,
    /// The broker's clock at the first generated event, epoch ms (a run after another on the same
    /// tables starts later, so its events are newer under event-time order).
    #[arg(long, default_value_t = 1_700_000_000_000)]
    clock_start_ms: u64,
    /// What the generated stream is made of.
    #[arg(long, value_enum, default_value = "emqx")]
    mix: workload::Mix,
    /// An external DynamoDB endpoint (its tables are created if missing); default: embedded.
    #[arg(long)]
    endpoint: Option<String>,
    /// In-process mode: mqtt-dynamo configuration file for the pipeline settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// ExHook mode: TOML appended to the service's generated configuration (e.g. `[pipeline]`).
    #[arg(long)]
    service_extra: Option<PathBuf>,
    /// ExHook mode: the `mqtt-dynamo` binary (default: next to this one).
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// ExHook mode: sequential workers per channel (a client always maps to the same one).
    #[arg(long, default_value_t = 4)]
    workers_per_channel: usize,
    /// ExHook mode: listen on free ports instead of 8000/9000/8080/8095.
    #[arg(long)]
    ephemeral_ports: bool,
    /// ExHook mode: keep the service (and its DynamoDB) running after the report until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// ExHook mode: run this many `serve` instances on the one DynamoDB `--endpoint` names, as
    /// one instance per EMQX node; each client's presence goes to one instance and everything
    /// naming a topic to that topic's (by hash), and the report adds them up.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Write the event stream here (JSON lines).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Read the event stream from here instead of generating it.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Only write the writes each event makes (JSON lines, for other writers) and exit.
    #[arg(long)]
    ops_out: Option<PathBuf>,
    /// Only check the tables at --endpoint against the first --events events of the stream
    /// (written by another writer) and exit.
    #[arg(long)]
    verify_only: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/loadgen/report.json")]
    json: PathBuf,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

impl Args {
    /// (event limit, time limit)
    fn limits(&self) -> (u64, Option<Duration>) {
        match (self.events, self.duration) {
            (Some(n), d) => (n, d),
            (None, Some(d)) => (u64::MAX, Some(d)),
            (None, None) => (u64::MAX, Some(Duration::from_secs(30))),
        }
    }

    fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            mix: self.mix,
            clients: self.clients,
            topics: self.topics,
            seed: self.seed,
            start_ms: self.clock_start_ms,
            ..WorkloadConfig::default()
        }
    }
}

/// Where events come from: the generator or a recording.
enum Source {
    Gen(Box<Workload>),
    Replay(stream::Replay),
}

impl Source {
    fn open(args: &Args) -> Result<Source, String> {
        Ok(match &args.replay {
            Some(path) => Source::Replay(stream::Replay::open(path)?),
            None => Source::Gen(Box::new(Workload::new(args.workload()))),
        })
    }

    fn next(&mut self) -> Option<Result<HookEvent, String>> {
        match self {
            Source::Gen(w) => Some(Ok(w.next_event())),
            Source::Replay(r) => r.next_event(),
        }
    }
}

/// Events from a [`Source`] up to the run's limits, each written to the `--record` file (if one
/// is named) as it is taken.
struct Feed {
    source: Source,
    recorder: Option<stream::Recorder>,
    /// How many events at most.
    limit: u64,
    /// For how long at most.
    time_limit: Option<Duration>,
}

impl Feed {
    fn open(args: &Args) -> Result<Feed, String> {
        let (limit, time_limit) = args.limits();
        Ok(Feed {
            limit,
            time_limit,
            source: Source::open(args)?,
            recorder: args
                .record
                .as_deref()
                .map(stream::Recorder::create)
                .transpose()?,
        })
    }

    /// The next event, recorded; `None` at the end of the source, once `sent` is the limit, or
    /// once the time limit has passed since `start`.
    fn next(&mut self, sent: u64, start: Instant) -> Result<Option<HookEvent>, String> {
        if sent >= self.limit || self.time_limit.is_some_and(|d| start.elapsed() >= d) {
            return Ok(None);
        }
        let Some(event) = self.source.next() else {
            return Ok(None);
        };
        let event = event?;
        if let Some(r) = self.recorder.as_mut() {
            r.write(&event)?;
        }
        Ok(Some(event))
    }

    /// Flushes the recording, if any.
    fn finish(self) -> Result<(), String> {
        self.recorder.map_or(Ok(()), stream::Recorder::finish)
    }
}

/// The writes the service makes for `event` when it arrives over ExHook, which carries no
/// retain flag (so a retained publish is stored as a plain one), plus the retained actions the
/// EMQX rule posts to the HTTP ingest.
fn exhook_plan(
    event: &HookEvent,
    rules: &RuleSet,
    format: &StorageFormat,
) -> Result<Vec<mqtt_dynamo::storage::item::Op>, String> {
    let e = |e: mqtt_dynamo::rules::EventError| e.to_string();
    match event {
        HookEvent::MessagePublish { message } if message.retain => {
            let mut plain = message.clone();
            plain.retain = false;
            let mut ops = rules
                .plan(&HookEvent::MessagePublish { message: plain }, format)
                .map_err(e)?;
            ops.extend(
                rules
                    .plan_scoped(event, format, mqtt_dynamo::rules::ActionScope::RetainedOnly)
                    .map_err(e)?,
            );
            Ok(ops)
        }
        _ => rules.plan(event, format).map_err(e),
    }
}

/// The tables' expected contents: the first `n` events of the stream applied in order (as
/// they arrive over ExHook when `exhook`), less the refused ones; and the DynamoDB requests
/// they take at one request per write (what the 4.x backend sends).
fn expected_model(
    args: &Args,
    n: u64,
    refused: &HashSet<u64>,
    rules: &RuleSet,
    format: &StorageFormat,
) -> Result<(TableModel, SeedCost), String> {
    let exhook = args.via == Via::Exhook;
    let mut model = TableModel::new();
    // The seed's cost is of the seed's writes: in arrival order, without event time.
    let seed_format = StorageFormat {
        event_time: false,
        ..format.clone()
    };
    let mut seed_model = TableModel::new();
    let (mut requests, mut units) = (0u64, 0u64);
    let mut source = Source::open(args)?;
    for i in 0..n {
        let Some(event) = source.next() else { break };
        let event = event?;
        if refused.contains(&i) {
            continue;
        }
        let plan = |format: &StorageFormat| {
            if exhook {
                exhook_plan(&event, rules, format)
            } else {
                rules.plan(&event, format).map_err(|e| e.to_string())
            }
        };
        let ops = plan(format)?;
        // The shared topic index's entries the service writes beside them (the seed's backend
        // has no index: not counted in its cost).
        for op in mqtt_dynamo::storage::topic_index::index_ops(&ops) {
            model.apply(&op);
        }
        for op in ops {
            model.apply(&op);
        }
        for op in plan(&seed_format)? {
            let before = seed_model.get(&op.key).map_or(0, item_size);
            seed_model.apply(&op);
            let after = seed_model.get(&op.key).map_or(0, item_size);
            let count = op.write.request_count() as u64;
            requests += count;
            units += count * seed_write_units(before, after);
        }
    }
    Ok((model, SeedCost { requests, units }))
}

/// What the seed's backend (EMQX 4.x: one synchronous request per write, `ecpool` workers over
/// erlcloud) spends on a stream: the requests, and the write units DynamoDB charges them.
#[derive(Debug, Clone, Copy, Default)]
struct SeedCost {
    requests: u64,
    units: u64,
}

/// DynamoDB's charge for one write request of an item `before` bytes before and `after` bytes
/// after it: one unit per started KB of the larger (PutItem and UpdateItem are charged for the
/// larger of the old and the new item, DeleteItem for the item deleted), at least one.
fn seed_write_units(before: usize, after: usize) -> u64 {
    (before.max(after).div_ceil(1024) as u64).max(1)
}

fn progress(args: &Args, len: u64) -> ProgressBar {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else if len == u64::MAX {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {pos} events  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// `--ops-out`: the writes of every event, one line per event.
fn write_ops(args: &Args, out: &std::path::Path) -> Result<(), String> {
    use std::io::Write as _;
    let cfg = Config::default();
    let rules = cfg.rule_set().map_err(|e| e.to_string())?;
    // The seed's writes, for writers that model the seed: in arrival order, no event time.
    let format = StorageFormat {
        event_time: false,
        ..cfg.storage.format()
    };
    let mut feed = Feed::open(args)?;
    if feed.limit == u64::MAX {
        feed.limit = 100_000;
    }
    feed.time_limit = None;
    let start = Instant::now();
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let f = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let mut n = 0u64;
    while let Some(event) = feed.next(n, start)? {
        let ops: Vec<serde_json::Value> = rules
            .plan(&event, &format)
            .map_err(|e| e.to_string())?
            .iter()
            .flat_map(stream::op_json)
            .collect();
        // What orders this event against others, for writers that run events concurrently.
        let (waits_for, publishes) = match &event {
            HookEvent::MessageAcked { message, .. } => (Some(message.id.clone()), None),
            HookEvent::MessagePublish { message } if message.qos > 0 => {
                (None, Some(message.id.clone()))
            }
            _ => (None, None),
        };
        let line = json!({
            "client": event.clientid(),
            "waits_for": waits_for,
            "publishes": publishes,
            "ops": ops,
        });
        writeln!(w, "{line}").map_err(|e| e.to_string())?;
        n += 1;
    }
    w.flush().map_err(|e| e.to_string())?;
    feed.finish()?;
    println!("wrote the writes of {n} events to {}", out.display());
    Ok(())
}

/// The figures both modes report.
struct Outcome {
    mode: &'static str,
    sent: u64,
    refused: HashSet<u64>,
    seconds: f64,
    /// Hook latency in µs (RPC for ExHook, submit for in-process).
    latency: Histogram<u64>,
    latency_name: &'static str,
    durable_ms: serde_json::Value,
    requests: f64,
    naive_requests: f64,
    /// The seed's write units on the same stream (`SeedCost`).
    seed_wru: f64,
    wru: f64,
    /// Requests by DynamoDB API.
    requests_by_api: Vec<(&'static str, f64)>,
    /// The service's CPU seconds over the run (user + system, from `/proc`), when it is a
    /// process of its own.
    service_cpu_s: Option<f64>,
    throttles: f64,
    retries: f64,
    dropped: f64,
    extra: serde_json::Value,
    verification: Verification,
}

fn print_report(args: &Args, o: &Outcome) -> Result<bool, String> {
    let per_k = |n: f64| n * 1000.0 / o.sent.max(1) as f64;
    let ok = o.verification.ok() && o.refused.is_empty();
    println!();
    println!(
        "events                 {} sent, {} refused ({})",
        o.sent,
        o.refused.len(),
        o.mode
    );
    println!(
        "throughput             {:.0} events/s (sent and durable, {:.1} s)",
        o.sent as f64 / o.seconds,
        o.seconds
    );
    println!("{:<22} {}", o.latency_name, fmt_q(&o.latency, 1000.0, "ms"));
    println!("ingest→durable         {}", o.durable_ms);
    println!(
        "DynamoDB requests      {:.0} ({:.1} per 1,000 events; the seed's model on this stream: {:.1}, {:.1}× fewer)",
        o.requests,
        per_k(o.requests),
        per_k(o.naive_requests),
        o.naive_requests / o.requests.max(1.0)
    );
    println!(
        "  by API               {}",
        o.requests_by_api
            .iter()
            .map(|(api, n)| format!("{api} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "write units            {:.0} ({:.1} per 1,000 events; the seed's model: {:.1}, {:.1}× fewer)",
        o.wru,
        per_k(o.wru),
        per_k(o.seed_wru),
        o.seed_wru / o.wru.max(1.0)
    );
    match o.service_cpu_s {
        Some(cpu) => println!(
            "service CPU            {cpu:.2} s ({:.1} µs per event, {:.2} of a core{})",
            cpu * 1e6 / o.sent.max(1) as f64,
            cpu / o.seconds.max(f64::MIN_POSITIVE),
            if args.endpoint.is_none() {
                "; the embedded DynamoDB's included"
            } else {
                ""
            }
        ),
        None => println!("service CPU            n/a (in process: shared with the load generator)"),
    }
    println!(
        "throttles, retries     {:.0}, {:.0}; dropped writes {:.0}",
        o.throttles, o.retries, o.dropped
    );
    if !o.extra.is_null() {
        println!("service                {}", o.extra);
    }
    let v = &o.verification;
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
        "mode": o.mode,
        "seed": args.seed,
        "events": o.sent,
        "refused": o.refused.len(),
        "seconds": o.seconds,
        "events_per_s": o.sent as f64 / o.seconds,
        "hook_latency_ms": quantiles_ms(&o.latency, 1000.0),
        "ingest_to_durable_ms": o.durable_ms,
        "requests": o.requests,
        "requests_per_1k_events": per_k(o.requests),
        "naive_requests_per_1k_events": per_k(o.naive_requests),
        "seed_model": {
            "note": "one request per write, charged by DynamoDB's item-size rules, on the same stream",
            "requests_per_1k_events": per_k(o.naive_requests),
            "wru_per_1k_events": per_k(o.seed_wru),
        },
        "requests_by_api": o.requests_by_api.iter().map(|(api, n)| (api.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "wru_per_1k_events": per_k(o.wru),
        "service_cpu_s": o.service_cpu_s,
        "service_cpu_us_per_event": o.service_cpu_s.map(|c| c * 1e6 / o.sent.max(1) as f64),
        "service_cpu_includes_embedded_dynamodb": o.service_cpu_s.is_some() && args.endpoint.is_none(),
        "throttles": o.throttles,
        "retries": o.retries,
        "dropped": o.dropped,
        "service": o.extra,
        "verified": ok,
        "verification": v.json(),
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
    Ok(ok)
}

async fn run_exhook(args: &Args) -> Result<bool, String> {
    let ports = if args.ephemeral_ports {
        service::Ports::ephemeral()?
    } else {
        service::Ports::defaults()
    };
    let cfg_for_tables = {
        let mut c = Config::default();
        c.dynamodb.access_key_id = Some("loadgen".into());
        c.dynamodb.secret_access_key = Some(mqtt_dynamo::config::Secret::new("loadgen"));
        c
    };
    if let Some(url) = &args.endpoint {
        let admin = dynamo::client(&cfg_for_tables.dynamodb, Some(url), SdkRetries::Standard).await;
        tables::create_all(&admin, &cfg_for_tables.dynamodb, Capacity::OnDemand)
            .await
            .map_err(|e| e.to_string())?;
    }
    let extra = match &args.service_extra {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => String::new(),
    };
    let binary = args
        .service_bin
        .clone()
        .unwrap_or_else(service::default_binary);
    let dir = args
        .json
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("target/loadgen"));
    let instances = args.instances.max(1);
    if instances > 1 && args.endpoint.is_none() {
        return Err("--instances above 1 needs --endpoint: the one DynamoDB they share".into());
    }
    let mut services = Vec::with_capacity(instances);
    for i in 0..instances {
        let (ports, dir) = if i == 0 {
            (ports, dir.clone())
        } else {
            (
                service::Ports::ephemeral()?,
                dir.join(format!("instance-{i}")),
            )
        };
        services.push(
            service::Service::start(&binary, &dir, ports, args.endpoint.as_deref(), &extra).await?,
        );
    }
    let svc = &services[0];
    if instances > 1 {
        println!(
            "mqtt-dynamo loadgen: {instances} instances (ExHook at {})",
            services
                .iter()
                .map(|s| s.ports.exhook.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "mqtt-dynamo loadgen: ExHook v3 to mqtt-dynamo serve (pid {}) at {} over {} channels × {} workers; DynamoDB at {}; seed {}",
        svc.pid(),
        ports.exhook,
        exhook::CHANNELS,
        args.workers_per_channel,
        svc.dynamo_endpoint,
        args.seed
    );
    // Memory, once a second, for the flat-memory check.
    let rss: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampler = {
        let rss = Arc::clone(&rss);
        let pid = svc.pid();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some((now, _)) = service::memory_of(pid)
                    && let Ok(mut v) = rss.lock()
                {
                    v.push((t0.elapsed().as_secs_f64(), now));
                }
            }
        })
    };
    let targets: Vec<exhook::Targets> = services
        .iter()
        .map(|s| exhook::Targets {
            exhook: format!("http://{}", s.ports.exhook),
            rule_url: format!(
                "http://{}/v1/events/emqx-rule?payload_encoding=base64",
                s.ports.http
            ),
        })
        .collect();
    let pool = exhook::Pool::connect(&targets, args.workers_per_channel.max(1)).await?;
    let live = Arc::clone(&pool.live);
    let mut feed = Feed::open(args)?;
    let bar = progress(args, feed.limit);
    let cpu_of_all = || {
        services
            .iter()
            .map(|s| service::cpu_seconds_of(s.pid()))
            .sum::<Option<f64>>()
    };
    let cpu_at_start = cpu_of_all();
    let start = Instant::now();
    let mut sent = 0u64;
    while let Some(event) = feed.next(sent, start)? {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        pool.send(sent, event).await?;
        sent += 1;
        if sent.is_multiple_of(512) {
            bar.set_position(live.done.load(Relaxed));
            bar.set_message(format!(
                "queued {}  errors {}",
                sent - live.done.load(Relaxed),
                live.errors.load(Relaxed)
            ));
        }
    }
    feed.finish()?;
    let driven = pool.finish().await;
    bar.finish_and_clear();
    let accepted = sent - driven.errors + driven.rule_posts - driven.rule_errors;
    // Every call was answered, so each instance holds what it accepted: once all are idle, the
    // figures are their sums (the metrics texts of all instances, one after the other).
    let metrics = if instances == 1 {
        svc.drained(accepted, Duration::from_secs(300)).await?
    } else {
        let mut texts = Vec::with_capacity(instances);
        for s in &services {
            texts.push(s.drained(0, Duration::from_secs(300)).await?.0);
        }
        service::Metrics(texts.join("\n"))
    };
    let seconds = start.elapsed().as_secs_f64();
    let service_cpu_s = cpu_at_start.zip(cpu_of_all()).map(|(a, b)| b - a);
    sampler.abort();
    let (_, peak) = svc.memory().unwrap_or((0, 0));

    // The expected state, and what the tables hold: the service runs on the defaults and the
    // `MQTT_DYNAMO_*` variables it inherits (`[storage] event_time_order`, say).
    let cfg = mqtt_dynamo::config::sources::load(None).map_err(|e| e.to_string())?;
    let rules = cfg.rule_set().map_err(|e| e.to_string())?;
    let format = cfg.storage.format();
    let refused: HashSet<u64> = driven.refused.iter().copied().collect();
    let (model, seed) = expected_model(args, sent, &refused, &rules, &format)?;
    let reader = dynamo::client(
        &cfg_for_tables.dynamodb,
        Some(&svc.dynamo_endpoint),
        SdkRetries::Standard,
    )
    .await;
    let got = report::read_tables(&reader, &cfg_for_tables).await?;
    let (mut want, mut have) = (model.normalized(), got.normalized());
    report::without_service_times(&mut want);
    report::without_service_times(&mut have);
    let verification = report::verify(&want, &have);

    let m = |name: &str| metrics.sum(name, None);
    let text = &metrics.0;
    let q = |p: f64| {
        report::prometheus_quantile(text, catalogue::INGEST_TO_DURABLE_SECONDS, p)
            .map(|s| s * 1000.0)
    };
    let samples = rss.lock().map(|v| v.clone()).unwrap_or_default();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let at = |frac: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * frac).round().max(0.0) as usize)
            .map(|(_, b)| mib(*b))
    };
    let extra = json!({
        "pid": svc.pid(),
        "peak_rss_mib": mib(peak),
        "rss_mib_at_10_50_100_percent": [at(0.1), at(0.5), at(1.0)],
        "rule_posts": driven.rule_posts,
        "rule_errors": driven.rule_errors,
        "events_received": m(catalogue::EVENTS_RECEIVED_TOTAL),
        // Per table: where the write units go (the topic index's share, say), and the
        // event-time writes DynamoDB refused as older than what it held.
        "wru_by_table": mqtt_dynamo::storage::item::Table::ALL
            .iter()
            .map(|t| {
                let units = metrics.sum(
                    catalogue::CONSUMED_WRITE_CAPACITY_UNITS_TOTAL,
                    Some(("table", t.base_name())),
                );
                (t.base_name().to_string(), json!(units))
            })
            .collect::<serde_json::Map<_, _>>(),
        "writes_superseded": m(catalogue::WRITES_SUPERSEDED_TOTAL),
    });
    let outcome = Outcome {
        mode: "exhook",
        sent,
        refused,
        seconds,
        latency: driven.rpc_latency,
        latency_name: "hook RPC latency",
        durable_ms: json!({"p50_le": q(0.5), "p99_le": q(0.99),
            "note": "upper bounds of the Prometheus buckets the quantiles fall in"}),
        requests: m(catalogue::DYNAMODB_REQUESTS_TOTAL),
        naive_requests: seed.requests as f64,
        seed_wru: seed.units as f64,
        wru: m(catalogue::CONSUMED_WRITE_CAPACITY_UNITS_TOTAL),
        requests_by_api: [
            ("BatchWriteItem", "batch_write_item"),
            ("BatchExecuteStatement", "batch_execute_statement"),
            ("UpdateItem", "update_item"),
        ]
        .into_iter()
        .map(|(api, label)| {
            (
                api,
                metrics.sum(
                    catalogue::DYNAMODB_REQUESTS_TOTAL,
                    Some(("operation", label)),
                ),
            )
        })
        .collect(),
        service_cpu_s,
        throttles: m(catalogue::DYNAMODB_THROTTLES_TOTAL),
        retries: m(catalogue::RETRIES_TOTAL),
        dropped: m(catalogue::WRITES_DROPPED_TOTAL) + m(catalogue::HOOK_EVENTS_DROPPED_TOTAL),
        extra,
        verification,
    };
    let ok = print_report(args, &outcome)?;
    println!(
        "\ninspect the tables: aws dynamodb scan --table-name mqtt_retain --endpoint-url {} (keys: any)\n\
         or: mqtt-dynamo lookup retained '#'   (both while the service runs: loadgen --keep-running)",
        svc.dynamo_endpoint
    );
    if args.keep_running {
        println!(
            "the service keeps running (ExHook {}, HTTP {}, metrics {}, DynamoDB {}); Ctrl-C stops it",
            ports.exhook, ports.http, ports.metrics, svc.dynamo_endpoint
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    for svc in services {
        let report = svc.stop()?;
        if !args.quiet {
            println!("\nthe service's own report at shutdown:\n{report}");
        }
    }
    Ok(ok)
}

async fn run_inprocess(args: &Args) -> Result<bool, String> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::from_env().map_err(|e| e.to_string())?,
    };
    let embedded = match &args.endpoint {
        Some(url) => {
            cfg.dynamodb.endpoint_url = Some(url.clone());
            cfg.dynamodb
                .access_key_id
                .get_or_insert_with(|| "loadgen".into());
            if cfg.dynamodb.secret_access_key.is_none() {
                cfg.dynamodb.secret_access_key = Some(mqtt_dynamo::config::Secret::new("loadgen"));
            }
            None
        }
        None => Some(
            EmbeddedDynamo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    let endpoint = embedded.as_ref().map(EmbeddedDynamo::endpoint);
    let admin = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand)
        .await
        .map_err(|e| e.to_string())?;
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Disabled).await;
    let rules = cfg.rule_set().map_err(|e| e.to_string())?;
    let format = cfg.storage.format();
    let pipeline = Pipeline::from_config(&cfg, client).map_err(|e| e.to_string())?;
    let handle = pipeline.handle();
    println!(
        "mqtt-dynamo loadgen: in-process pipeline, DynamoDB at {}; seed {}",
        endpoint
            .clone()
            .or_else(|| cfg.dynamodb.endpoint_url.clone())
            .unwrap_or_default(),
        args.seed
    );
    let mut feed = Feed::open(args)?;
    let bar = progress(args, feed.limit);
    let rate = args.rate;
    // Submitting blocks (up to 4 s per event, below EMQX's 5 s hook timeout) when the pipeline
    // is full, so run it on a blocking thread.
    let submitter = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut refused = HashSet::new();
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        let start = Instant::now();
        let mut sent = 0u64;
        while let Some(event) = feed.next(sent, start)? {
            if rate > 0 {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let t0 = Instant::now();
            match handle.accept(&event, Admit::within(Duration::from_secs(4))) {
                Ok(()) => latency.saturating_record(t0.elapsed().as_micros() as u64),
                Err(_) => {
                    refused.insert(sent);
                }
            }
            sent += 1;
            if sent.is_multiple_of(1024) {
                let (depth, cap) = handle.queue_depth();
                bar.set_position(sent);
                bar.set_message(format!("queue {depth}/{cap}  refused {}", refused.len()));
            }
        }
        feed.finish()?;
        bar.finish_and_clear();
        Ok((refused, latency, sent, start))
    });
    let (refused, latency, sent, start) = submitter.await.map_err(|e| e.to_string())??;
    let stats = pipeline.shutdown().await;
    let seconds = start.elapsed().as_secs_f64();
    let (model, seed) = expected_model(args, sent, &refused, &rules, &format)?;
    let verify_client =
        dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let got = report::read_tables(&verify_client, &cfg).await?;
    let verification = report::verify(&model.normalized(), &got.normalized());
    let outcome = Outcome {
        mode: "inprocess",
        sent,
        refused,
        seconds,
        latency,
        latency_name: "hook submit latency",
        durable_ms: stats
            .durable_latency
            .as_ref()
            .map(|h| quantiles_ms(h, 1000.0))
            .unwrap_or_default(),
        requests: stats.requests() as f64,
        naive_requests: seed.requests as f64,
        seed_wru: seed.units as f64,
        wru: stats.consumed_wcu as f64,
        requests_by_api: vec![
            ("BatchWriteItem", stats.batch_write_requests as f64),
            ("BatchExecuteStatement", stats.statement_requests as f64),
            ("UpdateItem", stats.update_requests as f64),
        ],
        service_cpu_s: None,
        throttles: stats.throttles as f64,
        retries: stats.retries as f64,
        dropped: stats.dropped() as f64,
        extra: serde_json::Value::Null,
        verification,
    };
    println!("\npipeline counters\n{stats}");
    let ok = print_report(args, &outcome)?;
    if let Some(server) = embedded {
        server.stop().await;
    }
    Ok(ok)
}

/// `--verify-only`: the tables another writer left, against the stream's model.
async fn verify_only(args: &Args) -> Result<bool, String> {
    let url = args
        .endpoint
        .as_deref()
        .ok_or("--verify-only needs --endpoint")?;
    let n = args.events.ok_or("--verify-only needs --events")?;
    let mut cfg = Config::default();
    cfg.dynamodb.access_key_id = Some("loadgen".into());
    cfg.dynamodb.secret_access_key = Some(mqtt_dynamo::config::Secret::new("loadgen"));
    let rules = cfg.rule_set().map_err(|e| e.to_string())?;
    // The writers this verifies write the seed's writes (`loadgen plan`): in arrival order,
    // without event time.
    let format = StorageFormat {
        event_time: false,
        ..cfg.storage.format()
    };
    let mut in_process = Args::parse_from(["loadgen"]);
    in_process.via = Via::Inprocess;
    in_process.replay = args.replay.clone();
    in_process.seed = args.seed;
    in_process.clients = args.clients;
    in_process.topics = args.topics;
    in_process.mix = args.mix;
    let (model, _) = expected_model(&in_process, n, &HashSet::new(), &rules, &format)?;
    let client = dynamo::client(&cfg.dynamodb, Some(url), SdkRetries::Standard).await;
    let got = report::read_tables(&client, &cfg).await?;
    // The seed's six tables: the peers this verifies write no topic index (mqtt-dynamo's own
    // runs are verified with it, index included, by `run`).
    let seed_tables = |items: std::collections::BTreeMap<Key, Item>| {
        items
            .into_iter()
            .filter(|(key, _)| key.table != Table::TopicIndex)
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let v = report::verify(
        &seed_tables(model.normalized()),
        &seed_tables(got.normalized()),
    );
    let out = json!({"events": n, "verified": v.ok(), "verification": v.json()});
    println!("{out}");
    if let Some(dir) = args.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.json, out.to_string())
        .map_err(|e| format!("cannot write {}: {e}", args.json.display()))?;
    Ok(v.ok())
}

async fn run(args: Args) -> Result<bool, String> {
    if let Some(out) = &args.ops_out {
        write_ops(&args, out)?;
        return Ok(true);
    }
    if args.verify_only {
        return verify_only(&args).await;
    }
    match args.via {
        Via::Exhook => run_exhook(&args).await,
        Via::Inprocess => run_inprocess(&args).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_charged_per_started_kb_of_the_larger_item() {
        assert_eq!(seed_write_units(0, 10), 1, "at least one unit");
        assert_eq!(seed_write_units(0, 1024), 1);
        assert_eq!(seed_write_units(0, 1025), 2);
        // A delete of a 3 KB item, an update that shrinks a 48 KB MsgId set.
        assert_eq!(seed_write_units(3000, 0), 3);
        assert_eq!(seed_write_units(48 * 1024, 47 * 1024), 48);
    }
}
