//! What the service says about itself: counters for every stage ([`stats`]) and the Prometheus
//! recorder with its `/metrics`, `/healthz` and `/readyz` listener ([`recorder`]).

pub mod recorder;
pub mod stats;
