//! Every metric the service exports, in one table: name, kind, unit, help, label names with their
//! closed value sets, and histogram buckets. The recorder registers, describes and buckets metrics
//! by iterating [`CATALOGUE`]; the stages record through the name constants below, so no metric
//! name is spelled as a string literal anywhere else in `src/`; `dashboards/README.md`'s metric
//! table is rendered from it ([`markdown_table`]), and the dashboard test hands it to
//! `tests/prometheus/check_dashboard.py`, which requires every metric on the dashboard and in the
//! exposition with its kind and labels.
//!
//! Names follow `mqtt_dynamo_<thing>_<unit>[_total]`: counters end in `_total`, units are base
//! units (seconds, bytes), and every label has a small closed set of values. Each constant is the
//! metric name without the `mqtt_dynamo_` prefix, upper-cased.

use metrics::Unit;

use crate::emqx_api::{Call, CallOutcome};
use crate::event::HookPoint;
use crate::lookup::LookupKind;
use crate::storage::dynamo::{THROTTLE_CODES, THROTTLING_REASONS};
use crate::storage::item::Table;
use crate::telemetry::stats::{
    DropReason, FlushTrigger, Operation, Origin, Outcome, RejectReason, StatementOutcome,
};

/// The namespace every metric name starts with.
pub const PREFIX: &str = "mqtt_dynamo_";

// Ingest and the broker adapters.
pub const EVENTS_RECEIVED_TOTAL: &str = "mqtt_dynamo_events_received_total";
pub const EVENTS_REJECTED_TOTAL: &str = "mqtt_dynamo_events_rejected_total";
pub const HOOK_EVENTS_DROPPED_TOTAL: &str = "mqtt_dynamo_hook_events_dropped_total";
pub const HOOK_WAITS_TOTAL: &str = "mqtt_dynamo_hook_waits_total";
pub const HOOK_RPC_DURATION_SECONDS: &str = "mqtt_dynamo_hook_rpc_duration_seconds";
pub const DUPLICATE_PUBLISHES_TOTAL: &str = "mqtt_dynamo_duplicate_publishes_total";
pub const QUEUE_EVENTS: &str = "mqtt_dynamo_queue_events";
pub const QUEUE_CAPACITY_EVENTS: &str = "mqtt_dynamo_queue_capacity_events";
pub const QUEUE_BYTES: &str = "mqtt_dynamo_queue_bytes";
pub const QUEUE_CAPACITY_BYTES: &str = "mqtt_dynamo_queue_capacity_bytes";
pub const TLS_RELOADS_TOTAL: &str = "mqtt_dynamo_tls_reloads_total";
// Coalescing and batching.
pub const OPS_COALESCED_TOTAL: &str = "mqtt_dynamo_ops_coalesced_total";
pub const WRITES_CANCELLED_TOTAL: &str = "mqtt_dynamo_writes_cancelled_total";
pub const WRITES_SUPERSEDED_TOTAL: &str = "mqtt_dynamo_writes_superseded_total";
pub const FLUSHES_TOTAL: &str = "mqtt_dynamo_flushes_total";
pub const FLUSHES_IN_FLIGHT: &str = "mqtt_dynamo_flushes_in_flight";
pub const FLUSHES_IN_FLIGHT_LIMIT: &str = "mqtt_dynamo_flushes_in_flight_limit";
pub const BATCH_REQUESTS: &str = "mqtt_dynamo_batch_requests";
pub const BATCH_BYTES: &str = "mqtt_dynamo_batch_bytes";
pub const HOT_KEYS: &str = "mqtt_dynamo_hot_keys";
pub const HOT_KEY_REQUEUES_TOTAL: &str = "mqtt_dynamo_hot_key_requeues_total";
// DynamoDB.
pub const DYNAMODB_REQUESTS_TOTAL: &str = "mqtt_dynamo_dynamodb_requests_total";
pub const DYNAMODB_STATEMENTS_TOTAL: &str = "mqtt_dynamo_dynamodb_statements_total";
pub const DYNAMODB_REQUEST_DURATION_SECONDS: &str = "mqtt_dynamo_dynamodb_request_duration_seconds";
pub const DYNAMODB_IN_FLIGHT_REQUESTS: &str = "mqtt_dynamo_dynamodb_in_flight_requests";
pub const DYNAMODB_THROTTLES_TOTAL: &str = "mqtt_dynamo_dynamodb_throttles_total";
pub const DYNAMODB_THROTTLING_REASONS_TOTAL: &str = "mqtt_dynamo_dynamodb_throttling_reasons_total";
pub const DYNAMODB_UNPROCESSED_ITEMS_TOTAL: &str = "mqtt_dynamo_dynamodb_unprocessed_items_total";
pub const RETRIES_TOTAL: &str = "mqtt_dynamo_retries_total";
pub const ITEMS_WRITTEN_TOTAL: &str = "mqtt_dynamo_items_written_total";
pub const CONSUMED_WRITE_CAPACITY_UNITS_TOTAL: &str =
    "mqtt_dynamo_consumed_write_capacity_units_total";
