//! The configuration (TOML): its types and defaults here, where it comes from (file, environment,
//! secret files) in [`sources`], its validation in `validate.rs`, the EMQX 4 import in
//! [`import`].
//!
//! Unknown keys are rejected; parse errors name the key and the line. Every section and key is
//! optional: an empty file is the seed's setup on the embedded DynamoDB. AWS settings follow AWS
//! conventions and the environment overrides the file for the region and the endpoint:
//! `AWS_REGION` (or `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL_DYNAMODB` (or `AWS_ENDPOINT_URL`)
//! are copied over `[dynamodb]` by [`DynamoConfig::apply_env`]; `MQTT_DYNAMO_<SECTION>_<KEY>`
//! overrides both. Credentials are not copied: keys
//! in the file are used as they are; without them aws-config's default credential chain reads
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE` and the rest
//! itself (see `storage::dynamo`).

pub mod import;
pub mod sources;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::rules::{Action, MsgIdFormat, Rule, RuleError, RuleSet, StorageFormat, TimeUnit};
use crate::storage::item::Table;

/// DynamoDB's limit on writes (puts and deletes) in one BatchWriteItem call.
pub const MAX_BATCH_REQUESTS: usize = 25;
/// DynamoDB's limit on one BatchWriteItem's size.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How long a hook call may wait for room in the ingest queue by default (both adapters): below
/// EMQX's 5 s `request_timeout`.
const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(4);

/// The metrics listener's default port: outside 9100-9999, the range Prometheus allocates to
/// exporters (9100 is node_exporter's), and not a default of any common exporter.
pub const DEFAULT_METRICS_PORT: u16 = 8095;

/// A default listen address: the loopback interface, `port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the line, the column and the key.
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A `MQTT_DYNAMO_*` variable that names no key, or a value the key does not take.
    #[error("environment variable {variable}: {reason}")]
    Environment { variable: String, reason: String },
    /// A `*_file` key whose file cannot be read, or a secret set both ways.
    #[error("{key}: {reason}")]
    Secret { key: String, reason: String },
    #[error("rules[{index}]: {source}")]
    Rule {
        index: usize,
        #[source]
        source: RuleError,
    },
}

/// A string that never shows in logs, debug output or a printed configuration (it serializes
/// as [`Secret::REDACTED`]).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Secret::REDACTED)
    }
}

impl Secret {
    /// What a secret prints as in `config check`.
    pub const REDACTED: &'static str = "<redacted>";

    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dynamodb: DynamoConfig,
    pub pipeline: PipelineConfig,
    pub storage: StorageConfig,
    /// The hook rules; absent means the seed's rule set.
    pub rules: Option<Vec<RuleConfig>>,
    pub exhook: ExhookConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub lookup: LookupConfig,
    pub emqx_api: EmqxApiConfig,
}

/// `[emqx_api]`: EMQX 5's REST API, which the service calls to subscribe a connecting client to
/// its stored subscriptions (`mqtt_sub`), as EMQX 4's `on_subscribe_lookup` did, and which
/// `retained restore` publishes through. Unset `url`: off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmqxApiConfig {
    /// The dashboard listener's base URL (`http://127.0.0.1:18083`), http or https.
    pub url: Option<String>,
    /// An API key made in EMQX (System, API Keys); sent with the secret as HTTP basic auth.
    pub api_key: Option<String>,
    /// The API key's secret; never logged.
    pub api_secret: Option<Secret>,
    /// Time limit of one call (connecting included).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A subscribe that fails (5xx, no answer) is retried with backoff for this long, then
    /// given up (counted and logged).
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Calls in flight at once at most; connects beyond them wait in a bounded queue.
    pub max_concurrent: usize,
}

impl Default for EmqxApiConfig {
    fn default() -> Self {
        EmqxApiConfig {
            url: None,
            api_key: None,
            api_secret: None,
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(30),
            max_concurrent: 8,
        }
    }
}

/// How a lookup finds the topics a subscription filter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    /// MQTT wildcard matching against the in-memory topic index (loaded with a parallel Scan at
    /// start, then kept from the service's own writes).
    #[default]
    Index,
    /// The seed's behaviour: the filter string is looked up as a key, so `a/+` finds only a
    /// message published to the literal topic `a/+`.
    Literal,
}

