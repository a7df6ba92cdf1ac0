//! Configuration as operators pass it, and the embedded DynamoDB that can serve and cannot surprise.

use std::process::{Command, Output};

use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::item::{Key, Table, Value};
use mqtt_dynamo::test_util::items::scan_all;

use crate::support::{self, Serve};

/// Runs the binary with `args`, the AWS runtime markers, endpoint variables and every
/// `MQTT_DYNAMO_*` variable (the test harness's own) removed and `env` added.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MQTT_DYNAMO_") {
            cmd.env_remove(k);
        }
    }
    for k in mqtt_dynamo::config::AWS_RUNTIME_MARKERS.iter().chain(&[
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "MQTT_DYNAMO_CONFIG",
    ]) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Ephemeral ports for every listener, plus `extra`.
fn write_conf(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let conf = dir.join("serve.toml");
    std::fs::write(
        &conf,
        format!(
            "[exhook]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n{extra}"
        ),
    )
    .unwrap();
    conf
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("aws-secret");
    std::fs::write(&secret, "wJalrXUtnFEMI-very-secret\n").unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        "[dynamodb]\naccess_key_id = \"AKIDEXAMPLE\"\nembedded = false\n[http]\ntoken = \"http-token-secret\"\n",
    )
    .unwrap();
    let out = run(
        &["config", "check", conf.to_str().unwrap()],
        &[
            ("MQTT_DYNAMO_EXHOOK_LISTEN", "0.0.0.0:9001"),
            ("MQTT_DYNAMO_PIPELINE_SPOOL_ENABLED", "true"),
            (
                "MQTT_DYNAMO_DYNAMODB_SECRET_ACCESS_KEY_FILE",
                secret.to_str().unwrap(),
            ),
            ("AWS_REGION", "eu-central-1"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stderr), "configuration OK\n");
    assert!(
        stdout.contains("# DynamoDB: AWS region eu-central-1\n"),
        "{stdout}"
    );
    assert!(stdout.contains("listen = \"0.0.0.0:9001\"\n"), "{stdout}");
    assert!(
        stdout.contains("secret_access_key = \"<redacted>\"\n"),
        "{stdout}"
    );
    assert!(stdout.contains("token = \"<redacted>\"\n"), "{stdout}");
    assert!(
        stdout.contains("access_key_id = \"AKIDEXAMPLE\"\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("very-secret"), "{stdout}");
    assert!(!stdout.contains("http-token-secret"), "{stdout}");
    // The printed configuration is itself a valid file (secrets aside).
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &stdout).unwrap();
    let again = run(&["config", "check", printed.to_str().unwrap()], &[]);
    assert!(again.status.success(), "{again:?}");

    // Invalid: exit 1 with the reason, nothing on stdout.
    let out = run(
        &["config", "check", conf.to_str().unwrap()],
        &[("MQTT_DYNAMO_PIPELINE_SHARDS", "0")],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "error: pipeline.shards: must be at least 1\n"
    );
    // A variable that names no section is not a key: a warning, not an error.
    let out = run(
        &["config", "check", conf.to_str().unwrap()],
        &[
            ("MQTT_DYNAMO_HTTTP_TOKEN", "x"),
            (
                "MQTT_DYNAMO_DYNAMODB_SECRET_ACCESS_KEY_FILE",
                secret.to_str().unwrap(),
            ),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "warning: MQTT_DYNAMO_HTTTP_TOKEN names no configuration section; ignored\nconfiguration OK\n"
    );
    let out = run(&["config", "check", "/nonexistent/mqtt-dynamo.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("error: cannot read /nonexistent/mqtt-dynamo.toml: No such file"),
        "{out:?}"
    );
}

#[test]
fn config_default_is_a_configuration_of_the_defaults() {
    let out = run(&["config", "default"], &[]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = run(&["config", "check", file.to_str().unwrap()], &[]);
    let none = run(&["config", "check"], &[]);
    assert!(check.status.success() && none.status.success(), "{check:?}");
    // Same effective configuration as no file at all (only the header's origin differs).
    let body = |o: &Output| {
        text(&o.stdout)
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&check), body(&none));
    assert!(text(&out.stdout).contains("listen = \"127.0.0.1:8095\""));
}

#[test]
fn an_aws_runtime_refuses_the_implicit_in_memory_default() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "[dynamodb]\nembedded_listen = \"127.0.0.1:0\"\n",
    );
    for marker in mqtt_dynamo::config::AWS_RUNTIME_MARKERS {
        let out = run(
            &["serve", "--config", conf.to_str().unwrap()],
            &[(marker, "/var/run/secrets/eks.amazonaws.com/token")],
        );
        assert_eq!(out.status.code(), Some(1), "{marker}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "dynamodb.embedded: no DynamoDB is configured and {marker} is set, so this is an AWS runtime"
            )),
            "{stderr}"
        );
        assert!(
            stderr
                .contains("set [dynamodb] embedded = false (MQTT_DYNAMO_DYNAMODB_EMBEDDED=false)"),
            "{stderr}"
        );
        assert!(!stderr.contains("serving"), "{stderr}");
    }
    // Chosen explicitly, the embedded DynamoDB is allowed there.
    let out = run(
        &["config", "check", conf.to_str().unwrap()],
        &[
            ("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE"),
            ("MQTT_DYNAMO_DYNAMODB_EMBEDDED", "true"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("# DynamoDB: embedded, in memory, on 127.0.0.1:0\n"));
}

/// The client.connected rule row for `client`.
fn connected_row(client: &str) -> String {
    format!(
        r#"[{{"event":"client.connected","node":"emqx@n1","clientid":"{client}","username":"u","connected_at":1700000000000}}]"#
    )
}

/// `embedded_path`: the tables and their items survive a restart; the log, `/readyz` and
/// `mqtt_dynamo_build_info` say where they are; every listener comes from the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_dynamodb_in_a_file_keeps_its_tables_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tables.sqlite");
    // The file sets nothing; the environment sets every listener and the path.
    let conf = dir.path().join("empty.toml");
    std::fs::write(&conf, "").unwrap();
    let db_text = db.to_str().unwrap().to_string();
    let env = [
        ("MQTT_DYNAMO_DYNAMODB_EMBEDDED_PATH", db_text.as_str()),
        ("MQTT_DYNAMO_DYNAMODB_EMBEDDED_LISTEN", "127.0.0.1:0"),
        ("MQTT_DYNAMO_EXHOOK_LISTEN", "127.0.0.1:0"),
        ("MQTT_DYNAMO_HTTP_LISTEN", "127.0.0.1:0"),
        ("MQTT_DYNAMO_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    let first = tokio::task::spawn_blocking({
        let conf = conf.clone();
        let env = env.map(|(k, v)| (k.to_string(), v.to_string()));
        move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let serve = Serve::start_with(&conf, &env);
            let status =
                support::http_post(&serve.http, "/v1/events/emqx-rule", &connected_row("c1"));
            assert_eq!(status.unwrap(), 200);
            let line = serve
                .start_log
                .iter()
                .find(|l| l.contains("DynamoDB: embedded at "))
                .cloned();
            let (ready, body) = wait_ready(&serve.metrics);
            let (_, metrics) = support::http_get(&serve.metrics, "/metrics");
            assert!(serve.terminate(), "serve exits 0 after SIGTERM");
            (line, ready, body, metrics)
        }
    })
    .await
    .unwrap();
    let (line, ready, body, metrics) = first;
    let line = line.expect("the start log names the backend");
    assert!(
        line.contains(&format!("DynamoDB: embedded at {}", db.display())),
        "{line}"
    );
    assert_eq!(ready, 200, "{body}");
    assert!(
        body.starts_with(&format!(
            "ready: DynamoDB (embedded at {} (http://127.0.0.1:",
            db.display()
        )),
        "{body}"
    );
    assert!(
        metrics.contains(r#"mqtt_dynamo_build_info{version="0.1.0",backend="embedded_file"} 1"#),
        "{metrics}"
    );
    assert!(db.exists());

    // A second run on the same file finds the item the first one wrote.
    let conf2 = conf.clone();
    let env2 = env.map(|(k, v)| (k.to_string(), v.to_string()));
    let (endpoint, serve) = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let serve = Serve::start_with(&conf2, &env);
        (serve.dynamo.clone(), serve)
    })
    .await
    .unwrap();
    let cfg = mqtt_dynamo::test_util::backend::config_at(endpoint.clone());
    let client = dynamo::client(&cfg.dynamodb, Some(&endpoint), SdkRetries::Standard).await;
    let items = scan_all(&client, &cfg).await;
    let key = Key::new(Table::Client, "c1");
    let item = items.get(&key).unwrap_or_else(|| panic!("{items:?}"));
    assert_eq!(item.get("node"), Some(&Value::S("emqx@n1".into())));
    assert_eq!(item.get("connect_state"), Some(&Value::N(1)));
    tokio::task::spawn_blocking(move || assert!(serve.terminate()))
        .await
        .unwrap();
}

/// Polls `/readyz` until it is 200 (bounded): the last status and body.
fn wait_ready(metrics: &str) -> (u16, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = support::http_get(metrics, "/readyz");
        if status == 200 || std::time::Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn health_answers_for_a_running_service_and_fails_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "[dynamodb]\nembedded_listen = \"127.0.0.1:0\"\n",
    );
    let serve = Serve::start(&conf);
    let url = format!("http://{}/healthz", serve.metrics);
    let out = run(&["health", &url], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), format!("{url}: 200\n"));
    let out = run(&["health", &format!("http://{}/nope", serve.metrics)], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("answered HTTP/1.1 404"),
        "{out:?}"
    );
    assert!(serve.terminate());
    let out = run(&["health", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Connection refused"), "{out:?}");
    let out = run(&["health", "https://127.0.0.1:1/healthz"], &[]);
    assert_eq!(
        text(&out.stderr),
        "error: https://127.0.0.1:1/healthz: only http:// URLs are supported\n"
    );
}
