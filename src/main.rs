//! The `mqtt-dynamo` command: `serve`, `tables create`, `tables describe`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::dynamo::{self, SdkRetries};
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::tables::{self, Capacity, Created};

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
    /// Manage the six tables.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Create the six tables (existing ones are left alone) and wait until they are ACTIVE.
    Create {
        /// Provisioned read capacity units (with --write-units); on-demand when omitted.
        #[arg(long, requires = "write_units")]
        read_units: Option<i64>,
        /// Provisioned write capacity units (with --read-units).
        #[arg(long, requires = "read_units")]
        write_units: Option<i64>,
    },
    /// Show the six tables: status, keys, billing mode, item count.
    Describe,
}

/// Where DynamoDB is for this run: the embedded server (kept alive here) or an endpoint.
struct Backend {
    #[cfg(feature = "embedded")]
    embedded: Option<mqtt_dynamo::embedded::EmbeddedDynamo>,
    endpoint: Option<String>,
}

async fn backend(cfg: &Config) -> Result<Backend, String> {
    #[cfg(feature = "embedded")]
    if cfg.dynamodb.endpoint_url.is_none() && cfg.dynamodb.embedded {
        let server = mqtt_dynamo::embedded::EmbeddedDynamo::start(cfg.dynamodb.embedded_listen)
            .await
            .map_err(|e| e.to_string())?;
        info!(endpoint = %server.endpoint(), "embedded DynamoDB (in memory) is listening");
        return Ok(Backend {
            endpoint: Some(server.endpoint()),
            embedded: Some(server),
        });
    }
    Ok(Backend {
        #[cfg(feature = "embedded")]
        embedded: None,
        endpoint: None,
    })
}

impl Backend {
    fn is_embedded(&self) -> bool {
        #[cfg(feature = "embedded")]
        return self.embedded.is_some();
        #[cfg(not(feature = "embedded"))]
        false
    }

    async fn stop(self) {
        #[cfg(feature = "embedded")]
        if let Some(server) = self.embedded {
            server.stop().await;
        }
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
    let rules = cfg.rule_set().map_err(|e| e.to_string())?;
    let backend = backend(&cfg).await?;
    let admin = dynamo::client(
        &cfg.dynamodb,
        backend.endpoint.as_deref(),
        SdkRetries::Standard,
    )
    .await;
    if backend.is_embedded() {
        tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        tables::check_exist(&admin, &cfg.dynamodb)
            .await
            .map_err(|e| e.to_string())?;
    }
    let client = dynamo::client(
        &cfg.dynamodb,
        backend.endpoint.as_deref(),
        SdkRetries::Disabled,
    )
    .await;
    let pipeline = Pipeline::start(
        &cfg.pipeline,
        &cfg.dynamodb,
        cfg.storage.format(),
        rules,
        client,
    )
    .map_err(|e| format!("cannot start the pipeline: {e}"))?;
    let signal = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    info!(
        region = cfg.dynamodb.region(),
        endpoint = backend
            .endpoint
            .as_deref()
            .or(cfg.dynamodb.endpoint_url.as_deref())
            .unwrap_or("AWS"),
        shards = cfg.pipeline.shards,
        "serving; SIGINT or SIGTERM drains and exits"
    );
    signal.await;
    info!("draining: writing every accepted event");
    let report = pipeline.shutdown().await;
    println!("{report}");
    backend.stop().await;
    Ok(())
}

/// SIGINT or SIGTERM, with the handlers installed when this is created (before the "serving" log
/// line), so a signal sent as soon as the service says it is ready is never missed.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn tables_command(cfg: Config, command: TablesCommand) -> Result<(), String> {
    let backend = backend(&cfg).await?;
    if backend.is_embedded() {
        println!(
            "note: no endpoint configured, so this talks to a fresh embedded DynamoDB that ends with this command; \
             set AWS_ENDPOINT_URL or [dynamodb] endpoint_url to manage a real one"
        );
    }
    let client = dynamo::client(
        &cfg.dynamodb,
        backend.endpoint.as_deref(),
        SdkRetries::Standard,
    )
    .await;
    let result = match command {
        TablesCommand::Create {
            read_units,
            write_units,
        } => {
            let capacity = match (read_units, write_units) {
                (Some(read), Some(write)) => Capacity::Provisioned { read, write },
                _ => Capacity::OnDemand,
            };
            tables::create_all(&client, &cfg.dynamodb, capacity)
                .await
                .map(|done| {
                    for (name, what) in done {
                        match what {
                            Created::Created => println!("created {name} ({capacity:?}), ACTIVE"),
                            Created::AlreadyExisted => println!("exists  {name}, ACTIVE"),
                        }
                    }
                })
        }
        TablesCommand::Describe => {
            tables::describe_all(&client, &cfg.dynamodb)
                .await
                .map(|lines| {
                    for line in lines {
                        println!("{line}");
                    }
                })
        }
    };
    backend.stop().await;
    result.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match &cli.config {
        Some(path) => Config::load(path),
        None => Ok(Config::from_env()),
    };
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The embedded DynamoDB logs every 4xx it answers, guarded no-ops included; keep it to errors
    // unless asked.
    let level = if cfg.log.level.contains("dynoxide") {
        cfg.log.level.clone()
    } else {
        format!("{},dynoxide=error", cfg.log.level)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(cfg).await,
            Command::Tables { command } => tables_command(cfg, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
