//! The broker adapters over real sockets: the ExHook gRPC server driven by an independent client
//! (Python grpcio with stubs generated from our .proto files, playing EMQX) against the service
//! started in process (as `mqtt-dynamo serve` runs it) on the embedded DynamoDB, and the HTTP
//! ingest with real HTTP requests.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use mqtt_dynamo::broker::Listeners;
use mqtt_dynamo::config::{Config, HttpPublishActions, Secret};
use mqtt_dynamo::guid;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::item::{Item, Key, Table, Value as V};

use mqtt_dynamo::test_util::service::{self, addr};
use mqtt_dynamo::test_util::{Backend, normalized, scan_all};

fn s(v: &str) -> V {
    V::S(v.into())
}

fn item(table: Table, attrs: &[(&str, V)]) -> (Key, Item) {
    let item: Item = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    (
        mqtt_dynamo::storage::dynamo::key_of(table, &item).unwrap(),
        item,
    )
}

fn b62(hex: &str) -> String {
    guid::to_base62(guid::from_hex(hex).unwrap())
}

/// POSTs `body` and returns the status and the JSON answer.
async fn post(url: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .expect("the HTTP ingest answers");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// dynoxide, and the pipeline and the adapters in-process on ephemeral ports against it, with
/// the configuration `tweak` makes.
async fn start(tweak: impl FnOnce(&mut Config)) -> (Backend, Config, Pipeline, Listeners) {
    let backend = Backend::dynoxide().await;
    let mut cfg = backend.config();
    tweak(&mut cfg);
    cfg.exhook.listen = service::EPHEMERAL;
    cfg.http.listen = service::EPHEMERAL;
    let (client, _) = backend.prepare(&cfg).await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let listeners = Listeners::start(&cfg, pipeline.handle()).await.unwrap();
    (backend, cfg, pipeline, listeners)
}

/// The URL of `path` on the HTTP ingest.
fn ingest_url(listeners: &Listeners, path: &str) -> String {
    format!("http://{}{path}", listeners.http_addr.unwrap())
}

const ID1: &str = "0005F65F239F03FEF44300000BB40101";
const ID2: &str = "0005F65F239F03FEF44300000BB40102";

/// Every EMQX 5 rule-engine event kind posted as real HTTP requests lands in the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rule_rows_for_every_event_kind() {
    let (backend, cfg, pipeline, listeners) =
        start(|cfg| cfg.http.publish_actions = HttpPublishActions::All).await;
    let url = ingest_url(&listeners, "/v1/events/emqx-rule");
    let node = "emqx@127.0.0.1";
    let rows = json!([
        {"event": "client.connected", "node": node, "clientid": "c1", "username": "u", "peername": "10.0.0.5:5000",
         "connected_at": 1_700_000_000_000u64, "timestamp": 1_700_000_000_001u64},
        {"event": "client.connected", "node": node, "clientid": "c2", "connected_at": 1_700_000_000_000u64},
        {"event": "client.disconnected", "node": node, "clientid": "c2", "reason": "normal",
         "disconnected_at": 1_700_000_009_000u64},
        {"event": "session.subscribed", "node": node, "clientid": "c1", "topic": "t/#", "qos": 1},
        {"event": "message.publish", "node": node, "id": ID1, "clientid": "c1", "topic": "t/1", "qos": 1,
         "payload": "hello", "flags": {"retain": false, "dup": false}, "publish_received_at": 1_700_000_001_000u64},
        {"event": "message.publish", "node": node, "id": ID2, "clientid": "c1", "topic": "t/2", "qos": 1,
         "payload": "kept", "flags": {"retain": true, "dup": false}, "publish_received_at": 1_700_000_002_000u64},
        {"event": "message.acked", "node": node, "id": ID1, "clientid": "c2", "from_clientid": "c1", "topic": "t/1",
         "qos": 1, "payload": "hello", "flags": {"retain": false}, "publish_received_at": 1_700_000_001_000u64},
        {"event": "session.unsubscribed", "node": node, "clientid": "c1", "topic": "t/#"}
    ]);
    let (status, body) = post(&url, &rows.to_string(), None).await;
    assert_eq!((status, body), (200, json!({"accepted": 8})));
    // One object (not an array) is a row too.
    let one =
        json!({"event": "session.unsubscribed", "node": node, "clientid": "c2", "topic": "t/1"});
    assert_eq!(
        post(&url, &one.to_string(), None).await,
        (200, json!({"accepted": 1}))
    );
    listeners.stop().await;
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.events_received, 9);
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    let msg2 = [
        ("msgid", s(&b62(ID2))),
        ("topic", s("t/2")),
        ("sender", s("c1")),
        ("qos", V::N(1)),
        ("retain", V::N(1)),
        ("payload", s("kept")),
        ("arrived", V::N(1_700_000_002)),
    ];
    let mut retained2 = msg2.to_vec();
    retained2.push(("event_ms", V::N(1_700_000_002_000)));
    let expected: BTreeMap<Key, Item> = [
        item(
            Table::Client,
            &[
                ("clientid", s("c1")),
                ("connect_state", V::N(1)),
                ("node", s(node)),
                ("online_at", V::N(1_700_000_000)),
                ("offline_at", V::N(0)),
                ("event_ms", V::N(1_700_000_000_000)),
                ("connected_ms", V::N(1_700_000_000_000)),
            ],
        ),
        item(
            Table::Client,
            &[
                ("clientid", s("c2")),
                ("connect_state", V::N(0)),
                ("node", s(node)),
                ("online_at", V::N(1_700_000_000)),
                ("offline_at", V::N(1_700_000_009)),
                ("event_ms", V::N(1_700_000_009_000)),
                ("connected_ms", V::N(1_700_000_000_000)),
            ],
        ),
        item(Table::Msg, &msg2),
        item(Table::Retain, &retained2),
        item(
            Table::TopicMsgMap,
            &[
                ("topic", s("t/2")),
                ("MsgId", V::Ss(BTreeSet::from([b62(ID2)]))),
            ],
        ),
    ]
    .into_iter()
    // The topic index: t/1 (its message acked, its entry stays) and t/2, under the first level t.
    .chain(mqtt_dynamo::test_util::index_items(&[
        ("msg", "t/"),
        ("msg|t", "t/1"),
        ("msg|t", "t/2"),
        ("retain", "t/"),
        ("retain|t", "t/2"),
    ]))
    .collect();
    assert_eq!(normalized(&got), expected);
}

