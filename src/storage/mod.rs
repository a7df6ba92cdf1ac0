//! DynamoDB as this crate sees it: the tables, keys, values and writes ([`item`]); writes applied
//! in order ([`model`]); the SDK client, conversions and error classes ([`dynamo`]); creating and
//! checking the tables ([`tables`]); and the in-process DynamoDB ([`embedded`]).

pub mod dynamo;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod item;
pub mod model;
pub mod tables;
