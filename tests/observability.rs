//! Metrics as operators see them: the Prometheus exposition after a known workload, checked value
//! by value against the tables and by `promtool check metrics`; and (see `dashboard_queries_*`)
//! a real Prometheus server scraping a running service and evaluating every dashboard query.
//!
//! The recorder is global to the process, so this binary holds the only in-process pipeline test
//! that reads it.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_dynamo::event::{HookEvent, Message};
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::item::Table;

use mqtt_dynamo::test_util::SubmitExt;
use mqtt_dynamo::test_util::events::bare_client;
use mqtt_dynamo::test_util::{Backend, scan_all};
use support::http_get;

/// `name{label="v",...}` (labels sorted) → value, from the text exposition.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value);
    }
    out
}

fn tool(var: &str, rel: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel));
    assert!(
        p.exists(),
        "{} is not installed: run scripts/test (it unpacks Debian's prometheus package)",
        p.display()
    );
    p
}

/// A known workload, then the scrape: every value follows from the sequence, items written equal
/// the items in the tables, nothing is dropped, and promtool accepts the exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_match_a_known_workload() {
    let prometheus =
        mqtt_dynamo::telemetry::recorder::install().expect("the recorder installs once");
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    // One shard, one flush at shutdown: the whole sequence coalesces in one window.
    cfg.pipeline.shards = 1;
    cfg.pipeline.max_batch_age = Duration::from_secs(3600);
    cfg.pipeline.linger = mqtt_dynamo::config::LingerConfig::none();
    let (client_sdk, counter) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client_sdk.clone()).unwrap();
    let h = pipeline.handle();
    for i in 0..10 {
        h.accept_now(&HookEvent::ClientConnected {
            client: bare_client("m1"),
            connected_at_ms: 1_000 + i,
        })
        .unwrap();
    }
    let message = Message {
        node: "emqx@n1".into(),
        id: "0005F65F239F03FEF44300000BB40001".into(),
        qos: 1,
        from: "m1".into(),
        topic: "m/t".into(),
        payload: b"x".to_vec(),
        retain: false,
        timestamp_ms: 5_000,
        username: None,
        expiry_interval_s: None,
    };
    h.accept_now(&HookEvent::MessagePublish {
        message: message.clone(),
    })
    .unwrap();
    h.accept_now(&HookEvent::MessageAcked {
        client: bare_client("s1"),
        message,
    })
    .unwrap();
    for c in ["c2", "c3", "c4"] {
        h.accept_now(&HookEvent::ClientConnected {
            client: bare_client(c),
            connected_at_ms: 2_000,
        })
        .unwrap();
    }
    // One invalid event (empty client id): refused and counted.
    let bad = HookEvent::ClientConnected {
        client: bare_client(""),
        connected_at_ms: 0,
    };
    assert!(h.accept_now(&bad).is_err());
    let stats = pipeline.shutdown().await;
    // What the once-a-second sampler does.
    h.sample_gauges();
    prometheus.run_upkeep();
    let text = prometheus.render();
    let m = parse_exposition(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from:\n{text}"))
    };

    for (want, series) in [
        (
            13.0,
            r#"mqtt_dynamo_events_received_total{hook="client.connected"}"#,
        ),
        (
            1.0,
            r#"mqtt_dynamo_events_received_total{hook="message.publish"}"#,
        ),
        (
            1.0,
            r#"mqtt_dynamo_events_received_total{hook="message.acked"}"#,
        ),
        (
            1.0,
            r#"mqtt_dynamo_events_rejected_total{adapter="api",reason="invalid"}"#,
        ),
        (
            9.0,
            r#"mqtt_dynamo_ops_coalesced_total{table="mqtt_client"}"#,
        ),
        (
            1.0,
            r#"mqtt_dynamo_writes_cancelled_total{table="mqtt_msg"}"#,
        ),
        (
            1.0,
            r#"mqtt_dynamo_writes_cancelled_total{table="mqtt_topic_msg_map"}"#,
        ),
        (1.0, r#"mqtt_dynamo_flushes_total{trigger="shutdown"}"#),
        (1.0, "mqtt_dynamo_batch_requests_count"),
    ] {
        assert_eq!(get(series), want, "{series}");
    }
    assert_eq!(
        get("mqtt_dynamo_batch_requests_sum"),
        7.0,
        "4 client puts, the acked put and the 2 topic index entries of m/t"
    );
    // m/t's entries (the topic and its first level), put though its message cancelled out.
    assert_eq!(
        get(r#"mqtt_dynamo_topic_index_writes_total{index="offline"}"#),
        2.0
    );
    assert_eq!(
        get(r#"mqtt_dynamo_topic_index_writes_total{index="retained"}"#),
        0.0
    );
    assert_eq!(
        get(
            r#"mqtt_dynamo_dynamodb_requests_total{operation="batch_write_item",outcome="success"}"#
        ),
        counter.get("BatchWriteItem") as f64
    );
    // One per write settled: the five above and the two index entries.
    assert_eq!(get("mqtt_dynamo_ingest_to_durable_seconds_count"), 7.0);
    // mqtt_dynamo_build_info is set by the service (with its backend): tests/deployment.
    assert_eq!(
        get(r#"mqtt_dynamo_queue_capacity_events{stage="ingest"}"#),
        cfg.pipeline.ingest_capacity_events as f64
    );
    assert_eq!(
        get(r#"mqtt_dynamo_writes_dropped_total{reason="retries_exhausted"}"#),
        0.0
    );
    assert_eq!(
        get(r#"mqtt_dynamo_writes_dropped_total{reason="rejected"}"#),
        0.0
    );
    assert_eq!(stats.dropped(), 0);

    // Items written equal the items in the tables.
    let tables = scan_all(&client_sdk, &cfg).await;
    for table in [Table::Client, Table::Acked, Table::TopicIndex] {
        let in_table = tables.keys().filter(|k| k.table == table).count() as f64;
        let written = get(&format!(
            r#"mqtt_dynamo_items_written_total{{table="{}"}}"#,
            table.base_name()
        ));
        assert_eq!(written, in_table, "{table}");
    }
    assert_eq!(tables.len(), 7);

    // promtool's lint accepts the exposition.
    let promtool = tool(
        "MQTT_DYNAMO_TEST_PROMTOOL",
        "target/prometheus/usr/bin/promtool",
    );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus server (Debian's, on 127.0.0.1) scrapes a running `mqtt-dynamo serve` while
/// events flow in over HTTP; every PromQL expression of the Grafana dashboard (variables
/// substituted) must evaluate without error, the core panels must return data, no panel may
/// name a metric the service does not export, and every metric of the catalogue
/// (`telemetry::catalogue::CATALOGUE`) must be on the dashboard and in the scrape with its type and
/// label names (tests/prometheus/check_dashboard.py --catalogue).
#[test]
fn dashboard_queries_evaluate_against_a_real_prometheus() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let prometheus = tool(
        "MQTT_DYNAMO_TEST_PROMETHEUS",
        "target/prometheus/usr/bin/prometheus",
    );
    let promtool = tool(
        "MQTT_DYNAMO_TEST_PROMTOOL",
        "target/prometheus/usr/bin/promtool",
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("serve.toml");
    std::fs::write(
        &conf,
        "[dynamodb]\nembedded_listen = \"127.0.0.1:0\"\n[exhook]\nlisten = \"127.0.0.1:0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\npublish_actions = \"all\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    // The catalogue as check_dashboard.py --catalogue reads it: every metric must be on the
    // dashboard and in the scrape, with its type and label names.
    let catalogue = dir.join("catalogue.json");
    let metrics: Vec<serde_json::Value> = mqtt_dynamo::telemetry::catalogue::CATALOGUE
        .iter()
        .map(|m| serde_json::json!({"name": m.name, "kind": m.kind.as_str(), "labels": m.labels}))
        .collect();
    std::fs::write(
        &catalogue,
        serde_json::json!({ "metrics": metrics }).to_string(),
    )
    .unwrap();
    let mut serve = support::Serve::start(&conf);
    let (metrics_addr, http_addr) = (serve.metrics.clone(), serve.http.clone());
    assert_eq!(
        http_get(&metrics_addr, "/healthz"),
        (200, "ok\n".to_string())
    );
    // Ready once DynamoDB answered and the tables exist (checked at start, then every 10 s).
    let mut ready = http_get(&metrics_addr, "/readyz");
    for _ in 0..50 {
        if ready.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        ready = http_get(&metrics_addr, "/readyz");
    }
    assert_eq!(ready.0, 200, "{ready:?}");
    assert!(
        ready
            .1
            .starts_with("ready: DynamoDB (embedded in memory at http://127.0.0.1:")
            && ready.1.ends_with(") answers and the tables exist\n"),
        "{ready:?}"
    );

    // A steady workload until the check is done: 20 events every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let workload = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            let url = format!("http://{http_addr}/v1/events/emqx-rule");
            let mut n = 0u32;
            while !stop2.load(Ordering::Relaxed) {
                let rows: Vec<serde_json::Value> = (0..20)
                    .map(|_| {
                        n += 1;
                        match n % 4 {
                            0 => serde_json::json!({"event": "client.connected", "node": "emqx@n1", "clientid": format!("c{}", n % 50)}),
                            1 | 2 => serde_json::json!({"event": "message.publish", "node": "emqx@n1",
                                "id": format!("0005F65F239F03FEF4430000{:08X}", n), "clientid": "p", "topic": format!("t/{}", n % 10),
                                "qos": 1, "payload": "x", "flags": {"retain": n % 10 == 1}}),
                            _ => serde_json::json!({"event": "message.acked", "node": "emqx@n1",
                                "id": format!("0005F65F239F03FEF4430000{:08X}", n - 1), "clientid": "s", "from_clientid": "p",
                                "topic": format!("t/{}", (n - 1) % 10), "qos": 1, "payload": "x"}),
                        }
                    })
                    .collect();
                let req = hyper::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::Value::Array(rows).to_string())))
                    .unwrap();
                let resp = client.request(req).await.expect("the HTTP ingest answers");
                assert_eq!(resp.status(), 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    });

    let out = Command::new("python3")
        .arg(root.join("tests/prometheus/check_dashboard.py"))
        .arg("--dashboard")
        .arg(root.join("dashboards/mqtt-dynamo.json"))
        .args(["--metrics-url", &format!("http://{metrics_addr}/metrics")])
        .arg("--prometheus")
        .arg(&prometheus)
        .arg("--promtool")
        .arg(&promtool)
        .arg("--catalogue")
        .arg(&catalogue)
        .args(["--timeout", "90"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    workload.join().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status();
    let status = serve.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "check_dashboard.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success(), "serve exits cleanly after SIGTERM");
}
