//! Two `serve` processes on one DynamoDB (dynamo-sim), as one instance per EMQX node runs them:
//! instance A reaches DynamoDB through a link 300 ms slower than B's. Each test reproduces one of
//! the anomalies several instances had and checks the final tables (and lookups) against the
//! events' time order: a takeover, retained sets and clears racing from both, a retained message
//! found by a wildcard lookup on the other instance within a second, and a crash of one instance
//! whose spool is replayed after the other wrote newer events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mqtt_dynamo::storage::item::{Item, Key, Table, Value};
use mqtt_dynamo::test_util::{Backend, scan_all};

use super::support::faults::{FaultProxy, Mode};
use super::support::{self, Serve};
use super::{serve_conf, start_serve, terminate};

/// The slower instance's extra latency on every DynamoDB request.
const SLOW_LINK: Duration = Duration::from_millis(300);

/// One DynamoDB (dynamo-sim with every table), a client on it, and the delaying proxy instance A
/// talks through.
struct TwoInstances {
    backend: Backend,
    client: aws_sdk_dynamodb::Client,
    cfg: mqtt_dynamo::config::Config,
    proxy: FaultProxy,
    dir: tempfile::TempDir,
}

impl TwoInstances {
    async fn new() -> TwoInstances {
        let backend = Backend::simulator(dynamo_sim::SimConfig::default()).await;
        let cfg = backend.config();
        let (client, _) = backend.prepare(&cfg).await;
        let proxy = FaultProxy::start_with(backend.endpoint(), Mode::Delay(SLOW_LINK)).await;
        TwoInstances {
            backend,
            client,
            cfg,
            proxy,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The configuration of instance `name` (its own directory and spool), slow or not.
    fn conf(&self, name: &str, slow: bool, extra: &str) -> std::path::PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = if slow {
            self.proxy.endpoint()
        } else {
            self.backend.endpoint()
        };
        serve_conf(
            &dir,
            &endpoint,
            &format!("max_batch_age = \"10ms\"\n{extra}"),
            true,
        )
    }

    /// Instance A (slow link, node emqx@n1) and B (node emqx@n2), started.
    async fn start(&self, extra: &str) -> (Serve, Serve) {
        let a = start_serve(&self.conf("a", true, extra)).await;
        let b = start_serve(&self.conf("b", false, extra)).await;
        (a, b)
    }

    async fn item(&self, table: Table, hash: &str) -> Option<Item> {
        scan_all(&self.client, &self.cfg)
            .await
            .remove(&Key::new(table, hash))
    }
}

const T0: u64 = 1_700_000_000_000;

fn connect(node: &str, client: &str, at: u64) -> String {
    format!(
        r#"{{"event":"client.connected","node":"{node}","clientid":"{client}","connected_at":{at}}}"#
    )
}

fn disconnect(node: &str, client: &str, at: u64) -> String {
    format!(
        r#"{{"event":"client.disconnected","node":"{node}","clientid":"{client}","disconnected_at":{at},"reason":"takenover"}}"#
    )
}

/// A retained publish (an empty payload clears the topic's retained message); `n` makes the id.
fn retained(node: &str, topic: &str, payload: &str, at: u64, n: u64) -> String {
    format!(
        r#"{{"event":"message.publish","node":"{node}","id":"0006F65F239F03FE{n:016X}","clientid":"pub","topic":"{topic}","qos":1,"payload":"{payload}","flags":{{"retain":true}},"publish_received_at":{at}}}"#
    )
}

/// Posts rule rows to an instance's HTTP ingest; the service acknowledged them.
fn post(serve: &Serve, rows: &[String]) {
    let body = format!("[{}]", rows.join(","));
    let status = support::http_post(&serve.http, "/v1/events/emqx-rule", &body).unwrap();
    assert_eq!(status, 200, "{body}");
}

/// `GET /v1/retained?filter=…` on an instance: (topic, payload) of each message, sorted.
fn retained_lookup(serve: &Serve, filter: &str) -> Vec<(String, String)> {
    let encoded = filter
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('#', "%23");
    let (status, body) = support::http_get(&serve.http, &format!("/v1/retained?filter={encoded}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, String)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap_or_default().to_string(),
                m["payload"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Stops both instances (SIGTERM drains each pipeline), checking they exit cleanly.
async fn stop(a: Serve, b: Serve) {
    for serve in [a, b] {
        let (_, exit) = terminate(serve).await;
        assert!(exit.success(), "serve exits cleanly: {exit:?}");
    }
}

fn presence(item: &Item) -> (i64, String) {
    let state = match item.get("connect_state") {
        Some(Value::N(n)) => *n,
        other => panic!("connect_state {other:?}"),
    };
    let node = match item.get("node") {
        Some(Value::S(s)) => s.clone(),
        other => panic!("node {other:?}"),
    };
    (state, node)
}

/// The takeover rows, both ways: client `m1` moves from n1 (instance A, slow) to n2 (B), so A's
/// old connect reaches DynamoDB after B's newer one; client `m2` moves from n2 to n1, so B's
/// disconnect (stamped 5 ms after A's connect, as the old node reports the takeover) lands
/// first. Sent in the order the broker emits them.
async fn takeover(a: &Serve, b: &Serve) {
    post(a, &[connect("emqx@n1", "m1", T0)]);
    post(b, &[connect("emqx@n2", "m2", T0)]);
    post(b, &[connect("emqx@n2", "m1", T0 + 1_000)]);
    post(a, &[disconnect("emqx@n1", "m1", T0 + 1_005)]);
    post(a, &[connect("emqx@n1", "m2", T0 + 1_000)]);
    post(b, &[disconnect("emqx@n2", "m2", T0 + 1_005)]);
}

/// A takeover between instances one of which is 300 ms behind leaves the client online on its
/// new node, both ways; the same rows with `event_time_order = false` show the anomaly (A's late
/// connect overwrites `node`, so its late disconnect then passes the guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_with_a_slower_instance_leaves_the_client_online_on_its_new_node() {
    let rig = TwoInstances::new().await;
    let (a, b) = rig.start("").await;
    takeover(&a, &b).await;
    stop(a, b).await;
    let m1 = rig.item(Table::Client, "m1").await.unwrap();
    assert_eq!(presence(&m1), (1, "emqx@n2".into()), "{m1:?}");
    assert_eq!(m1.get("event_ms"), Some(&Value::N(T0 as i64 + 1_000)));
    assert_eq!(m1.get("connected_ms"), Some(&Value::N(T0 as i64 + 1_000)));
    let m2 = rig.item(Table::Client, "m2").await.unwrap();
    assert_eq!(presence(&m2), (1, "emqx@n1".into()), "{m2:?}");
    assert_eq!(m2.get("connected_ms"), Some(&Value::N(T0 as i64 + 1_000)));

    // The anomaly, reproduced in arrival order.
    let seed = TwoInstances::new().await;
    let extra = "[storage]\nevent_time_order = false\n";
    let a = start_serve(&with_storage(&seed.conf("a", true, ""), extra)).await;
    let b = start_serve(&with_storage(&seed.conf("b", false, ""), extra)).await;
    takeover(&a, &b).await;
    stop(a, b).await;
    let m1 = seed.item(Table::Client, "m1").await.unwrap();
    assert_eq!(
        presence(&m1),
        (0, "emqx@n1".into()),
        "in arrival order A's late connect and disconnect win: {m1:?}"
    );
}

/// The configuration at `conf` with `[storage]` replaced by `storage` (serve_conf writes one).
fn with_storage(conf: &std::path::Path, storage: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(conf).unwrap();
    let text = text.replace("[storage]\n", storage);
    std::fs::write(conf, text).unwrap();
    conf.to_path_buf()
}

/// Retained sets and clears of ten topics racing from both instances, their times shuffled
/// against the order they are sent in: each topic ends with the event stamped last (a set's
/// message, or a clear's tombstone), whatever reached DynamoDB last, and both instances' wildcard
/// lookups answer exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_sets_and_clears_racing_from_both_instances_end_in_event_time_order() {
    let rig = TwoInstances::new().await;
    let (a, b) = rig.start("").await;
    let mut rng = fastrand::Rng::with_seed(14);
    // Per topic, the latest event: Some(payload) for a set, None for a clear.
    let mut latest: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
    let mut n = 0;
    for round in 0..6u64 {
        for t in 0..10 {
            let topic = format!("race/{t}");
            let at = T0 + rng.u64(0..50) * 10 + round;
            let payload = if rng.u8(0..4) == 0 {
                String::new()
            } else {
                format!("v{round}-{t}")
            };
            n += 1;
            let (serve, node) = if rng.bool() {
                (&a, "emqx@n1")
            } else {
                (&b, "emqx@n2")
            };
            post(serve, &[retained(node, &topic, &payload, at, n)]);
            let entry = latest.entry(topic).or_insert((0, None));
            if at >= entry.0 {
                *entry = (at, (!payload.is_empty()).then_some(payload));
            }
        }
    }
    let want: Vec<(String, String)> = latest
        .iter()
        .filter_map(|(topic, (_, p))| p.clone().map(|p| (topic.clone(), p)))
        .collect();
    stop(a, b).await;
    // Both drained: the lookups of both instances, started again (nothing in memory but what
    // DynamoDB holds), answer the event-time winners.
    let (a, b) = rig.start("").await;
    assert_eq!(retained_lookup(&a, "race/+"), want, "lookup on A");
    assert_eq!(retained_lookup(&b, "race/#"), want, "lookup on B");
    stop(a, b).await;
    let got = scan_all(&rig.client, &rig.cfg).await;
    for (topic, (at, payload)) in &latest {
        let item = &got[&Key::new(Table::Retain, topic)];
        assert_eq!(item.get("event_ms"), Some(&Value::N(*at as i64)), "{topic}");
        match payload {
            Some(p) => assert_eq!(item.get("payload"), Some(&Value::S(p.clone())), "{topic}"),
            None => assert!(
                !item.contains_key("payload"),
                "{topic}: a tombstone {item:?}"
            ),
        }
    }
}

/// A retained message published through one instance is found by a wildcard lookup on the
/// other within a second, both ways (through the slow link too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_from_one_instance_is_found_by_a_wildcard_lookup_on_the_other() {
    let rig = TwoInstances::new().await;
    let (a, b) = rig.start("").await;
    for (from, node, on, topic) in [
        (&b, "emqx@n2", &a, "wild/b2a/x"),
        (&a, "emqx@n1", &b, "wild/a2b/x"),
    ] {
        let filter = "wild/+/x";
        let before = retained_lookup(on, filter).len();
        let t0 = Instant::now();
        post(
            from,
            &[retained(node, topic, "hello", T0, 1_000 + before as u64)],
        );
        let found = loop {
            if retained_lookup(on, filter)
                .iter()
                .any(|(t, p)| t == topic && p == "hello")
            {
                break Some(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(5) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        eprintln!("{topic}: found on the other instance after {found:?}");
        let found = found.expect("found within 5 s");
        assert!(
            found < Duration::from_secs(1),
            "{topic} found after {found:?}"
        );
    }
    stop(a, b).await;
}

/// Instance A (spool on, slow link) acknowledges a connect and retained messages, and is killed
/// before it could have written them; B then writes newer events for the same client and topic;
/// A restarts on its spool and replays the older events. The tables end in event-time order:
/// B's newer presence and message stand, and A's event no one overwrote is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_replaying_its_spool_later_does_not_overwrite_newer_events() {
    let rig = TwoInstances::new().await;
    let (mut a, b) = rig.start("").await;
    post(
        &a,
        &[
            connect("emqx@n1", "crash", T0),
            retained("emqx@n1", "crash/shared", "old", T0, 1),
            retained("emqx@n1", "crash/only-a", "kept", T0, 2),
        ],
    );
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    post(
        &b,
        &[
            connect("emqx@n2", "crash", T0 + 1_000),
            retained("emqx@n2", "crash/shared", "new", T0 + 1_000, 3),
        ],
    );
    let (_, exit) = terminate(b).await;
    assert!(exit.success());
    // A again, on its spool (and its slow link): the replay ends with the spool drained.
    let a = start_serve(&rig.dir.path().join("a").join("serve.toml")).await;
    let (_, exit) = terminate(a).await;
    assert!(exit.success());
    assert!(
        super::spool_segments(&rig.dir.path().join("a").join("spool")).is_empty(),
        "A's spool drained"
    );
    let client = rig.item(Table::Client, "crash").await.unwrap();
    assert_eq!(presence(&client), (1, "emqx@n2".into()), "{client:?}");
    let shared = rig.item(Table::Retain, "crash/shared").await.unwrap();
    assert_eq!(shared.get("payload"), Some(&Value::S("new".into())));
    let only_a = rig.item(Table::Retain, "crash/only-a").await.unwrap();
    assert_eq!(only_a.get("payload"), Some(&Value::S("kept".into())));
}
