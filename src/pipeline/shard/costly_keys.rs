//! Costly keys: keys whose writes cost many write units (a topic whose `MsgId` set holds
//! thousands of ids: DynamoDB charges an update for the whole item), each with the cost of its
//! last write. Such a key waits `pipeline.cost_window` per unit before its next write, so more of
//! its changes merge into one write, and it goes by UpdateItem, whose consumed capacity is its
//! own (a BatchExecuteStatement's comes per table; a key it suggests may be costly is measured
//! by UpdateItem once).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::pipeline::flush::Cost;
use crate::storage::item::Key;

/// A write of at least this many units makes its key costly (an item over 3 KB).
pub(super) const COSTLY_UNITS: u32 = 4;
/// At most this many costly keys per shard are remembered …
const COSTLY_KEYS_MAX: usize = 10_000;
/// … and one not written for this long is forgotten when room is needed.
const COSTLY_KEY_MEMORY: Duration = Duration::from_secs(300);

/// One shard's costly keys (owned by the shard task: no locks, nothing blocks). Bounded: past
/// [`COSTLY_KEYS_MAX`] idle keys are forgotten, and when none is idle a new one is not
/// remembered (its writes then go as any other key's).
#[derive(Debug)]
pub(super) struct CostlyKeys {
    /// Each key's last known cost (exact, or a bound to be measured), and when it was written.
    keys: HashMap<Key, (Cost, Instant)>,
    /// `pipeline.cost_window`: the wait per write unit (0: no waits; keys are still measured).
    per_unit: Duration,
    /// `pipeline.cost_max_window`.
    max: Duration,
}

impl CostlyKeys {
    pub fn new(per_unit: Duration, max: Duration) -> Self {
        CostlyKeys {
            keys: HashMap::new(),
            per_unit,
            max,
        }
    }

    /// After a write of `key` that cost `cost` (`None`: not known, nothing changes): until when
    /// its next write waits, if it is costly.
    pub fn after_write(&mut self, key: &Key, cost: Option<Cost>, now: Instant) -> Option<Instant> {
        let cost = cost?;
        if cost.units < COSTLY_UNITS {
            self.keys.remove(key);
            return None;
        }
        if self.keys.len() >= COSTLY_KEYS_MAX && !self.keys.contains_key(key) {
            self.keys
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < COSTLY_KEY_MEMORY);
            if self.keys.len() >= COSTLY_KEYS_MAX {
                return None;
            }
        }
        self.keys.insert(key.clone(), (cost, now));
        let window = (self.per_unit * cost.units).min(self.max);
        (cost.exact && !window.is_zero()).then(|| now + window)
    }

    /// Whether `key`'s next write should go so that DynamoDB reports its own cost.
    pub fn measure(&self, key: &Key) -> bool {
        !self.keys.is_empty() && self.keys.contains_key(key)
    }

    /// Costly keys remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::Table;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn exact(units: u32) -> Option<Cost> {
        Some(Cost { units, exact: true })
    }

    #[test]
    fn a_costly_write_holds_its_key_for_its_units_and_a_cheap_one_forgets_it() {
        let mut costly = CostlyKeys::new(MS(10), MS(300));
        let (k, t) = (Key::new(Table::TopicMsgMap, "t"), Instant::now());
        assert_eq!(costly.after_write(&k, None, t), None, "cost unknown");
        assert_eq!(costly.after_write(&k, exact(3), t), None, "below 4 units");
        assert!(!costly.measure(&k));
        assert_eq!(costly.after_write(&k, exact(4), t), Some(t + MS(40)));
        assert!(costly.measure(&k), "measured by UpdateItem from now on");
        assert_eq!(
            costly.after_write(&k, exact(47), t),
            Some(t + MS(300)),
            "capped"
        );
        assert_eq!(costly.after_write(&k, None, t), None, "unknown: no change");
        assert!(costly.measure(&k));
        assert_eq!(costly.after_write(&k, exact(1), t), None);
        assert!(!costly.measure(&k), "cheap again: forgotten");
        assert_eq!(costly.len(), 0);
    }

    #[test]
    fn a_bound_from_a_batch_only_asks_for_a_measurement() {
        let mut costly = CostlyKeys::new(MS(10), MS(300));
        let (k, t) = (Key::new(Table::TopicMsgMap, "t"), Instant::now());
        let bound = Some(Cost {
            units: 30,
            exact: false,
        });
        assert_eq!(costly.after_write(&k, bound, t), None, "no hold on a bound");
        assert!(costly.measure(&k));
        assert_eq!(costly.after_write(&k, exact(2), t), None);
        assert!(!costly.measure(&k), "measured cheap");
        let mut off = CostlyKeys::new(Duration::ZERO, MS(300));
        assert_eq!(off.after_write(&k, exact(40), t), None, "windows off");
        assert!(off.measure(&k), "still measured");
    }

    #[test]
    fn past_the_bound_idle_keys_are_forgotten() {
        let mut costly = CostlyKeys::new(MS(10), MS(300));
        let t = Instant::now();
        for i in 0..COSTLY_KEYS_MAX {
            costly.after_write(&Key::new(Table::TopicMsgMap, format!("k{i}")), exact(5), t);
        }
        let new = Key::new(Table::TopicMsgMap, "new");
        assert_eq!(costly.after_write(&new, exact(5), t + MS(1)), None, "full");
        assert!(!costly.measure(&new));
        let later = t + COSTLY_KEY_MEMORY;
        assert_eq!(
            costly.after_write(&new, exact(5), later),
            Some(later + MS(50))
        );
        assert_eq!(costly.len(), 1);
    }
}
