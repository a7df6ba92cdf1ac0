//! The `mqtt-dynamo` command: `serve`, `tables create|describe`, `lookup retained|offline|subs`,
//! `subs add|rm|list`, `config import`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::pipeline::Pipeline;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::tables::{self, Capacity, Created};

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
    /// Manage the six tables.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
}

#[derive(Subcommand)]
enum LookupCommand {
    /// Retained messages matching a subscription filter (MQTT wildcards; the topic index is
    /// built with a parallel Scan first).
    Retained {
        filter: String,
        /// Look the filter up as a literal key, as the seed did.
        #[arg(long)]
        literal: bool,
    },
    /// Offline messages for a subscription, oldest first.
    Offline {
        filter: String,
        /// At most this many, the newest (0: no limit); default `lookup.max_returned_count`.
        #[arg(long)]
        limit: Option<usize>,
        /// Only messages since: epoch milliseconds, an RFC 3339 time, or a duration (`2h`).
        #[arg(long)]
        since: Option<String>,
        /// The subscription's QoS (QoS 0 subscriptions get nothing, as in the seed).
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Look the filter up as a literal key, as the seed did.
        #[arg(long)]
        literal: bool,
    },
    /// A client's subscriptions.
    Subs { clientid: String },
}

#[derive(Subcommand)]
enum SubsCommand {
    /// Store a subscription (PutItem).
    Add {
        clientid: String,
        topic: String,
        #[arg(long, default_value_t = 0)]
        qos: u8,
    },
    /// Remove a subscription (DeleteItem).
    Rm { clientid: String, topic: String },
    /// List a client's subscriptions.
    List { clientid: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Translate an EMQX 4 `emqx_backend_dynamo.conf` into mqtt-dynamo's TOML; warnings about what
    /// cannot be mapped go to stderr.
    Import {
        /// The EMQX 4 file.
        file: PathBuf,
        /// Write the TOML here (created readable by the owner only: it may hold AWS keys);
        /// stdout when omitted.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn config_import(file: &std::path::Path, output: Option<&std::path::Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let imported = mqtt_dynamo::config::import::import_emqx4(&text)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    match output {
        None => {
            print!("{}", imported.toml);
            if !imported.toml.ends_with('\n') {
                println!();
            }
        }
        Some(path) => {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            f.write_all(imported.toml.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {} ({} warnings)",
                path.display(),
                imported.warnings.len()
            );
        }
    }
    Ok(())
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
    embedded: Option<mqtt_dynamo::storage::embedded::EmbeddedDynamo>,
    endpoint: Option<String>,
}

async fn backend(cfg: &Config) -> Result<Backend, String> {
    #[cfg(feature = "embedded")]
    if cfg.dynamodb.endpoint_url.is_none() && cfg.dynamodb.embedded {
        let server =
            mqtt_dynamo::storage::embedded::EmbeddedDynamo::start(cfg.dynamodb.embedded_listen)
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
        match tables::check_exist(&admin, &cfg.dynamodb).await {
            Ok(()) => {}
            // A definitive answer: the tables are not there.
            Err(e @ tables::TablesError::Missing(_)) => return Err(e.to_string()),
            // DynamoDB does not answer (an outage, a network problem): serve anyway, so the
            // broker's events are accepted (into the spool, or the bounded queues) and written
            // once it is back; /readyz says why the service is not ready meanwhile.
            Err(e) => warn!(
                error = %e,
                "DynamoDB did not answer the table check; serving anyway: events are accepted and written once it answers (/readyz reports not ready until then)"
            ),
        }
    }
    let client = dynamo::client(
        &cfg.dynamodb,
        backend.endpoint.as_deref(),
        SdkRetries::Disabled,
    )
    .await;
    let pipeline = Pipeline::from_config(&cfg, client).map_err(|e| e.to_string())?;
    // Metrics first, so the listeners' first calls are counted.
    let readiness = std::sync::Arc::new(mqtt_dynamo::telemetry::recorder::Readiness::default());
    readiness.set(false, "starting: DynamoDB not checked yet");
    let metrics_server = if cfg.metrics.enabled {
        let prometheus = mqtt_dynamo::telemetry::recorder::install().map_err(|e| e.to_string())?;
        let listener = mqtt_dynamo::telemetry::recorder::bind(cfg.metrics.listen)
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        info!(%addr, "metrics listening (/metrics, /healthz, /readyz)");
        let sampler =
            mqtt_dynamo::telemetry::recorder::spawn_sampler(pipeline.handle(), prometheus.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(mqtt_dynamo::telemetry::recorder::serve(
            listener,
            prometheus,
            readiness.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Some((stop, server, sampler))
    } else {
        None
    };
    let checker = spawn_readiness(cfg.dynamodb.clone(), admin.clone(), readiness);
    if let Some(reader) = pipeline.handle().reader().cloned() {
        // Lookups that need the indexes wait for this load (or retry it if it failed).
        tokio::spawn(async move {
            if let Err(e) = reader.load_indexes().await {
                tracing::warn!(error = %e, "topic indexes not loaded yet; the next lookup retries");
            }
        });
    }
    let listeners = mqtt_dynamo::broker::Listeners::start(&cfg, pipeline.handle())
        .await
        .map_err(|e| e.to_string())?;
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
    info!("stopping the listeners");
    listeners.stop().await;
    info!("draining: writing every accepted event");
    let report = pipeline.shutdown().await;
    checker.abort();
    if let Some((stop, server, sampler)) = metrics_server {
        sampler.abort();
        let _ = stop.send(());
        let _ = server.await;
    }
    println!("{report}");
    backend.stop().await;
    Ok(())
}

/// Keeps `/readyz` true while DynamoDB answers and the six tables exist, checking every 10 s.
fn spawn_readiness(
    dynamo: mqtt_dynamo::config::DynamoConfig,
    client: aws_sdk_dynamodb::Client,
    readiness: std::sync::Arc<mqtt_dynamo::telemetry::recorder::Readiness>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            match tables::check_exist(&client, &dynamo).await {
                Ok(()) => readiness.set(true, "DynamoDB answers and the tables exist"),
                Err(e) => readiness.set(false, e.to_string()),
            }
        }
    })
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

/// The endpoint the read commands use: the configured one, else a running `serve`'s embedded
/// DynamoDB (they would find nothing in a fresh embedded one).
fn read_endpoint(cfg: &Config) -> Option<String> {
    if cfg.dynamodb.endpoint_url.is_none() && cfg.dynamodb.embedded {
        return Some(format!("http://{}", cfg.dynamodb.embedded_listen));
    }
    None
}

fn print_json(v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

async fn lookup_command(cfg: Config, command: LookupCommand) -> Result<(), String> {
    use mqtt_dynamo::config::MatchMode;
    use mqtt_dynamo::lookup::http::{offline_json, parse_since, retained_json};
    use mqtt_dynamo::lookup::{OfflineQuery, ReadState, Reader};
    let endpoint = read_endpoint(&cfg);
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let mut lookup = cfg.lookup.clone();
    let literal = matches!(
        command,
        LookupCommand::Retained { literal: true, .. }
            | LookupCommand::Offline { literal: true, .. }
    );
    if literal {
        lookup.retained = MatchMode::Literal;
        lookup.offline = MatchMode::Literal;
    }
    let reader = Reader::new(
        client,
        &cfg.dynamodb,
        std::sync::Arc::new(ReadState::new(false)),
        lookup,
    );
    let e = |e: mqtt_dynamo::lookup::LookupError| e.to_string();
    match command {
        LookupCommand::Retained { filter, .. } => {
            let r = reader.retained(&filter).await.map_err(e)?;
            print_json(&retained_json(&filter, &r))
        }
        LookupCommand::Offline {
            filter,
            limit,
            since,
            qos,
            ..
        } => {
            let since_us = since
                .map(|t| parse_since(&t, std::time::SystemTime::now()))
                .transpose()?;
            let o = reader
                .offline(&OfflineQuery {
                    filter: filter.clone(),
                    qos,
                    limit,
                    since_us,
                })
                .await
                .map_err(e)?;
            print_json(&offline_json(&filter, &o))
        }
        LookupCommand::Subs { clientid } => subs_list(&reader, &clientid).await,
    }
}

async fn subs_list(reader: &mqtt_dynamo::lookup::Reader, clientid: &str) -> Result<(), String> {
    let subs = reader
        .subscriptions(clientid)
        .await
        .map_err(|e| e.to_string())?;
    print_json(&mqtt_dynamo::lookup::http::subscriptions_json(
        clientid, &subs,
    ))
}

async fn subs_command(cfg: Config, command: SubsCommand) -> Result<(), String> {
    use mqtt_dynamo::lookup::http::subscription_key;
    use mqtt_dynamo::storage::item::Value;
    let endpoint = read_endpoint(&cfg);
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let table = cfg
        .dynamodb
        .table_name(mqtt_dynamo::storage::item::Table::Sub);
    match command {
        SubsCommand::Add {
            clientid,
            topic,
            qos,
        } => {
            if qos > 2 {
                return Err("--qos must be 0, 1 or 2".into());
            }
            let key = subscription_key(&clientid, &topic).map_err(|(e, _)| e)?;
            let mut item = key.to_item();
            item.insert("qos".into(), Value::N(i64::from(qos)));
            client
                .put_item()
                .table_name(&table)
                .set_item(Some(dynamo::to_attrs(&item)))
                .send()
                .await
                .map_err(|e| format!("PutItem on {table} failed: {}", dynamo::error_text(&e)))?;
            println!("stored {clientid} {topic} qos {qos}");
            Ok(())
        }
        SubsCommand::Rm { clientid, topic } => {
            let key = subscription_key(&clientid, &topic).map_err(|(e, _)| e)?;
            client
                .delete_item()
                .table_name(&table)
                .set_key(Some(dynamo::key_attrs(&key)))
                .send()
                .await
                .map_err(|e| format!("DeleteItem on {table} failed: {}", dynamo::error_text(&e)))?;
            println!("removed {clientid} {topic}");
            Ok(())
        }
        SubsCommand::List { clientid } => {
            let reader = mqtt_dynamo::lookup::Reader::new(
                client,
                &cfg.dynamodb,
                std::sync::Arc::new(mqtt_dynamo::lookup::ReadState::new(false)),
                cfg.lookup.clone(),
            );
            subs_list(&reader, &clientid).await
        }
    }
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
    // Needs no runtime, no logging and no configuration of its own.
    if let Command::Config {
        command: ConfigCommand::Import { file, output },
    } = &cli.command
    {
        return match config_import(file, output.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        mqtt_dynamo::config::LogFormat::Json => builder.json().init(),
        mqtt_dynamo::config::LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
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
            Command::Config { .. } => Ok(()),
            Command::Lookup { command } => lookup_command(cfg, command).await,
            Command::Subs { command } => subs_command(cfg, command).await,
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
