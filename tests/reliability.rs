//! Nothing lost, nothing resurrected: the durability claims under the faults that break naive
//! designs — `serve` killed with SIGKILL under publish/ack load and replaying its spool, DynamoDB
//! applying writes and then answering 500 (or after the client gave up), an outage longer than
//! the retry deadline, a shutdown in the middle of it, a start while DynamoDB is down, a second
//! service on a locked spool, senders that repeat themselves, and a shutdown deadline without the
//! spool. Every test checks the final tables.

#[path = "reliability/instances.rs"]
mod instances;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mqtt_dynamo::config::Config;
use mqtt_dynamo::event::{HookEvent, Message};
use mqtt_dynamo::pipeline::Admit;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::rules::RuleSet;
use mqtt_dynamo::storage::item::{Item, Key, Table, Value};
use mqtt_dynamo::storage::model::TableModel;
use mqtt_dynamo::storage::topic_index;

use mqtt_dynamo::service::Service;
use mqtt_dynamo::test_util::SubmitExt;
use mqtt_dynamo::test_util::events::bare_client;
use mqtt_dynamo::test_util::service;
use mqtt_dynamo::test_util::{Backend, normalized, scan_all};

// ---------------------------------------------------------------------------------------------
// A publish/ack/retained/presence stream as EMQX rule rows, and what the tables must show.

/// One event the sender posts, as it knows it.
#[derive(Debug, Clone)]
enum Sent {
    Publish {
        id: String,
        topic: String,
    },
    Ack {
        id: String,
        topic: String,
        by: String,
    },
    Retain {
        topic: String,
        payload: Option<String>,
    },
    Presence {
        client: String,
        online: bool,
    },
}

/// The EMQX rule engine's row for `e`.
fn row(e: &Sent, n: u64) -> String {
    let ts = 1_700_000_000_000 + n;
    match e {
        Sent::Publish { id, topic } => format!(
            r#"{{"event":"message.publish","node":"emqx@n1","id":"{id}","clientid":"pub","topic":"{topic}","qos":1,"payload":"p{n}","flags":{{"retain":false}},"publish_received_at":{ts}}}"#
        ),
        Sent::Ack { id, topic, by } => format!(
            r#"{{"event":"message.acked","node":"emqx@n1","id":"{id}","clientid":"{by}","from_clientid":"pub","topic":"{topic}","qos":1,"payload":"x","flags":{{"retain":false}},"publish_received_at":{ts}}}"#
        ),
        Sent::Retain { topic, payload } => format!(
            r#"{{"event":"message.publish","node":"emqx@n1","id":"0006F65F239F03FE{n:016X}","clientid":"pub","topic":"{topic}","qos":0,"payload":"{}","flags":{{"retain":true}},"publish_received_at":{ts}}}"#,
            payload.as_deref().unwrap_or("")
        ),
        Sent::Presence { client, online } => {
            let event = if *online {
                "client.connected"
            } else {
                "client.disconnected"
            };
            format!(
                r#"{{"event":"{event}","node":"emqx@n1","clientid":"{client}","connected_at":{ts},"disconnected_at":{ts},"reason":"normal"}}"#
            )
        }
    }
}

/// The sender's state across the service's restarts: what it has sent and how each request
/// was answered.
#[derive(Default)]
struct Stream {
    next: u64,
    rng: Option<fastrand::Rng>,
    /// Published and acknowledged, not yet acked (oldest first).
    unacked: Vec<(String, String)>,
    /// Every event in send order, with whether the service acknowledged it (`Some(true)`),
    /// refused it (`Some(false)`), or the answer never came (`None`: the service died).
    log: Vec<(Sent, Option<bool>)>,
}

impl Stream {
    fn new(seed: u64) -> Self {
        Stream {
            rng: Some(fastrand::Rng::with_seed(seed)),
            ..Default::default()
        }
    }