/// EMQX 4 web hook JSON for every action; message ids derived so publish and ack agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_emqx4_webhook_for_every_action() {
    let (backend, cfg, pipeline, listeners) =
        start(|cfg| cfg.http.publish_actions = HttpPublishActions::All).await;
    let url = ingest_url(&listeners, "/v1/events/emqx-webhook");
    let node = "emqx@127.0.0.1";
    let rows = json!([
        {"action": "client_connected", "node": node, "clientid": "w1", "username": "u", "ipaddress": "10.0.0.9",
         "keepalive": 60, "proto_ver": 4, "connected_at": 1_700_000_000u64},
        {"action": "session_subscribed", "node": node, "clientid": "w1", "username": "u", "topic": "w/#", "opts": {"qos": 1}},
        {"action": "message_publish", "node": node, "from_client_id": "w1", "from_username": "u", "topic": "w/1",
         "qos": 1, "retain": false, "payload": "one", "ts": 1_700_000_001_000u64},
        {"action": "message_publish", "node": node, "from_client_id": "w1", "from_username": "u", "topic": "w/2",
         "qos": 1, "retain": false, "payload": "two", "ts": 1_700_000_002_000u64},
        {"action": "message_acked", "node": node, "clientid": "w2", "username": "v", "from_client_id": "w1",
         "from_username": "u", "topic": "w/1", "qos": 1, "retain": false, "payload": "one", "ts": 1_700_000_001_000u64},
        {"action": "session_unsubscribed", "node": node, "clientid": "w1", "username": "u", "topic": "w/#"},
        {"action": "client_disconnected", "node": node, "clientid": "w1", "username": "u", "reason": "normal",
         "disconnected_at": 1_700_000_010_000u64}
    ]);
    assert_eq!(
        post(&url, &rows.to_string(), None).await,
        (200, json!({"accepted": 7}))
    );
    listeners.stop().await;
    pipeline.shutdown().await;
    let got = normalized(&scan_all(&backend.prepare(&cfg).await.0, &cfg).await);
    let client = got.get(&Key::new(Table::Client, "w1")).expect("w1 stored");
    assert_eq!(client["connect_state"], V::N(0));
    assert_eq!(client["online_at"], V::N(1_700_000_000));
    assert_eq!(client["offline_at"], V::N(1_700_000_010));
    let msgs: Vec<&Item> = got
        .iter()
        .filter(|(k, _)| k.table == Table::Msg)
        .map(|(_, i)| i)
        .collect();
    assert_eq!(
        msgs.len(),
        1,
        "the acked message is gone, the other stays: {msgs:?}"
    );
    assert_eq!(msgs[0]["payload"], s("two"));
    let acked: Vec<&Key> = got.keys().filter(|k| k.table == Table::Acked).collect();
    assert_eq!(acked, [&Key::with_range(Table::Acked, "w/1", "w2")]);
    let map = got
        .get(&Key::new(Table::TopicMsgMap, "w/2"))
        .expect("w/2 map");
    assert_eq!(
        map["MsgId"],
        V::Ss(
            BTreeSet::from([msgs[0]["msgid"].clone()])
                .into_iter()
                .map(|v| match v {
                    V::S(s) => s,
                    _ => unreachable!(),
                })
                .collect()
        )
    );
    assert!(!got.contains_key(&Key::new(Table::TopicMsgMap, "w/1")));
}

/// Bad bodies get a 4xx with a JSON error naming the field, nothing of the request is queued,
/// the token is required when configured, and the body limit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rejects_bad_input_and_requires_the_token() {
    let (backend, cfg, pipeline, listeners) = start(|cfg| {
        cfg.http.token = Some(Secret::new("s3cret"));
        cfg.http.max_body_bytes = 1024;
    })
    .await;
    let url = ingest_url(&listeners, "/v1/events/emqx-rule");
    let ok_row = json!({"event": "client.connected", "node": "n", "clientid": "c1"}).to_string();
    let tok = Some("s3cret");

    let (status, body) = post(&url, &ok_row, None).await;
    assert_eq!(
        (status, &body["error"], &body["field"]),
        (
            401,
            &json!("missing or wrong bearer token"),
            &json!("Authorization")
        )
    );
    assert_eq!(post(&url, &ok_row, Some("wrong")).await.0, 401);

    let (status, body) = post(&url, "{not json", tok).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("body is not JSON"),
        "{body}"
    );

    // The second row is bad: nothing of the request may be queued.
    let rows = json!([
        {"event": "client.connected", "node": "n", "clientid": "c2"},
        {"event": "session.subscribed", "node": "n", "topic": "t"}
    ]);
    let (status, body) = post(&url, &rows.to_string(), tok).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "is required", "field": "[1].clientid"})
        )
    );

    let bad_id = json!({"event": "message.publish", "node": "n", "id": "xyz", "clientid": "c", "topic": "t", "qos": 1,
                        "payload": "x", "flags": {"retain": true}});
    let (status, body) = post(&url, &bad_id.to_string(), tok).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], json!("[0]"));
    assert_eq!(
        body["error"],
        json!("message id \"xyz\" is not a 32-digit hex GUID")
    );

    let (status, body) = post(&url, &json!({"event": "message.dropped"}).to_string(), tok).await;
    assert_eq!((status, &body["field"]), (400, &json!("[0].event")));

    let (status, body) = post(&url, &json!([1, 2]).to_string(), tok).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "each row must be a JSON object", "field": "[0]"})
        )
    );

    let big =
        json!({"event": "client.connected", "node": "n", "clientid": "x".repeat(2000)}).to_string();
    let (status, body) = post(&url, &big, tok).await;
    assert_eq!(status, 413, "{body}");

    let (status, _) = post(&format!("{url}?payload_encoding=rot13"), &ok_row, tok).await;
    assert_eq!(status, 400);

    assert_eq!(
        post(&url, &ok_row, tok).await,
        (200, json!({"accepted": 1}))
    );
    listeners.stop().await;
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.events_received, 1, "only the good request was queued");
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        [Key::new(Table::Client, "c1")]
    );
}

fn python() -> PathBuf {
    let p = std::env::var_os("MQTT_DYNAMO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python")
        });
    assert!(
        p.exists(),
        "grpcio is not installed at {}: run scripts/test (it creates target/test-venv)",
        p.display()
    );
    p
}

/// The Python with grpcio, a scratch directory `mqtt-dynamo-<name>-<pid>`, and in it `stubs/`
/// generated by grpc_tools.protoc from the project's ExHook protos of the `versions` named.
fn python_stubs(name: &str, versions: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let py = python();
    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-{name}-{}", std::process::id()));
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let status = Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args(
            versions
                .iter()
                .map(|v| format!("emqx/exhook/{v}/exhook.proto")),
        )
        .status()
        .unwrap();
    assert!(
        status.success(),
        "grpc_tools.protoc compiles the project's protos"
    );
    (py, dir, stubs)
}

