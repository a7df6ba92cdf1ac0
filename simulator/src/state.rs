//! The state every request handler shares: tables, counters, faults and limits.

use std::sync::{PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Limits, SimConfig};
use crate::error::SimError;
use crate::faults::Faults;
use crate::ops::check_table_name;
use crate::stats::{Counters, SimStats};
use crate::store::{Billing, KeyAttr, KeyType, Schema, Store};

/// Shared by the accept loop, every connection task and every `SimHandle` clone (behind an
/// `Arc`). Each part synchronises itself: the store per table and shard, counters atomically,
/// faults and limits behind `RwLock`s that are read once per request.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub stats: Counters,
    pub faults: Faults,
    limits: RwLock<Limits>,
    /// Checked against `Credential=<key>/` in `Authorization`; never logged.
    access_key: Option<AccessKey>,
    pub started: Instant,
    /// Table ids are `<seed-derived prefix>-<counter>`, unique within a run.
    next_table_id: std::sync::atomic::AtomicU64,
    pub seed: u64,
}

impl Shared {
    pub fn new(config: &SimConfig) -> Result<Shared, SimError> {
        config.limits.validate()?;
        config.faults.validate()?;
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        let shared = Shared {
            store: Store::default(),
            stats: Counters::default(),
            faults: Faults::new(
                config.faults.clone(),
                config.latency,
                config.latency_jitter,
                seed,
            ),
            limits: RwLock::new(config.limits),
            access_key: config.access_key.clone().map(AccessKey),
            started: Instant::now(),
            next_table_id: std::sync::atomic::AtomicU64::new(1),
            seed,
        };
        for def in &config.tables {
            check_table_name(&def.name).map_err(|e| SimError::Config(e.message))?;
            let attr = |name: &str| KeyAttr {
                name: name.to_owned(),
                ty: KeyType::S,
            };
            let schema = Schema {
                name: def.name.clone(),
                hash: attr(&def.hash_key),
                range: def.range_key.as_deref().map(attr),
                billing: Billing::PayPerRequest,
                created: now_epoch_seconds(),
                id: shared.table_id(),
            };
            shared
                .store
                .create(schema)
                .map_err(|e| SimError::Config(e.message))?;
        }
        Ok(shared)
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_limits(&self, limits: Limits) -> Result<(), SimError> {
        limits.validate()?;
        *self.limits.write().unwrap_or_else(PoisonError::into_inner) = limits;
        Ok(())
    }

    /// Whether the `Authorization` header carries the configured access key id.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        match &self.access_key {
            None => true,
            Some(AccessKey(key)) => {
                authorization.is_some_and(|h| h.contains(&format!("Credential={key}/")))
            }
        }
    }

    pub fn table_id(&self) -> String {
        let n = self
            .next_table_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:08x}-0000-4000-8000-{n:012x}", self.seed as u32)
    }

    /// Counters plus outage state and per-table item counts.
    pub fn snapshot(&self) -> SimStats {
        let mut stats = self.stats.snapshot(self.started);
        stats.outage_active = self.faults.outage_active();
        stats.item_counts = self
            .store
            .tables()
            .iter()
            .map(|t| (t.name().to_owned(), t.totals().0))
            .collect();
        stats
    }
}

pub fn now_epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The required access key id, with a `Debug` that does not show it.
struct AccessKey(String);

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}
