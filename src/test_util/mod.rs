//! What the integration tests, the benches and loadgen share (feature `test-util`, never in the
//! release binary): hook event and GUID builders with stable ids, the DynamoDB implementations
//! the tests run against (dynoxide in-process, dynalite from `tools/dynalite`, the project's
//! simulator `dynamo-sim`), SDK clients that count their requests, table scans into the model,
//! the service started in process on ephemeral ports, and a shorter way to submit.
//!
//! - [`events`]: connect, disconnect, subscribe, publish, ack and retained events.
//! - [`guids`]: message ids at a fixed time, built with [`crate::guid::compose`].
//! - [`backend`]: the DynamoDB implementations under test, alive as long as their value.
//! - [`counter`]: a client interceptor counting requests by operation.
//! - [`items`]: expected items written out by hand, and every table read back.
//! - [`stalled`]: an endpoint that accepts connections and never answers (an outage).
//! - [`service`]: [`crate::service::start`] on ephemeral ports, and a client for its DynamoDB.
//! - [`submit`]: submit and wait for acceptance in one call.

pub mod backend;
pub mod counter;
pub mod events;
pub mod guids;
pub mod items;
pub mod service;
pub mod stalled;
pub mod submit;

pub use backend::Backend;
pub use counter::RequestCounter;
pub use items::{index_item, index_items, item, normalized, s, scan_all};
pub use submit::SubmitExt;
