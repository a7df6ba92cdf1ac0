//! mqtt-dynamo persists MQTT broker hook events (client connected/disconnected, session
//! subscribed/unsubscribed, message published/acked) into DynamoDB, in the table layout of EMQX's
//! DynamoDB backend, through a coalescing, batching write pipeline that never makes the broker wait.
//!
//! A library user starts the whole service with [`service::start`] (what `mqtt-dynamo serve`
//! does), or only the write pipeline with [`Pipeline::from_config`] and submits
//! [`HookEvent`]s through a [`PipelineHandle`].
//!
//! # Layout
//!
//! Each folder is one part of the data path, each file one concern. In the order an event
//! travels:
//!
//! ```text
//! service.rs          the service as a library call: start(config) -> Service (bound addresses), shutdown
//! event.rs            HookEvent: the six hook points, with what ExHook carries
//! topic.rs            MQTT topic names and filters: validation and matching
//! guid.rs             EMQX message ids: hex and base62, composing and deriving GUIDs
//! broker/             what the broker talks to
//!   mod.rs              the listeners (ExHook, HTTP), started and stopped together
//!   admission.rs        the full-queue policy (drop or block) between a listener and the pipeline
//!   exhook.rs           the ExHook gRPC server (emqx.exhook.v2 and v3)
//!   http.rs             the HTTP ingest: routes, token, body limit, shared answers
//!   rule_rows.rs        EMQX 5 rule-engine rows -> events
//!   webhooks.rs         EMQX 4 web hooks -> events
//!   tls.rs              rustls for both listeners: mutual TLS, reloads (SIGHUP, file poll)
//! rules/              what to store for an event
//!   mod.rs              actions bound to hook points and topic filters; rule sets
//!   plan.rs             planning one event into writes (with the size and key checks)
//!   format.rs           storage formats: message id form, time unit
//! pipeline/           accepted events to durable writes
//!   mod.rs              wiring: Pipeline (start, shutdown), PipelineHandle (submit, stats), ConnectObserver
//!   ingest.rs           the one submit: bounded queue in events and bytes, Admit, Receipt
//!   dedup.rs            repeated publishes (ids published and acked recently)
//!   topic_index.rs      topic index entries put once per new topic (bounded, sharded memory)
//!   expiry.rs           which stored message ids expired (for MsgId trimming)
//!   shard/              one shard task per key range
//!     mod.rs              the shard task: coalesce, trigger flushes (count, bytes, age), settle
//!     router.rs           the router thread: writes to shards by key hash
//!     hot_keys.rs         per-key windows for keys DynamoDB throttles
//!     costly_keys.rs      per-key windows for keys whose writes cost many units
//!     barrier.rs          spool barriers: passed once every earlier write is settled
//!   coalesce/           at most one pending write per key, pure
//!     algebra.rs          merging two writes to a key (the certainty rule)
//!     pending.rs          the pending table: per-key writes, bytes, age, in-flight and held keys
//!   flush/              one flush on the wire
//!     mod.rs              Flusher, a flush's per-key outcome (KeyEnd)
//!     request.rs          building requests: items, UpdateItem expressions, PartiQL statements
//!     batch.rs            BatchWriteItem (puts and deletes)
//!     statement.rs        BatchExecuteStatement (set changes, guarded updates; diverts the rest)
//!     update.rs           UpdateItem (updates, set changes)
//!     retry_loop.rs       the one retry loop and the one place an attempt is recorded
//!     retry.rs            the retry decision as a pure function; the shutdown deadline
//!     msgid.rs            capping MsgId sets, oldest first
//!   concurrency.rs      the adaptive (AIMD) limit on flushes in flight
//!   deadletter.rs       the JSON-lines file of writes given up
//! spool/              the optional write-ahead log between ingest and the router
//!   mod.rs              the spool's state, opening, barriers, shutdown
//!   append.rs           appends under the lock, segment rolls, the group-commit syncer
//!   segment.rs          segment files: naming, preallocation, scan and recovery
//!   codec.rs            the record format (CRC-32)
//!   feed.rs             the feeder thread: segments back into the ingest queue, in order
//! storage/            DynamoDB
//!   item.rs             tables (the seed's six, the topic index), keys, values, writes, ops
//!   limits.rs           DynamoDB's limits in one place, and the key check
//!   model.rs            writes applied in order: the reference for the coalescer and loadgen
//!   dynamo.rs           the SDK client, value conversion, error classes, backoff
//!   tables.rs           create, check and describe the seven tables; build the topic index
//!   topic_index.rs      the shared topic index's key shape (mqtt_topic_index), pure
//!   embedded.rs         dynoxide serving DynamoDB's HTTP API in process
//! lookup/             the read side
//!   mod.rs              Reader: subscriptions and retained messages
//!   batch_get.rs        reading items by key (BatchGetItem), overlay replayed over them
//!   offline.rs          offline messages in GUID time order, limits, since
//!   overlay.rs          read-your-writes: accepted but unwritten writes, op numbering
//!   index.rs            wildcard filters to topics: Queries of the shared topic index
//!   http.rs             the lookup API's routes
//! emqx_api/           EMQX 5's REST API
//!   mod.rs              the client: basic auth, subscribe/bulk, publish/bulk, errors, backoff
//!   subscribe.rs        subscribe on connect: ConnectObserver, bounded queue, worker, retries
//! config/             configuration
//!   mod.rs              the TOML file's sections and defaults; where DynamoDB is (BackendChoice)
//!   sources.rs          file, AWS_* and MQTT_DYNAMO_* variables, *_file secrets, in that order
//!   default.toml        every key with its default, documented (`config default`)
//!   validate.rs         its validation, in order
//!   import/             EMQX 4 configuration import: parse, map, emit
//! telemetry/          what the service says about itself
//!   catalogue.rs        every metric: name, kind, unit, help, labels, buckets
//!   stats.rs            counters for every stage
//!   recorder.rs         the Prometheus recorder, registration and the gauge sampler
//!   admin.rs            /metrics, /healthz, /readyz
//! test_util/          (feature test-util) builders and backends shared by tests, benches, loadgen
//! bin/mqtt-dynamo/    the command: main.rs dispatches; one file per command (retained.rs:
//!                     `retained restore` into EMQX's retainer)
//! ```
//!
//! See `ARCHITECTURE.md` for the reasoning behind this shape.

pub mod broker;
pub mod config;
pub mod emqx_api;
pub mod event;
pub mod guid;
pub mod lookup;
pub mod pipeline;
pub mod rules;
pub mod service;
pub mod spool;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod topic;

pub use config::Config;
pub use event::HookEvent;
pub use pipeline::{
    Admit, ConnectObserver, Pipeline, PipelineHandle, Receipt, Submission, SubmitError,
};
pub use service::{Service, ServiceError};
pub use telemetry::stats::StatsSnapshot;
