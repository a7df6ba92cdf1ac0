//! Test harness of the integration tests: what only they need (the fault-injecting proxy, the
//! `serve` binary as a child process, blocking HTTP requests). The DynamoDB backends, builders
//! and scans are in `mqtt_dynamo::test_util` (feature `test-util`).

#![allow(dead_code)]

pub mod emqx_api;
pub mod faults;

use std::time::Duration;

/// A running `mqtt-dynamo serve` and where it listens, read from its log (its stderr keeps being
/// read, so the service never blocks on a full pipe). Killed on drop.
pub struct Serve {
    pub child: std::process::Child,
    pub exhook: String,
    pub http: String,
    /// The embedded DynamoDB's endpoint URL.
    pub dynamo: String,
    pub metrics: String,
    /// Log lines after "serving".
    pub log: std::sync::mpsc::Receiver<String>,
    /// Log lines up to "serving".
    pub start_log: Vec<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

impl Serve {
    /// Starts `serve --config conf` (embedded DynamoDB and every listener on ephemeral ports in
    /// `conf`) and waits until it says it is serving.
    pub fn start(conf: &std::path::Path) -> Serve {
        Serve::start_with(conf, &[])
    }

    /// As [`Serve::start`], with `env` added to the child's environment.
    pub fn start_with(conf: &std::path::Path, env: &[(&str, &str)]) -> Serve {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
            .args(["serve", "--config"])
            .arg(conf)
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut exhook, mut http, mut dynamo, mut metrics) = (None, None, None, None);
        let mut start_log = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("serve starts and reports its listeners");
            start_log.push(line.clone());
            let addr = || field_after(&line, "addr=").map(str::to_string);
            if line.contains("ExHook gRPC server") {
                exhook = addr();
            } else if line.contains("HTTP ingest listening") {
                http = addr();
            } else if line.contains("metrics listening") {
                metrics = addr();
            } else if line.contains("embedded DynamoDB (") && line.contains("is listening") {
                dynamo = field_after(&line, "endpoint=").map(str::to_string);
            } else if line.contains("serving;") {
                break;
            }
        }
        Serve {
            child,
            exhook: exhook.unwrap_or_default(),
            http: http.unwrap_or_default(),
            dynamo: dynamo.unwrap_or_default(),
            metrics: metrics.unwrap_or_default(),
            log: rx,
            start_log,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit: whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sent && std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        false
    }
}

/// A plain HTTP/1.1 request over a blocking socket (`Connection: close`): the status and body, or
/// the I/O error when the service is gone (killed mid-request).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// POSTs JSON `body` to `path`: the status (see [`http_request`]).
pub fn http_post(addr: &str, path: &str, body: &str) -> std::io::Result<u16> {
    http_request(addr, "POST", path, body).map(|(status, _)| status)
}

/// GETs `path`: (status, body); panics if the service does not answer.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "").expect("the service answers")
}

/// Runs `serve --config conf` to its end (for configurations it must refuse): its output.
pub async fn serve_output(conf: &std::path::Path) -> std::process::Output {
    let conf = conf.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
            .args(["serve", "--config"])
            .arg(&conf)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}
