//! The HTTP/1.1 front: the accept loop, the data plane (`POST /`, DynamoDB JSON 1.0 protocol),
//! the control endpoints (`/_sim/...`), and [`Simulator`] / [`SimHandle`].
//!
//! Each connection is served by its own task on the multi-threaded runtime. A request goes
//! through: latency → fault decision (outage, reset, error, stall, and for writes
//! apply-then-error and apply-late) → access-key check → operation. Latency and stalls are
//! `tokio::time::sleep`s, so they hold no thread. An apply-late write sleeps and is applied on
//! a task of its own, so it lands even when the client has disconnected.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{FaultConfig, Limits, SimConfig, StallAction};
use crate::error::{ApiError, SimError};
use crate::faults::Decision;
use crate::ops::{self, Op};
use crate::state::Shared;
use crate::stats::{SimStats, add};

/// Request bodies above this are refused (DynamoDB's own cap is 16 MB per request; JSON
/// overhead is allowed for).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The response to a request that must close its connection unanswered (reset faults). Hyper
/// drops the connection when the service returns an error, without writing anything; the
/// socket then goes away with an RST (see [`ConnIo`]).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by dynamo-sim fault injection")]
pub struct Dropped;

type HttpResponse = Response<Full<Bytes>>;

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds `addr` (port 0 picks a free port) and serves until [`SimHandle::shutdown`] or until
    /// the last `SimHandle` clone is dropped. Must be called within a tokio runtime; the
    /// server's tasks run on that runtime.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
        let shared = Arc::new(Shared::new(&config)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, shared.clone(), stopped));
        tracing::info!(addr = %local, seed = shared.seed, "dynamo-sim started");
        Ok(SimHandle {
            inner: Arc::new(HandleInner {
                shared,
                addr: local,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// Controls a running simulator. Cheap to clone (one `Arc`); every clone controls the same
/// server.
#[derive(Debug, Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Tells the accept loop to stop; dropping it (last handle gone) does the same.
    stop: watch::Sender<bool>,
    /// The accept loop, awaited by the first `shutdown`.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SimHandle {
    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://<addr>`, for the SDK's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A snapshot of the counters and table item counts.
    pub fn stats(&self) -> SimStats {
        self.inner.shared.snapshot()
    }

    /// Zeroes the counters (items stay).
    pub fn reset_stats(&self) {
        self.inner.shared.stats.reset();
    }

    /// Forces an outage on or off (scheduled windows still apply while it is off).
    pub fn set_outage(&self, on: bool) {
        self.inner.shared.faults.set_outage(on);
    }

    pub fn faults(&self) -> FaultConfig {
        self.inner.shared.faults.config()
    }

    /// Replaces the fault configuration; outage windows stay relative to the simulator's start.
    pub fn set_faults(&self, faults: FaultConfig) -> Result<(), SimError> {
        faults.validate()?;
        self.inner.shared.faults.set_config(faults);
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        self.inner.shared.limits()
    }

    /// Replaces the capacity limits. Existing buckets keep their tokens (capped at the new size).
    pub fn set_limits(&self, limits: Limits) -> Result<(), SimError> {
        self.inner.shared.set_limits(limits)
    }

    /// The PRNG seed in use (the configured one, or the one drawn at start).
    pub fn seed(&self) -> u64 {
        self.inner.shared.seed
    }

    /// Stops accepting, closes every connection (in-flight requests get no answer) and waits
    /// for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.inner.stop.send(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    // Connection tasks live here so shutdown can end them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A stop request, or every handle dropped.
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let abort = Arc::new(AtomicBool::new(false));
                        let io = ConnIo { stream, abort: abort.clone() };
                        let service = service_fn(move |req| {
                            handle(shared.clone(), abort.clone(), req)
                        });
                        let served = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(io), service)
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "connection closed with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    tracing::info!("dynamo-sim stopped");
}

/// A connection's socket. When a fault drops the connection, `abort` is set and the socket is
/// closed with `SO_LINGER` 0, so the client sees a reset (RST), not an orderly close.
struct ConnIo {
    stream: TcpStream,
    abort: Arc<AtomicBool>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.abort.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.abort.load(Ordering::Relaxed) {
            // No FIN before the RST.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

async fn handle(
    shared: Arc<Shared>,
    abort: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<HttpResponse, Dropped> {
    let path = req.uri().path().to_owned();
    if let Some(name) = path.strip_prefix("/_sim/") {
        return Ok(control(&shared, req.method(), name, req.uri().query()));
    }
    match (req.method(), path.as_str()) {
        (&Method::POST, "/") => {
            let response = data_plane(&shared, req).await;
            if response.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            response
        }
        (&Method::GET, "/") => Ok(text(StatusCode::OK, "healthy: dynamo-sim")),
        _ => Ok(text(StatusCode::NOT_FOUND, "not found")),
    }
}

async fn data_plane(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<HttpResponse, Dropped> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let op = Op::from_target(header("x-amz-target"));
    shared.stats.request(op);
    let authorized = shared.authorized(header(header::AUTHORIZATION.as_str()));
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            let e = ApiError::validation("Request size exceeded the maximum allowed size");
            shared.stats.error(e.code);
            return Ok(error_response(&e));
        }
        // The client went away mid-body.
        Err(_) => return Err(Dropped),
    };

    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match shared.faults.decide(op.is_write()) {
        Decision::Proceed => {}
        Decision::Outage => {
            add(&shared.stats.fault_outages, 1);
            return Ok(error_response(&ApiError::unavailable(
                "Service unavailable: dynamo-sim outage",
            )));
        }
        Decision::Reset => {
            add(&shared.stats.fault_resets, 1);
            return Err(Dropped);
        }
        Decision::Error(e) => {
            add(&shared.stats.fault_errors, 1);
            return Ok(error_response(&e));
        }
        Decision::Stall(stall, action) => {
            add(&shared.stats.fault_stalls, 1);
            tokio::time::sleep(stall).await;
            if action == StallAction::Drop {
                add(&shared.stats.fault_resets, 1);
                return Err(Dropped);
            }
        }
        Decision::ApplyThenError => {
            // Applied exactly as usual; the real answer (success or error) is never sent, so
            // it is not counted among the error responses either.
            let _ = execute(shared, op, authorized, &body);
            add(&shared.stats.fault_applied_then_failed, 1);
            return Ok(error_response(&ApiError::internal()));
        }
        Decision::ApplyLate(delay) => {
            // On its own task: hyper drops this request's future when the client disconnects
            // (the client has given up long before `delay`), and the write must still land.
            let shared = shared.clone();
            let late = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                add(&shared.stats.fault_applied_late, 1);
                let _ = execute(&shared, op, authorized, &body);
            });
            // Still connected (a client with a longer timeout): wait for the write, then reset.
            let _ = late.await;
            return Err(Dropped);
        }
    }

    match execute(shared, op, authorized, &body) {
        Ok(out) => {
            ops::count_answer(shared, op, &out);
            Ok(json_response(StatusCode::OK, &out))
        }
        Err(e) => {
            shared.stats.error(e.code);
            Ok(error_response(&e))
        }
    }
}

/// The access-key check, then the operation.
fn execute(shared: &Shared, op: Op, authorized: bool, body: &[u8]) -> Result<Json, ApiError> {
    if !authorized {
        Err(ApiError::unrecognized_client())
    } else if op == Op::Unknown {
        Err(ApiError::unknown_operation(
            "The operation is not known to dynamo-sim",
        ))
    } else {
        run(shared, op, body)
    }
}

/// Parses the body and runs the operation; a panic (a simulator bug) becomes a 500.
fn run(shared: &Shared, op: Op, body: &[u8]) -> Result<Json, ApiError> {
    let json: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::serialization(format!("Malformed request body: {e}")))?;
    let Json::Object(map) = json else {
        return Err(ApiError::serialization(
            "Malformed request body: expected a JSON object",
        ));
    };
    std::panic::catch_unwind(AssertUnwindSafe(|| ops::dispatch(shared, op, &map))).unwrap_or_else(
        |_| {
            tracing::error!(operation = op.name(), "operation panicked");
            Err(ApiError::internal())
        },
    )
}

