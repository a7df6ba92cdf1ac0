//! The service as a library call: [`start`] brings up DynamoDB (embedded, or the configured
//! endpoint), the tables, the pipeline, the metrics listener, the readiness check and the broker
//! listeners, and returns a [`Service`] that says where each listener is bound;
//! [`Service::shutdown`] stops the listeners, drains the pipeline and reports. `mqtt-dynamo serve`
//! is this plus logging and signal handling; tests start it in process on ephemeral ports.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::PrometheusHandle;
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::{ListenError, Listeners};
use crate::config::{Config, DEFAULT_REGION, DynamoConfig};
use crate::emqx_api::EmqxApi;
use crate::lookup::{ReadState, Reader};
use crate::pipeline::{ConnectObserver, Pipeline, PipelineHandle, StartError};
use crate::storage::dynamo::{self, SdkRetries};
use crate::storage::tables::{self, Capacity, TablesError};
use crate::storage::{Backend, BackendError};
use crate::telemetry::catalogue;
use crate::telemetry::recorder::{self, MetricsError, Readiness};
use crate::telemetry::stats::StatsSnapshot;

/// How often the readiness check asks DynamoDB whether the tables are there.
const READINESS_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the service did not start. Nothing keeps running after one of these.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("cannot start the embedded DynamoDB: {0}")]
    Backend(#[from] BackendError),
    /// The embedded tables could not be created, or DynamoDB said definitively that a configured
    /// table does not exist. (DynamoDB not answering is not an error: see [`start`].)
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error(transparent)]
    Pipeline(#[from] StartError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot set up EMQX's REST API client: {0}")]
    EmqxApi(#[from] crate::emqx_api::SetupError),
}

/// Where a running service listens. `None`: that listener is off in the configuration.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub exhook: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// The embedded DynamoDB's endpoint URL (`None`: the configured endpoint, or AWS).
    pub dynamodb: Option<String>,
}

/// A running service: the pipeline, the listeners feeding it, and the tasks watching it.
///
/// Dropping it without [`Service::shutdown`] abandons what is pending (the spool, if on, keeps
/// it for the next start). Shutdown blocks (async) until every accepted write is durable, dead
/// lettered or, at the pipeline's shutdown deadline, left to the spool.
pub struct Service {
    addrs: Addrs,
    /// The embedded DynamoDB (kept running until after the drain), or nothing.
    backend: Backend,
    pipeline: Pipeline,
    /// The ExHook and HTTP listeners, stopped first at shutdown so nothing new arrives.
    listeners: Listeners,
    /// The `/metrics` listener, its stop signal and the gauge sampler (when metrics are on).
    metrics: Option<MetricsTasks>,
    /// Sets `/readyz` from a table check every [`READINESS_PERIOD`]; aborted at shutdown.
    checker: JoinHandle<()>,
    /// Subscribe on connect (`[emqx_api]`): the observer every handle carries, and the worker
    /// task, aborted at shutdown after the listeners stop.
    connect: Option<ConnectSubscribe>,
}

/// Subscribe on connect: the observer every handle carries, and the worker task.
type ConnectSubscribe = (Arc<dyn ConnectObserver>, JoinHandle<()>);

struct MetricsTasks {
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    sampler: JoinHandle<()>,
}

/// Starts everything `cfg` says, in this order: DynamoDB, the tables (created on the embedded
/// one, checked on a configured one), the pipeline, metrics, the readiness check, the topic
/// index load, and the broker listeners last (so their first events are counted).
///
/// A configured DynamoDB that does not answer is not fatal: the service starts, accepts events
/// (into the spool or the bounded queues) and writes them once DynamoDB is back; `/readyz` says
/// why it is not ready meanwhile. Only a definitive "table missing" stops it.
pub async fn start(cfg: &Config) -> Result<Service, ServiceError> {
    let backend = Backend::start(&cfg.dynamodb).await?;
    let endpoint = backend.endpoint();
    let admin = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let region = admin.config().region().map(|r| r.to_string());
    let described = backend.describe(region.as_deref().unwrap_or(DEFAULT_REGION));
    info!(backend = %described, "DynamoDB: {described}");
    if backend.is_embedded() {
        tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand).await?;
        tables::enable_ttl(&admin, &cfg.dynamodb, &cfg.storage.ttl_attribute).await?;
    } else {
        match tables::check_exist(&admin, &cfg.dynamodb).await {
            Ok(()) => {}
            Err(e @ TablesError::Missing(_)) => return Err(e.into()),
            Err(e) => warn!(
                error = %e,
                "DynamoDB did not answer the table check; serving anyway: events are accepted and written once it answers (/readyz reports not ready until then)"
            ),
        }
    }
    // The admin client's region and credentials (one lookup, one credential cache), no retries.
    let client = dynamo::with_retries(&admin, SdkRetries::Disabled);
    let pipeline = Pipeline::from_config(cfg, client.clone())?;
    let connect = start_connect_subscriber(cfg, &pipeline, client)?;
    let readiness = Arc::new(Readiness::default());
    readiness.set(false, "starting: DynamoDB not checked yet");
    let (metrics, metrics_addr) = if cfg.metrics.enabled {
        let (tasks, addr) =
            start_metrics(cfg.metrics.listen, pipeline.handle(), &readiness).await?;
        (Some(tasks), Some(addr))
    } else {
        (None, None)
    };
    metrics::gauge!(
        catalogue::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "backend" => backend.kind(),
    )
    .set(1.0);
    let checker = spawn_readiness(cfg.dynamodb.clone(), admin, readiness, described);
    let handle = match &connect {
        Some((observer, _)) => pipeline
            .handle()
            .with_connect_observer(Arc::clone(observer)),
        None => pipeline.handle(),
    };
    let listeners = Listeners::start(cfg, handle).await?;
    let addrs = Addrs {
        exhook: listeners.exhook_addr,
        http: listeners.http_addr,
        metrics: metrics_addr,
        dynamodb: endpoint,
    };
    Ok(Service {
        addrs,
        backend,
        pipeline,
        listeners,
        metrics,
        checker,
        connect,
    })
}

