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
    /// regardless of capacity (drawn per item).
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Fraction of BatchGetItem keys returned as UnprocessedKeys.
    #[arg(long, default_value_t = 0.0)]
    unprocessed_keys_rate: f64,
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
    /// Pre-create mqtt-dynamo's six tables with this name prefix (may be empty).
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