/// `[lookup]`: the read side (subscriptions, retained messages, offline messages).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Serve the lookup API on the HTTP listener.
    pub enabled: bool,
    /// Lookups also see writes accepted but not yet in DynamoDB (a copy of each such write of
    /// the four tables lookups read is kept until it settles).
    pub read_your_writes: bool,
    pub retained: MatchMode,
    pub offline: MatchMode,
    /// Offline messages returned per lookup when the request sets no limit (the newest ones,
    /// oldest first, as EMQX's SQL backends' `max_returned_count`); 0 means no limit.
    pub max_returned_count: usize,
    /// Only offline messages published within this long before the lookup (EMQX's
    /// `time_range`); unset means any age.
    #[serde(with = "humantime_serde")]
    pub time_range: Option<Duration>,
    /// Retained messages returned by one lookup at most (a `#` over a huge table is cut here,
    /// and the answer says so).
    pub max_retained: usize,
    /// Parallel Scan segments of `tables build-index` (filling the shared topic index).
    pub scan_segments: u32,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            enabled: true,
            read_your_writes: true,
            retained: MatchMode::Index,
            offline: MatchMode::Index,
            max_returned_count: 500,
            time_range: None,
            max_retained: 10_000,
            scan_segments: 4,
        }
    }
}

/// `[metrics]`: the Prometheus listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Serves `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: loopback(DEFAULT_METRICS_PORT),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What an adapter does with an event when the ingest queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait up to `block_timeout` for room (the broker's hook call waits too), then drop.
    #[default]
    Block,
    /// Drop at once.
    Drop,
}

/// `[exhook]`: the EMQX ExHook gRPC server (v2 and v3 on one port).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExhookConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub when_full: WhenFull,
    /// How long a hook call may wait for room; keep it below EMQX's `request_timeout` (5 s).
    #[serde(with = "humantime_serde")]
    pub block_timeout: Duration,
    /// Largest request accepted, in bytes (gRPC's default is 4 MiB).
    pub max_message_bytes: usize,
    /// PEM certificate chain and private key; both set means TLS. Reloaded (with the client CA)
    /// on SIGHUP and when a file changes; a failed reload keeps the previous material.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificates: when set (with TLS), every client must present a certificate they
    /// sign (mutual TLS, as EMQX's `exhook.servers[].ssl` can present one).
    pub tls_client_ca: Option<std::path::PathBuf>,
}

impl Default for ExhookConfig {
    fn default() -> Self {
        ExhookConfig {
            enabled: true,
            listen: loopback(9000),
            when_full: WhenFull::default(),
            block_timeout: DEFAULT_BLOCK_TIMEOUT,
            max_message_bytes: 4 * 1024 * 1024,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// Which publish actions rows posted by an EMQX rule feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HttpPublishActions {
    /// Only `on_message_retain` / `on_retain_delete`: ExHook feeds the rest (it cannot see the
    /// retain flag), so nothing is stored twice.
    #[default]
    RetainedOnly,
    /// Every publish action: HTTP is the only adapter.
    All,
}

/// `[http]`: the HTTP ingest listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer <token>` when set; never logged.
    pub token: Option<Secret>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    pub publish_actions: HttpPublishActions,
    pub when_full: WhenFull,
    #[serde(with = "humantime_serde")]
    pub block_timeout: Duration,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificates: when set (with TLS), clients must present a certificate they sign.
    pub tls_client_ca: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: loopback(8080),
            token: None,
            max_body_bytes: 8 * 1024 * 1024,
            publish_actions: HttpPublishActions::RetainedOnly,
            when_full: WhenFull::default(),
            block_timeout: DEFAULT_BLOCK_TIMEOUT,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// `[dynamodb]`: where and how to reach DynamoDB.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoConfig {
    /// AWS region. Unset: the AWS region chain as far as the backend allows (embedded: none; an
    /// endpoint: `AWS_REGION`, the profile's `region`; AWS itself: those, then the instance's
    /// region from IMDS; see `storage::dynamo::RegionChain`), then [`DEFAULT_REGION`] (the seed's).
    pub region: Option<String>,
    /// Endpoint URL. Unset means AWS itself, or the embedded DynamoDB (see `embedded`).
    pub endpoint_url: Option<String>,
    /// Static keys (with an optional session token); never logged. Unset means the AWS default
    /// credential chain (environment, profiles with SSO and `credential_process`, web identity,
    /// ECS, IMDS).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Run the embedded DynamoDB when no endpoint is configured. Unset: yes (the demo default),
    /// except on an AWS runtime, where the service refuses to start rather than keep the tables
    /// in memory; `false`: DynamoDB in the region.
    pub embedded: Option<bool>,
    /// Keep the embedded DynamoDB's tables in this SQLite file (created if missing) instead of
    /// in memory, so they survive restarts.
    pub embedded_path: Option<std::path::PathBuf>,
    /// Where the embedded DynamoDB listens.
    pub embedded_listen: SocketAddr,
    /// Prefix for the six table names (`prefix` + `mqtt_client`, …).
    pub table_prefix: String,
    /// Time limit of one attempt of a DynamoDB call.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// The region used when neither the configuration nor the AWS region chain names one: the
/// seed's.
pub const DEFAULT_REGION: &str = "us-west-2";

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig {
            region: None,
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            embedded: None,
            embedded_path: None,
            embedded_listen: loopback(8000),
            table_prefix: String::new(),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(3100),
        }
    }
}

