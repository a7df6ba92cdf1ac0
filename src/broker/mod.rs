//! Broker-facing adapters and the listeners that run them: the EMQX ExHook gRPC server
//! ([`exhook`]) and the HTTP ingest (`http`, with the EMQX 5 rule-row translator in
//! `rule_rows` and the EMQX 4 web-hook translator in `webhooks`), over optional TLS (`tls`).
//! Both translate what the broker sends into [`HookEvent`](crate::event::HookEvent)s and hand
//! them to the pipeline through an [`Admission`], which applies the configured policy when the
//! queue is full. Neither ever waits on DynamoDB: a call returns as soon as its events are
//! queued. TLS may be mutual (`tls_client_ca`) and reloads without dropping connections
//! ([`TlsReload`], SIGHUP, and a poll of the files every [`TLS_POLL_PERIOD`]).

mod admission;
pub mod exhook;
pub(crate) mod http;
mod rule_rows;
mod tls;
mod webhooks;

pub use admission::{Admission, AdmitError};
pub use tls::{POLL_PERIOD as TLS_POLL_PERIOD, ReloadCounts, TlsError, TlsReload};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::config::{ExhookConfig, HttpConfig};
use crate::pipeline::PipelineHandle;
use tls::{TlsFiles, TlsReloader};

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
///
/// A listener with TLS also runs its TLS file poll (every [`TLS_POLL_PERIOD`]) on its own
/// runtime, beside the server and ending with it; [`Listeners::tls_reload`] reloads on demand
/// (what SIGHUP does). Either way new handshakes use the new material and established
/// connections keep going.
pub struct Listeners {
    /// The ExHook server's admission, for its counters.
    pub exhook_admission: Option<Arc<Admission>>,
    pub exhook_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// The TLS listeners' reloaders, shared with their accept paths and file polls.
    tls: TlsReload,
    /// One sender per running listener: a send (or a drop) begins its graceful shutdown.
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The listeners' threads, joined by [`Listeners::stop`] once their calls have finished.
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Why a listener could not start.
#[derive(Debug, Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

const EXHOOK: &str = "the ExHook gRPC server";
const HTTP: &str = "the HTTP ingest";

/// Binds a non-blocking std listener, to be registered with the adapter's own runtime.
fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(std::net::TcpListener, SocketAddr), ListenError> {
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
        EXHOOK
    } else {
        HTTP
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
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
}

/// Resolves when the listener's stop channel fires (or its sender is dropped).
async fn stop_signal(stopped: tokio::sync::oneshot::Receiver<()>) {
    let _ = stopped.await;
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
            tls: TlsReload::default(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        if cfg.exhook.enabled {
            listeners.start_exhook(&cfg.exhook, handle.clone())?;
        }
        if cfg.http.enabled {
            listeners.start_http(&cfg.http, handle)?;
        }
        Ok(listeners)
    }

    /// Starts the ExHook gRPC server (v2 and v3 on one port) on its own thread.
    fn start_exhook(
        &mut self,
        cfg: &ExhookConfig,
        handle: PipelineHandle,
    ) -> Result<(), ListenError> {
        let (std_listener, addr) = bind(EXHOOK, cfg.listen)?;
        let tls = TlsFiles::from_config(&cfg.tls_cert, &cfg.tls_key, &cfg.tls_client_ca)
            .map(TlsReloader::grpc)
            .transpose()?;
        let mtls = cfg.tls_client_ca.is_some() && tls.is_some();
        if let Some(reloader) = &tls {
            self.tls.push(Arc::clone(reloader));
        }
        let admission = Arc::new(Admission::new(
            handle,
            cfg.when_full,
            cfg.block_timeout,
            "exhook",
        ));
        self.exhook_admission = Some(Arc::clone(&admission));
        let service = exhook::ExhookService::new(admission);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let max = cfg.max_message_bytes;
        let tls_on = tls.is_some();
        self.threads
            .push(spawn_dedicated("mqtt-dynamo-exhook", move || async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        return tracing::error!(error = %e, "the ExHook gRPC server cannot listen");
                    }
                };
                let watch = tls.clone();
                let serve = exhook::serve(listener, service, max, tls, stop_signal(stopped));
                if let Err(e) = with_tls_watch(serve, watch).await {
                    tracing::error!(error = %e, "the ExHook gRPC server failed");
                }
            })?);
        self.stops.push(stop);
        self.exhook_addr = Some(addr);
        tracing::info!(
            %addr,
            tls = tls_on,
            mtls,
            "ExHook gRPC server (emqx.exhook.v2 and v3) listening"
        );
        Ok(())
    }

    /// Starts the HTTP ingest (and the lookup API) on its own thread.
    fn start_http(&mut self, cfg: &HttpConfig, handle: PipelineHandle) -> Result<(), ListenError> {
        let (std_listener, addr) = bind(HTTP, cfg.listen)?;
        let admission = Arc::new(Admission::new(
            handle,
            cfg.when_full,
            cfg.block_timeout,
            "http",
        ));
        let app = http::router(
            http::HttpState {
                admission,
                token: cfg.token.clone(),
                publish_actions: cfg.publish_actions,
            },
            cfg.max_body_bytes,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tls = TlsFiles::from_config(&cfg.tls_cert, &cfg.tls_key, &cfg.tls_client_ca)
            .map(TlsReloader::http)
            .transpose()?;
        let tls_on = tls.is_some();
        let mtls = cfg.tls_client_ca.is_some() && tls_on;
        if let Some(reloader) = &tls {
            self.tls.push(Arc::clone(reloader));
        }
        self.threads
            .push(spawn_dedicated("mqtt-dynamo-http", move || async move {
                match tls.as_ref().and_then(|r| r.rustls_config()) {
                    Some(config) => {
                        with_tls_watch(serve_https(std_listener, config, app, stopped), tls).await
                    }
                    None => serve_http(std_listener, app, stopped).await,
                }
            })?);
        self.stops.push(stop);
        self.http_addr = Some(addr);
        tracing::info!(%addr, tls = tls_on, mtls, "HTTP ingest listening");
        Ok(())
    }

    /// The handle that reloads the TLS listeners' certificates, keys and client CAs (what the
    /// `serve` command's SIGHUP handler calls), and counts their reloads.
    pub fn tls_reload(&self) -> TlsReload {
        self.tls.clone()
    }

    /// Stops accepting calls and waits for the ones in progress (the TLS file polls end with
    /// their listeners).
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

/// Runs `serve` with the TLS file poll of `reloader` beside it, on the listener's runtime; the
/// poll is dropped when `serve` ends.
async fn with_tls_watch<T>(
    serve: impl std::future::Future<Output = T>,
    reloader: Option<Arc<TlsReloader>>,
) -> T {
    match reloader {
        None => serve.await,
        Some(reloader) => tokio::select! {
            out = serve => out,
            never = reloader.watch() => match never {},
        },
    }
}

/// Serves `app` over TLS until `stopped` fires, then shuts down gracefully (at most 10 s).
async fn serve_https(
    std_listener: std::net::TcpListener,
    config: axum_server::tls_rustls::RustlsConfig,
    app: axum::Router,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let server_handle = axum_server::Handle::new();
    let stopper = server_handle.clone();
    let stop_on_signal = async move {
        stop_signal(stopped).await;
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    };
    let serve = async move {
        match axum_server::from_tcp_rustls(std_listener, config) {
            Ok(server) => {
                if let Err(e) = server
                    .handle(server_handle)
                    .serve(app.into_make_service())
                    .await
                {
                    tracing::error!(error = %e, "the HTTP ingest failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "the HTTP ingest failed to start"),
        }
    };
    tokio::join!(stop_on_signal, serve);
}

/// Serves `app` over plain TCP until `stopped` fires, then shuts down gracefully.
async fn serve_http(
    std_listener: std::net::TcpListener,
    app: axum::Router,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use axum::serve::ListenerExt;
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "the HTTP ingest cannot listen"),
    };
    // TCP_NODELAY, as for gRPC: small responses must not wait for ACKs.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal(stopped))
        .await
    {
        tracing::error!(error = %e, "the HTTP ingest failed");
    }
}
