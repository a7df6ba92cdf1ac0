//! Message expiry on dynoxide (which implements DynamoDB's TTL): a publish's MQTT 5
//! Message-Expiry-Interval, from ExHook v3 `props` and from rule rows' `pub_props`, and
//! `[storage] default_message_ttl`, become `expires_at` (N, epoch seconds) on `mqtt_msg` and
//! `mqtt_retain`; the embedded DynamoDB gets TTL on that attribute; lookups skip what expired,
//! before any TTL sweep has removed it.

use aws_sdk_dynamodb::types::TimeToLiveStatus;
use serde_json::json;

use mqtt_dynamo::broker::exhook::v3;
use mqtt_dynamo::guid;
use mqtt_dynamo::storage::item::{Key, Table, Value};
use mqtt_dynamo::test_util::scan_all;
use mqtt_dynamo::test_util::service::{self, addr};

use crate::support;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A GUID (hex) published at `ms`, sequence `n`.
fn id_at(ms: u64, n: u16) -> String {
    guid::to_hex(guid::compose(ms * 1000, 1, n))
}

fn publish(topic: &str, id: &str, ms: u64, expiry: Option<&str>) -> v3::MessagePublishRequest {
    v3::MessagePublishRequest {
        message: Some(v3::Message {
            node: "emqx@n1".into(),
            id: id.into(),
            qos: 1,
            from: "pub".into(),
            topic: topic.into(),
            payload: b"p".to_vec(),
            timestamp: ms,
            ..Default::default()
        }),
        props: expiry
            .map(|v| v3::Property {
                name: "Message-Expiry-Interval".into(),
                value: v.into(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_becomes_expires_at_and_lookups_skip_what_expired() {
    let cfg = service::parse(
        "[http]\npublish_actions = \"all\"\n[storage]\nmsgid_format = \"hex\"\ndefault_message_ttl = \"1h\"\n",
    );
    let svc = service::start(&cfg).await;
    let exhook = addr(svc.addrs().exhook);
    let http = addr(svc.addrs().http);
    let now = now_ms();
    let long_ago = now - 120_000;
    let (fresh, stale, plain) = (id_at(now, 1), id_at(long_ago, 2), id_at(now, 3));

    let channel = tonic::transport::Channel::from_shared(format!("http://{exhook}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v3::hook_provider_client::HookProviderClient::new(channel);
    for req in [
        publish("t/a", &fresh, now, Some("60")),
        publish("t/a", &stale, long_ago, Some("60")),
        publish("t/a", &plain, now, None),
    ] {
        client.on_message_publish(req).await.unwrap();
    }
    // A value that is not a number: the message flows on (CONTINUE), the event is refused.
    let bad = client
        .on_message_publish(publish("t/a", &id_at(now, 4), now, Some("soon")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bad.r#type,
        v3::valued_response::ResponsedType::Continue as i32
    );

    // Retained messages through rule rows: one fresh, one expired.
    let row = |topic: &str, id: &str, ms: u64, props: serde_json::Value| {
        json!({"event": "message.publish", "node": "emqx@n1", "id": id, "clientid": "pub",
               "topic": topic, "qos": 1, "payload": "r", "flags": {"retain": true},
               "publish_received_at": ms, "pub_props": props})
    };
    let (r_fresh, r_stale) = (id_at(now, 5), id_at(long_ago, 6));
    let rows = json!([
        row(
            "r/fresh",
            &r_fresh,
            now,
            json!({"Message-Expiry-Interval": 60, "User-Property": {}})
        ),
        row(
            "r/stale",
            &r_stale,
            long_ago,
            json!({"Message-Expiry-Interval": "60"})
        ),
    ]);
    let http2 = http.clone();
    let status = tokio::task::spawn_blocking(move || {
        support::http_post(&http2, "/v1/events/emqx-rule", &rows.to_string())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200);
    let bad_rows = json!([row(
        "r/x",
        &id_at(now, 7),
        now,
        json!({"Message-Expiry-Interval": -1})
    )]);
    let http3 = http.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        support::http_request(
            &http3,
            "POST",
            "/v1/events/emqx-rule",
            &bad_rows.to_string(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("[0].pub_props.Message-Expiry-Interval")
            && body.contains("must be an integer of 0 to 4294967295 (seconds)"),
        "{body}"
    );

    // Lookups skip what expired (they also see writes not yet in DynamoDB).
    let http4 = http.clone();
    let (offline, retained) = tokio::task::spawn_blocking(move || {
        (
            support::http_get(&http4, "/v1/offline?filter=t/%2B&qos=1"),
            support::http_get(&http4, "/v1/retained?filter=r/%23"),
        )
    })
    .await
    .unwrap();
    assert_eq!(offline.0, 200, "{offline:?}");
    let offline: serde_json::Value = serde_json::from_str(&offline.1).unwrap();
    let ids: Vec<&str> = offline["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msgid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [fresh.as_str(), plain.as_str()], "{offline}");
    assert_eq!(
        offline["messages"][0]["expires_at"],
        json!(now as i64 / 1000 + 60)
    );
    let retained: serde_json::Value = serde_json::from_str(&retained.1).unwrap();
    let topics: Vec<&str> = retained["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["r/fresh"], "{retained}");

    // In the tables, once written: the expired items are still there (no sweep has run).
    let dynamo = service::dynamo_client(&svc, &cfg).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let items = loop {
        let items = scan_all(&dynamo, &cfg).await;
        let msgs = items.keys().filter(|k| k.table == Table::Msg).count();
        let retains = items.keys().filter(|k| k.table == Table::Retain).count();
        // Three t/a messages, and the two retained ones (rule rows feed every action here).
        if (msgs, retains) == (5, 2) || std::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let expires = |table: Table, hash: &str| {
        items
            .get(&Key::new(table, hash))
            .unwrap_or_else(|| panic!("{table} {hash} missing: {items:?}"))
            .get("expires_at")
            .cloned()
    };
    let s = |ms: u64| ms as i64 / 1000;
    assert_eq!(expires(Table::Msg, &fresh), Some(Value::N(s(now) + 60)));
    assert_eq!(
        expires(Table::Msg, &stale),
        Some(Value::N(s(long_ago) + 60))
    );
    assert_eq!(
        expires(Table::Msg, &plain),
        Some(Value::N(s(now) + 3600)),
        "default_message_ttl"
    );
    assert_eq!(
        expires(Table::Retain, "r/fresh"),
        Some(Value::N(s(now) + 60))
    );
    assert_eq!(
        expires(Table::Retain, "r/stale"),
        Some(Value::N(s(long_ago) + 60))
    );
    // The embedded DynamoDB expires them on that attribute.
    let ttl = dynamo
        .describe_time_to_live()
        .table_name("mqtt_msg")
        .send()
        .await
        .unwrap();
    let d = ttl.time_to_live_description().unwrap();
    assert_eq!(d.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    assert_eq!(d.attribute_name(), Some("expires_at"));
    let stats = svc.shutdown().await;
    assert_eq!(stats.rejected_invalid, 2, "the two bad properties: {stats}");
}

/// `tables create` enables TTL on `[storage] ttl_attribute` for the two message tables (once:
/// again is a no-op) and `tables describe` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_create_enables_ttl_and_describe_shows_it() {
    let backend = mqtt_dynamo::test_util::Backend::dynoxide().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[dynamodb]\nendpoint_url = \"{}\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\n\
             [storage]\nttl_attribute = \"ttl\"\n",
            backend.endpoint()
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let conf = conf.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
                .args(["--config", conf.to_str().unwrap()])
                .args(args)
                .env_remove("AWS_ENDPOINT_URL")
                .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let created = run(&["tables", "create"]).await.unwrap();
    assert!(
        created.contains("ttl     mqtt_msg: enabled on ttl\n"),
        "{created}"
    );
    assert!(
        created.contains("ttl     mqtt_retain: enabled on ttl\n"),
        "{created}"
    );
    let again = run(&["tables", "create"]).await.unwrap();
    assert!(
        again.contains("ttl     mqtt_msg: already enabled on ttl\n"),
        "{again}"
    );
    let described = run(&["tables", "describe"]).await.unwrap();
    assert!(
        described.contains("mqtt_msg: TTL ENABLED on ttl\n"),
        "{described}"
    );
    assert!(
        described.contains("mqtt_retain: TTL ENABLED on ttl\n"),
        "{described}"
    );
}