/// Where DynamoDB is for a run, decided from `[dynamodb]` and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// The in-process DynamoDB, in memory or in the SQLite file.
    Embedded { path: Option<std::path::PathBuf> },
    /// A DynamoDB at this URL (`endpoint_url`, `AWS_ENDPOINT_URL_DYNAMODB`).
    Endpoint(String),
    /// DynamoDB itself, in the region the configuration or the AWS region chain names.
    Aws,
}

/// The environment variables that mean the process runs on an AWS compute service (EKS with
/// IRSA, ECS or Fargate, Lambda and others set `AWS_EXECUTION_ENV`), where an in-memory
/// DynamoDB is never what was meant.
pub const AWS_RUNTIME_MARKERS: [&str; 4] = [
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_EXECUTION_ENV",
];

impl DynamoConfig {
    /// The configured region, or the seed's default (the SDK client consults the AWS region
    /// chain before this default; this is for what has no client).
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }

    /// The full name of `table`.
    pub fn table_name(&self, table: Table) -> String {
        format!("{}{}", self.table_prefix, table.base_name())
    }

    /// Applies the AWS environment variables that name a region or an endpoint over the file's
    /// values (credentials are the AWS credential chain's business, see `storage::dynamo`).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            self.region = Some(region);
        }
        if let Some(url) = env("AWS_ENDPOINT_URL_DYNAMODB").or_else(|| env("AWS_ENDPOINT_URL")) {
            self.endpoint_url = Some(url);
        }
    }

    /// Where DynamoDB is: the endpoint when one is set; else the embedded server when chosen, or
    /// when nothing is chosen and `env` shows no AWS runtime; else DynamoDB itself. Nothing
    /// chosen on an AWS runtime is an error that says what to set.
    pub fn backend(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BackendChoice, ConfigError> {
        if let Some(url) = &self.endpoint_url {
            return Ok(BackendChoice::Endpoint(url.clone()));
        }
        let embedded = BackendChoice::Embedded {
            path: self.embedded_path.clone(),
        };
        match self.embedded {
            Some(true) => Ok(embedded),
            Some(false) => Ok(BackendChoice::Aws),
            None if self.embedded_path.is_some() => Ok(embedded),
            None => match AWS_RUNTIME_MARKERS.iter().find(|k| env(k).is_some()) {
                None => Ok(embedded),
                Some(marker) => Err(ConfigError::Invalid {
                    key: "dynamodb.embedded",
                    reason: format!(
                        "no DynamoDB is configured and {marker} is set, so this is an AWS runtime, \
                         where the default in-memory embedded DynamoDB would lose every write at \
                         the next restart; set [dynamodb] embedded = false \
                         (MQTT_DYNAMO_DYNAMODB_EMBEDDED=false) for DynamoDB in the region, \
                         endpoint_url for another DynamoDB, or embedded = true (with \
                         embedded_path to keep the tables) to run the embedded one anyway"
                    ),
                }),
            },
        }
    }
}