fn control(shared: &Shared, method: &Method, name: &str, query: Option<&str>) -> HttpResponse {
    match (method, name) {
        (&Method::GET, "stats") => match serde_json::to_value(shared.snapshot()) {
            Ok(stats) => json_response(StatusCode::OK, &stats),
            Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (&Method::POST, "reset") => {
            shared.stats.reset();
            json_response(StatusCode::OK, &json!({ "reset": true }))
        }
        (&Method::POST, "outage") => {
            let on = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("on="));
            match on {
                Some("true" | "1") => {
                    shared.faults.set_outage(true);
                    json_response(StatusCode::OK, &json!({ "outage": true }))
                }
                Some("false" | "0") => {
                    shared.faults.set_outage(false);
                    json_response(StatusCode::OK, &json!({ "outage": false }))
                }
                _ => control_error(StatusCode::BAD_REQUEST, "expected ?on=true or ?on=false"),
            }
        }
        (_, "stats" | "reset" | "outage") => {
            control_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => control_error(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}

fn control_error(status: StatusCode, message: &str) -> HttpResponse {
    json_response(status, &json!({ "error": message }))
}

/// A short, unique request id (`x-amzn-RequestId`).
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("SIM{:017}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn json_response(status: StatusCode, body: &Json) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/x-amz-json-1.0")
        .header("x-amzn-requestid", request_id())
        .body(Full::new(Bytes::from(bytes)))
        .expect("status and headers are valid")
}

fn error_response(e: &ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_json())
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("status and headers are valid")
}
