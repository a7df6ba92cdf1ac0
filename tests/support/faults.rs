//! A fault-injecting HTTP proxy in front of a real DynamoDB implementation: on a fixed, seeded
//! schedule it answers some write requests with throttling or server errors instead of forwarding
//! them, and forwards only part of some BatchWriteItems, returning the rest as UnprocessedItems —
//! the responses dynoxide and dynalite never give on their own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

/// What the proxy did, for assertions.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub withheld_items: AtomicU64,
}

/// What the proxy does to write requests.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// The fixed fault schedule (throttling, 500s, UnprocessedItems).
    Faults,
    /// Forward every request after this delay: a slow DynamoDB.
    Delay(std::time::Duration),
    /// Reject, as DynamoDB rejects an invalid item, every write request whose body contains
    /// this marker; forward everything else.
    Poison(&'static str),
}

struct State {
    mode: Mode,
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    counts: Arc<FaultCounts>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: String) -> FaultProxy {
        Self::start_with(upstream, Mode::Faults).await
    }

    pub async fn start_with(upstream: String, mode: Mode) -> FaultProxy {
        let counts = Arc::new(FaultCounts::default());
        let state = Arc::new(State {
            mode,
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            counts: Arc::clone(&counts),
        });
        let (addr, task) = serve_loopback(state, handle).await;
        FaultProxy { addr, counts, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body =
        json!({ "__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": message });
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn forward(
    state: &State,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(&state.upstream);
    for (name, value) in &parts.headers {
        if name != "content-length" && name != "host" {
            req = req.header(name, value);
        }
    }
    let req = req.body(Full::new(body)).unwrap();
    match state.client.request(req).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Full::new(bytes_of(body).await))
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "InternalServerError",
            &e.to_string(),
        ),
    }
}

/// A body's bytes (empty if it cannot be read to the end).
async fn bytes_of<B: hyper::body::Body<Data = Bytes>>(body: B) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = bytes_of(body).await;
    match state.mode {
        Mode::Faults => {}
        Mode::Delay(d) => {
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
            return Ok(forward(&state, &parts, body).await);
        }
        Mode::Poison(marker) => {
            let is_write = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.ends_with("BatchWriteItem") || t.ends_with("UpdateItem"));
            if is_write && body.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "ValidationException",
                    "One or more parameter values were invalid: poisoned item (test)",
                ));
            }
            return Ok(forward(&state, &parts, body).await);
        }
    }
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches("DynamoDB_20120810.")
        .to_string();
    if target != "BatchWriteItem" && target != "UpdateItem" {
        return Ok(forward(&state, &parts, body).await);
    }
    let n = state.counts.requests.fetch_add(1, Relaxed);
    // The schedule: deterministic, so a failure reproduces.
    if n % 5 == 1 {
        state.counts.throttled.fetch_add(1, Relaxed);
        let kind = if target == "UpdateItem" {
            "ProvisionedThroughputExceededException"
        } else {
            "ThrottlingException"
        };
        return Ok(error(
            StatusCode::BAD_REQUEST,
            kind,
            "Rate of requests exceeds the allowed throughput.",
        ));
    }
    if n % 11 == 4 {
        state.counts.server_errors.fetch_add(1, Relaxed);
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal server error",
        ));
    }
    if target == "BatchWriteItem" && n.is_multiple_of(3) {
        return Ok(partial_batch(&state, &parts, &body).await);
    }
    Ok(forward(&state, &parts, body).await)
}

/// Forwards the first half of a BatchWriteItem and returns the rest as UnprocessedItems.
async fn partial_batch(
    state: &State,
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return forward(state, parts, body.clone()).await;
    };
    let Some(items) = request
        .get_mut("RequestItems")
        .and_then(Value::as_object_mut)
    else {
        return forward(state, parts, body.clone()).await;
    };
    let mut flat: Vec<(String, Value)> = Vec::new();
    for (table, reqs) in items.iter() {
        for r in reqs.as_array().into_iter().flatten() {
            flat.push((table.clone(), r.clone()));
        }
    }
    if flat.len() < 2 {
        return forward(state, parts, body.clone()).await;
    }
    let keep = flat.len() / 2;
    let mut sent: Map<String, Value> = Map::new();
    let mut unprocessed: Map<String, Value> = Map::new();
    for (i, (table, r)) in flat.into_iter().enumerate() {
        let target = if i < keep {
            &mut sent
        } else {
            &mut unprocessed
        };
        target
            .entry(table)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(r);
    }
    let withheld: usize = unprocessed
        .values()
        .map(|v| v.as_array().map_or(0, Vec::len))
        .sum();
    state
        .counts
        .withheld_items
        .fetch_add(withheld as u64, Relaxed);
    *items = sent;
    let resp = forward(state, parts, Bytes::from(request.to_string())).await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
    out["UnprocessedItems"] = Value::Object(unprocessed);
    let body = out.to_string();
    parts.headers.remove("content-length");
    parts.headers.remove("x-amz-crc32");
    Response::from_parts(parts, Full::new(Bytes::from(body)))
}

/// Serves HTTP/1 on an ephemeral loopback port until the task is aborted, each request through
/// `handle(state, request)`: the accept loop every stand-in here shares (the fault proxy, the
/// AWS and EMQX stand-ins).
pub async fn serve_loopback<S, H, F>(
    state: std::sync::Arc<S>,
    handle: H,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    S: Send + Sync + 'static,
    H: Fn(std::sync::Arc<S>, hyper::Request<hyper::body::Incoming>) -> F
        + Copy
        + Send
        + Sync
        + 'static,
    F: std::future::Future<
            Output = Result<
                hyper::Response<http_body_util::Full<bytes::Bytes>>,
                std::convert::Infallible,
            >,
        > + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = std::sync::Arc::clone(&state);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    handle(std::sync::Arc::clone(&state), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}