pub const MSGIDS_TRIMMED_TOTAL: &str = "mqtt_dynamo_msgids_trimmed_total";
pub const WRITES_DROPPED_TOTAL: &str = "mqtt_dynamo_writes_dropped_total";
pub const INGEST_TO_DURABLE_SECONDS: &str = "mqtt_dynamo_ingest_to_durable_seconds";
// Lookups (the read side).
pub const LOOKUPS_TOTAL: &str = "mqtt_dynamo_lookups_total";
pub const LOOKUP_DURATION_SECONDS: &str = "mqtt_dynamo_lookup_duration_seconds";
pub const LOOKUP_INDEX_TOPICS: &str = "mqtt_dynamo_lookup_index_topics";
pub const LOOKUP_PENDING_OPS: &str = "mqtt_dynamo_lookup_pending_ops";
pub const TOPIC_INDEX_WRITES_TOTAL: &str = "mqtt_dynamo_topic_index_writes_total";
pub const TOPIC_INDEX_SPREADS_TOTAL: &str = "mqtt_dynamo_topic_index_spreads_total";
// EMQX's REST API (subscribe on connect, retained restore).
pub const EMQX_API_CALLS_TOTAL: &str = "mqtt_dynamo_emqx_api_calls_total";
// The spool.
pub const SPOOL_RECORDS_TOTAL: &str = "mqtt_dynamo_spool_records_total";
pub const SPOOL_BYTES: &str = "mqtt_dynamo_spool_bytes";
pub const SPOOL_CAPACITY_BYTES: &str = "mqtt_dynamo_spool_capacity_bytes";
pub const SPOOL_BACKLOG_BYTES: &str = "mqtt_dynamo_spool_backlog_bytes";
pub const SPOOL_SEGMENTS: &str = "mqtt_dynamo_spool_segments";
pub const SPOOL_FSYNC_DURATION_SECONDS: &str = "mqtt_dynamo_spool_fsync_duration_seconds";
// The process.
pub const BUILD_INFO: &str = "mqtt_dynamo_build_info";

