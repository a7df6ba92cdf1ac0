//! The `mqtt-dynamo` command: parses the command line, loads the configuration, sets up logging
//! and dispatches to one file per command: [`serve`], [`tables`], [`lookup`], [`subs`],
//! [`retained`] (`retained restore`), [`config`] (`config import`, `check`, `default`),
//! [`health`].

mod config;
mod health;
mod lookup;
mod retained;
mod serve;
mod subs;
mod tables;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::error;
use tracing_subscriber::EnvFilter;

use mqtt_dynamo::config::Config;

use config::ConfigCommand;
use lookup::LookupCommand;
use retained::RetainedCommand;
use subs::SubsCommand;
use tables::TablesCommand;

/// mimalloc instead of glibc malloc: under load glibc's allocator took about a third of the CPU
/// (perf; ARCHITECTURE.md, "Measuring").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mqtt-dynamo",
    version,
    about = "Persists MQTT broker hook events into DynamoDB"
)]
struct Cli {
    /// Configuration file (TOML). Without it: the seed's rules on the embedded DynamoDB, or on the
    /// endpoint named by AWS_ENDPOINT_URL.
    #[arg(long, short, global = true, env = "MQTT_DYNAMO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline until SIGINT or SIGTERM, then write everything accepted and exit.
    Serve,
    /// Manage the seven tables (the seed's six and the shared topic index).
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Exit 0 when a running service's health endpoint answers 200 (a container HEALTHCHECK
    /// without curl), 1 otherwise.
    Health {
        /// Plain HTTP only, as the metrics listener serves.
        #[arg(default_value_t = format!("http://127.0.0.1:{}/healthz", mqtt_dynamo::config::DEFAULT_METRICS_PORT))]
        url: String,
    },
    /// Read the tables as the broker's lookups do (JSON on stdout). Talks to DynamoDB directly:
    /// the configured endpoint, or a running `serve`'s embedded one.
    Lookup {
        #[command(subcommand)]
        command: LookupCommand,
    },
    /// A client's stored subscriptions (`mqtt_sub`), which the broker restores on connect.
    Subs {
        #[command(subcommand)]
        command: SubsCommand,
    },
    /// Stored retained messages (`mqtt_retain`) and EMQX 5's retainer.
    Retained {
        #[command(subcommand)]
        command: RetainedCommand,
    },
}

/// The endpoint the read commands use: the configured one, else a running `serve`'s embedded
/// DynamoDB (they would find nothing in a fresh embedded one).
pub(crate) fn read_endpoint(cfg: &Config) -> Option<String> {
    match cfg.dynamodb.backend(|k| std::env::var(k).ok()) {
        Ok(mqtt_dynamo::config::BackendChoice::Embedded { .. }) => {
            Some(format!("http://{}", cfg.dynamodb.embedded_listen))
        }
        _ => None,
    }
}

pub(crate) fn print_json(v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These need no runtime, no logging and no configuration of their own.
    match &cli.command {
        Command::Config { command } => {
            return exit(match command {
                ConfigCommand::Import { file, output } => {
                    config::config_import(file, output.as_deref())
                }
                ConfigCommand::Check { file } => {
                    config::config_check(file.as_deref().or(cli.config.as_deref()))
                }
                ConfigCommand::Default => config::config_default(),
            });
        }
        Command::Health { url } => return exit(health::check(url)),
        _ => {}
    }
    let cfg = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::from_env(),
    };
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log);
    for name in mqtt_dynamo::config::sources::ignored_variables() {
        tracing::warn!("{name} names no configuration section; ignored");
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Serve => serve::serve(cfg).await,
                    Command::Tables { command } => tables::tables_command(cfg, command).await,
                    Command::Config { .. } | Command::Health { .. } => Ok(()),
                    Command::Lookup { command } => lookup::lookup_command(cfg, command).await,
                    Command::Subs { command } => subs::subs_command(cfg, command).await,
                    Command::Retained { command } => retained::retained_command(cfg, command).await,
                }
            })
        });
    if let Err(e) = &result {
        error!("{e}");
    }
    exit(result)
}

/// Logs to stderr at `log.level` (RUST_LOG overrides), as JSON or text.
fn init_logging(log: &mqtt_dynamo::config::LogConfig) {
    // The embedded DynamoDB logs every 4xx it answers, guarded no-ops included; keep it to errors
    // unless asked.
    let level = if log.level.contains("dynoxide") {
        log.level.clone()
    } else {
        format!("{},dynoxide=error", log.level)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        mqtt_dynamo::config::LogFormat::Json => builder.json().init(),
        mqtt_dynamo::config::LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Success, or the error on stderr and exit status 1.
fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
