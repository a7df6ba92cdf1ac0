//! Test harness: real DynamoDB implementations on loopback (dynoxide in-process, dynalite as a
//! node process), SDK clients that count the requests they send, table scans into the model.

#![allow(dead_code)]

pub mod faults;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::ConfigBag;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

use mqtt_dynamo::config::{Config, Secret};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::embedded::EmbeddedDynamo;
use mqtt_dynamo::storage::item::{Item, Key, Table};
use mqtt_dynamo::storage::tables::{self, Capacity};

/// A DynamoDB implementation under test, alive as long as this value.
pub enum Backend {
    Dynoxide(EmbeddedDynamo),
    Dynalite {
        child: std::process::Child,
        addr: SocketAddr,
    },
    /// The project's simulator (throttling, faults), in-process.
    Sim(dynamo_sim::SimHandle),
}

impl Backend {
    pub async fn dynoxide() -> Backend {
        let server = EmbeddedDynamo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("dynoxide starts on an ephemeral port");
        Backend::Dynoxide(server)
    }

    /// Starts the simulator with `config` on an ephemeral loopback port (no tables: `prepare`
    /// creates them as for the other backends).
    pub async fn simulator(config: dynamo_sim::SimConfig) -> Backend {
        let sim = dynamo_sim::Simulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("the simulator starts on an ephemeral port");
        Backend::Sim(sim)
    }

    /// Switches the simulator's faults (the emulators have none to switch).
    pub fn set_faults(&self, faults: dynamo_sim::FaultConfig) {
        if let Backend::Sim(sim) = self {
            sim.set_faults(faults).expect("valid fault rates");
        }
    }

    /// Switches the simulator's forced outage (every request answered 503) on or off.
    pub fn set_outage(&self, on: bool) {
        if let Backend::Sim(sim) = self {
            sim.set_outage(on);
        }
    }

    /// The simulator's counters (`None` for the emulators).
    pub fn sim_stats(&self) -> Option<dynamo_sim::SimStats> {
        match self {
            Backend::Sim(sim) => Some(sim.stats()),
            _ => None,
        }
    }

    /// Starts dynalite (installed by `scripts/test` into tools/dynalite) on a free loopback port.
    pub async fn dynalite() -> Backend {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cli = root.join("tools/dynalite/node_modules/dynalite/cli.js");
        assert!(
            cli.exists(),
            "dynalite is not installed at {}: run `npm ci --prefix tools/dynalite` (scripts/test does)",
            cli.display()
        );
        // dynalite cannot report an ephemeral port, so find a free one first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = std::process::Command::new("node")
            .arg(&cli)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--createTableMs",
                "50",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("node runs dynalite");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Wait until it accepts connections: bounded, 100 × 50 ms.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Backend::Dynalite { child, addr };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dynalite did not start listening on {addr}");
    }

    pub fn endpoint(&self) -> String {
        match self {
            Backend::Dynoxide(s) => s.endpoint(),
            Backend::Dynalite { addr, .. } => format!("http://{addr}"),
            Backend::Sim(sim) => sim.endpoint(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Dynoxide(_) => "dynoxide",
            Backend::Dynalite { .. } => "dynalite",
            Backend::Sim(_) => "dynamo-sim",
        }
    }

    /// A configuration pointing at this backend, with static test keys.
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.dynamodb.endpoint_url = Some(self.endpoint());
        cfg.dynamodb.access_key_id = Some("test".into());
        cfg.dynamodb.secret_access_key = Some(Secret::new("test"));
        cfg.dynamodb.embedded = false;
        cfg
    }

    /// A pipeline client (no SDK retries) that counts requests, and the six tables created.
    pub async fn prepare(&self, cfg: &Config) -> (Client, RequestCounter) {
        let admin = dynamo::client(&cfg.dynamodb, None, SdkRetries::Standard).await;
        tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand)
            .await
            .expect("tables are created");
        let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
        let counter = RequestCounter::default();
        let conf = client
            .config()
            .to_builder()
            .interceptor(counter.clone())
            .build();
        (Client::from_conf(conf), counter)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Dynalite { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Counts the requests a client puts on the wire, by operation (`x-amz-target`).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Mutex<HashMap<String, u64>>>);

impl RequestCounter {
    pub fn get(&self, op: &str) -> u64 {
        self.0.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown")
            .trim_start_matches("DynamoDB_20120810.")
            .to_string();
        *self.0.lock().unwrap().entry(target).or_default() += 1;
        Ok(())
    }
}

/// Every item of every table, read back through the SDK with all pages.
pub async fn scan_all(client: &Client, cfg: &Config) -> BTreeMap<Key, Item> {
    let mut out = BTreeMap::new();
    for table in Table::ALL {
        let mut start = None;
        loop {
            let page = client
                .scan()
                .table_name(cfg.dynamodb.table_name(table))
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan succeeds");
            for attrs in page.items() {
                let (key, item) =
                    dynamo::from_attrs(table, attrs).expect("items have the contract's types");
                out.insert(key, item);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    out
}

/// The documented equivalence (see `model`): a topic map item without ids reads as no item.
pub fn normalized(items: &BTreeMap<Key, Item>) -> BTreeMap<Key, Item> {
    let mut model = mqtt_dynamo::storage::model::TableModel::new();
    for (k, v) in items {
        model.insert(k.clone(), v.clone());
    }
    model.normalized()
}

/// A DynamoDB endpoint that accepts connections and never answers: an outage that times out.
pub struct Stalled {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Stalled {
    pub async fn start() -> Stalled {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        Stalled { addr, task }
    }

    /// A configuration against this endpoint with the smallest queues, so they fill at once,
    /// and short timeouts and retry budget, so the outage ends the writes quickly.
    pub fn tiny_config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.dynamodb.endpoint_url = Some(format!("http://{}", self.addr));
        cfg.dynamodb.access_key_id = Some("t".into());
        cfg.dynamodb.secret_access_key = Some(Secret::new("t"));
        cfg.dynamodb.embedded = false;
        cfg.dynamodb.attempt_timeout = Duration::from_millis(100);
        cfg.pipeline.shards = 1;
        cfg.pipeline.ingest_capacity_events = 2;
        cfg.pipeline.shard_queue_capacity = 1;
        cfg.pipeline.max_pending_keys = 1;
        cfg.pipeline.max_in_flight = 1;
        cfg.pipeline.max_batch_age = Duration::from_millis(1);
        cfg.pipeline.retry.initial_backoff = Duration::from_millis(5);
        cfg.pipeline.retry.max_backoff = Duration::from_millis(20);
        cfg.pipeline.retry.max_elapsed = Duration::from_millis(500);
        cfg
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"))
            .args(["serve", "--config"])
            .arg(conf)
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
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
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("serve starts and reports its listeners");
            let addr = || field_after(&line, "addr=").map(str::to_string);
            if line.contains("ExHook gRPC server") {
                exhook = addr();
            } else if line.contains("HTTP ingest listening") {
                http = addr();
            } else if line.contains("metrics listening") {
                metrics = addr();
            } else if line.contains("embedded DynamoDB") {
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
        }
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