/// Latency buckets, seconds: 50 µs to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Requests per flush: 1 to DynamoDB's 25.
pub const REQUEST_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 24.0, 25.0];
/// Bytes per flush: 256 B to 16 MiB.
pub const BYTE_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// The Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As in the exposition's `# TYPE` line (a histogram with buckets).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// When a metric's series come into existence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every combination of the label values is registered at zero when the recorder is
    /// installed, so that "nothing happened" is a 0 in Prometheus rather than a missing series
    /// (and `rate()` works from the first scrape).
    Zero,
    /// Created when first set: levels the sampler copies in every second, the adaptive limit,
    /// and the build info (set to 1 with the running version at install).
    FirstUse,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The full name, `mqtt_dynamo_…` (the exporter adds `_bucket`/`_sum`/`_count` to histograms).
    pub name: &'static str,
    pub kind: Kind,
    /// The unit, for the description (the exporter does not append it to the name).
    pub unit: Option<Unit>,
    /// The `# HELP` text, also the meaning column of `dashboards/README.md`.
    pub help: &'static str,
    /// Label names, in the order of `values`.
    pub labels: &'static [&'static str],
    /// The closed set of values of each label, one list per entry of `labels` (an empty list is
    /// an open set, like `version`).
    pub values: fn() -> Vec<Vec<&'static str>>,
    /// Bucket upper bounds, for every histogram (without them the exporter renders a summary).
    pub buckets: Option<&'static [f64]>,
    pub start: Start,
}

impl Metric {
    /// The label sets registered at start: the product of the labels' value lists (one empty set
    /// for an unlabelled metric).
    pub fn series(&self) -> Vec<Vec<(&'static str, &'static str)>> {
        let mut out = vec![Vec::new()];
        for (label, values) in self.labels.iter().zip((self.values)()) {
            out = out
                .into_iter()
                .flat_map(|set| {
                    values.iter().map(move |v| {
                        let mut set = set.clone();
                        set.push((*label, *v));
                        set
                    })
                })
                .collect();
        }
        out
    }
}

/// The metric named `name`, if it is in the catalogue.
pub fn get(name: &str) -> Option<&'static Metric> {
    CATALOGUE.iter().find(|m| m.name == name)
}

fn hooks() -> Vec<&'static str> {
    HookPoint::ALL.iter().map(|h| h.as_str()).collect()
}

fn tables() -> Vec<&'static str> {
    Table::ALL.iter().map(|t| t.base_name()).collect()
}

fn operations() -> Vec<&'static str> {
    Operation::ALL.iter().map(|o| o.as_str()).collect()
}

fn lookup_kinds() -> Vec<&'static str> {
    LookupKind::ALL.iter().map(|k| k.as_str()).collect()
}

fn emqx_api_calls() -> Vec<Vec<&'static str>> {
    vec![
        Call::ALL.iter().map(|c| c.as_str()).collect(),
        CallOutcome::ALL.iter().map(|o| o.as_str()).collect(),
    ]
}

/// The adapters that answer hook calls from the broker.
const HOOK_ADAPTERS: [&str; 2] = ["exhook", "http"];
/// The DynamoDB backends of `build_info` (as `storage::Backend::kind` names them).
const BACKENDS: [&str; 4] = ["embedded_memory", "embedded_file", "endpoint", "aws"];
/// What a reload of a listener's TLS material did.
const TLS_RELOAD_OUTCOMES: [&str; 2] = ["reloaded", "failed"];
/// The stages whose depth the queue gauges show: the ingest queue and the coalescers' pending keys.
const STAGES: [&str; 2] = ["ingest", "pending"];
/// What happened to a spool record.
const SPOOL_OUTCOMES: [&str; 5] = ["appended", "replayed", "refused", "failed", "cut"];

fn unlabelled() -> Vec<Vec<&'static str>> {
    Vec::new()
}

fn by_table() -> Vec<Vec<&'static str>> {
    vec![tables()]
}

fn by_operation() -> Vec<Vec<&'static str>> {
    vec![operations()]
}

fn by_stage() -> Vec<Vec<&'static str>> {
    vec![STAGES.to_vec()]
}

fn by_hook_adapter() -> Vec<Vec<&'static str>> {
    vec![HOOK_ADAPTERS.to_vec()]
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: fn() -> Vec<Vec<&'static str>>,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: None,
        help,
        labels,
        values,
        buckets: None,
        start: Start::Zero,
    }
}

