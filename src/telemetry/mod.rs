//! What the service says about itself.
//!
//! - [`catalogue`]: every metric in one table (name, kind, unit, help, labels, buckets) and a
//!   constant per name; registration, descriptions and `dashboards/README.md` come from it.
//! - [`stats`]: counters for every stage, kept as atomics and recorded under the catalogue's names.
//! - [`recorder`]: installs the Prometheus recorder from the catalogue, and the sampler that copies
//!   levels into gauges once a second.
//! - [`admin`]: the `/metrics`, `/healthz` and `/readyz` listener and [`admin::Readiness`].

pub mod admin;
pub mod catalogue;
pub mod recorder;
pub mod stats;
