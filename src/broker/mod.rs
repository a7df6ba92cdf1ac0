//! Broker-facing adapters: the EMQX ExHook gRPC server ([`exhook`]) and the HTTP ingest
//! ([`http`]). Both translate what the broker sends into [`HookEvent`]s and hand them to the
//! pipeline through an [`Admission`], which applies the configured policy when the queue is full.
//! Neither ever waits on DynamoDB: a call returns as soon as its events are queued.

pub mod exhook;
pub mod http;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::warn;

use crate::config::WhenFull;
use crate::event::HookEvent;
use crate::pipeline::PipelineHandle;
use crate::pipeline::{Admit, Receipt, SubmitError};
use crate::rules::ActionScope;

/// Why an adapter could not hand an event over.
#[derive(Debug, Error)]
pub enum AdmitError {
    /// The event itself is bad (the broker should be told).
    #[error("{0}")]
    Invalid(String),
    /// The queue stayed full past the policy's deadline (or the policy is `drop`): the event is
    /// dropped, counted and logged.
    #[error("ingest queue is full; event dropped")]
    Dropped,
    #[error("the service is shutting down")]
    Closed,
    /// The event could not be made durable (a spool write or fsync failed).
    #[error("{0}")]
    Unavailable(String),
}

/// The door between an adapter and the pipeline: submit, and when the queue is full apply the
/// adapter's policy. Blocking waits run on tokio's blocking pool, never on a runtime worker.
#[derive(Debug)]
pub struct Admission {
    handle: PipelineHandle,
    when_full: WhenFull,
    block_timeout: Duration,
    adapter: &'static str,
    /// Rate limit for the drop warnings.
    drop_log: crate::telemetry::stats::LogGate,
    dropped: AtomicU64,
    /// Calls that found the queue full and waited for room (`when_full = "block"`).
    waited: AtomicU64,
}

impl Admission {
    /// How a write that comes from no hook is admitted under this policy: waiting up to the
    /// block timeout for room, or not at all.
    pub fn admit_writes(&self) -> Admit {
        match self.when_full {
            WhenFull::Block => Admit::within(self.block_timeout),
            WhenFull::Drop => Admit::now(),
        }
    }

    pub fn new(
        handle: PipelineHandle,
        when_full: WhenFull,
        block_timeout: Duration,
        adapter: &'static str,
    ) -> Self {
        let origin = match adapter {
            "exhook" => crate::telemetry::stats::Origin::Exhook,
            "http" => crate::telemetry::stats::Origin::Http,
            _ => crate::telemetry::stats::Origin::Api,
        };
        Admission {
            handle: handle.for_origin(origin),
            when_full,
            block_timeout,
            adapter,
            drop_log: crate::telemetry::stats::LogGate::new(),
            dropped: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }
    }

    pub fn handle(&self) -> &PipelineHandle {
        &self.handle
    }

    /// Events this adapter dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Calls that waited for room in the queue.
    pub fn waited(&self) -> u64 {
        self.waited.load(Relaxed)
    }

    /// Queues `event`, applying the full-queue policy.
    pub async fn admit(&self, event: HookEvent, scope: ActionScope) -> Result<(), AdmitError> {
        let hook = event.hook().as_str();
        let first = match self.when_full {
            // Full: this caller waits and tries again, and counts the final outcome.
            WhenFull::Block => Admit::now().scope(scope).retried_by_caller(),
            WhenFull::Drop => Admit::now().scope(scope),
        };
        let first = self.handle.submit(&event, first);
        // Without the spool the receipt is ready at once; with it, wait for the fsync here
        // (async), not on a runtime worker.
        let first = match first {
            Ok(receipt) => receipt.durable().await,
            Err(e) => Err(e),
        };
        let result = match (first, self.when_full) {
            (Err(SubmitError::Full), WhenFull::Block) => {
                self.waited.fetch_add(1, Relaxed);
                metrics::counter!(crate::telemetry::catalogue::HOOK_WAITS_TOTAL, "adapter" => self.adapter)
                    .increment(1);
                let handle = self.handle.clone();
                let deadline = Instant::now() + self.block_timeout;
                tokio::task::spawn_blocking(move || {
                    handle
                        .submit(&event, Admit::until(deadline).scope(scope))
                        .and_then(Receipt::wait)
                })
                .await
                .unwrap_or(Err(SubmitError::Closed))
            }
            (other, _) => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(SubmitError::Full | SubmitError::TooLarge { .. }) => {
                self.dropped.fetch_add(1, Relaxed);
                metrics::counter!(crate::telemetry::catalogue::HOOK_EVENTS_DROPPED_TOTAL, "adapter" => self.adapter, "reason" => "queue_full")
                    .increment(1);
                if let Some(held) = self.drop_log.allow() {
                    warn!(
                        adapter = self.adapter,
                        hook,
                        reason = "queue_full",
                        dropped_total = self.dropped.load(Relaxed),
                        held_back = held,
                        "ingest queue full: hook event dropped"
                    );
                }
                Err(AdmitError::Dropped)
            }
            Err(SubmitError::Invalid(e)) => Err(AdmitError::Invalid(e.to_string())),
            Err(SubmitError::Closed) => Err(AdmitError::Closed),
            Err(SubmitError::Spool(e)) => Err(AdmitError::Unavailable(e)),
        }
    }
}

