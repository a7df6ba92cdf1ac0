//! The `serve` binary kept honest: it starts on the embedded DynamoDB, SIGTERM drains and exits 0
//! with the report, and against an endpoint without tables it refuses to start.

use mqtt_dynamo::test_util::Backend;

use crate::support;

/// `mqtt-dynamo serve` on the embedded DynamoDB creates the tables, and SIGTERM drains and exits 0
/// with the report; against an endpoint without tables it names the missing ones and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_starts_drains_and_checks_tables() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = std::env::temp_dir().join(format!("mqtt-dynamo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("serve.toml");
    std::fs::write(
        &conf,
        "[dynamodb]\nembedded_listen = \"127.0.0.1:0\"\n[exhook]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
        .args(["serve", "--config"])
        .arg(&conf)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in &mut stderr {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("serving;") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("embedded DynamoDB (in memory) is listening")),
        "{seen:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    seen.extend(stderr.map_while(Result::ok));
    assert!(out.status.success(), "{out:?} {seen:?}");
    assert!(seen.iter().any(|l| l.contains("draining")), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.contains("stopping the listeners")),
        "{seen:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("events received        0"),
        "{out:?}"
    );

    let backend = Backend::dynoxide().await;
    std::fs::write(
        &conf,
        format!(
            "[dynamodb]\nendpoint_url = \"{}\"\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\n[exhook]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            backend.endpoint()
        ),
    )
    .unwrap();
    let out = support::serve_output(&conf).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "missing tables: mqtt_client, mqtt_sub, mqtt_msg, mqtt_topic_msg_map, mqtt_retain, mqtt_acked, \
             mqtt_topic_index; create them with `mqtt-dynamo tables create`"
        ),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