/// Subscribe on connect, when `[emqx_api]` names a URL: the worker reads `mqtt_sub` through the
/// pipeline's reader (read-your-writes), or, with `lookup.enabled` off, a reader of its own
/// that sees DynamoDB only.
fn start_connect_subscriber(
    cfg: &Config,
    pipeline: &Pipeline,
    client: aws_sdk_dynamodb::Client,
) -> Result<Option<ConnectSubscribe>, ServiceError> {
    let Some(url) = &cfg.emqx_api.url else {
        return Ok(None);
    };
    let api = EmqxApi::new(&cfg.emqx_api)?;
    let reader = pipeline.handle().reader().cloned().unwrap_or_else(|| {
        Arc::new(Reader::new(
            client,
            &cfg.dynamodb,
            Arc::new(ReadState::new(false)),
            cfg.lookup.clone(),
        ))
    });
    let (observer, task) = crate::emqx_api::subscribe::start(api, reader, &cfg.emqx_api);
    info!(url = %url, "subscribe on connect: clients are subscribed to their stored subscriptions through EMQX's REST API");
    Ok(Some((observer, task)))
}

impl Service {
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// Reloads the TLS listeners' certificates, keys and client CAs (the `serve` command calls
    /// it on SIGHUP).
    pub fn tls_reload(&self) -> crate::broker::TlsReload {
        self.listeners.tls_reload()
    }

    /// A handle on the running pipeline (submit, stats, lookups); with `[emqx_api]`, a
    /// `client.connected` it accepts subscribes the client as one from a listener does.
    pub fn handle(&self) -> PipelineHandle {
        match &self.connect {
            Some((observer, _)) => self
                .pipeline
                .handle()
                .with_connect_observer(Arc::clone(observer)),
            None => self.pipeline.handle(),
        }
    }

    /// Stops the listeners, writes every accepted event (up to the pipeline's shutdown
    /// deadline), stops metrics and the embedded DynamoDB, and returns the run's figures.
    pub async fn shutdown(self) -> StatsSnapshot {
        info!("stopping the listeners");
        self.listeners.stop().await;
        if let Some((_, task)) = &self.connect {
            // Subscribes not yet made are abandoned: the clients will connect again.
            task.abort();
        }
        info!("draining: writing every accepted event");
        let report = self.pipeline.shutdown().await;
        self.checker.abort();
        if let Some(m) = self.metrics {
            m.sampler.abort();
            let _ = m.stop.send(());
            let _ = m.server.await;
        }
        self.backend.stop().await;
        report
    }
}

/// The process's Prometheus recorder: installed by the first service started, shared by any
/// later one in the same process (the `metrics` facade has one global recorder).
static PROMETHEUS: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

fn prometheus() -> Result<PrometheusHandle, MetricsError> {
    let mut installed = PROMETHEUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = recorder::install()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

async fn start_metrics(
    listen: SocketAddr,
    handle: PipelineHandle,
    readiness: &Arc<Readiness>,
) -> Result<(MetricsTasks, SocketAddr), ServiceError> {
    let prometheus = prometheus()?;
    let listener = recorder::bind(listen).await?;
    let addr = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: listen,
        source,
    })?;
    info!(%addr, "metrics listening (/metrics, /healthz, /readyz)");
    let sampler = recorder::spawn_sampler(handle, prometheus.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(recorder::serve(
        listener,
        prometheus,
        Arc::clone(readiness),
        async move {
            let _ = stopped.await;
        },
    ));
    Ok((
        MetricsTasks {
            stop,
            server,
            sampler,
        },
        addr,
    ))
}

/// Keeps `/readyz` true while DynamoDB answers and the tables exist.
fn spawn_readiness(
    dynamo: DynamoConfig,
    client: aws_sdk_dynamodb::Client,
    readiness: Arc<Readiness>,
    backend: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(READINESS_PERIOD);
        loop {
            tick.tick().await;
            match tables::check_exist(&client, &dynamo).await {
                Ok(()) => readiness.set(
                    true,
                    format!("DynamoDB ({backend}) answers and the tables exist"),
                ),
                Err(e) => readiness.set(false, format!("DynamoDB ({backend}): {e}")),
            }
        }
    })
}
