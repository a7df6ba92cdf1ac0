//! mqtt-dynamo: persists MQTT broker hook events into DynamoDB through a coalescing, batching
//! write pipeline, keeping the table layout of EMQX's DynamoDB backend.

pub mod coalesce;
pub mod event;
pub mod guid;
pub mod item;
pub mod model;
pub mod rules;
pub mod topic;
