//! The service under load as its own process: `mqtt-dynamo serve` started with a generated
//! configuration, watched through its `/metrics` and `/readyz`, its memory read from
//! `/proc/<pid>/status`, and stopped with SIGTERM (which drains it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use mqtt_dynamo::telemetry::catalogue;

/// Where the spawned service listens.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub dynamo: SocketAddr,
    pub exhook: SocketAddr,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

impl Ports {
    /// The documented defaults (so a newcomer can inspect the tables at 127.0.0.1:8000).
    pub fn defaults() -> Self {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Ports {
            dynamo: at(8000),
            exhook: at(9000),
            http: at(8080),
            metrics: at(mqtt_dynamo::config::DEFAULT_METRICS_PORT),
        }
    }

    /// Free loopback ports (found by binding port 0; for tests and parallel runs).
    pub fn ephemeral() -> Result<Self, String> {
        let free = || -> Result<SocketAddr, String> {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free loopback port: {e}"))
        };
        Ok(Ports {
            dynamo: free()?,
            exhook: free()?,
            http: free()?,
            metrics: free()?,
        })
    }
}

/// A running `mqtt-dynamo serve`.
pub struct Service {
    child: Child,
    pub ports: Ports,
    /// The DynamoDB endpoint it writes to (its embedded one, or the one given).
    pub dynamo_endpoint: String,
    pub log: PathBuf,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

/// The `mqtt-dynamo` binary next to this one (both are built by `cargo build -p mqtt-dynamo -p
/// loadgen`).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mqtt-dynamo")))
        .unwrap_or_else(|| PathBuf::from("mqtt-dynamo"))
}

impl Service {
    /// Writes the configuration to `dir/service.toml` and starts the binary; returns once
    /// `/readyz` says ready (at most 60 s).
    pub async fn start(
        binary: &Path,
        dir: &Path,
        ports: Ports,
        endpoint: Option<&str>,
        extra_toml: &str,
    ) -> Result<Service, String> {
        let _ = std::fs::create_dir_all(dir);
        let dynamo = match endpoint {
            Some(url) => format!(
                "endpoint_url = \"{url}\"\naccess_key_id = \"loadgen\"\nsecret_access_key = \"loadgen\"\nembedded = false\n"
            ),
            None => format!("embedded_listen = \"{}\"\n", ports.dynamo),
        };
        let toml = format!(
            "# written by loadgen\n[dynamodb]\n{dynamo}\n[exhook]\nlisten = \"{}\"\n\n[http]\nlisten = \"{}\"\npublish_actions = \"retained_only\"\n\n[metrics]\nlisten = \"{}\"\n\n[log]\nlevel = \"info\"\n{extra_toml}\n",
            ports.exhook, ports.http, ports.metrics
        );
        let config = dir.join("service.toml");
        std::fs::write(&config, toml)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = dir.join("service.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} (build it with `cargo build --release -p mqtt-dynamo`): {e}",
                    binary.display()
                )
            })?;
        let mut service = Service {
            child,
            ports,
            dynamo_endpoint: endpoint
                .map(str::to_string)
                .unwrap_or_else(|| format!("http://{}", ports.dynamo)),
            log,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!(
                    "the service exited ({status}) before it was ready; its log ({}) ends with:\n{}",
                    service.log.display(),
                    tail(&service.log, 8)
                ));
            }
            if let Ok((200, _)) = service.get("/readyz").await {
                return Ok(service);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the service did not become ready within 60 s; see {}",
                    service.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let uri = format!("http://{}{path}", self.ports.metrics);
        let resp = self
            .http
            .get(uri.parse().map_err(|e| format!("{e}"))?)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).to_string()))
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics, String> {
        let (status, text) = self.get("/metrics").await?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        Ok(Metrics(text))
    }

    /// Waits until everything accepted is written: ingest and pending empty, nothing in flight,
    /// and at least `accepted` events received — seen on two scrapes in a row (the gauges are
    /// sampled once a second). At most `limit`.
    pub async fn drained(&self, accepted: u64, limit: Duration) -> Result<Metrics, String> {
        let deadline = Instant::now() + limit;
        let mut settled = 0;
        loop {
            let m = self.metrics().await?;
            let idle = m.sum(catalogue::QUEUE_EVENTS, Some(("stage", "ingest"))) == 0.0
                && m.sum(catalogue::QUEUE_EVENTS, Some(("stage", "pending"))) == 0.0
                && m.sum(catalogue::FLUSHES_IN_FLIGHT, None) == 0.0
                && m.sum(catalogue::EVENTS_RECEIVED_TOTAL, None) >= accepted as f64;
            settled = if idle { settled + 1 } else { 0 };
            if settled >= 2 {
                return Ok(m);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the service did not drain within {} s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }

    /// Resident memory now and at its peak, in bytes (Linux `/proc`).
    pub fn memory(&self) -> Option<(u64, u64)> {
        memory_of(self.child.id())
    }

    /// SIGTERM, then waits for the drain and exit; returns what it printed (its shutdown report).
    pub fn stop(mut self) -> Result<String, String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "the service exited with {status}; see {}",
                self.log.display()
            ));
        }
        Ok(out)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// VmRSS and VmHWM of `pid`, in bytes.
pub fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A Prometheus text exposition.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of `name` (optionally only those with `label="value"`).
    pub fn sum(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let want = label.map(|(k, v)| format!("{k}=\"{v}\""));
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                if metric != name {
                    return None;
                }
                if let Some(w) = &want
                    && !series.contains(w.as_str())
                {
                    return None;
                }
                value.parse::<f64>().ok()
            })
            .sum::<f64>()
            // An empty sum is -0.0; print it as 0.
            + 0.0
    }
}

/// CPU seconds (user + system, all threads, exited ones included) the process `pid` has used,
/// from `/proc/<pid>/stat` (Linux); `None` elsewhere or when it is gone.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_from_stat(&stat, clock_ticks_per_second())
}

/// `utime` + `stime` (fields 14 and 15) in seconds; the command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn cpu_seconds_from_stat(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / ticks_per_s)
}

/// `getconf CLK_TCK` (100 on Linux unless the kernel says otherwise).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_by_name_and_label() {
        let m = Metrics(
            "# HELP x\nmqtt_dynamo_queue_events{stage=\"ingest\"} 3\nmqtt_dynamo_queue_events{stage=\"pending\"} 4\nmqtt_dynamo_queue_events_total 100\n".into(),
        );
        assert_eq!(m.sum(catalogue::QUEUE_EVENTS, None), 7.0);
        assert_eq!(
            m.sum(catalogue::QUEUE_EVENTS, Some(("stage", "pending"))),
            4.0
        );
        assert_eq!(m.sum("missing", None), 0.0);
    }

    #[test]
    fn memory_of_this_process() {
        let (rss, peak) = memory_of(std::process::id()).expect("Linux /proc");
        assert!(rss > 0 && peak >= rss);
    }

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        let stat =
            "4242 (mqtt (dynamo) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_seconds_from_stat(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds_from_stat("garbage", 100.0), None);
        let own = cpu_seconds_of(std::process::id()).expect("Linux /proc");
        assert!(own >= 0.0);
    }
}
