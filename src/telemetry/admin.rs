//! The admin HTTP listener (127.0.0.1:8095 by default): `/metrics` renders the Prometheus
//! exposition, `/healthz` answers while the process runs, and `/readyz` reports [`Readiness`],
//! which whoever checks DynamoDB sets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::telemetry::recorder::MetricsError;

/// What `/readyz` reports; set by whoever checks DynamoDB.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    reason: std::sync::Mutex<String>,
}

impl Readiness {
    pub fn set(&self, ready: bool, reason: impl Into<String>) {
        self.ready.store(ready, Relaxed);
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.into();
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }
}

#[derive(Clone)]
struct MetricsState {
    prometheus: PrometheusHandle,
    readiness: Arc<Readiness>,
}

async fn metrics(State(s): State<MetricsState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.prometheus.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<MetricsState>) -> impl IntoResponse {
    let reason = s
        .readiness
        .reason
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    if s.readiness.is_ready() {
        (StatusCode::OK, format!("ready: {reason}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    prometheus: PrometheusHandle,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(MetricsState {
            prometheus,
            readiness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics listener.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MetricsState {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        MetricsState {
            prometheus: recorder.handle(),
            readiness: Arc::new(Readiness::default()),
        }
    }

    async fn body(response: axum::response::Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a small body");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        assert_eq!(healthz().await, "ok\n");
    }

    #[tokio::test]
    async fn readyz_follows_readiness() {
        let s = state();
        let r = readyz(State(s.clone())).await.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r).await, "not ready: \n");
        s.readiness.set(true, "DynamoDB answers");
        assert!(s.readiness.is_ready());
        let r = readyz(State(s.clone())).await.into_response();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ready: DynamoDB answers\n");
        s.readiness.set(false, "DynamoDB does not answer");
        let r = readyz(State(s)).await.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r).await, "not ready: DynamoDB does not answer\n");
    }

    #[tokio::test]
    async fn metrics_renders_the_exposition_as_text() {
        let r = metrics(State(state())).await.into_response();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()
                .get(axum::http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"text/plain; version=0.0.4"[..])
        );
    }
}