/// Milliseconds since the Unix epoch, for hooks that carry no time of their own.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The running listeners of `serve`. Stopping them first (before draining the pipeline) means no
/// event is accepted after the drain starts.
///
/// Each adapter runs on its own OS thread with its own single-threaded tokio runtime, so a hook
/// call never queues behind the pipeline's flush tasks on the shared runtime: what the broker
/// waits for is the enqueue, not DynamoDB and not our own batching work. Each listener owns the
/// receiving half of its `stop` channel; sending (or dropping the sender) begins its graceful
/// shutdown, which lets calls in progress finish.
pub struct Listeners {
    /// The ExHook server's admission, for its counters.
    pub exhook_admission: Option<Arc<Admission>>,
    pub exhook_addr: Option<std::net::SocketAddr>,
    pub http_addr: Option<std::net::SocketAddr>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Why a listener could not start.
#[derive(Debug, Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Binds a non-blocking std listener, to be registered with the adapter's own runtime.
fn bind(
    what: &'static str,
    addr: std::net::SocketAddr,
) -> Result<(std::net::TcpListener, std::net::SocketAddr), ListenError> {
    let err = |source| ListenError::Bind { what, addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Runs `serve` to completion on a new thread with a single-threaded runtime of its own.
fn spawn_dedicated<F, Fut>(name: &str, serve: F) -> Result<std::thread::JoinHandle<()>, ListenError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let what = if name.ends_with("exhook") {
        "the ExHook gRPC server"
    } else {
        "the HTTP ingest"
    };
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(serve()),
                Err(e) => tracing::error!(error = %e, "cannot start the runtime of {what}"),
            }
        })
        .map_err(|source| ListenError::Bind {
            what,
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
}

impl Listeners {
    /// Binds and starts the enabled adapters.
    pub async fn start(
        cfg: &crate::config::Config,
        handle: PipelineHandle,
    ) -> Result<Listeners, ListenError> {
        let mut listeners = Listeners {
            exhook_admission: None,
            exhook_addr: None,
            http_addr: None,
            stops: Vec::new(),
            threads: Vec::new(),
        };
        if cfg.exhook.enabled {
            let (std_listener, addr) = bind("the ExHook gRPC server", cfg.exhook.listen)?;
            let tls = match (&cfg.exhook.tls_cert, &cfg.exhook.tls_key) {
                (Some(c), Some(k)) => Some(tls::grpc(c, k)?),
                _ => None,
            };
            let admission = Arc::new(Admission::new(
                handle.clone(),
                cfg.exhook.when_full,
                cfg.exhook.block_timeout,
                "exhook",
            ));
            listeners.exhook_admission = Some(Arc::clone(&admission));
            let service = exhook::ExhookService::new(admission);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let max = cfg.exhook.max_message_bytes;
            let tls_on = tls.is_some();
            listeners.threads.push(spawn_dedicated("mqtt-dynamo-exhook", move || async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "the ExHook gRPC server cannot listen"),
                };
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = exhook::serve(listener, service, max, tls, shutdown).await {
                    tracing::error!(error = %e, "the ExHook gRPC server failed");
                }
            })?);
            listeners.stops.push(stop);
            listeners.exhook_addr = Some(addr);
            tracing::info!(%addr, tls = tls_on, "ExHook gRPC server (emqx.exhook.v2 and v3) listening");
        }
        if cfg.http.enabled {
            let (std_listener, addr) = bind("the HTTP ingest", cfg.http.listen)?;
            let admission = Arc::new(Admission::new(
                handle,
                cfg.http.when_full,
                cfg.http.block_timeout,
                "http",
            ));
            let app = http::router(
                http::HttpState {
                    admission,
                    token: cfg.http.token.clone(),
                    publish_actions: cfg.http.publish_actions,
                },
                cfg.http.max_body_bytes,
            );
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let tls_config = match (&cfg.http.tls_cert, &cfg.http.tls_key) {
                (Some(c), Some(k)) => Some(tls::http(c, k).await?),
                _ => None,
            };
            let tls_on = tls_config.is_some();
            listeners.threads.push(spawn_dedicated("mqtt-dynamo-http", move || async move {
                match tls_config {
                    Some(config) => {
                        let server_handle = axum_server::Handle::new();
                        let stopper = server_handle.clone();
                        let stop_on_signal = async move {
                            let _ = stopped.await;
                            stopper.graceful_shutdown(Some(Duration::from_secs(10)));
                        };
                        let serve = async move {
                            match axum_server::from_tcp_rustls(std_listener, config) {
                                Ok(server) => {
                                    if let Err(e) = server.handle(server_handle).serve(app.into_make_service()).await {
                                        tracing::error!(error = %e, "the HTTP ingest failed");
                                    }
                                }
                                Err(e) => tracing::error!(error = %e, "the HTTP ingest failed to start"),
                            }
                        };
                        tokio::join!(stop_on_signal, serve);
                    }
                    None => {
                        use axum::serve::ListenerExt;
                        let listener = match tokio::net::TcpListener::from_std(std_listener) {
                            Ok(l) => l,
                            Err(e) => return tracing::error!(error = %e, "the HTTP ingest cannot listen"),
                        };
                        // TCP_NODELAY, as for gRPC: small responses must not wait for ACKs.
                        let listener = listener.tap_io(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        });
                        let shutdown = async move {
                            let _ = stopped.await;
                        };
                        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                            tracing::error!(error = %e, "the HTTP ingest failed");
                        }
                    }
                }
            })?);
            listeners.stops.push(stop);
            listeners.http_addr = Some(addr);
            tracing::info!(%addr, tls = tls_on, "HTTP ingest listening");
        }
        Ok(listeners)
    }

    /// Stops accepting calls and waits for the ones in progress.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