    /// The next request's events: publishes to five queue topics, acks of earlier publishes
    /// (a few to a few hundred ms later), retained sets and clears, connects and disconnects.
    fn next_batch(&mut self, n: usize) -> Vec<Sent> {
        let rng = self.rng.as_mut().expect("seeded");
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            self.next += 1;
            let k = self.next;
            let e = match rng.u8(0..10) {
                0..=3 => Sent::Publish {
                    id: format!("0005F65F239F03FE{k:016X}"),
                    topic: format!("q/{}", rng.u8(0..5)),
                },
                4..=6 if !self.unacked.is_empty() => {
                    let back = rng.usize(0..self.unacked.len().min(60));
                    let at = self.unacked.len() - 1 - back;
                    let (id, topic) = self.unacked.remove(at);
                    Sent::Ack {
                        id,
                        topic,
                        by: format!("s{}", rng.u8(0..3)),
                    }
                }
                7 | 8 => Sent::Retain {
                    topic: format!("r/{}", rng.u8(0..5)),
                    payload: (rng.u8(0..3) > 0).then(|| format!("v{k}")),
                },
                _ => Sent::Presence {
                    client: format!("c{}", rng.u8(0..5)),
                    online: rng.bool(),
                },
            };
            out.push(e);
        }
        out
    }

    /// Records how a request of `events` was answered.
    fn answered(&mut self, events: Vec<Sent>, outcome: Option<bool>) {
        for e in events {
            if let (Sent::Publish { id, topic }, Some(true)) = (&e, outcome) {
                self.unacked.push((id.clone(), topic.clone()));
            }
            self.log.push((e, outcome));
        }
    }
}

/// A sender thread posting the stream to a running service until stopped.
struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Stream>,
}

impl Sender {
    /// Starts posting to the HTTP ingest at `addr`.
    fn start(stream: Stream, addr: &str) -> Sender {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (stop, addr) = (std::sync::Arc::clone(&stop), addr.to_string());
            move || send_until(stream, addr, stop)
        });
        Sender { stop, thread }
    }

    /// Stops after the request in flight (or at once if the service died); the stream so far.
    async fn stop(self) -> Stream {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }
}

/// Sends requests of five rows until `stop`, each awaited; returns the stream.
fn send_until(
    mut stream: Stream,
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Stream {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let events = stream.next_batch(5);
        let body = format!(
            "[{}]",
            events
                .iter()
                .enumerate()
                .map(|(i, e)| row(e, stream.next * 10 + i as u64))
                .collect::<Vec<_>>()
                .join(",")
        );
        match support::http_post(&addr, "/v1/events/emqx-rule", &body) {
            Ok(200) => stream.answered(events, Some(true)),
            Ok(_) => stream.answered(events, Some(false)),
            // The service died mid-request: these may or may not have been spooled.
            Err(_) => {
                stream.answered(events, None);
                break;
            }
        }
    }
    stream
}

/// What the tables show against what the sender was told.
#[derive(Debug, Default)]
struct Verdict {
    acknowledged: usize,
    lost: Vec<String>,
    resurrected: Vec<String>,
}

impl Verdict {
    /// Prints the counts and fails on anything lost or resurrected.
    fn assert_clean(&self, scenario: &str) {
        eprintln!(
            "{scenario}: {} events acknowledged, {} lost, {} resurrected",
            self.acknowledged,
            self.lost.len(),
            self.resurrected.len()
        );
        assert!(
            self.acknowledged > 500,
            "enough load: {}",
            self.acknowledged
        );
        let some = |v: &[String]| v[..v.len().min(5)].to_vec();
        assert!(self.lost.is_empty(), "lost: {:?}", some(&self.lost));
        assert!(
            self.resurrected.is_empty(),
            "{} resurrected, e.g. {:?}",
            self.resurrected.len(),
            some(&self.resurrected)
        );
    }
}