/// `[pipeline]`: queue limits, batching and retries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Shards (coalescer + flusher each); keys are spread over them by hash.
    pub shards: usize,
    /// Ingest queue limit in events; `submit` fails with `Full` beyond it.
    pub ingest_capacity_events: usize,
    /// Ingest queue limit in bytes of planned writes.
    pub ingest_capacity_bytes: usize,
    /// Per-shard inbox limit, in accepted events …
    pub shard_queue_capacity: usize,
    /// … and in bytes of planned writes (the router waits while a shard's inbox holds this).
    pub shard_queue_bytes: usize,
    /// A shard stops taking from its inbox while it holds this many pending keys …
    pub max_pending_keys: usize,
    /// … or this many bytes of pending writes.
    pub max_pending_bytes: usize,
    /// Writes in one flush's BatchWriteItem call (DynamoDB allows 25).
    pub max_batch_requests: usize,
    /// Flush when this many bytes are pending, and cap one flush at it.
    pub max_batch_bytes: usize,
    /// Flush a write at the latest this long after its oldest event was accepted.
    #[serde(with = "humantime_serde")]
    pub max_batch_age: Duration,
    /// Flushes (one BatchWriteItem plus the UpdateItems taken with it) in flight at once,
    /// across all shards: the upper bound of the adaptive limit.
    pub max_in_flight: usize,
    /// The lower bound of the adaptive limit.
    pub min_in_flight: usize,
    /// Adapt the limit (AIMD): halve it when DynamoDB throttles or slows down, grow it by one
    /// per limit's worth of clean DynamoDB calls. Off: always `max_in_flight`.
    pub adaptive_concurrency: bool,
    /// A key DynamoDB throttles itself (UnprocessedItems, or a key-range ThrottlingReason) waits
    /// this long before its next write is sent, so its writes merge meanwhile; each further
    /// throttle doubles the wait up to `hot_key_max_window`, each clean write halves it. Other
    /// keys are not held. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub hot_key_window: Duration,
    #[serde(with = "humantime_serde")]
    pub hot_key_max_window: Duration,
    /// After the first event of a quiet spell the router waits this long and then hands each
    /// shard everything queued meanwhile as one message: one wakeup per shard per wait instead
    /// of per event, at the cost of at most this much ingest-to-durable latency. 0 routes each
    /// event as it comes.
    #[serde(with = "humantime_serde")]
    pub route_gather: Duration,
    /// Send set ADDs/DELETEs and guarded updates up to 25 per BatchExecuteStatement (PartiQL
    /// `UPDATE`s) instead of one UpdateItem each. Off for DynamoDB implementations without
    /// PartiQL (dynalite).
    pub batch_statements: bool,
    /// A key whose last write cost many write units (at least 4: a big `MsgId` item, known from
    /// UpdateItem's consumed capacity) waits this long per unit before its next write, so its
    /// changes merge meanwhile, up to `cost_max_window`. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub cost_window: Duration,
    #[serde(with = "humantime_serde")]
    pub cost_max_window: Duration,
    /// After an attempt that ended ambiguously (a timeout, a 5xx, a reset) DynamoDB may still
    /// apply that attempt later; the key's next write waits this long, so such a late landing
    /// comes before it instead of overwriting it. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub ambiguous_hold: Duration,
    /// Append every write given up (rejected by DynamoDB, or out of retry budget) to this file as
    /// JSON lines; unset: such writes are only counted and logged.
    pub dead_letter_path: Option<std::path::PathBuf>,
    pub retry: RetryConfig,
    /// How long a shutdown (SIGTERM, SIGINT) may take. Without the spool, accepted writes are
    /// drained until then and whatever is still unwritten is dead-lettered (counted as
    /// `writes_dropped_total{reason="shutdown"}` and logged); with the spool, the service stops
    /// at the deadline and leaves the backlog on disk for the next start (nothing given up).
    /// Below Kubernetes' default 30 s grace period.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A publish of a message id whose ack was seen within this window is a repeat (a sender
    /// that resends, one message through two adapters) and is not stored again (counted as
    /// `duplicate_publishes_total{kind="acked"}`); a repeat of an id not yet acked is stored
    /// with its writes treated as maybe applied. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// … remembering at most this many message ids (published and acked, each); the oldest are
    /// forgotten first.
    pub dedup_max_ids: usize,
    /// The durable spool between ingest and the router (off by default).
    pub spool: SpoolConfig,
    /// How long a new pending write of each table waits before it may be sent.
    pub linger: LingerConfig,
}