/// Runs `command` on a blocking thread (the service under test shares this runtime) and asserts
/// that it succeeded (`what` failed: its stdout and stderr); its output.
async fn run_ok(mut command: Command, what: &str) -> std::process::Output {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the Python client (on a blocking thread: the service under test shares this runtime).
async fn run_client(
    py: &PathBuf,
    stubs: &std::path::Path,
    target: &str,
    api: &str,
    mode: &str,
) -> Value {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/emqx_client/exhook_client.py");
    let mut command = Command::new(py);
    command
        .arg(script)
        .args(["--target", target, "--api", api, "--mode", mode, "--stubs"])
        .arg(stubs);
    let out = run_ok(command, &format!("{api} {mode}")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap()
}

/// An independent client plays EMQX over ExHook v2 and v3 against the service in process on the
/// embedded DynamoDB; retained publishes come through the HTTP ingest as an EMQX rule would post
/// them; the tables are read back through the SDK and compared item by item. Malformed requests,
/// an unknown RPC, invalid UTF-8 and an oversized payload get proper statuses and the server keeps
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_plays_exhook_v2_and_v3_against_serve() {
    let (py, dir, stubs) = python_stubs("adapters", &["v2", "v3"]);
    let cfg = service::parse("[pipeline]\nmax_batch_age = \"5ms\"\n");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let serve = service::start(&cfg).await;
    let (exhook, http) = (addr(serve.addrs().exhook), addr(serve.addrs().http));
    let rule_url = format!("http://{http}/v1/events/emqx-rule");

    let mut expected: BTreeMap<Key, Item> = BTreeMap::new();
    for api in ["v2", "v3"] {
        let out = run_client(&py, &stubs, &exhook, api, "scenario").await;
        let hooks: BTreeSet<&str> = out["hooks"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            hooks,
            BTreeSet::from([
                "client.connected",
                "client.disconnected",
                "session.unsubscribed",
                "message.publish",
                "message.acked"
            ]),
            "OnProviderLoaded registers the hooks the write rules use"
        );
        assert!(
            out["hooks"]
                .as_object()
                .unwrap()
                .values()
                .all(|t| t == &json!([])),
            "'#' rules: every topic"
        );
        for r in out["publish_responses"].as_array().unwrap() {
            assert_eq!(r["type"], json!("CONTINUE"));
            assert_ne!(r["message_untouched"], json!(false));
        }
        assert_eq!(out["errors"], json!([]));
        let abuse = run_client(&py, &stubs, &exhook, api, "abuse").await;
        assert_eq!(abuse["unknown_rpc"], json!("UNIMPLEMENTED"));
        assert_eq!(abuse["after"], json!("OK"));
        // Refused as too large to store, yet CONTINUE with the message unchanged: a persistence
        // provider must not stop EMQX's hook chain (failed_action = deny would).
        assert_eq!(abuse["huge_payload"]["code"], json!("OK"), "{abuse}");
        assert_eq!(abuse["huge_payload"]["type"], json!("CONTINUE"), "{abuse}");
        assert_eq!(
            abuse["huge_payload"]["message_untouched"],
            json!(true),
            "{abuse}"
        );
        for code in [&abuse["malformed"], &abuse["invalid_utf8"]] {
            assert!(code != "OK" && code != "UNAVAILABLE", "{abuse}");
        }

        // Retained messages come through an EMQX rule (`WHERE flags.retain = true`).
        let t = api;
        let rid = |n: u32| {
            format!(
                "0005F65F239F03FEF44300000BB4{:04X}",
                0x300 + n + if api == "v3" { 0x10 } else { 0 }
            )
        };
        let rows = json!([
            {"event": "message.publish", "node": "emqx@127.0.0.1", "id": rid(1), "clientid": format!("pub-{t}"),
             "topic": format!("{t}/r/1"), "qos": 1, "payload": "on", "flags": {"retain": true}, "publish_received_at": 1_700_000_010_000u64},
            {"event": "message.publish", "node": "emqx@127.0.0.1", "id": rid(2), "clientid": format!("pub-{t}"),
             "topic": format!("{t}/r/2"), "qos": 0, "payload": "x", "flags": {"retain": true}, "publish_received_at": 1_700_000_011_000u64},
            {"event": "message.publish", "node": "emqx@127.0.0.1", "id": rid(3), "clientid": format!("pub-{t}"),
             "topic": format!("{t}/r/2"), "qos": 1, "payload": "", "flags": {"retain": true}, "publish_received_at": 1_700_000_012_000u64}
        ]);
        assert_eq!(
            post(&rule_url, &rows.to_string(), None).await,
            (200, json!({"accepted": 3}))
        );

        // What this run must leave, from the client's own record of what it sent.
        let msgs = out["messages"].as_array().unwrap();
        let id = |i: usize| msgs[i]["id"].as_str().unwrap().to_string();
        let node = "emqx@127.0.0.1";
        for i in [2usize, 3] {
            let m = &msgs[i];
            let payload = hex_decode(m["payload_hex"].as_str().unwrap());
            let payload = match String::from_utf8(payload.clone()) {
                Ok(text) => s(&text),
                Err(_) => V::B(payload),
            };
            let attrs = [
                ("msgid", s(&b62(&id(i)))),
                ("topic", s(m["topic"].as_str().unwrap())),
                ("sender", s(&format!("pub-{t}"))),
                ("qos", V::N(m["qos"].as_i64().unwrap())),
                ("retain", V::N(0)),
                ("payload", payload),
                ("arrived", V::N(m["timestamp"].as_i64().unwrap() / 1000)),
            ];
            let (k, v) = item(Table::Msg, &attrs);
            expected.insert(k, v);
            let (k, v) = item(
                Table::TopicMsgMap,
                &[
                    ("topic", s(m["topic"].as_str().unwrap())),
                    ("MsgId", V::Ss(BTreeSet::from([b62(&id(i))]))),
                ],
            );
            expected.insert(k, v);
        }
        let (k, v) = item(
            Table::Acked,
            &[
                ("topic", s(&format!("{t}/t/1"))),
                ("clientid", s(&format!("sub-{t}"))),
                ("msgid", s(&b62(&id(1)))),
            ],
        );
        expected.insert(k, v);
        let (k, v) = item(
            Table::Retain,
            &[
                ("topic", s(&format!("{t}/r/1"))),
                ("msgid", s(&b62(&rid(1)))),
                ("sender", s(&format!("pub-{t}"))),
                ("qos", V::N(1)),
                ("retain", V::N(1)),
                ("payload", s("on")),
                ("arrived", V::N(1_700_000_010)),
                ("event_ms", V::N(1_700_000_010_000)),
            ],
        );
        expected.insert(k, v);
        // The cleared retained message: a tombstone at the clear's time, expiring a day later.
        let (k, v) = item(
            Table::Retain,
            &[
                ("topic", s(&format!("{t}/r/2"))),
                ("event_ms", V::N(1_700_000_012_000)),
                ("expires_at", V::N(1_700_000_012 + 86_400)),
            ],
        );
        expected.insert(k, v);
        // The topic index: every topic a QoS > 0 message was published to (acked or not: entries
        // stay), and both retained topics (r/2 cleared: its entry stays), under the first level t.
        let index =
            |bucket: String, topic: String| mqtt_dynamo::test_util::index_item(&bucket, &topic);
        for m in msgs.iter().filter(|m| m["qos"].as_i64() > Some(0)) {
            let topic = m["topic"].as_str().unwrap().to_string();
            expected.extend([
                index(format!("msg|{t}"), topic),
                index("msg".into(), format!("{t}/")),
            ]);
        }
        for r in ["r/1", "r/2"] {
            expected.extend([
                index(format!("retain|{t}"), format!("{t}/{r}")),
                index("retain".into(), format!("{t}/")),
            ]);
        }
        // Clients: times are the server's clock (ExHook carries none); checked by range below.
        for (c, state) in [
            (format!("pub-{t}"), 0),
            (format!("sub-{t}"), 1),
            (format!("abuse-{t}"), 1),
        ] {
            let (k, v) = item(
                Table::Client,
                &[
                    ("clientid", s(&c)),
                    ("connect_state", V::N(state)),
                    ("node", s(node)),
                ],
            );
            expected.insert(k, v);
        }
    }

    // Read back through the SDK until the pipeline has flushed (bounded).
    let client = service::dynamo_client(&serve, &cfg).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let strip_times = |mut got: BTreeMap<Key, Item>| {
        for (k, item) in got.iter_mut() {
            if k.table == Table::Client {
                let online = item.remove("online_at");
                let offline = item.remove("offline_at");
                // Event times in milliseconds: the connect's, and the last event's.
                let connected = item.remove("connected_ms");
                let event = item.remove("event_ms");
                assert!(
                    matches!((&connected, &event), (Some(V::N(c)), Some(V::N(e)))
                        if *c >= started * 1000 && c <= e && *e <= (now + 30) * 1000),
                    "{connected:?} {event:?}"
                );
                assert!(
                    matches!(online, Some(V::N(t)) if t >= started && t <= now + 30),
                    "{online:?}"
                );
                match item.get("connect_state") {
                    Some(V::N(0)) => {
                        assert!(matches!(offline, Some(V::N(t)) if t >= started && t <= now + 30))
                    }
                    _ => assert_eq!(offline, Some(V::N(0))),
                }
            }
        }
        got
    };
    let got = loop {
        let got = strip_times(normalized(&scan_all(&client, &cfg).await));
        if got == expected || Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, expected);

    // Shutdown stops the listeners (the binary's SIGTERM path is tests/pipeline/shutdown.rs).
    let stats = serve.shutdown().await;
    assert_eq!(stats.dropped(), 0, "{stats}");
    for listener in [&exhook, &http] {
        assert!(
            tokio::net::TcpStream::connect(listener.as_str())
                .await
                .is_err(),
            "{listener} is closed after shutdown"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn hex_decode(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// With `tls_cert`/`tls_key` set, both listeners speak TLS: EMQX's part is played over a secure
/// gRPC channel and the rule rows are posted over HTTPS, each trusting the test's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_listeners() {
    let (py, dir, stubs) = python_stubs("tls", &["v3"]);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let (backend, cfg, pipeline, listeners) = start(|cfg| {
        cfg.exhook.tls_cert = Some(cert.clone());
        cfg.exhook.tls_key = Some(key.clone());
        cfg.http.tls_cert = Some(cert.clone());
        cfg.http.tls_key = Some(key.clone());
    })
    .await;
    let grpc_target = format!("localhost:{}", listeners.exhook_addr.unwrap().port());
    let https_url = format!(
        "https://localhost:{}/v1/events/emqx-rule",
        listeners.http_addr.unwrap().port()
    );

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/emqx_client/exhook_client.py");
    let mut client = Command::new(&py);
    client
        .arg(script)
        .args([
            "--target",
            &grpc_target,
            "--api",
            "v3",
            "--mode",
            "scenario",
        ])
        .args(["--tag", "tls", "--ca"])
        .arg(&cert)
        .arg("--stubs")
        .arg(&stubs);
    run_ok(client, "the v3 scenario over TLS").await;

    let post_https = "import json, ssl, sys, urllib.request\n\
         ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
         body = json.dumps({'event': 'client.connected', 'node': 'n', 'clientid': 'over-https'}).encode()\n\
         req = urllib.request.Request(sys.argv[1], data=body, headers={'content-type': 'application/json'})\n\
         print(urllib.request.urlopen(req, context=ctx).read().decode())\n";
    let mut poster = Command::new(&py);
    poster.args(["-c", post_https, &https_url]).arg(&cert);
    let out = run_ok(poster, "the HTTPS post").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"accepted":1}"#
    );

    listeners.stop().await;
    pipeline.shutdown().await;
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    for c in ["pub-tls", "sub-tls", "over-https"] {
        assert!(
            got.contains_key(&Key::new(Table::Client, c)),
            "{c} missing: {:?}",
            got.keys()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Throwaway PKI for the mutual-TLS and reload tests: CAs, and the certificates they issue.
mod pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };

    /// A certificate authority.
    pub struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// A certificate chain (the leaf alone) and its key, in PEM, and the leaf in DER.
    pub struct Leaf {
        pub cert: String,
        pub key: String,
        pub der: Vec<u8>,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Ca { issuer }
        }

        pub fn pem(&self) -> String {
            self.issuer.pem()
        }

        fn issue(&self, purpose: ExtendedKeyUsagePurpose) -> Leaf {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf {
                cert: cert.pem(),
                key: key.serialize_pem(),
                der: cert.der().to_vec(),
            }
        }

        /// A server certificate for `localhost`.
        pub fn server(&self) -> Leaf {
            self.issue(ExtendedKeyUsagePurpose::ServerAuth)
        }

        /// A client certificate.
        pub fn client(&self) -> Leaf {
            self.issue(ExtendedKeyUsagePurpose::ClientAuth)
        }
    }
}

/// A TLS connection to `addr` (as `localhost`) trusting only `server_ca`, presenting `client` if
/// given, offering `alpn`; also the leaf certificate the server presented.
async fn tls_connect(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: Option<&pki::Leaf>,
    alpn: &[u8],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((tls, presented))
}

/// An HTTP/1.1 connection over TLS to the HTTP ingest, kept open for several requests.
struct HttpsConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpsConnection {
    async fn open(
        addr: std::net::SocketAddr,
        server_ca: &str,
        client: Option<&pki::Leaf>,
    ) -> Result<HttpsConnection, String> {
        let (tls, _) = tls_connect(addr, server_ca, client, b"http/1.1")
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(HttpsConnection { sender })
    }

    /// Posts a `client.connected` rule row for `clientid`: the status and the JSON answer.
    async fn connected(&mut self, clientid: &str) -> Result<(u16, Value), String> {
        let row = json!({"event": "client.connected", "node": "n", "clientid": clientid});
        let req = hyper::Request::post("/v1/events/emqx-rule")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(row.to_string())))
            .unwrap();
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// Posts one `client.connected` row over a new HTTPS connection.
async fn https_connected(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: Option<&pki::Leaf>,
    clientid: &str,
) -> Result<(u16, Value), String> {
    let mut conn = HttpsConnection::open(addr, server_ca, client).await?;
    conn.connected(clientid).await
}

/// A tonic channel to the ExHook server trusting only `server_ca`, presenting `client`.
async fn exhook_channel(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: Option<&pki::Leaf>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// `client.connected` for `clientid` over `channel` (ExHook v3).
async fn exhook_connected(
    channel: tonic::transport::Channel,
    clientid: &str,
) -> Result<(), tonic::Status> {
    use mqtt_dynamo::broker::exhook::v3;
    let req = v3::ClientConnectedRequest {
        clientinfo: Some(v3::ClientInfo {
            node: "n".into(),
            clientid: clientid.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    v3::hook_provider_client::HookProviderClient::new(channel)
        .on_client_connected(req)
        .await
        .map(|_| ())
}

/// A client `client.connected` over a new ExHook channel: `Err` if the connection or the call
/// is refused.
async fn exhook_call(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: Option<&pki::Leaf>,
    clientid: &str,
) -> Result<(), String> {
    let channel = exhook_channel(addr, server_ca, client)
        .await
        .map_err(|e| format!("{e:?}"))?;
    exhook_connected(channel, clientid)
        .await
        .map_err(|e| e.to_string())
}

/// A directory of its own for a test's certificate files.
fn cert_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `leaf` to the files `cfg`'s listeners use (through a rename each, so a poll never
/// reads half a file).
fn install(leaf: &pki::Leaf, cert: &std::path::Path, key: &std::path::Path) {
    for (path, text) in [(cert, &leaf.cert), (key, &leaf.key)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// With `tls_client_ca` on both listeners, a client certificate from that CA is accepted and
/// its hook call or request is stored; no certificate, or one from another CA, is refused at
/// the handshake (nothing is stored for those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_only_clients_of_the_configured_ca() {
    let dir = cert_dir("mtls");
    let (server_ca, client_ca, other_ca) = (
        pki::Ca::new("server CA"),
        pki::Ca::new("client CA"),
        pki::Ca::new("other CA"),
    );
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    install(&server_ca.server(), &cert, &key);
    std::fs::write(&ca, client_ca.pem()).unwrap();
    let (backend, cfg, pipeline, listeners) = start(|cfg| {
        for (c, k, a) in [
            (
                &mut cfg.exhook.tls_cert,
                &mut cfg.exhook.tls_key,
                &mut cfg.exhook.tls_client_ca,
            ),
            (
                &mut cfg.http.tls_cert,
                &mut cfg.http.tls_key,
                &mut cfg.http.tls_client_ca,
            ),
        ] {
            (*c, *k, *a) = (Some(cert.clone()), Some(key.clone()), Some(ca.clone()));
        }
    })
    .await;
    let (grpc, http) = (listeners.exhook_addr.unwrap(), listeners.http_addr.unwrap());
    let (ours, theirs) = (client_ca.client(), other_ca.client());
    let roots = server_ca.pem();

    exhook_call(grpc, &roots, Some(&ours), "mtls-grpc")
        .await
        .expect("a client of the configured CA is served");
    assert_eq!(
        https_connected(http, &roots, Some(&ours), "mtls-http").await,
        Ok((200, json!({"accepted": 1})))
    );
    for (client, id) in [(None, "no-cert"), (Some(&theirs), "other-ca")] {
        let refused = exhook_call(grpc, &roots, client, &format!("{id}-grpc")).await;
        assert!(refused.is_err(), "ExHook, {id}: {refused:?}");
        let refused = https_connected(http, &roots, client, &format!("{id}-http")).await;
        assert!(refused.is_err(), "HTTP, {id}: {refused:?}");
    }

    listeners.stop().await;
    pipeline.shutdown().await;
    let got = scan_all(&backend.prepare(&cfg).await.0, &cfg).await;
    let clients: BTreeSet<&str> = got
        .keys()
        .filter(|k| k.table == Table::Client)
        .map(|k| k.hash.as_str())
        .collect();
    assert_eq!(clients, BTreeSet::from(["mtls-grpc", "mtls-http"]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `tls_client_ca` file without a certificate in it stops the start, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_file_without_certificates_is_a_start_error() {
    let dir = cert_dir("mtls-empty-ca");
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    install(&pki::Ca::new("server CA").server(), &cert, &key);
    std::fs::write(&ca, "no certificate here\n").unwrap();
    let mut cfg = service::parse("[exhook]\nenabled = false\n");
    cfg.http.tls_cert = Some(cert);
    cfg.http.tls_key = Some(key);
    cfg.http.tls_client_ca = Some(ca.clone());
    let err = match mqtt_dynamo::service::start(&service::ephemeral(cfg)).await {
        Ok(_) => panic!("the service started with an empty client CA file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&ca.display().to_string()) && err.contains("no usable PEM certificate"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mqtt_dynamo_tls_reloads_total` by (listener, outcome), scraped.
async fn tls_reloads(metrics: &str) -> BTreeMap<(String, String), f64> {
    let (_, text) = tokio::task::spawn_blocking({
        let addr = metrics.to_string();
        move || support::http_get(&addr, "/metrics")
    })
    .await
    .unwrap();
    text.lines()
        .filter(|l| l.starts_with("mqtt_dynamo_tls_reloads_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let label = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_string)
            };
            Some(((label("listener")?, label("outcome")?), value.parse().ok()?))
        })
        .collect()
}

/// Reloads on both listeners (mutual TLS on): after new files and a reload (SIGHUP's call), a
/// new connection gets the new server certificate while connections opened before keep working;
/// a reload of a garbage key fails, is counted, and the listener goes on with the certificate it
/// had; and a changed file is picked up by the listener's own poll, with no call at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reloads_reach_new_connections_and_spare_open_ones() {
    let dir = cert_dir("tls-reload");
    let (ca1, ca2, ca3, client_ca) = (
        pki::Ca::new("server CA 1"),
        pki::Ca::new("server CA 2"),
        pki::Ca::new("server CA 3"),
        pki::Ca::new("client CA"),
    );
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    install(&ca1.server(), &cert, &key);
    std::fs::write(&ca, client_ca.pem()).unwrap();
    let mut cfg = service::parse("");
    for (c, k, a) in [
        (
            &mut cfg.exhook.tls_cert,
            &mut cfg.exhook.tls_key,
            &mut cfg.exhook.tls_client_ca,
        ),
        (
            &mut cfg.http.tls_cert,
            &mut cfg.http.tls_key,
            &mut cfg.http.tls_client_ca,
        ),
    ] {
        (*c, *k, *a) = (Some(cert.clone()), Some(key.clone()), Some(ca.clone()));
    }
    let serve = service::start(&cfg).await;
    let (grpc, http) = (serve.addrs().exhook.unwrap(), serve.addrs().http.unwrap());
    let metrics = addr(serve.addrs().metrics);
    let reload = serve.tls_reload();
    let me = client_ca.client();
    let counts = |listener| reload.counts(listener).expect("the listener uses TLS");

    // Connections opened before any reload, trusting only the first server CA.
    let old_channel = exhook_channel(grpc, &ca1.pem(), Some(&me)).await.unwrap();
    exhook_connected(old_channel.clone(), "before-grpc")
        .await
        .unwrap();
    let mut old_https = HttpsConnection::open(http, &ca1.pem(), Some(&me))
        .await
        .unwrap();
    assert_eq!(
        old_https.connected("before-http").await,
        Ok((200, json!({"accepted": 1})))
    );

    // New files, then the reload SIGHUP calls.
    let second = ca2.server();
    install(&second, &cert, &key);
    let before = (counts("exhook"), counts("http"));
    let outcomes = tokio::task::spawn_blocking({
        let reload = reload.clone();
        move || reload.reload()
    })
    .await
    .unwrap();
    assert_eq!(outcomes.len(), 2);
    for (listener, outcome) in &outcomes {
        assert!(outcome.is_ok(), "{listener}: {outcome:?}");
    }
    assert!(counts("exhook").reloaded > before.0.reloaded);
    assert!(counts("http").reloaded > before.1.reloaded);
    for addr in [grpc, http] {
        let (_, presented) = tls_connect(addr, &ca2.pem(), Some(&me), b"h2")
            .await
            .unwrap();
        assert_eq!(presented, second.der, "{addr}: the new certificate");
        assert!(
            tls_connect(addr, &ca1.pem(), Some(&me), b"h2")
                .await
                .is_err(),
            "{addr}: the old certificate is gone for new connections"
        );
    }
    exhook_call(grpc, &ca2.pem(), Some(&me), "after-grpc")
        .await
        .unwrap();
    assert_eq!(
        https_connected(http, &ca2.pem(), Some(&me), "after-http").await,
        Ok((200, json!({"accepted": 1})))
    );
    // The connections opened before still work (the channel trusts only the first CA, so it
    // could not have reconnected).
    exhook_connected(old_channel.clone(), "still-grpc")
        .await
        .unwrap();
    assert_eq!(
        old_https.connected("still-http").await,
        Ok((200, json!({"accepted": 1})))
    );

    // A garbage key: the reload fails, naming the file, and is counted; the listeners go on
    // with the certificate they had.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let before = (counts("exhook"), counts("http"));
    let outcomes = tokio::task::spawn_blocking({
        let reload = reload.clone();
        move || reload.reload()
    })
    .await
    .unwrap();
    for (listener, outcome) in &outcomes {
        let err = outcome
            .as_ref()
            .expect_err("a garbage key does not load")
            .to_string();
        assert!(
            err.contains(&key.display().to_string()),
            "{listener}: {err}"
        );
    }
    assert!(counts("exhook").failed > before.0.failed);
    assert!(counts("http").failed > before.1.failed);
    let scraped = tls_reloads(&metrics).await;
    for listener in ["exhook", "http"] {
        let failed = scraped.get(&(listener.to_string(), "failed".to_string()));
        assert!(failed.is_some_and(|n| *n >= 1.0), "{listener}: {scraped:?}");
    }
    for addr in [grpc, http] {
        let (_, presented) = tls_connect(addr, &ca2.pem(), Some(&me), b"h2")
            .await
            .unwrap();
        assert_eq!(
            presented, second.der,
            "{addr}: still the certificate before the failure"
        );
    }
    exhook_call(grpc, &ca2.pem(), Some(&me), "failed-grpc")
        .await
        .unwrap();
    assert_eq!(
        https_connected(http, &ca2.pem(), Some(&me), "failed-http").await,
        Ok((200, json!({"accepted": 1})))
    );

    // Changed files and no call: the listeners' poll reloads within a period or two.
    let third = ca3.server();
    let before = (counts("exhook"), counts("http"));
    install(&third, &cert, &key);
    let deadline = Instant::now() + mqtt_dynamo::broker::TLS_POLL_PERIOD * 4;
    while counts("exhook").reloaded == before.0.reloaded
        || counts("http").reloaded == before.1.reloaded
    {
        assert!(
            Instant::now() < deadline,
            "no reload after the files changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for addr in [grpc, http] {
        let (_, presented) = tls_connect(addr, &ca3.pem(), Some(&me), b"h2")
            .await
            .unwrap();
        assert_eq!(
            presented, third.der,
            "{addr}: the certificate of the changed files"
        );
    }
    exhook_connected(old_channel, "last-grpc").await.unwrap();
    assert_eq!(
        old_https.connected("last-http").await,
        Ok((200, json!({"accepted": 1})))
    );

    let stats = serve.shutdown().await;
    assert_eq!(stats.dropped(), 0, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `when_full = "drop"` and DynamoDB unreachable, the HTTP ingest answers 503 with how many
/// rows it accepted once the queues are full, and every drop is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_full_queue_answers_503_and_counts_the_drop() {
    let stalled = mqtt_dynamo::test_util::stalled::Stalled::start().await;
    let mut cfg = stalled.tiny_config();
    cfg.http.when_full = mqtt_dynamo::config::WhenFull::Drop;
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.exhook.enabled = false;
    let client = mqtt_dynamo::storage::dynamo::client(
        &cfg.dynamodb,
        None,
        mqtt_dynamo::storage::dynamo::SdkRetries::Disabled,
    )
    .await;
    let pipeline = Pipeline::from_config(&cfg, client).unwrap();
    let listeners = Listeners::start(&cfg, pipeline.handle()).await.unwrap();
    let url = ingest_url(&listeners, "/v1/events/emqx-rule");
    let rows: Vec<Value> = (0..50)
        .map(|i| json!({"event": "client.connected", "node": "n", "clientid": format!("k{i}")}))
        .collect();
    let (status, body) = post(&url, &Value::Array(rows).to_string(), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], json!("ingest queue is full"));
    assert_eq!(body["rows"], json!(50));
    let accepted = body["accepted"].as_u64().unwrap();
    assert!(accepted < 50);
    listeners.stop().await;
    let stats = pipeline.shutdown().await;
    assert_eq!(stats.events_received, accepted);
    assert_eq!(
        stats.rejected_full,
        50 - accepted,
        "the refused row and every row after it"
    );
    assert_eq!(
        stats.dropped_retries_exhausted, accepted,
        "accepted writes that never landed are counted"
    );
}

/// `mqtt-dynamo config import` turns the seed's EMQX 4 file into TOML that loads with the seed's
/// rules, and warns about what it cannot map.
#[test]
fn config_import_command_translates_the_seed_file() {
    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("emqx_backend_dynamo.conf");
    std::fs::write(
        &conf,
        r##"## DynamoDB Region
backend.dynamo.region = us-west-2
backend.dynamo.pool1.server = http://localhost:8000
backend.dynamo.pool1.pool_size = 8
backend.dynamo.pool1.aws_access_key_id = EXAMPLE_ACCESS_KEY_ID
backend.dynamo.pool1.aws_secret_access_key = EXAMPLE_SECRET_ACCESS_KEY
backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}
backend.dynamo.hook.session.created.1 = {"action": {"function": "on_subscribe_lookup"}, "pool": "pool1"}
backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool1"}
backend.dynamo.hook.session.subscribed.1 = {"topic": "#", "action": {"function": "on_message_fetch_for_queue"}, "pool": "pool1"}
backend.dynamo.hook.session.subscribed.2 = {"topic": "#", "action": {"function": "on_retain_lookup"}, "pool": "pool1"}
backend.dynamo.hook.session.unsubscribed.1= {"topic": "#", "action": {"function": "on_acked_delete"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.2 = {"topic": "#", "action": {"function": "on_message_retain"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.3 = {"topic": "#", "action": {"function": "on_retain_delete"}, "pool": "pool1"}
backend.dynamo.hook.message.acked.1 = {"topic": "#", "action": {"function": "on_message_acked_for_queue"}, "pool": "pool1"}
# backend.dynamo.hook.message.publish.4 = {"topic": "#", "action": {"function": "on_message_store"}, "pool": "pool1"}
"##,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
        .args(["config", "import"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    let toml = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pool_size"), "{stderr}");
    assert!(
        !stderr.contains("EXAMPLE_SECRET_ACCESS_KEY"),
        "secrets never in warnings"
    );
    let cfg = Config::parse(&toml, "imported.toml").unwrap();
    assert_eq!(cfg.dynamodb.region(), "us-west-2");
    assert_eq!(
        cfg.dynamodb.endpoint_url.as_deref(),
        Some("http://localhost:8000")
    );
    assert_eq!(cfg.dynamodb.embedded, Some(false));
    let rules = cfg.rule_set().unwrap();
    assert_eq!(
        rules.rules(),
        mqtt_dynamo::rules::RuleSet::default().rules()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Bad input: the README's table, sent row by row.

/// One row of the README's bad-input table.
#[derive(Debug)]
struct BadInput {
    case: String,
    listener: String,
    answer: String,
    counted: String,
}

fn bad_inputs() -> Vec<BadInput> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("<!-- bad-inputs:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- bad-inputs:end -->").next())
        .expect("the README has the bad-input table");
    table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| case") && !l.starts_with("|---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            assert_eq!(cells.len(), 5, "five cells: {l}");
            BadInput {
                case: cells[0].clone(),
                listener: cells[1].clone(),
                answer: cells[3].clone(),
                counted: cells[4].clone(),
            }
        })
        .collect()
}

const TOKEN: Option<&str> = Some("s3cret");

/// What a bad input got.
#[derive(Debug)]
enum Answer {
    Http(u16, Value),
    Grpc(Result<(), tonic::Code>),
    /// `OnMessagePublish`: the response type and whether the message came back unchanged.
    Publish(String, Option<bool>),
}

/// A raw HTTP request: (status, JSON body or Null).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: String,
    token: Option<&str>,
) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("the HTTP listener answers");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn publish_row(topic: &str, extra: Value) -> String {
    let mut row = json!({"event": "message.publish", "node": "n", "id": ID1, "clientid": "c",
                         "topic": topic, "qos": 1, "payload": "x", "flags": {"retain": false}});
    for (k, v) in extra.as_object().unwrap() {
        row[k] = v.clone();
    }
    row.to_string()
}

async fn send_bad_input(case: &str, http_addr: &str, exhook: &str) -> Answer {
    use mqtt_dynamo::broker::exhook::v3;
    let rule = "/v1/events/emqx-rule";
    let post = |path: &str, body: String| {
        let path = path.to_string();
        async move { http(http_addr, "POST", &path, body, TOKEN).await }
    };
    let bare = |method: &'static str, path: &str, token: Option<&'static str>| {
        let path = path.to_string();
        async move { http(http_addr, method, &path, String::new(), token).await }
    };
    let connected =
        |id: &str| json!({"event": "client.connected", "node": "n", "clientid": id}).to_string();
    let long = "x".repeat(3000);
    let (status, body) = match case {
        "h-no-token" => http(http_addr, "POST", rule, connected("c"), None).await,
        "h-wrong-token" => http(http_addr, "POST", rule, connected("c"), Some("wrong")).await,
        "h-not-json" => post(rule, "{".into()).await,
        "h-row-not-object" => post(rule, "[1]".into()).await,
        "h-unknown-event" => post(rule, json!({"event": "client.sneezed"}).to_string()).await,
        "h-missing-clientid" => {
            post(
                rule,
                json!({"event": "client.connected", "node": "n"}).to_string(),
            )
            .await
        }
        "h-qos-7" => post(rule, publish_row("t", json!({"qos": 7}))).await,
        "h-qos-string" => post(rule, publish_row("t", json!({"qos": "x"}))).await,
        "h-bad-msgid" => post(rule, publish_row("t", json!({"id": "xyz"}))).await,
        "h-topic-plus" => post(rule, publish_row("w/+", json!({}))).await,
        "h-topic-hash" => post(rule, publish_row("w/#", json!({}))).await,
        "h-topic-nul" => post(rule, publish_row("a\u{0}b", json!({}))).await,
        "h-topic-long" => post(rule, publish_row(&"t".repeat(70_000), json!({}))).await,
        "h-topic-empty" => post(rule, publish_row("", json!({}))).await,
        "h-ack-topic-plus" => {
            let row = json!({"event": "message.acked", "node": "n", "id": ID1, "clientid": "s",
                             "from_clientid": "c", "topic": "w/+", "qos": 1, "payload": "x"});
            post(rule, row.to_string()).await
        }
        "h-retain-not-bool" => {
            post(rule, publish_row("t", json!({"flags": {"retain": "yes"}}))).await
        }
        "h-flags-not-object" => post(rule, publish_row("t", json!({"flags": 1}))).await,
        "h-bad-base64" => {
            let row = publish_row("t", json!({"payload": "!!!"}));
            post(&format!("{rule}?payload_encoding=base64"), row).await
        }
        "h-unknown-encoding" => {
            post(&format!("{rule}?payload_encoding=rot13"), connected("c")).await
        }
        "h-query-twice" => {
            let path = format!("{rule}?payload_encoding=plain&payload_encoding=base64");
            post(&path, connected("c")).await
        }
        "h-negative-time" => {
            let row = json!({"event": "client.connected", "node": "n", "clientid": "c", "connected_at": -5});
            post(rule, row.to_string()).await
        }
        "h-bad-filter" => {
            let row = json!({"event": "session.subscribed", "node": "n", "clientid": "c", "topic": "a/#/b"});
            post(rule, row.to_string()).await
        }
        "h-clientid-long" => post(rule, connected(&long)).await,
        "h-huge-item" => {
            post(
                rule,
                publish_row("t", json!({"payload": "p".repeat(500 * 1024)})),
            )
            .await
        }
        "h-body-too-large" => {
            post(
                rule,
                publish_row("t", json!({"payload": "p".repeat(3 << 20)})),
            )
            .await
        }
        "h-second-row-bad" => {
            let rows = format!(
                "[{},{}]",
                connected("c"),
                publish_row("t", json!({"qos": 9}))
            );
            post(rule, rows).await
        }
        "w-unknown-action" => {
            post(
                "/v1/events/emqx-webhook",
                json!({"action": "x"}).to_string(),
            )
            .await
        }
        "w-topic-plus" => {
            let row = json!({"action": "message_publish", "node": "n", "from_client_id": "c",
                             "from_username": "u", "topic": "a/+", "qos": 1, "retain": false,
                             "payload": "x", "ts": 1700000000000u64});
            post("/v1/events/emqx-webhook", row.to_string()).await
        }
        "h-no-such-path" => post("/v1/nothing", "{}".into()).await,
        "h-wrong-method" => bare("GET", rule, TOKEN).await,
        "l-no-filter" => bare("GET", "/v1/retained", TOKEN).await,
        "l-filter-twice" => bare("GET", "/v1/retained?filter=a&filter=b", TOKEN).await,
        "l-bad-filter" => bare("GET", "/v1/retained?filter=a%2F%23%2Fb", TOKEN).await,
        "l-filter-long" => bare("GET", &format!("/v1/retained?filter={long}"), TOKEN).await,
        "l-bad-limit" => bare("GET", "/v1/offline?filter=a&limit=-1", TOKEN).await,
        "l-bad-qos" => bare("GET", "/v1/offline?filter=a&qos=3", TOKEN).await,
        "l-bad-since" => bare("GET", "/v1/offline?filter=a&since=yesterday", TOKEN).await,
        "l-clientid-not-utf8" => bare("GET", "/v1/clients/%FF%FE/subscriptions", TOKEN).await,
        "l-clientid-long" => bare("GET", &format!("/v1/clients/{long}/subscriptions"), TOKEN).await,
        "l-no-token" => bare("GET", "/v1/retained?filter=a", None).await,
        "s-topic-not-utf8" => bare("PUT", "/v1/clients/c/subscriptions/%FF", TOKEN).await,
        "s-bad-qos" => bare("PUT", "/v1/clients/c/subscriptions/a?qos=9", TOKEN).await,
        "s-bad-filter" => bare("PUT", "/v1/clients/c/subscriptions/a%2F%23%2Fb", TOKEN).await,
        "s-no-token" => bare("DELETE", "/v1/clients/c/subscriptions/a", None).await,
        _ => {
            // ExHook v3.
            let channel = tonic::transport::Channel::from_shared(format!("http://{exhook}"))
                .unwrap()
                .connect()
                .await
                .expect("the ExHook server answers");
            let mut c = v3::hook_provider_client::HookProviderClient::new(channel)
                .max_encoding_message_size(16 << 20);
            let info = |id: &str| v3::ClientInfo {
                node: "n".into(),
                clientid: id.into(),
                ..Default::default()
            };
            let msg = |topic: &str, qos: u32, id: &str, payload: Vec<u8>| v3::Message {
                node: "n".into(),
                id: id.into(),
                qos,
                from: "c".into(),
                topic: topic.into(),
                payload,
                timestamp: 1_700_000_000_000,
                ..Default::default()
            };
            let code = |r: Result<tonic::Response<v3::EmptySuccess>, tonic::Status>| {
                Answer::Grpc(r.map(|_| ()).map_err(|s| s.code()))
            };
            let publish = |m: Option<v3::Message>| v3::MessagePublishRequest {
                message: m,
                ..Default::default()
            };
            let wire = match case {
                "x-no-clientinfo" => {
                    return code(
                        c.on_client_connected(v3::ClientConnectedRequest::default())
                            .await,
                    );
                }
                "x-subscribe-qos-7" => {
                    let req = v3::SessionSubscribedRequest {
                        clientinfo: Some(info("c")),
                        topic: "t".into(),
                        subopts: Some(v3::SubOpts {
                            qos: 7,
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    return code(c.on_session_subscribed(req).await);
                }
                "x-ack-no-message" => {
                    let req = v3::MessageAckedRequest {
                        clientinfo: Some(info("s")),
                        ..Default::default()
                    };
                    return code(c.on_message_acked(req).await);
                }
                "x-unsubscribe-bad-filter" => {
                    let req = v3::SessionUnsubscribedRequest {
                        clientinfo: Some(info("c")),
                        topic: "a/#/b".into(),
                        ..Default::default()
                    };
                    return code(c.on_session_unsubscribed(req).await);
                }
                "x-clientid-long" => {
                    let req = v3::ClientConnectedRequest {
                        clientinfo: Some(info(&long)),
                        ..Default::default()
                    };
                    return code(c.on_client_connected(req).await);
                }
                "x-publish-topic-plus" => Some(msg("w/+", 1, ID1, b"x".to_vec())),
                "x-publish-topic-nul" => Some(msg("a\u{0}b", 1, ID1, b"x".to_vec())),
                "x-publish-qos-7" => Some(msg("t", 7, ID1, b"x".to_vec())),
                "x-publish-bad-msgid" => Some(msg("t", 1, "zz", b"x".to_vec())),
                "x-publish-no-message" => None,
                "x-publish-huge" => Some(msg("t", 1, ID1, vec![0xab; 500 * 1024])),
                other => panic!("the README names case {other:?}, which this test does not know"),
            };
            let resp = c
                .on_message_publish(publish(wire.clone()))
                .await
                .expect("OnMessagePublish always answers")
                .into_inner();
            let kind = v3::valued_response::ResponsedType::try_from(resp.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_default();
            let untouched =
                wire.map(|w| resp.value == Some(v3::valued_response::Value::Message(w)));
            return Answer::Publish(kind, untouched);
        }
    };
    Answer::Http(status, body)
}

/// `events_rejected_total` by (adapter, reason), scraped.
async fn rejections(metrics: &str) -> BTreeMap<(String, String), f64> {
    let (_, text) = tokio::task::spawn_blocking({
        let addr = metrics.to_string();
        move || support::http_get(&addr, "/metrics")
    })
    .await
    .unwrap();
    text.lines()
        .filter(|l| l.starts_with("mqtt_dynamo_events_rejected_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let label = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_string)
            };
            Some(((label("adapter")?, label("reason")?), value.parse().ok()?))
        })
        .collect()
}

/// Every row of the README's bad-input table, sent to the running service (in process): the documented status
/// or gRPC answer, the one JSON error shape with the documented field, exactly the documented
/// refusal counted (adapter and reason), and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_documented_answer() {
    let cfg = service::parse(
        "[exhook]\nmax_message_bytes = 16777216\n\
         [http]\ntoken = \"s3cret\"\npublish_actions = \"all\"\nmax_body_bytes = 2097152\n",
    );
    let serve = service::start(&cfg).await;
    let addrs = serve.addrs();
    let (exhook, http_addr, metrics) = (addr(addrs.exhook), addr(addrs.http), addr(addrs.metrics));
    let cases = bad_inputs();
    assert!(cases.len() >= 40, "at least 40 bad inputs: {}", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let before = rejections(&metrics).await;
        let answer = send_bad_input(&c.case, &http_addr, &exhook).await;
        let after = rejections(&metrics).await;
        let delta: BTreeMap<(String, String), f64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect();
        // The documented answer.
        let ok = match &answer {
            Answer::Http(status, body) => {
                let mut words = c.answer.split_whitespace();
                let want_status: u16 = words.next().unwrap().parse().unwrap_or(0);
                let want_field = c.answer.split('`').nth(1);
                *status == want_status
                    && body["error"].is_string()
                    && want_field.is_none_or(|f| body["field"] == json!(f))
            }
            Answer::Grpc(result) => {
                let got = match result {
                    Ok(()) => "OK".to_string(),
                    Err(code) => format!("{code:?}"),
                };
                c.answer
                    .trim_matches('`')
                    .replace('_', "")
                    .eq_ignore_ascii_case(&got)
            }
            Answer::Publish(kind, untouched) => {
                c.answer.starts_with("CONTINUE")
                    && kind == "CONTINUE"
                    && (!c.answer.contains("unchanged") || *untouched == Some(true))
            }
        };
        // Exactly the documented count.
        let adapter = if c.listener == "ExHook" {
            "exhook"
        } else {
            "http"
        };
        let want: BTreeMap<(String, String), f64> = match c.counted.as_str() {
            "—" => BTreeMap::new(),
            counted => {
                let (reason, n) = match counted.split_once(" ×") {
                    Some((r, n)) => (r, n.parse().unwrap()),
                    None => (counted, 1.0),
                };
                [((adapter.to_string(), reason.to_string()), n)].into()
            }
        };
        if !ok || delta != want {
            failures.push(format!(
                "{}: got {answer:?} counted {delta:?}; README says {} counted {want:?}",
                c.case, c.answer
            ));
        }
    }
    // Valid traffic still flows.
    let ok = json!({"event": "client.connected", "node": "n", "clientid": "after"}).to_string();
    let (status, _) = http(&http_addr, "POST", "/v1/events/emqx-rule", ok, TOKEN).await;
    assert_eq!(status, 200);
    let db = service::dynamo_client(&serve, &cfg).await;
    let t0 = Instant::now();
    let got = loop {
        let got = scan_all(&db, &Config::default()).await;
        if !got.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break got;
        }
        tokio::task::yield_now().await;
    };
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        [Key::new(Table::Client, "after")],
        "bad input stored nothing; the good event after it is stored"
    );
}
