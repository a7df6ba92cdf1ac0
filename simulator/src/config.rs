//! The simulator's knobs: [`SimConfig`] at start, and the parts that can change at run time
//! ([`Limits`] via `SimHandle::set_limits`, [`FaultConfig`] via `SimHandle::set_faults`).
//!
//! `Default` everywhere means an ideal DynamoDB: no latency, no capacity limits, no faults.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::SimError;

/// Everything [`crate::Simulator::start`] needs besides the listen address.
#[derive(Clone, Default, Serialize)]
pub struct SimConfig {
    /// Fixed part of the latency added to every data-plane request.
    pub latency: Duration,
    /// Random part: each request waits `latency + U`, `U` uniform on `[0, latency_jitter]`
    /// (millisecond resolution is not imposed; the draw is over nanoseconds).
    pub latency_jitter: Duration,
    /// Write capacity limits (token buckets).
    pub limits: Limits,
    /// Injected faults and random throttling.
    pub faults: FaultConfig,
    /// When set, requests must be signed with this access key id (`Credential=KEY/` in the
    /// `Authorization` header); the signature itself is not verified. Never logged.
    #[serde(skip)]
    pub access_key: Option<String>,
    /// Seed of the PRNG behind faults, jitter and the random knobs; `None` picks one at random.
    pub seed: Option<u64>,
    /// Tables that exist from the start (e.g. [`TableDef::project_tables`]).
    pub tables: Vec<TableDef>,
}

/// By hand, so the access key never reaches a log line.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("latency", &self.latency)
            .field("latency_jitter", &self.latency_jitter)
            .field("limits", &self.limits)
            .field("faults", &self.faults)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("seed", &self.seed)
            .field("tables", &self.tables)
            .finish()
    }
}

/// Write capacity, enforced with token buckets that refill continuously.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// Write units per second per table (`None` = unlimited). A write that cannot be charged
    /// fails with `ProvisionedThroughputExceededException` (reason
    /// `TableWriteProvisionedThroughputExceeded`).
    pub table_wcu: Option<u32>,
    /// Write units per second per partition key (`None` = unlimited; DynamoDB's ceiling is
    /// 1,000). A write that cannot be charged fails with `ThrottlingException` (reason
    /// `TableWriteKeyRangeThroughputExceeded`).
    pub key_wcu: Option<u32>,
    /// Bucket size in seconds of refill: a bucket holds at most `rate × burst_seconds` units and
    /// starts full. DynamoDB's partitions allow roughly one second of burst.
    pub burst_seconds: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            table_wcu: None,
            key_wcu: None,
            burst_seconds: 1.0,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        if !(self.burst_seconds.is_finite() && self.burst_seconds > 0.0) {
            return Err(SimError::Config(format!(
                "burst_seconds must be positive, got {}",
                self.burst_seconds
            )));
        }
        Ok(())
    }
}

/// What a stalled request does once its stall is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StallAction {
    /// Answer normally (a very slow response).
    #[default]
    Answer,
    /// Close the connection without answering (a hung request that finally dies).
    Drop,
}

/// A window, relative to the simulator's start, during which every data-plane request is
/// answered `503 ServiceUnavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutageWindow {
    pub start: Duration,
    pub duration: Duration,
}

/// Faults, drawn independently per data-plane request from the seeded PRNG. Control endpoints
/// (`/_sim/...`) are never affected.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FaultConfig {
    /// Fraction of requests answered `500 InternalServerError` or `503 ServiceUnavailable`
    /// (even odds) without being applied.
    pub error_rate: f64,
    /// Fraction of requests whose connection is closed without any response (not applied).
    pub reset_rate: f64,
    /// Fraction of requests held for `stall` before `stall_action`.
    pub stall_rate: f64,
    pub stall: Duration,
    pub stall_action: StallAction,
    /// Fraction of the write requests inside a BatchWriteItem returned in `UnprocessedItems`,
    /// and of the statements of a BatchExecuteStatement failed with `ThrottlingError`,
    /// regardless of capacity (not applied, not charged).
    pub throttle_rate: f64,
    /// Fraction of the keys of a BatchGetItem returned in `UnprocessedKeys`.
    pub unprocessed_keys_rate: f64,
    /// Fraction of data-plane write requests (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
    /// BatchExecuteStatement)
    /// that are applied exactly as usual (validation, conditions, capacity, `UnprocessedItems`)
    /// and then answered `500 InternalServerError` instead of their real answer: DynamoDB's
    /// "the request may or may not have succeeded". Reads are never affected.
    pub apply_then_error_rate: f64,
    /// Fraction of data-plane write requests held unanswered for `apply_late_delay`, then
    /// applied as usual, then dropped without any response (RST): a write that lands after the
    /// client gave up. The write is applied even if the client has disconnected meanwhile. Tests
    /// set the client's attempt timeout below `apply_late_delay`. Reads are never affected.
    pub apply_late_rate: f64,
    pub apply_late_delay: Duration,
    /// Scheduled outages.
    pub outages: Vec<OutageWindow>,
}

impl FaultConfig {
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
            ("stall_rate", self.stall_rate),
            ("throttle_rate", self.throttle_rate),
            ("unprocessed_keys_rate", self.unprocessed_keys_rate),
            ("apply_then_error_rate", self.apply_then_error_rate),
            ("apply_late_rate", self.apply_late_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimError::Config(format!(
                    "{name} must be within 0..=1, got {rate}"
                )));
            }
        }
        Ok(())
    }
}

/// A table to create at start: string key attributes, on-demand billing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableDef {
    pub name: String,
    pub hash_key: String,
    pub range_key: Option<String>,
}

impl TableDef {
    /// The seven tables of mqtt-dynamo (the seed's six and mqtt_topic_index), named `<prefix><base name>`. Copied from the root crate's
    /// `item::Table` (the simulator does not depend on it); keep the two in step.
    pub fn project_tables(prefix: &str) -> Vec<TableDef> {
        [
            ("mqtt_client", "clientid", None),
            ("mqtt_sub", "clientid", Some("topic")),
            ("mqtt_msg", "msgid", None),
            ("mqtt_topic_msg_map", "topic", None),
            ("mqtt_retain", "topic", None),
            ("mqtt_acked", "topic", Some("clientid")),
            ("mqtt_topic_index", "bucket", Some("topic")),
        ]
        .into_iter()
        .map(|(name, hash, range)| TableDef {
            name: format!("{prefix}{name}"),
            hash_key: hash.to_owned(),
            range_key: range.map(str::to_owned),
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_access_key() {
        let c = SimConfig {
            access_key: Some("AKIDSECRET".into()),
            ..SimConfig::default()
        };
        let text = format!("{c:?}");
        assert!(
            !text.contains("AKIDSECRET") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn ambiguous_write_rates_are_validated() {
        for bad in [-0.1, 1.5, f64::NAN] {
            for faults in [
                FaultConfig {
                    apply_then_error_rate: bad,
                    ..FaultConfig::default()
                },
                FaultConfig {
                    apply_late_rate: bad,
                    ..FaultConfig::default()
                },
            ] {
                assert!(faults.validate().is_err(), "{faults:?}");
            }
        }
        FaultConfig {
            apply_then_error_rate: 1.0,
            apply_late_rate: 0.5,
            apply_late_delay: Duration::from_secs(2),
            ..FaultConfig::default()
        }
        .validate()
        .unwrap();
    }
}