/// `[pipeline.linger]`: how long a key's new pending write waits before it may be sent, by table.
///
/// Writes that a later event usually cancels or merges (a QoS>0 message's `mqtt_msg` put and
/// `MsgId` ADD, met by its ack's delete and `MsgId` DELETE; `mqtt_acked` puts, replaced by the
/// next ack) save requests and write units when they wait for it; presence and retained messages
/// keep low latency. The wait adds to ingest→durable latency; with the spool on it costs no
/// durability (the event is on disk before its hook is answered), without it a crash loses what
/// waited (as it loses what is queued). 0 sends as soon as a flush takes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LingerConfig {
    #[serde(with = "humantime_serde")]
    pub mqtt_client: Duration,
    #[serde(with = "humantime_serde")]
    pub mqtt_sub: Duration,
    #[serde(with = "humantime_serde")]
    pub mqtt_msg: Duration,
    #[serde(with = "humantime_serde")]
    pub mqtt_topic_msg_map: Duration,
    #[serde(with = "humantime_serde")]
    pub mqtt_retain: Duration,
    #[serde(with = "humantime_serde")]
    pub mqtt_acked: Duration,
}

/// The default linger of the tables whose writes usually meet a later event.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(LINGER_MS);
const LINGER_MS: u64 = 500;

impl Default for LingerConfig {
    fn default() -> Self {
        LingerConfig {
            mqtt_client: Duration::ZERO,
            mqtt_sub: Duration::ZERO,
            mqtt_msg: DEFAULT_LINGER,
            mqtt_topic_msg_map: DEFAULT_LINGER,
            mqtt_retain: Duration::ZERO,
            mqtt_acked: DEFAULT_LINGER,
        }
    }
}

impl LingerConfig {
    /// The linger of `table`.
    pub fn of(&self, table: Table) -> Duration {
        match table {
            Table::Client => self.mqtt_client,
            Table::Sub => self.mqtt_sub,
            Table::Msg => self.mqtt_msg,
            Table::TopicMsgMap => self.mqtt_topic_msg_map,
            Table::Retain => self.mqtt_retain,
            Table::Acked => self.mqtt_acked,
            // Index puts are idempotent and never cancel: nothing to wait for.
            Table::TopicIndex => Duration::ZERO,
        }
    }

    /// No table lingers.
    pub fn none() -> Self {
        LingerConfig {
            mqtt_client: Duration::ZERO,
            mqtt_sub: Duration::ZERO,
            mqtt_msg: Duration::ZERO,
            mqtt_topic_msg_map: Duration::ZERO,
            mqtt_retain: Duration::ZERO,
            mqtt_acked: Duration::ZERO,
        }
    }
}

/// When the spool makes an appended event durable before the hook is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Acknowledge after the fsync that covers the event (group commit: one fsync covers every
    /// event appended while the previous one ran). Survives a crash of the machine.
    #[default]
    Always,
    /// Acknowledge once the event is written to the operating system; fsync every
    /// `fsync_interval`. Survives a crash of the service (kill -9), not of the machine: a power
    /// loss can lose the last interval.
    Interval,
}