const fn gauge(
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
    labels: &'static [&'static str],
    values: fn() -> Vec<Vec<&'static str>>,
    start: Start,
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit,
        help,
        labels,
        values,
        buckets: None,
        start,
    }
}

const fn histogram(
    name: &'static str,
    unit: Unit,
    buckets: &'static [f64],
    help: &'static str,
    labels: &'static [&'static str],
    values: fn() -> Vec<Vec<&'static str>>,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit: Some(unit),
        help,
        labels,
        values,
        buckets: Some(buckets),
        start: Start::Zero,
    }
}

/// Every metric the service exports, in the order of `dashboards/README.md`'s table.
pub static CATALOGUE: &[Metric] = &[
    counter(
        EVENTS_RECEIVED_TOTAL,
        "Hook events accepted into the ingest queue, by hook.",
        &["hook"],
        || vec![hooks()],
    ),
    counter(
        EVENTS_REJECTED_TOTAL,
        "Events refused, each once: by an adapter while reading the request (a request whose events cannot be read counts once) or at ingest, by adapter and reason.",
        &["adapter", "reason"],
        || {
            vec![
                Origin::ALL.iter().map(|o| o.as_str()).collect(),
                RejectReason::ALL.iter().map(|r| r.as_str()).collect(),
            ]
        },
    ),
    counter(
        HOOK_EVENTS_DROPPED_TOTAL,
        "Hook events an adapter dropped after its full-queue policy, by adapter and reason.",
        &["adapter", "reason"],
        || {
            vec![
                HOOK_ADAPTERS.to_vec(),
                vec![RejectReason::QueueFull.as_str()],
            ]
        },
    ),
    counter(
        HOOK_WAITS_TOTAL,
        "Hook calls that waited for room in the ingest queue, by adapter.",
        &["adapter"],
        by_hook_adapter,
    ),
    counter(
        TLS_RELOADS_TOTAL,
        "Reloads of a listener's TLS certificate, key and client CA (SIGHUP or a file change), by listener and outcome; a failed one keeps the previous material.",
        &["listener", "outcome"],
        || vec![HOOK_ADAPTERS.to_vec(), TLS_RELOAD_OUTCOMES.to_vec()],
    ),
    counter(
        OPS_COALESCED_TOTAL,
        "Writes folded into an already pending write, by table.",
        &["table"],
        by_table,
    ),
    counter(
        WRITES_CANCELLED_TOTAL,
        "Pending writes that cancelled to nothing before being sent, by table.",
        &["table"],
        by_table,
    ),
    counter(
        WRITES_SUPERSEDED_TOTAL,
        "Event-time writes (presence, retained messages) DynamoDB's condition refused because a newer event of the item was stored, or a disconnect named a node the client had left: no-ops, never retried, by table.",
        &["table"],
        by_table,
    ),
    counter(
        FLUSHES_TOTAL,
        "Flushes started, by what triggered them.",
        &["trigger"],
        || vec![FlushTrigger::ALL.iter().map(|t| t.as_str()).collect()],
    ),
    counter(
        DYNAMODB_REQUESTS_TOTAL,
        "DynamoDB requests sent, by operation and outcome.",
        &["operation", "outcome"],
        || {
            vec![
                operations(),
                Outcome::ALL.iter().map(|o| o.as_str()).collect(),
            ]
        },
    ),
    counter(
        DYNAMODB_STATEMENTS_TOTAL,
        "Statements of BatchExecuteStatement requests, by how each ended: applied, condition_failed (a delete from a missing item, a failed node guard or an older event: the write's no-op), throttled (resent), missing (a write that creates its item found none: sent again as a PartiQL INSERT), inserted (such an INSERT applied), diverted (sent on as UpdateItem: an INSERT whose item appeared meanwhile, a refusal, an internal error).",
        &["outcome"],
        || vec![StatementOutcome::ALL.iter().map(|o| o.as_str()).collect()],
    ),
    counter(
        DYNAMODB_THROTTLES_TOTAL,
        "Throttling errors DynamoDB returned, by error code.",
        &["error_code"],
        || vec![THROTTLE_CODES.to_vec()],
    ),
    counter(
        DYNAMODB_THROTTLING_REASONS_TOTAL,
        "ThrottlingReasons attached to DynamoDB throttling errors, by reason: a hot key (KeyRangeThroughputExceeded) or capacity; other for a reason DynamoDB does not document.",
        &["reason"],
        || vec![THROTTLING_REASONS.into_iter().chain(["other"]).collect()],
    ),
    counter(
        DYNAMODB_UNPROCESSED_ITEMS_TOTAL,
        "Items DynamoDB returned as UnprocessedItems (retried).",
        &[],
        unlabelled,
    ),
    counter(
        RETRIES_TOTAL,
        "DynamoDB requests resent after backoff, by operation.",
        &["operation"],
        by_operation,
    ),
    counter(
        ITEMS_WRITTEN_TOTAL,
        "Writes DynamoDB confirmed as applied, by table.",
        &["table"],
        by_table,
    ),
    counter(
        CONSUMED_WRITE_CAPACITY_UNITS_TOTAL,
        "Write capacity units DynamoDB reported consuming, by table.",
        &["table"],
        by_table,
    ),
    counter(
        WRITES_DROPPED_TOTAL,
        "Accepted writes given up and dead-lettered (data loss), by reason; without the spool only, except rejected.",
        &["reason"],
        || vec![DropReason::ALL.iter().map(|r| r.as_str()).collect()],
    ),
    counter(
        DUPLICATE_PUBLISHES_TOTAL,
        "Publishes of a message id already seen: acked (its ack was seen within pipeline.dedup_window: not stored again) or unacked (stored, its writes treated as maybe applied).",
        &["kind"],
        || vec![vec!["acked", "unacked"]],
    ),
    histogram(
        DYNAMODB_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        SECONDS_BUCKETS,
        "DynamoDB request round trips, by operation.",
        &["operation"],
        by_operation,
    ),
    histogram(
        INGEST_TO_DURABLE_SECONDS,
        Unit::Seconds,
        SECONDS_BUCKETS,
        "From accepting a write's oldest event to DynamoDB confirming the write.",
        &[],
        unlabelled,
    ),
    histogram(
        HOOK_RPC_DURATION_SECONDS,
        Unit::Seconds,
        SECONDS_BUCKETS,
        "Time to answer one ExHook or HTTP hook call, as the broker waits for it, by adapter.",
        &["adapter"],
        by_hook_adapter,
    ),
    histogram(
        BATCH_REQUESTS,
        Unit::Count,
        REQUEST_BUCKETS,
        "DynamoDB write requests per flush (1 to 25).",
        &[],
        unlabelled,
    ),
    histogram(
        BATCH_BYTES,
        Unit::Bytes,
        BYTE_BUCKETS,
        "Bytes of writes per flush.",
        &[],
        unlabelled,
    ),
    gauge(
        QUEUE_EVENTS,
        Some(Unit::Count),
        "Events (ingest) or keys (pending) waiting, by stage.",
        &["stage"],
        by_stage,
        Start::FirstUse,
    ),
    gauge(
        QUEUE_CAPACITY_EVENTS,
        Some(Unit::Count),
        "Limit of mqtt_dynamo_queue_events, by stage.",
        &["stage"],
        by_stage,
        Start::FirstUse,
    ),
    gauge(
        QUEUE_BYTES,
        Some(Unit::Bytes),
        "Bytes waiting, by stage.",
        &["stage"],
        by_stage,
        Start::FirstUse,
    ),
    gauge(
        QUEUE_CAPACITY_BYTES,
        Some(Unit::Bytes),
        "Limit of mqtt_dynamo_queue_bytes, by stage.",
        &["stage"],
        by_stage,
        Start::FirstUse,
    ),
    gauge(
        DYNAMODB_IN_FLIGHT_REQUESTS,
        Some(Unit::Count),
        "DynamoDB requests awaiting an answer.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    gauge(
        FLUSHES_IN_FLIGHT,
        Some(Unit::Count),
        "Flushes running.",
        &[],
        unlabelled,
        Start::FirstUse,
    ),
    gauge(
        FLUSHES_IN_FLIGHT_LIMIT,
        Some(Unit::Count),
        "The adaptive limit on flushes running (AIMD within pipeline.min_in_flight..=max_in_flight).",
        &[],
        unlabelled,
        Start::FirstUse,
    ),
    gauge(
        BUILD_INFO,
        None,
        "Always 1, labelled with the running version and the DynamoDB backend (embedded_memory, embedded_file, endpoint, aws; the start log names it in full).",
        &["version", "backend"],
        || vec![Vec::new(), BACKENDS.to_vec()],
        Start::FirstUse,
    ),
    counter(
        MSGIDS_TRIMMED_TOTAL,
        "Message ids removed from mqtt_topic_msg_map sets at their size cap (storage.max_msgid_set_kb).",
        &[],
        unlabelled,
    ),
    counter(
        LOOKUPS_TOTAL,
        "Lookups answered (ok) or failed (error), by kind.",
        &["kind", "outcome"],
        || vec![lookup_kinds(), vec!["ok", "error"]],
    ),
    histogram(
        LOOKUP_DURATION_SECONDS,
        Unit::Seconds,
        SECONDS_BUCKETS,
        "Time to answer a lookup, DynamoDB reads included, by kind.",
        &["kind"],
        || vec![lookup_kinds()],
    ),
    gauge(
        LOOKUP_INDEX_TOPICS,
        Some(Unit::Count),
        "Entries of the shared topic index (mqtt_topic_index) this process remembers having put, so it does not put them again, by index (bounded: forgotten ones are put again).",
        &["index"],
        || vec![vec!["retained", "offline"]],
        Start::Zero,
    ),
    counter(
        TOPIC_INDEX_WRITES_TOTAL,
        "Puts of shared topic index entries (mqtt_topic_index: a new topic, or a new first level) added to accepted writes, by index.",
        &["index"],
        || vec![vec!["retained", "offline"]],
    ),
    counter(
        TOPIC_INDEX_SPREADS_TOTAL,
        "First levels of the shared topic index spread over twice the buckets (their new topics came faster than [storage] topic_index_spread_rate per bucket), by index and result (taken: recorded in the directory and used; failed: the directory put was given up).",
        &["index", "result"],
        || vec![vec!["retained", "offline"], vec!["taken", "failed"]],
    ),
    gauge(
        LOOKUP_PENDING_OPS,
        Some(Unit::Count),
        "Accepted writes kept for read-your-writes until they settle in DynamoDB.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    counter(
        EMQX_API_CALLS_TOTAL,
        "Calls to EMQX's REST API by call and outcome: ok, client_gone (404: disconnected first), refused (401/403: the API key), failed (given up after retry_for, or not retryable), dropped (the subscribe-on-connect queue was full).",
        &["call", "outcome"],
        emqx_api_calls,
    ),
    gauge(
        HOT_KEYS,
        Some(Unit::Count),
        "Keys DynamoDB throttled that wait a window of their own (hot_key_window) before their next write.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    counter(
        HOT_KEY_REQUEUES_TOTAL,
        "Writes of keys DynamoDB throttled, handed back to their shard to wait the key's window instead of being retried.",
        &[],
        unlabelled,
    ),
    counter(
        SPOOL_RECORDS_TOTAL,
        "Spool records by outcome: appended, replayed after a restart, refused (full or write error), failed, cut (torn or damaged).",
        &["outcome"],
        || vec![SPOOL_OUTCOMES.to_vec()],
    ),
    gauge(
        SPOOL_BYTES,
        Some(Unit::Bytes),
        "Bytes of spool segments on disk.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    gauge(
        SPOOL_CAPACITY_BYTES,
        Some(Unit::Bytes),
        "The spool's disk bound (pipeline.spool.max_mb), in bytes.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    gauge(
        SPOOL_BACKLOG_BYTES,
        Some(Unit::Bytes),
        "Spooled bytes not yet handed to the pipeline.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    gauge(
        SPOOL_SEGMENTS,
        Some(Unit::Count),
        "Spool segment files.",
        &[],
        unlabelled,
        Start::Zero,
    ),
    histogram(
        SPOOL_FSYNC_DURATION_SECONDS,
        Unit::Seconds,
        SECONDS_BUCKETS,
        "Duration of one spool fsync.",
        &[],
        unlabelled,
    ),
];

