//! The Prometheus recorder: installed once per process with every histogram's buckets, every
//! metric described and the closed label sets registered at zero, all by iterating
//! [`CATALOGUE`]; and the sampler that copies the pipeline's levels and per-event
//! counters into the registry once a second.
//!
//! The listener that serves the exposition is in [`crate::telemetry::admin`]; its items are
//! re-exported here, where callers found them before the split.

use std::time::Duration;

use metrics::Label;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use thiserror::Error;

use crate::pipeline::PipelineHandle;
pub use crate::telemetry::admin::{Readiness, bind, serve};
use crate::telemetry::catalogue::{CATALOGUE, Kind, Start};

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Installs the global recorder (once per process), describes every metric and registers the
/// series of closed label sets at zero.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = builder()?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    describe();
    register();
    Ok(handle)
}

/// The exporter with every histogram's buckets (a histogram without them would be a summary).
fn builder() -> Result<PrometheusBuilder, MetricsError> {
    CATALOGUE
        .iter()
        .filter_map(|m| m.buckets.map(|b| (m.name, b)))
        .try_fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets)
        })
        .map_err(|e| MetricsError::Install(e.to_string()))
}

/// Gives every metric its help text and unit.
fn describe() {
    metrics::with_recorder(|recorder| {
        for m in CATALOGUE {
            let (name, help) = (m.name.into(), m.help.into());
            match m.kind {
                Kind::Counter => recorder.describe_counter(name, m.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, m.unit, help),
                Kind::Histogram => recorder.describe_histogram(name, m.unit, help),
            }
        }
    });
}

/// Registers every series of the closed label sets at zero, so that "nothing happened" is a 0 in
/// Prometheus rather than a missing series (and `rate()` works from the first scrape).
fn register() {
    for m in CATALOGUE.iter().filter(|m| m.start == Start::Zero) {
        for set in m.series() {
            let labels: Vec<Label> = set
                .into_iter()
                .map(|(k, v)| Label::from_static_parts(k, v))
                .collect();
            match m.kind {
                Kind::Counter => metrics::counter!(m.name, labels).absolute(0),
                Kind::Gauge => metrics::gauge!(m.name, labels).set(0.0),
                Kind::Histogram => {
                    let _ = metrics::histogram!(m.name, labels);
                }
            }
        }
    }
}

/// Samples the pipeline's levels (queue depths, flushes in flight, hot keys, lookup indexes) and
/// per-event counters into the registry once a second: they are levels or hot-path atomics, read
/// here rather than recorded per event.
pub fn spawn_sampler(
    handle: PipelineHandle,
    prometheus: PrometheusHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            handle.sample_gauges();
            // Histograms accumulate in thread-local buckets until drained.
            prometheus.run_upkeep();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition right after start, rendered by a recorder local to the test (the global
    /// one can be installed once per process).
    fn rendered_at_start() -> String {
        let recorder = builder().expect("the buckets are valid").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register();
        });
        handle.render()
    }

    #[test]
    fn every_metric_registered_at_zero_is_described_typed_and_has_all_its_series() {
        let text = rendered_at_start();
        for m in CATALOGUE.iter().filter(|m| m.start == Start::Zero) {
            let name = m.name;
            assert!(
                text.contains(&format!("# HELP {name} {}\n", m.help)),
                "{name}: help"
            );
            assert!(
                text.contains(&format!("# TYPE {name} {}\n", m.kind.as_str())),
                "{name}: type"
            );
            let (series, value) = match m.kind {
                Kind::Histogram => (format!("{name}_count"), " 0"),
                _ => (name.to_string(), " 0"),
            };
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.split(['{', ' ']).next() == Some(series.as_str()))
                .collect();
            assert_eq!(lines.len(), m.series().len(), "{name}: series");
            assert!(
                lines.iter().all(|l| l.ends_with(value)),
                "{name}: {lines:?}"
            );
            if let Some(buckets) = m.buckets {
                let per_series = text
                    .lines()
                    .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
                    .count();
                assert_eq!(per_series, (buckets.len() + 1) * m.series().len(), "{name}");
            }
        }
    }

    #[test]
    fn metrics_created_on_first_use_are_absent_at_start() {
        let text = rendered_at_start();
        for m in CATALOGUE.iter().filter(|m| m.start == Start::FirstUse) {
            assert!(
                !text.lines().any(|l| l.starts_with(&format!("{} ", m.name))
                    || l.starts_with(&format!("{}{{", m.name))),
                "{}",
                m.name
            );
        }
    }
}