/// `[pipeline.spool]`: the on-disk write-ahead log between ingest and the router.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub enabled: bool,
    /// Directory of the segment files (created if missing). One service per directory.
    pub dir: std::path::PathBuf,
    pub fsync: FsyncPolicy,
    /// How often `fsync = "interval"` syncs.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// A segment is sealed and a new one started past this size …
    pub segment_mb: u64,
    /// … or when it has events and is this old (so a quiet spool still frees disk).
    #[serde(with = "humantime_serde")]
    pub segment_age: Duration,
    /// The bound on the spool's disk use. When it is reached, new events are refused as if the
    /// ingest queue were full: the adapters' `when_full` policy applies (block, then drop and
    /// count), and nothing already spooled is touched.
    pub max_mb: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            enabled: false,
            dir: std::path::PathBuf::from("mqtt-dynamo-spool"),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(10),
            segment_mb: 16,
            segment_age: Duration::from_secs(10),
            max_mb: 1024,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            shards: 2,
            ingest_capacity_events: 65_536,
            ingest_capacity_bytes: 64 * 1024 * 1024,
            shard_queue_capacity: 4096,
            shard_queue_bytes: 16 * 1024 * 1024,
            max_pending_keys: 200_000,
            max_pending_bytes: 128 * 1024 * 1024,
            max_batch_requests: MAX_BATCH_REQUESTS,
            max_batch_bytes: 4 * 1024 * 1024,
            max_batch_age: Duration::from_millis(50),
            max_in_flight: 32,
            min_in_flight: 2,
            adaptive_concurrency: true,
            hot_key_window: Duration::from_millis(100),
            hot_key_max_window: Duration::from_secs(2),
            route_gather: Duration::from_millis(2),
            batch_statements: true,
            cost_window: Duration::from_millis(10),
            cost_max_window: Duration::from_secs(1),
            ambiguous_hold: Duration::from_secs(1),
            dead_letter_path: None,
            retry: RetryConfig::default(),
            shutdown_timeout: Duration::from_secs(25),
            dedup_window: Duration::from_secs(600),
            dedup_max_ids: 200_000,
            spool: SpoolConfig::default(),
            linger: LingerConfig::default(),
        }
    }
}

/// `[pipeline.retry]`: exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Without the spool: give a write up (counted, logged and dead-lettered) after retrying it
    /// this long. With the spool on a write is never given up for time.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

/// `[storage]`: how values are written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub msgid_format: MsgIdFormat,
    pub time_unit: TimeUnit,
    /// The largest a topic's `MsgId` set item may grow, in KB (DynamoDB refuses items over
    /// 400 KB): past it ids are removed from the set, expired ones first, then the oldest (by
    /// the time in the GUID), down to three quarters of it. 0 turns the cap off (the 400 KB
    /// refusal is still handled).
    pub max_msgid_set_kb: usize,
    /// The attribute of `mqtt_msg` and `mqtt_retain` items that holds when a message expires
    /// (N, epoch seconds): DynamoDB's TTL attribute, which `tables create` enables.
    pub ttl_attribute: String,
    /// How long a message without a Message-Expiry-Interval is kept; unset: forever (the seed).
    #[serde(with = "humantime_serde")]
    pub default_message_ttl: Option<Duration>,
    /// Order presence (`mqtt_client`) and retained messages (`mqtt_retain`) by the broker's event
    /// time, enforced by DynamoDB conditions, so that several instances writing one table (or a
    /// spool replayed late) cannot let an older event overwrite a newer one. Adds `event_ms` (and
    /// `connected_ms` on `mqtt_client`); a cleared retained message leaves a tombstone. Off: the
    /// seed's writes, in arrival order (fewer requests; for a single instance).
    pub event_time_order: bool,
    /// New topics a second under one first level, per bucket of the shared topic index, past
    /// which this instance spreads the level over twice the buckets (one bucket takes 1,000
    /// write units a second; each new topic is one). 0: never spread.
    pub topic_index_spread_rate: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            msgid_format: MsgIdFormat::default(),
            time_unit: TimeUnit::default(),
            max_msgid_set_kb: 300,
            ttl_attribute: crate::rules::DEFAULT_TTL_ATTRIBUTE.to_string(),
            default_message_ttl: None,
            event_time_order: true,
            topic_index_spread_rate: 500,
        }
    }
}

