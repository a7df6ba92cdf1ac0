//! mqtt-dynamo persists MQTT broker hook events (client connected/disconnected, session
//! subscribed/unsubscribed, message published/acked) into DynamoDB, in the table layout of EMQX's
//! DynamoDB backend, through a coalescing, batching write pipeline that never makes the broker wait.
//!
//! # Layout
//!
//! The data path, in the order an event travels:
//!
//! - [`event`]: the hook events, one type for the six hook points.
//! - [`rules`]: the seed's actions bound to hook points and topic filters, and the planner that
//!   turns one event into the writes of the storage contract. [`topic`] matches MQTT filters;
//!   [`guid`] converts EMQX message ids between hex and base62.
//! - [`ingest`]: the bounded crossbeam queue callers submit into (limits in events and bytes).
//! - [`spool`]: the optional on-disk write-ahead log between ingest and the router (group-commit
//!   fsync, replay after a crash, segments deleted once durable in DynamoDB, bounded disk).
//! - [`shard`]: the router thread that spreads writes over shards by key hash, and the shard task
//!   that owns a [`coalesce::Coalescer`] and starts flushes.
//! - [`coalesce`]: the write algebra — at most one pending write per key — as a pure structure.
//! - [`concurrency`]: the adaptive (AIMD) limit on flushes in flight.
//! - [`flush`]: one flush on the wire: BatchWriteItem for puts and deletes, UpdateItem for updates
//!   and set changes, retries with full-jitter backoff, poison isolation.
//! - [`retry`]: the retry decision as a pure function (retry after, hand back, give up, leave to
//!   the spool) and the shutdown deadline every retry loop watches.
//! - [`pipeline`]: wires the stages together; start, submit handle, drain on shutdown.
//!
//! The read side:
//!
//! - [`lookup`]: subscriptions, retained messages (MQTT wildcards through a topic index) and
//!   offline messages (GUID time order, limits), read from DynamoDB with the pipeline's accepted
//!   but unwritten writes replayed over them (read-your-writes).
//!
//! Around it:
//!
//! - [`item`]: the tables, keys, values and writes; [`model`] applies writes sequentially (the
//!   reference the coalescer is tested against, and loadgen's expected final state).
//! - [`dynamo`]: the SDK client, value conversion and error classification; [`tables`] creates,
//!   checks and describes the tables; [`embedded`] runs dynoxide in-process.
//! - [`config`]: the TOML configuration; [`stats`]: counters for every stage; [`metrics`]: the
//!   Prometheus recorder and the `/metrics`, `/healthz`, `/readyz` listener.
//! - [`adapter`]: the broker-facing listeners (ExHook gRPC, HTTP ingest); [`import`]: EMQX 4
//!   configuration import.
//!
//! See `ARCHITECTURE.md` for the reasoning behind this shape.

pub mod broker;
pub mod config;
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
