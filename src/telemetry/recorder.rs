//! The Prometheus side: the recorder with explicit histogram buckets, the metric descriptions,
//! the sampler that publishes queue gauges, and the `/metrics`, `/healthz`, `/readyz` listener
//! (127.0.0.1:9100 by default).
//!
//! Metric names follow `mqtt_dynamo_<thing>_<unit>[_total]` with small closed label sets; the
//! stages record them through [`crate::telemetry::stats::Stats`] (and the adapters directly). The catalogue
//! with labels is in `dashboards/README.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use thiserror::Error;

use crate::pipeline::PipelineHandle;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Latency buckets, seconds: 50 µs to 60 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Requests per flush: 1 to DynamoDB's 25.
const REQUESTS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 24.0, 25.0];
/// Bytes per flush: 256 B to 16 MiB.
const BYTES: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Installs the global recorder (once per process) and describes every metric.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let err = |e: metrics_exporter_prometheus::BuildError| MetricsError::Install(e.to_string());
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full("mqtt_dynamo_batch_requests".into()), REQUESTS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full("mqtt_dynamo_batch_bytes".into()), BYTES)
        .map_err(err)?
        .install_recorder()
        .map_err(err)?;
    describe();
    register();
    metrics::gauge!("mqtt_dynamo_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Registers every series of the closed label sets at zero, so that "nothing happened" is a 0 in
/// Prometheus rather than a missing series (and `rate()` works from the first scrape).
fn register() {
    use crate::event::HookPoint;
    use crate::storage::item::Table;
    use crate::telemetry::stats::{DropReason, FlushTrigger, Operation, Outcome, RejectReason};
    for hook in HookPoint::ALL {
        metrics::counter!("mqtt_dynamo_events_received_total", "hook" => hook.as_str()).absolute(0);
    }
    for origin in crate::telemetry::stats::Origin::ALL {
        for reason in RejectReason::ALL {
            metrics::counter!("mqtt_dynamo_events_rejected_total", "adapter" => origin.as_str(), "reason" => reason.as_str())
                .absolute(0);
        }
    }
    for outcome in ["appended", "replayed", "refused", "failed", "cut"] {
        metrics::counter!("mqtt_dynamo_spool_records_total", "outcome" => outcome).absolute(0);
    }
    for gauge in [
        "mqtt_dynamo_spool_bytes",
        "mqtt_dynamo_spool_capacity_bytes",
        "mqtt_dynamo_spool_backlog_bytes",
        "mqtt_dynamo_spool_segments",
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
    let _ = metrics::histogram!("mqtt_dynamo_spool_fsync_duration_seconds");
    metrics::gauge!("mqtt_dynamo_hot_keys").set(0.0);
    metrics::counter!("mqtt_dynamo_hot_key_requeues_total").absolute(0);
    for kind in ["acked", "unacked"] {
        metrics::counter!("mqtt_dynamo_duplicate_publishes_total", "kind" => kind).absolute(0);
    }
    for adapter in ["exhook", "http"] {
        metrics::counter!("mqtt_dynamo_hook_events_dropped_total", "adapter" => adapter, "reason" => "queue_full")
            .absolute(0);
        metrics::counter!("mqtt_dynamo_hook_waits_total", "adapter" => adapter).absolute(0);
        let _ = metrics::histogram!("mqtt_dynamo_hook_rpc_duration_seconds", "adapter" => adapter);
    }
    for table in Table::ALL {
        let t = table.base_name();
        metrics::counter!("mqtt_dynamo_ops_coalesced_total", "table" => t).absolute(0);
        metrics::counter!("mqtt_dynamo_writes_cancelled_total", "table" => t).absolute(0);
        metrics::counter!("mqtt_dynamo_items_written_total", "table" => t).absolute(0);
        metrics::counter!("mqtt_dynamo_consumed_write_capacity_units_total", "table" => t)
            .absolute(0);
    }
    for trigger in [
        FlushTrigger::Count,
        FlushTrigger::Bytes,
        FlushTrigger::Age,
        FlushTrigger::Shutdown,
    ] {
        metrics::counter!("mqtt_dynamo_flushes_total", "trigger" => trigger.as_str()).absolute(0);
    }
    for op in [Operation::BatchWriteItem, Operation::UpdateItem] {
        for outcome in [
            Outcome::Success,
            Outcome::Partial,
            Outcome::Throttled,
            Outcome::ConditionFailed,
            Outcome::Rejected,
            Outcome::Error,
            Outcome::Unauthorized,
        ] {
            metrics::counter!("mqtt_dynamo_dynamodb_requests_total", "operation" => op.as_str(), "outcome" => outcome.as_str())
                .absolute(0);
        }
        metrics::counter!("mqtt_dynamo_retries_total", "operation" => op.as_str()).absolute(0);
        let _ = metrics::histogram!("mqtt_dynamo_dynamodb_request_duration_seconds", "operation" => op.as_str());
    }
    for code in crate::storage::dynamo::THROTTLE_CODES {
        metrics::counter!("mqtt_dynamo_dynamodb_throttles_total", "error_code" => code).absolute(0);
    }
    metrics::counter!("mqtt_dynamo_dynamodb_unprocessed_items_total").absolute(0);
    metrics::counter!("mqtt_dynamo_msgids_trimmed_total").absolute(0);
    for reason in crate::storage::dynamo::THROTTLING_REASONS
        .into_iter()
        .chain(["other"])
    {
        metrics::counter!("mqtt_dynamo_dynamodb_throttling_reasons_total", "reason" => reason)
            .absolute(0);
    }
    for reason in [
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
    ] {
        metrics::counter!("mqtt_dynamo_writes_dropped_total", "reason" => reason.as_str())
            .absolute(0);
    }
    let _ = metrics::histogram!("mqtt_dynamo_ingest_to_durable_seconds");
    let _ = metrics::histogram!("mqtt_dynamo_batch_requests");
    let _ = metrics::histogram!("mqtt_dynamo_batch_bytes");
    metrics::gauge!("mqtt_dynamo_dynamodb_in_flight_requests").set(0.0);
    for kind in crate::lookup::LookupKind::ALL {
        for outcome in ["ok", "error"] {
            metrics::counter!("mqtt_dynamo_lookups_total", "kind" => kind.as_str(), "outcome" => outcome)
                .absolute(0);
        }
        let _ = metrics::histogram!("mqtt_dynamo_lookup_duration_seconds", "kind" => kind.as_str());
    }
    for index in ["retained", "offline"] {
        metrics::gauge!("mqtt_dynamo_lookup_index_topics", "index" => index).set(0.0);
    }
    metrics::gauge!("mqtt_dynamo_lookup_pending_ops").set(0.0);
}

fn describe() {
    describe_counter!(
        "mqtt_dynamo_duplicate_publishes_total",
        "Publishes of a message id already seen: acked (its ack was seen within pipeline.dedup_window: not stored again) or unacked (stored, its writes treated as maybe applied)."
    );
    describe_gauge!(
        "mqtt_dynamo_hot_keys",
        "Keys DynamoDB throttled that wait a window of their own before their next write."
    );
    describe_counter!(
        "mqtt_dynamo_hot_key_requeues_total",
        "Writes of keys DynamoDB throttled, handed back to their shard to wait the key's window instead of being retried."
    );
    describe_counter!(
        "mqtt_dynamo_spool_records_total",
        "Spool records by outcome: appended, replayed after a restart, refused (full or write error), failed, cut (torn or damaged)."
    );
    describe_gauge!(
        "mqtt_dynamo_spool_bytes",
        "Bytes of spool segments on disk."
    );
    describe_gauge!(
        "mqtt_dynamo_spool_capacity_bytes",
        "The spool's disk bound (pipeline.spool.max_mb), in bytes."
    );
    describe_gauge!(
        "mqtt_dynamo_spool_backlog_bytes",
        "Spooled bytes not yet handed to the pipeline."
    );
    describe_gauge!("mqtt_dynamo_spool_segments", "Spool segment files.");
    describe_histogram!(
        "mqtt_dynamo_spool_fsync_duration_seconds",
        "Duration of one spool fsync, seconds."
    );
    describe_counter!(
        "mqtt_dynamo_msgids_trimmed_total",
        "Message ids removed from mqtt_topic_msg_map sets at their size cap (storage.max_msgid_set_kb)."
    );
    describe_counter!(
        "mqtt_dynamo_dynamodb_throttling_reasons_total",
        "ThrottlingReasons attached to DynamoDB throttling errors, by reason (hot key vs capacity)."
    );
    describe_counter!(
        "mqtt_dynamo_lookups_total",
        "Lookups answered (ok) or failed (error), by kind (subscriptions, retained, offline)."
    );
    describe_histogram!(
        "mqtt_dynamo_lookup_duration_seconds",
        Unit::Seconds,
        "Time to answer a lookup, DynamoDB reads included, by kind."
    );
    describe_gauge!(
        "mqtt_dynamo_lookup_index_topics",
        "Topics in the in-memory topic indexes (retained, offline)."
    );
    describe_gauge!(
        "mqtt_dynamo_lookup_pending_ops",
        "Accepted writes kept for read-your-writes until they settle in DynamoDB."
    );
    describe_counter!(
        "mqtt_dynamo_events_received_total",
        "Hook events accepted into the pipeline, by hook."
    );
    describe_counter!(
        "mqtt_dynamo_events_rejected_total",
        "Hook events refused at ingest, by reason."
    );
    describe_counter!(
        "mqtt_dynamo_hook_events_dropped_total",
        "Hook events an adapter dropped after its full-queue policy, by adapter and reason."
    );
    describe_counter!(
        "mqtt_dynamo_hook_waits_total",
        "Hook calls that waited for room in the ingest queue."
    );
    describe_counter!(
        "mqtt_dynamo_ops_coalesced_total",
        "Writes folded into an already pending write, by table."
    );
    describe_counter!(
        "mqtt_dynamo_writes_cancelled_total",
        "Pending writes that cancelled to nothing, by table."
    );
    describe_counter!("mqtt_dynamo_flushes_total", "Flushes started, by trigger.");
    describe_counter!(
        "mqtt_dynamo_dynamodb_requests_total",
        "DynamoDB requests sent, by operation and outcome."
    );
    describe_counter!(
        "mqtt_dynamo_dynamodb_throttles_total",
        "Throttling errors from DynamoDB, by error code."
    );
    describe_counter!(
        "mqtt_dynamo_dynamodb_unprocessed_items_total",
        "Items DynamoDB returned as UnprocessedItems."
    );
    describe_counter!(
        "mqtt_dynamo_retries_total",
        "Requests resent after backoff, by operation."
    );
    describe_counter!(
        "mqtt_dynamo_items_written_total",
        "Writes DynamoDB applied, by table."
    );
    describe_counter!(
        "mqtt_dynamo_consumed_write_capacity_units_total",
        "Write capacity units DynamoDB reported consuming, by table."
    );
    describe_counter!(
        "mqtt_dynamo_writes_dropped_total",
        "Accepted writes given up, by reason."
    );
    describe_histogram!(
        "mqtt_dynamo_dynamodb_request_duration_seconds",
        Unit::Seconds,
        "DynamoDB request round trips, by operation."
    );
    describe_histogram!(
        "mqtt_dynamo_ingest_to_durable_seconds",
        Unit::Seconds,
        "From accepting a write's oldest event to DynamoDB confirming it."
    );
    describe_histogram!(
        "mqtt_dynamo_hook_rpc_duration_seconds",
        Unit::Seconds,
        "Time to answer a hook call, as the broker waits for it, by adapter."
    );
    describe_histogram!(
        "mqtt_dynamo_batch_requests",
        Unit::Count,
        "DynamoDB requests per flush."
    );
    describe_histogram!(
        "mqtt_dynamo_batch_bytes",
        Unit::Bytes,
        "Bytes of writes per flush."
    );
    describe_gauge!(
        "mqtt_dynamo_queue_events",
        "Events (ingest) or keys (pending) waiting, by stage."
    );
    describe_gauge!(
        "mqtt_dynamo_queue_capacity_events",
        "Limit of mqtt_dynamo_queue_events, by stage."
    );
    describe_gauge!(
        "mqtt_dynamo_queue_bytes",
        Unit::Bytes,
        "Bytes waiting, by stage."
    );
    describe_gauge!(
        "mqtt_dynamo_queue_capacity_bytes",
        Unit::Bytes,
        "Limit of mqtt_dynamo_queue_bytes, by stage."
    );
    describe_gauge!(
        "mqtt_dynamo_dynamodb_in_flight_requests",
        "DynamoDB requests awaiting an answer."
    );
    describe_gauge!("mqtt_dynamo_flushes_in_flight", "Flushes running.");
    describe_gauge!(
        "mqtt_dynamo_flushes_in_flight_limit",
        "The adaptive limit on flushes running (AIMD within pipeline.min_in_flight..=max_in_flight)."
    );
    describe_gauge!("mqtt_dynamo_build_info", "1, labelled with the version.");
}

/// Publishes the queue gauges once a second (they are levels, sampled, not counted per event).
pub fn spawn_sampler(
    handle: PipelineHandle,
    prometheus: PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            handle.publish_gauges();
            // Histograms accumulate in thread-local buckets until drained.
            prometheus.run_upkeep();
        }
    })
}

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