impl StorageConfig {
    pub fn format(&self) -> StorageFormat {
        StorageFormat {
            msgid: self.msgid_format,
            time: self.time_unit,
            expiry: crate::rules::Expiry {
                attribute: self.ttl_attribute.as_str().into(),
                default_ttl_s: self.default_message_ttl.map(|d| d.as_secs().max(1)),
            },
            event_time: self.event_time_order,
        }
    }
}

/// One `[[rules]]` entry, the seed's `backend.dynamo.hook.<hook>.<n>` line.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub hook: String,
    pub action: Action,
    pub topic: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `mqtt_dynamo=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// `human` or `json` (one JSON object per line).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

impl Config {
    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file with the process's environment over it (see
    /// [`sources`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        sources::load(Some(path))
    }

    /// The defaults with the process's environment over them (see [`sources`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        sources::load(None)
    }

    /// The rule set: the configured rules, or the seed's.
    pub fn rule_set(&self) -> Result<RuleSet, ConfigError> {
        match &self.rules {
            None => Ok(RuleSet::default()),
            Some(rules) => rules
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    Rule::new(&r.hook, r.action, r.topic.as_deref())
                        .map_err(|source| ConfigError::Rule { index, source })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(RuleSet::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_seed_setup() {
        let c = Config::parse("", "test.toml").unwrap();
        assert_eq!(c.dynamodb.region(), "us-west-2");
        assert_eq!(c.dynamodb.embedded, None);
        assert_eq!(c.dynamodb.embedded_listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.rule_set().unwrap().rules().len(), 10);
        assert_eq!(c.pipeline.max_batch_requests, 25);
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            [dynamodb]
            region = "eu-west-1"
            endpoint_url = "http://127.0.0.1:8001"
            access_key_id = "AKID"
            secret_access_key = "very-secret"
            table_prefix = "test_"

            [pipeline]
            max_batch_age = "20ms"
            max_in_flight = 8
            [pipeline.retry]
            max_elapsed = "30s"

            [storage]
            msgid_format = "hex"
            time_unit = "milliseconds"

            [[rules]]
            hook = "message.publish"
            action = "on_message_store"
            topic = "sensors/#"
        "#;
        let c = Config::parse(text, "test.toml").unwrap();
        assert_eq!(c.pipeline.max_batch_age, Duration::from_millis(20));
        assert_eq!(c.pipeline.retry.max_elapsed, Duration::from_secs(30));
        assert_eq!(c.dynamodb.table_name(Table::Msg), "test_mqtt_msg");
        assert_eq!(c.storage.format().msgid, MsgIdFormat::Hex);
        assert_eq!(
            c.rule_set().unwrap().rules()[0].action,
            Action::OnMessageStore
        );
        // Secrets never print.
        let debug = format!("{:?}", c.dynamodb);
        assert!(!debug.contains("very-secret"), "{debug}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_key_and_line() {
        let err =
            Config::parse("[pipeline]\nshards = 2\nbatch_size = 100\n", "my.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("my.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("batch_size"), "{msg}");
    }

    #[test]
    fn limits_are_validated() {
        let err = Config::parse("[pipeline]\nmax_batch_requests = 100\n", "t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pipeline.max_batch_requests: must be 1 to 25 (DynamoDB's BatchWriteItem limit)"
        );
        let err = Config::parse(
            "[[rules]]\nhook = \"message.acked\"\naction = \"on_message_publish\"\n",
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules[0]: action on_message_publish belongs to hook message.publish, not message.acked"
        );
        let err = Config::parse(
            "[[rules]]\nhook = \"message.acked\"\naction = \"on_nothing\"\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("on_nothing"), "{err}");
    }

    #[test]
    fn environment_overrides_aws_settings() {
        let mut c = Config::parse("[dynamodb]\nregion = \"eu-west-1\"\n", "t").unwrap();
        c.dynamodb.apply_env(|k| match k {
            "AWS_REGION" => Some("ap-south-1".into()),
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9999".into()),
            _ => None,
        });
        assert_eq!(c.dynamodb.region(), "ap-south-1");
        assert_eq!(
            c.dynamodb.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9999")
        );
        assert!(c.dynamodb.access_key_id.is_none());
    }
}