/// The markers around the generated table in `dashboards/README.md`.
pub const README_BEGIN: &str = "<!-- BEGIN metric catalogue: generated from src/telemetry/catalogue.rs; regenerate with MQTT_DYNAMO_BLESS=1 cargo test --lib telemetry::catalogue -->";
pub const README_END: &str = "<!-- END metric catalogue -->";

/// The catalogue as the markdown table of `dashboards/README.md`.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| metric | type | unit | labels (values) | meaning |\n|---|---|---|---|---|\n",
    );
    for m in CATALOGUE {
        let labels: Vec<String> = m
            .labels
            .iter()
            .zip((m.values)())
            .map(|(label, values)| {
                if values.is_empty() {
                    format!("`{label}`")
                } else {
                    format!("`{label}` ({})", values.join(", "))
                }
            })
            .collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.unit.map(|u| u.as_str()).unwrap_or(""),
            labels.join(", "),
            m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).expect("src/ is readable");
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_metric_name_literal_outside_the_catalogue() {
        let needle = format!("\"{PREFIX}");
        let this = root().join("src/telemetry/catalogue.rs");
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        assert!(files.contains(&this), "the walk reaches {}", this.display());
        let mut found = Vec::new();
        for file in files.iter().filter(|f| **f != this) {
            let text = std::fs::read_to_string(file).expect("a readable source file");
            for (n, line) in text.lines().enumerate() {
                if line.contains(&needle) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "metric names spelled as string literals outside src/telemetry/catalogue.rs (use the \
             catalogue's constants, e.g. catalogue::EVENTS_REJECTED_TOTAL):\n{}",
            found.join("\n")
        );
    }

    /// Every `pub const X: &str = "mqtt_dynamo_x"` is named after its metric (so that
    /// `sed -E 's/"mqtt_dynamo_([a-z0-9_]+)"/catalogue::\U\1/'` finds it) and is in the catalogue,
    /// and every catalogue metric has such a constant.
    #[test]
    fn constants_are_named_after_their_metric_and_all_catalogued() {
        let text = std::fs::read_to_string(root().join("src/telemetry/catalogue.rs"))
            .expect("catalogue.rs is readable");
        let mut constants = BTreeSet::new();
        let mut joined = String::new();
        for line in text.lines() {
            // A long constant wraps its value onto the next line.
            joined.push_str(line.trim());
            if !joined.ends_with(';') && joined.starts_with("pub const ") {
                continue;
            }
            let decl = std::mem::take(&mut joined);
            let Some(rest) = decl.strip_prefix("pub const ") else {
                continue;
            };
            let Some((ident, value)) = rest.split_once(": &str =") else {
                continue;
            };
            let value = value.trim().trim_end_matches(';').trim_matches('"');
            let Some(short) = value.strip_prefix(PREFIX).filter(|s| !s.is_empty()) else {
                continue;
            };
            assert_eq!(ident, short.to_uppercase(), "constant for {value}");
            constants.insert(value.to_string());
        }
        let catalogued: BTreeSet<String> = CATALOGUE.iter().map(|m| m.name.to_string()).collect();
        assert_eq!(constants, catalogued);
        assert_eq!(
            catalogued.len(),
            CATALOGUE.len(),
            "a metric is listed twice"
        );
    }

    #[test]
    fn names_kinds_labels_and_buckets_follow_the_conventions() {
        for m in CATALOGUE {
            let name = m.name;
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(
                m.kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters, and only counters, end in _total"
            );
            assert_eq!(
                m.kind == Kind::Histogram,
                m.buckets.is_some(),
                "{name}: every histogram, and only histograms, has buckets"
            );
            if let Some(b) = m.buckets {
                assert!(!b.is_empty() && b.windows(2).all(|w| w[0] < w[1]), "{name}");
            }
            assert!(!m.help.is_empty() && m.help.ends_with('.'), "{name}: help");
            assert!(
                !m.help.contains('\n') && !m.help.contains('|'),
                "{name}: help"
            );
            let values = (m.values)();
            assert_eq!(
                values.len(),
                m.labels.len(),
                "{name}: one value list per label"
            );
            let labels: BTreeSet<_> = m.labels.iter().collect();
            assert_eq!(labels.len(), m.labels.len(), "{name}: a label twice");
            for (label, values) in m.labels.iter().zip(&values) {
                assert!(
                    !["le", "quantile", "instance", "job"].contains(label),
                    "{name}"
                );
                let unique: BTreeSet<_> = values.iter().collect();
                assert_eq!(
                    unique.len(),
                    values.len(),
                    "{name}{{{label}}}: a value twice"
                );
                if m.start == Start::Zero {
                    assert!(
                        !values.is_empty(),
                        "{name}{{{label}}}: registered at zero needs a closed set"
                    );
                }
            }
            if name.ends_with("_seconds") {
                assert_eq!(m.unit, Some(Unit::Seconds), "{name}");
            }
            if name.ends_with("_bytes") {
                assert_eq!(m.unit, Some(Unit::Bytes), "{name}");
            }
        }
    }

    #[test]
    fn series_is_the_product_of_the_label_values() {
        let requests = get(DYNAMODB_REQUESTS_TOTAL).expect("catalogued");
        let series = requests.series();
        assert_eq!(series.len(), 3 * 7);
        assert_eq!(
            series[0],
            vec![("operation", "batch_write_item"), ("outcome", "success")]
        );
        assert_eq!(get(BATCH_BYTES).expect("catalogued").series(), vec![vec![]]);
        assert_eq!(
            get(EVENTS_REJECTED_TOTAL)
                .expect("catalogued")
                .series()
                .len(),
            3 * 6
        );
        assert!(get("mqtt_dynamo_nonsense").is_none());
    }

    /// `dashboards/README.md` holds exactly [`markdown_table`] between the markers.
    #[test]
    fn dashboards_readme_has_the_catalogue_table() {
        let path = root().join("dashboards/README.md");
        let text = std::fs::read_to_string(&path).expect("dashboards/README.md is readable");
        let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
            panic!(
                "dashboards/README.md lacks the markers {README_BEGIN:?} and {README_END:?} \
                 around the metric table"
            );
        };
        let start = begin + README_BEGIN.len();
        assert!(start <= end, "the end marker comes before the begin marker");
        let want = format!("\n{}", markdown_table());
        if text[start..end] == want {
            return;
        }
        if std::env::var_os("MQTT_DYNAMO_BLESS").is_some() {
            let fresh = format!("{}{want}{}", &text[..start], &text[end..]);
            std::fs::write(&path, fresh).expect("dashboards/README.md is writable");
            return;
        }
        panic!(
            "dashboards/README.md's metric table differs from src/telemetry/catalogue.rs; \
             regenerate it with `MQTT_DYNAMO_BLESS=1 cargo test --lib telemetry::catalogue` \
             (and review the diff). Want:\n{want}"
        );
    }
}
