//! A DynamoDB-compatible simulator for throttling, fault injection and throughput measurements.
//!
//! It speaks DynamoDB's JSON 1.0 protocol over HTTP/1.1 (so the AWS SDKs and boto3 talk to it
//! unchanged), keeps tables in memory, validates requests as strictly as DynamoDB does, charges
//! write units and throttles with token buckets per table and per partition key, and injects
//! latency, errors, connection resets, stalls and outages from a seeded PRNG.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dynamo_sim::{SimConfig, Simulator, TableDef};
//! let config = SimConfig { tables: TableDef::project_tables(""), ..SimConfig::default() };
//! let sim = Simulator::start(config, "127.0.0.1:0".parse()?).await?;
//! println!("endpoint {}", sim.endpoint());
//! println!("{} items written", sim.stats().items_written);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`config`]: the knobs ([`SimConfig`], [`Limits`], [`FaultConfig`], [`TableDef`]).
//! - `server`: the HTTP front — accept loop, data plane, `/_sim/` control endpoints,
//!   [`Simulator`] and [`SimHandle`].
//! - `state`: the state shared by all connections (store, counters, faults, limits).
//! - `ops`: the DynamoDB operations — shared request parsing, then `tables` (CreateTable,
//!   DescribeTable, ListTables, DeleteTable), `write` (PutItem, DeleteItem, UpdateItem,
//!   BatchWriteItem), `batch_statement` (BatchExecuteStatement) and `read` (GetItem,
//!   BatchGetItem, Query, Scan).
//! - `store`: tables, sharded ordered item maps, key validation, token-bucket charging.
//! - `expr`: condition, update and projection expressions.
//! - `partiql`: the PartiQL `UPDATE` statements BatchExecuteStatement runs.
//! - `value`: attribute values in DynamoDB JSON, their validation and the item-size rule.
//! - `number`: exact DynamoDB numbers (38 digits).
//! - `capacity`: write-unit rounding and the token bucket.
//! - `faults`: per-request fault decisions and latency.
//! - `stats`: counters and the [`SimStats`] snapshot.
//! - `error`: [`SimError`] and the DynamoDB error responses.

mod capacity;
pub mod config;
mod error;
mod expr;
mod faults;
mod number;
mod ops;
mod partiql;
mod server;
mod state;
mod stats;
mod store;
mod value;

pub use config::{FaultConfig, Limits, OutageWindow, SimConfig, StallAction, TableDef};
pub use error::SimError;
pub use server::{SimHandle, Simulator};
pub use stats::{FaultStats, SimStats};

/// Size of an item given in DynamoDB JSON (`{"a": {"S": "x"}}`) by DynamoDB's item-size rule,
/// the number behind the 400 KB limit and write units; `None` if it is not a valid item.
pub fn item_size(item: &serde_json::Value) -> Option<usize> {
    value::parse_item(item).ok().map(|i| value::item_size(&i))
}

/// Write units DynamoDB charges for writing an item of `bytes` (rounded up to 1 KB, at least 1).
pub fn write_units(bytes: usize) -> u64 {
    capacity::write_units(bytes)
}
