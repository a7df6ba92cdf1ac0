//! The write pipeline against real DynamoDB implementations over HTTP on loopback, through the
//! AWS SDK: dynoxide (in-process), dynalite (node; rejects duplicate keys and oversized batches
//! like DynamoDB) and the project's simulator (throttling, faults, outages). Final table contents
//! are asserted item by item. One test binary, one module per concern.

#[path = "../support/mod.rs"]
mod support;

mod coalescing;
mod common;
mod contract;
mod expiry;
mod msgid_sets;
mod outages;
mod retries;
mod shutdown;
mod statements;
mod throttling;
