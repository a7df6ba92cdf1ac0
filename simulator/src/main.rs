//! `dynamo-sim`: runs the simulator until SIGINT/SIGTERM.
//!
//! Prints exactly one line on stdout, `dynamo-sim listening on http://HOST:PORT`, once the
//! socket is bound; logs go to stderr (`RUST_LOG`, default `info`).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dynamo_sim::{FaultConfig, Limits, OutageWindow, SimConfig, Simulator, StallAction, TableDef};

/// mimalloc instead of glibc malloc: under load glibc's allocator took about a third of the CPU
/// (perf; ARCHITECTURE.md, "Measuring").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A DynamoDB-compatible simulator for throttling, fault injection and throughput measurements.
// No `Debug`: the access key must never end up in a log line.
#[derive(Parser)]
#[command(name = "dynamo-sim", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Fixed latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Random extra latency, uniform on [0, N] milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Write units per second per table (0 or absent = unlimited).
    #[arg(long)]
    table_wcu: Option<u32>,
    /// Write units per second per partition key (DynamoDB's per-partition ceiling; 0 = unlimited).
    #[arg(long, default_value_t = 1000)]
    key_wcu: u32,
    /// Token bucket size, in seconds of refill.
    #[arg(long, default_value_t = 1.0)]
    burst_seconds: f64,
    /// Fraction of requests answered 500/503 without being applied.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of requests whose connection is reset (RST) without an answer.
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Fraction of requests held for --stall-ms before being answered.
    #[arg(long, default_value_t = 0.0)]
    stall_rate: f64,
    /// How long a stalled request is held, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    stall_ms: u64,
    /// Drop the connection at the end of a stall instead of answering.
    #[arg(long)]
    stall_drop: bool,
    /// Fraction of the write requests inside each BatchWriteItem returned as UnprocessedItems,
    /// and of the statements of each BatchExecuteStatement failed with ThrottlingError,
    /// regardless of capacity (drawn per item or statement).
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Fraction of BatchGetItem keys returned as UnprocessedKeys.
    #[arg(long, default_value_t = 0.0)]
    unprocessed_keys_rate: f64,
    /// Fraction of write requests applied as usual and then answered 500 InternalServerError.
    #[arg(long, default_value_t = 0.0)]
    apply_then_error_rate: f64,
    /// Fraction of write requests held for --apply-late-delay, then applied, then reset unanswered.
    #[arg(long, default_value_t = 0.0)]
    apply_late_rate: f64,
    /// How long an apply-late write is held before it is applied (e.g. 2s, 500ms, 1.5s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    apply_late_delay: Duration,
    /// An outage window START_S:DURATION_S (seconds after start; repeatable): every request gets 503.
    #[arg(long = "outage", value_name = "START_S:DURATION_S", value_parser = parse_outage)]
    outages: Vec<OutageWindow>,
    /// Require this access key id in the request signature (the signature is not verified).
    #[arg(long)]
    access_key: Option<String>,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the fault/jitter PRNG (default: random, logged at start).
    #[arg(long)]
    seed: Option<u64>,
    /// Pre-create mqtt-dynamo's seven tables with this name prefix (may be empty).
    #[arg(long, value_name = "PREFIX", num_args = 0..=1, default_missing_value = "")]
    tables: Option<String>,
}

fn parse_outage(s: &str) -> Result<OutageWindow, String> {
    let (start, duration) = s
        .split_once(':')
        .ok_or_else(|| format!("expected START_S:DURATION_S, got {s:?}"))?;
    let secs = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("not a number of seconds: {v:?}"))
    };
    Ok(OutageWindow {
        start: secs(start)?,
        duration: secs(duration)?,
    })
}

/// A duration with a unit: `500ms`, `2s`, `1.5s`, `1m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("expected a number with a unit (ms, s, m), got {s:?}"))?;
    let (number, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s or m)")),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|x| x * scale)
        .filter(|x| x.is_finite() && *x >= 0.0)
        .and_then(|x| Duration::try_from_secs_f64(x).ok())
        .ok_or_else(|| format!("not a duration: {s:?}"))
}

impl Cli {
    fn config(&self) -> SimConfig {
        let nonzero = |n: u32| (n > 0).then_some(n);
        SimConfig {
            latency: Duration::from_millis(self.latency_ms),
            latency_jitter: Duration::from_millis(self.latency_jitter_ms),
            limits: Limits {
                table_wcu: self.table_wcu.and_then(nonzero),
                key_wcu: nonzero(self.key_wcu),
                burst_seconds: self.burst_seconds,
            },
            faults: FaultConfig {
                error_rate: self.error_rate,
                reset_rate: self.reset_rate,
                stall_rate: self.stall_rate,
                stall: Duration::from_millis(self.stall_ms),
                stall_action: if self.stall_drop {
                    StallAction::Drop
                } else {
                    StallAction::Answer
                },
                throttle_rate: self.throttle_rate,
                unprocessed_keys_rate: self.unprocessed_keys_rate,
                apply_then_error_rate: self.apply_then_error_rate,
                apply_late_rate: self.apply_late_rate,
                apply_late_delay: self.apply_late_delay,
                outages: self.outages.clone(),
            },
            access_key: self.access_key.clone(),
            seed: self.seed,
            tables: self
                .tables
                .as_deref()
                .map(TableDef::project_tables)
                .unwrap_or_default(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dynamo-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let sim = match Simulator::start(cli.config(), cli.listen).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("dynamo-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "dynamo-sim listening on {}", sim.endpoint());
    let _ = stdout.flush();
    wait_for_signal().await;
    tracing::info!("signal received, shutting down");
    sim.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["2", "", "s", "2h", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ambiguous_write_flags() {
        let cli = Cli::try_parse_from([
            "dynamo-sim",
            "--apply-then-error-rate",
            "0.1",
            "--apply-late-rate",
            "0.2",
            "--apply-late-delay",
            "2s",
        ])
        .unwrap();
        let faults = cli.config().faults;
        assert_eq!(faults.apply_then_error_rate, 0.1);
        assert_eq!(faults.apply_late_rate, 0.2);
        assert_eq!(faults.apply_late_delay, Duration::from_secs(2));
        let defaults = Cli::try_parse_from(["dynamo-sim"]).unwrap().config().faults;
        assert_eq!(defaults.apply_then_error_rate, 0.0);
        assert_eq!(defaults.apply_late_rate, 0.0);
        assert_eq!(defaults.apply_late_delay, Duration::from_secs(30));
    }
}