fn msgid_set(got: &BTreeMap<Key, Item>, topic: &str) -> Vec<String> {
    match got
        .get(&Key::new(Table::TopicMsgMap, topic))
        .and_then(|i| i.get("MsgId"))
    {
        Some(Value::Ss(set)) => set.iter().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Checks every acknowledged event against the tables: an acknowledged publish that no ack
/// (acknowledged or unanswered) followed must be stored with its id in its topic's set; an
/// acknowledged ack's message must be gone from both and its ack recorded; the last retained
/// set/clear and the last presence change of each key must show, unless an unanswered event on
/// that key followed it (then either is right).
fn verify(stream: &Stream, got: &BTreeMap<Key, Item>) -> Verdict {
    let mut v = Verdict::default();
    let maybe_acked: std::collections::HashSet<&str> = stream
        .log
        .iter()
        .filter_map(|(e, o)| match (e, o) {
            (Sent::Ack { id, .. }, None | Some(true)) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    // Per retained topic / client: the states the table may show (the last acknowledged one,
    // plus any unanswered later one).
    let mut allowed: HashMap<Key, Vec<Option<Value>>> = HashMap::new();
    for (e, outcome) in &stream.log {
        if *outcome == Some(true) {
            v.acknowledged += 1;
        }
        let (key, state) = match e {
            Sent::Publish { id, topic } => {
                if *outcome == Some(true) && !maybe_acked.contains(id.as_str()) {
                    let stored = got.contains_key(&Key::new(Table::Msg, id.as_str()))
                        && msgid_set(got, topic).contains(id);
                    if !stored {
                        v.lost.push(format!("publish {id} on {topic}"));
                    }
                }
                continue;
            }
            Sent::Ack { id, topic, by } => {
                if *outcome == Some(true) {
                    if got.contains_key(&Key::new(Table::Msg, id.as_str()))
                        || msgid_set(got, topic).contains(id)
                    {
                        v.resurrected.push(format!("acked {id} on {topic}"));
                    }
                    if !got.contains_key(&Key::with_range(Table::Acked, topic.as_str(), by)) {
                        v.lost.push(format!("ack record {topic}/{by}"));
                    }
                }
                continue;
            }
            Sent::Retain { topic, payload } => (
                Key::new(Table::Retain, topic.as_str()),
                payload.clone().map(Value::S),
            ),
            Sent::Presence { client, online } => (
                Key::new(Table::Client, client.as_str()),
                Some(Value::N(i64::from(*online))),
            ),
        };
        match outcome {
            Some(true) => {
                allowed.insert(key, vec![state]);
            }
            None => allowed.entry(key).or_default().push(state),
            Some(false) => {}
        }
    }
    for (key, states) in allowed {
        let attr = if key.table == Table::Retain {
            "payload"
        } else {
            "connect_state"
        };
        let shown = got.get(&key).and_then(|i| i.get(attr)).cloned();
        if !states.contains(&shown) {
            let what = format!("{key:?}: shows {shown:?}, expected one of {states:?}");
            // A stored state the last acknowledged event removed or replaced came back.
            if shown.is_some() {
                v.resurrected.push(what);
            } else {
                v.lost.push(what);
            }
        }
    }
    v
}

fn serve_conf(
    dir: &std::path::Path,
    endpoint: &str,
    extra: &str,
    spool: bool,
) -> std::path::PathBuf {
    let conf = dir.join("serve.toml");
    let spool_section = if spool {
        format!(
            "[pipeline.spool]\nenabled = true\ndir = \"{}\"\nsegment_age = \"100ms\"\n",
            dir.join("spool").display()
        )
    } else {
        String::new()
    };
    std::fs::write(
        &conf,
        format!(
            "[dynamodb]\nendpoint_url = \"{endpoint}\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\n\
             attempt_timeout = \"500ms\"\n\
             [exhook]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\npublish_actions = \"all\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\nmsgid_format = \"hex\"\n[pipeline]\n{extra}\n{spool_section}"
        ),
    )
    .unwrap();
    conf
}

/// The simulator with the six tables, a client for scans, and a `serve` configuration against it
/// (spool on) in a temporary directory.
struct Rig {
    backend: Backend,
    client: aws_sdk_dynamodb::Client,
    cfg: Config,
    dir: tempfile::TempDir,
    conf: std::path::PathBuf,
}

impl Rig {
    async fn new(latency_ms: u64, seed: u64, pipeline: &str) -> Rig {
        let backend = Backend::simulator(dynamo_sim::SimConfig {
            latency: Duration::from_millis(latency_ms),
            seed: Some(seed),
            ..Default::default()
        })
        .await;
        let cfg = backend.config();
        let (client, _) = backend.prepare(&cfg).await;
        let dir = tempfile::tempdir().unwrap();
        let conf = serve_conf(dir.path(), &backend.endpoint(), pipeline, true);
        Rig {
            backend,
            client,
            cfg,
            dir,
            conf,
        }
    }

    fn spool_segments(&self) -> Vec<String> {
        spool_segments(&self.dir.path().join("spool"))
    }

    /// The service in process on the rig's configuration, and its HTTP ingest address.
    async fn start_service(&self) -> (Service, String) {
        let cfg = service::parse(&std::fs::read_to_string(&self.conf).unwrap());
        let running = service::start(&cfg).await;
        let http = service::addr(running.addrs().http);
        (running, http)
    }
}

/// Shuts the in-process service down (what SIGTERM makes `serve` do before it exits 0); how long
/// it took.
async fn shut_down(running: Service) -> Duration {
    let t0 = Instant::now();
    running.shutdown().await;
    t0.elapsed()
}

async fn start_serve(conf: &std::path::Path) -> support::Serve {
    let conf = conf.to_path_buf();
    tokio::task::spawn_blocking(move || support::Serve::start(&conf))
        .await
        .unwrap()
}

/// Sends SIGTERM and waits for the exit; returns how long it took and the exit status.
async fn terminate(serve: support::Serve) -> (Duration, std::process::ExitStatus) {
    let t0 = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut serve = serve;
    let exit = tokio::task::spawn_blocking(move || serve.child.wait().unwrap())
        .await
        .unwrap();
    (t0.elapsed(), exit)
}

fn spool_segments(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "LOCK")
        .collect()
}

/// `serve` with the spool on, fed EMQX rule rows over HTTP — QoS 1 publishes to five topics
/// (their `MsgId` sets), their acks a few to a few hundred ms later, retained sets and clears,
/// connects and disconnects — is killed with SIGKILL at three seeded points and restarted on the
/// same spool; after a last clean stop no acknowledged event is lost and no acked message,
/// cleared retained message or replaced presence comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_under_publish_ack_load_loses_nothing_and_resurrects_nothing() {
    // Short flush windows: most puts land before their ack arrives, so a replayed suffix holds
    // writes that are already in the table.
    let rig = Rig::new(3, 5, "max_batch_age = \"20ms\"").await;
    let conf = rig.conf.clone();
    let mut rng = fastrand::Rng::with_seed(20261201);
    let mut stream = Stream::new(11);
    for round in 0..4 {
        let mut serve = start_serve(&conf).await;
        let sender = Sender::start(stream, &serve.http);
        if round < 3 {
            tokio::time::sleep(Duration::from_millis(rng.u64(400..1500))).await;
            serve.child.kill().unwrap();
            serve.child.wait().unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        stream = sender.stop().await;
        if round == 3 {
            let (took, exit) = terminate(serve).await;
            assert!(exit.success(), "serve exits cleanly: {exit:?}");
            assert!(took < Duration::from_secs(25), "stopped in {took:?}");
        }
    }
    let got = scan_all(&rig.client, &rig.cfg).await;
    verify(&stream, &got).assert_clean("kill -9 x3");
    assert!(
        rig.spool_segments().is_empty(),
        "a clean stop leaves no segment"
    );
}

// ---------------------------------------------------------------------------------------------
// Ambiguous answers without the spool.

fn message(n: u64, topic: &str, payload: &str, retain: bool, qos: u8) -> Message {
    Message {
        node: "emqx@n1".into(),
        id: format!("0005F65F239F03FE{n:016X}"),
        qos,
        from: "pub".into(),
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        retain,
        timestamp_ms: 1_700_000_000_000 + n,
        username: None,
        expiry_interval_s: None,
    }
}

/// Publishes to ten topics acked 1 to ~80 events later, retained sets and clears, presence.
fn lagged_stream(n: u64, seed: u64) -> Vec<HookEvent> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut unacked: Vec<u64> = Vec::new();
    let mut out = Vec::new();
    for i in 1..=n {
        let e = match rng.u8(0..10) {
            0..=3 => {
                unacked.push(i);
                HookEvent::MessagePublish {
                    message: message(i, &format!("q/{}", i % 10), "p", false, 1),
                }
            }
            4..=6 if !unacked.is_empty() => {
                let at = unacked.len() - 1 - rng.usize(0..unacked.len().min(80));
                let m = unacked.remove(at);
                HookEvent::MessageAcked {
                    client: bare_client(&format!("s{}", rng.u8(0..3))),
                    message: message(m, &format!("q/{}", m % 10), "p", false, 1),
                }
            }
            7 | 8 => HookEvent::MessagePublish {
                message: message(
                    i,
                    &format!("r/{}", rng.u8(0..5)),
                    if rng.bool() { "v" } else { "" },
                    true,
                    0,
                ),
            },
            _ if rng.bool() => HookEvent::ClientConnected {
                client: bare_client(&format!("c{}", rng.u8(0..5))),
                connected_at_ms: 1_700_000_000_000 + i,
            },
            _ => HookEvent::ClientDisconnected {
                client: bare_client(&format!("c{}", rng.u8(0..5))),
                reason: "normal".into(),
                disconnected_at_ms: 1_700_000_000_000 + i,
            },
        };
        out.push(e);
    }
    out
}

fn model_of(events: &[HookEvent], cfg: &Config) -> BTreeMap<Key, Item> {
    let mut model = TableModel::new();
    for e in events {
        let ops = RuleSet::default().plan(e, &cfg.storage.format()).unwrap();
        // With the shared topic index's entries of the topics they store under.
        for op in ops.iter().chain(&topic_index::index_ops(&ops)) {
            model.apply(op);
        }
    }
    model.normalized()
}

/// Submits `events` at about `per_ms` events a millisecond (open loop on tokio's clock).
async fn paced(
    handle: &mqtt_dynamo::pipeline::PipelineHandle,
    events: &[HookEvent],
    per_ms: usize,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for chunk in events.chunks(per_ms) {
        tick.tick().await;
        for e in chunk {
            handle
                .accept(e, Admit::within(Duration::from_secs(10)))
                .unwrap();
        }
    }
}

/// No spool. DynamoDB applies a fifth of the write requests and then answers 500, returns a
/// quarter of batched writes unprocessed (so an ambiguous write is often handed back to its
/// shard, where its ack waits), and applies 2 % of the writes only after the client gave up:
/// every event is written, no acked message and no cleared retained message comes back — the
/// tables equal the sequential model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_500s_and_partial_batches_lose_nothing_and_resurrect_nothing() {
    let backend = Backend::simulator(dynamo_sim::SimConfig {
        seed: Some(23),
        latency: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let mut cfg = backend.config();
    cfg.dynamodb.attempt_timeout = Duration::from_millis(150);
    cfg.pipeline.max_batch_age = Duration::from_millis(5);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(5);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(50);
    cfg.pipeline.hot_key_window = Duration::from_millis(20);
    cfg.pipeline.hot_key_max_window = Duration::from_millis(80);
    // A late landing comes at most 300 ms after its request: the key waits that long.
    cfg.pipeline.ambiguous_hold = Duration::from_millis(300);
    let (client, _) = backend.prepare(&cfg).await;
    backend.set_faults(dynamo_sim::FaultConfig {
        apply_then_error_rate: 0.2,
        throttle_rate: 0.25,
        apply_late_rate: 0.02,
        apply_late_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let events = lagged_stream(6_000, 3);
    let pipeline = Pipeline::from_config(&cfg, client.clone()).unwrap();
    paced(&pipeline.handle(), &events, 3).await;
    let stats = pipeline.shutdown().await;
    backend.set_faults(dynamo_sim::FaultConfig::default());
    let sim = backend.sim_stats().unwrap();
    assert!(
        sim.faults.applied_then_failed > 30 && sim.faults.applied_late > 0,
        "the faults happened: {:?}",
        sim.faults
    );
    assert!(
        stats.requeued > 0,
        "ambiguous writes were handed back: {stats}"
    );
    assert_eq!(stats.dropped(), 0, "{stats}");
    let want = model_of(&events, &cfg);
    let got = normalized(&scan_all(&client, &cfg).await);
    let lost = want.keys().filter(|k| !got.contains_key(k)).count();
    let resurrected: Vec<&Key> = got.keys().filter(|k| !want.contains_key(k)).collect();
    let different = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .count();
    eprintln!(
        "ambiguous 500s: {} events, {} items expected; {} lost, {} resurrected, {} different; {} applied-then-500, {} applied late, {} unprocessed; {} requeues",
        events.len(),
        want.len(),
        lost,
        resurrected.len(),
        different,
        sim.faults.applied_then_failed,
        sim.faults.applied_late,
        sim.throttled_items,
        stats.requeued
    );
    assert_eq!(
        (lost, resurrected.len(), different),
        (0, 0, 0),
        "e.g. resurrected {:?}",
        &resurrected[..resurrected.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------
// Outages longer than the retry deadline, shutdown deadlines, start while down, the lock.

/// With the spool on and `max_elapsed = 1s`, DynamoDB goes down for longer than that while
/// events keep arriving: every event is acknowledged into the spool and none is given up.
/// A shutdown (SIGTERM's path, in process) in the middle of the outage ends the service within `shutdown_timeout` (2 s), leaving
/// the backlog on disk; a service started while DynamoDB is still down serves (accepts events,
/// `/readyz` says why it is not ready); once DynamoDB is back it writes the whole backlog: no
/// acknowledged event lost, none resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_deadline_with_the_spool_loses_nothing() {
    let rig = Rig::new(
        2,
        9,
        "max_batch_age = \"20ms\"\nshutdown_timeout = \"2s\"\n[pipeline.retry]\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_elapsed = \"1s\"",
    )
    .await;
    let Backend::Sim(sim) = &rig.backend else {
        unreachable!("a simulator backend")
    };
    let sim = sim.clone();
    let mut stream = Stream::new(17);
    // 1: up, then down for the rest of this service's life; shut down 3 s into the outage.
    let (running, http) = rig.start_service().await;
    let sender = Sender::start(stream, &http);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.set_outage(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stream = sender.stop().await;
    let before_stop = stream.log.len();
    // Shutdown returns (where `serve` exits 0) at the deadline.
    let took = shut_down(running).await;
    assert!(
        took < Duration::from_millis(4_500),
        "a shutdown during the outage ends the service within shutdown_timeout (2 s) plus slack: {took:?}"
    );
    assert!(
        !rig.spool_segments().is_empty(),
        "the backlog stays on disk"
    );
    // 2: started while DynamoDB is still down: it serves and says why it is not ready.
    let (running, http) = rig.start_service().await;
    let metrics = service::addr(running.addrs().metrics);
    let (status, body) =
        tokio::task::spawn_blocking(move || support::http_get(&metrics, "/readyz"))
            .await
            .unwrap();
    assert_eq!(status, 503, "not ready during the outage: {body}");
    assert!(
        body.contains("DescribeTable") || body.contains("DynamoDB"),
        "/readyz says why: {body}"
    );
    let sender = Sender::start(stream, &http);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sim.set_outage(false);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stream = sender.stop().await;
    assert!(
        stream.log.len() > before_stop,
        "events were accepted by the service started during the outage"
    );
    shut_down(running).await;
    let refused = stream.log.iter().filter(|(_, o)| *o != Some(true)).count();
    assert_eq!(refused, 0, "every event was acknowledged into the spool");
    let got = scan_all(&rig.client, &rig.cfg).await;
    eprintln!("the shutdown during the outage took {took:?}");
    verify(&stream, &got).assert_clean("outage > max_elapsed with the spool");
    assert!(rig.spool_segments().is_empty());
}

/// A second `serve` on a spool directory another one holds refuses to start and names the
/// holder's process id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_a_locked_spool_refuses_to_start() {
    let rig = Rig::new(0, 1, "").await;
    // The holder runs in process (this test's process id); the refusal is the binary's.
    let (first, _) = rig.start_service().await;
    let second = support::serve_output(&rig.conf).await;
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let want = format!(
        "is in use by another mqtt-dynamo (process {})",
        std::process::id()
    );
    assert!(stderr.contains(&want), "names the holder: {stderr}");
    shut_down(first).await;
}

/// Without the spool, a shutdown while DynamoDB is down drains until `shutdown_timeout`, then
/// dead-letters what is left: every accepted write is either written or in the dead-letter file
/// (reason "shutdown"), counted, and the shutdown takes about the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_the_spool_dead_letters_what_the_deadline_leaves() {
    let backend = Backend::simulator(dynamo_sim::SimConfig::default()).await;
    let mut cfg = backend.config();
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    cfg.pipeline.dead_letter_path = Some(dead.clone());
    cfg.pipeline.shutdown_timeout = Duration::from_millis(800);
    cfg.pipeline.retry.max_elapsed = Duration::from_secs(60);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(100);
    cfg.dynamodb.attempt_timeout = Duration::from_millis(300);
    let (db, _) = backend.prepare(&cfg).await;
    backend.set_outage(true);
    let pipeline = Pipeline::from_config(&cfg, db).unwrap();
    let handle = pipeline.handle();
    for i in 0..300u64 {
        handle
            .accept(
                &HookEvent::ClientConnected {
                    client: bare_client(&format!("d{i}")),
                    connected_at_ms: 1_700_000_000_000 + i,
                },
                Admit::within(Duration::from_secs(5)),
            )
            .unwrap();
    }
    let t0 = Instant::now();
    let stats = pipeline.shutdown().await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(stats.dropped_shutdown, 300, "{stats}");
    assert_eq!(stats.dropped(), 300);
    let lines = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(lines.lines().count(), 300);
    assert!(
        lines
            .lines()
            .all(|l| l.contains(r#""reason":"shutdown""#) && l.contains("shutdown_timeout")),
        "{}",
        lines.lines().next().unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------------
// Senders that repeat themselves.

/// A publish repeated after its ack is not stored again (counted); one repeated before its ack,
/// after the first copy was written, is stored as maybe applied, so its ack is written instead
/// of cancelled against it and the message does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_publishes_do_not_bring_back_acked_messages() {
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    cfg.storage.msgid_format = mqtt_dynamo::rules::MsgIdFormat::Hex;
    let (db, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, db.clone()).unwrap();
    let handle = pipeline.handle();
    let publish = |n| HookEvent::MessagePublish {
        message: message(n, "q/dup", "p", false, 1),
    };
    let ack = |n| HookEvent::MessageAcked {
        client: bare_client("s1"),
        message: message(n, "q/dup", "p", false, 1),
    };
    let written = |n: u64| {
        let db = db.clone();
        async move {
            db.get_item()
                .table_name("mqtt_msg")
                .key(
                    "msgid",
                    aws_sdk_dynamodb::types::AttributeValue::S(format!("0005F65F239F03FE{n:016X}")),
                )
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item()
                .is_some()
        }
    };
    // 1: published, acked, then the sender repeats the publish.
    handle.accept_now(&publish(1)).unwrap();
    handle.accept_now(&ack(1)).unwrap();
    handle.accept_now(&publish(1)).unwrap();
    // 2: published and written, repeated, then acked before the repeat is flushed.
    handle.accept_now(&publish(2)).unwrap();
    let t0 = Instant::now();
    while !written(2).await {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "message 2 is written"
        );
        tokio::task::yield_now().await;
    }
    handle.accept_now(&publish(2)).unwrap();
    handle.accept_now(&ack(2)).unwrap();
    // 3: a retained message as ExHook delivers it (no retain flag), acked, then the EMQX rule's
    // retained-only copy of the same publish: the other half of one publish, not a repeat.
    let retained = |retain| HookEvent::MessagePublish {
        message: message(3, "r/dup", "v", retain, 1),
    };
    handle.accept_now(&retained(false)).unwrap();
    handle
        .accept_now(&HookEvent::MessageAcked {
            client: bare_client("s1"),
            message: message(3, "r/dup", "v", false, 1),
        })
        .unwrap();
    handle
        .accept(
            &retained(true),
            Admit::now().scope(mqtt_dynamo::rules::ActionScope::RetainedOnly),
        )
        .unwrap();
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.duplicates_dropped, 1, "{stats}");
    assert_eq!(stats.duplicates_uncertain, 1, "{stats}");
    assert!(!written(1).await, "acked message 1 is not stored again");
    assert!(!written(2).await, "acked message 2 does not come back");
    let got = scan_all(&db, &cfg).await;
    let set = msgid_set(&got, "q/dup");
    assert!(set.is_empty(), "no id left in the set: {set:?}");
    assert!(
        got.contains_key(&Key::new(Table::Retain, "r/dup")),
        "the retained copy is stored although ExHook's copy was acked"
    );
}
