//! Hot keys: the keys DynamoDB throttled itself, each with the window its next write waits, which
//! doubles while the key stays throttled and halves per clean write.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::storage::item::Key;

/// At most this many hot keys per shard are remembered …
const HOT_KEYS_MAX: usize = 10_000;
/// … and a key not throttled or written for this long is forgotten when room is needed.
const HOT_KEY_MEMORY: Duration = Duration::from_secs(60);

/// One shard's hot keys (owned by the shard task: no locks, nothing blocks). Bounded: past
/// [`HOT_KEYS_MAX`] keys idle ones are forgotten, and when none is idle a new hot key is not
/// remembered (its next write is then not held back).
#[derive(Debug)]
pub(super) struct HotKeys {
    /// Each hot key's current window, and when it was last throttled or written.
    windows: HashMap<Key, (Duration, Instant)>,
    /// `pipeline.hot_key_window`: the first window, and the smallest (0: hot keys off).
    base: Duration,
    /// `pipeline.hot_key_max_window`.
    max: Duration,
}

impl HotKeys {
    pub fn new(base: Duration, max: Duration) -> Self {
        HotKeys {
            windows: HashMap::new(),
            base,
            max,
        }
    }

    /// After one more write of `key` (`throttled`: DynamoDB throttled the key itself): until when
    /// its next write waits, if the key is (still) hot. The window doubles when it was throttled
    /// again and halves when not; below `base` the key is forgotten.
    pub fn after_write(&mut self, key: &Key, throttled: bool, now: Instant) -> Option<Instant> {
        if self.base.is_zero() {
            return None;
        }
        let window = match (self.windows.get(key), throttled) {
            (None, false) => return None,
            (None, true) => self.base,
            (Some((w, _)), true) => (*w * 2).min(self.max),
            (Some((w, _)), false) => *w / 2,
        };
        if window < self.base {
            self.windows.remove(key);
            return None;
        }
        if self.windows.len() >= HOT_KEYS_MAX && !self.windows.contains_key(key) {
            // Forget keys not seen for a minute rather than grow without bound.
            self.windows
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < HOT_KEY_MEMORY);
            if self.windows.len() >= HOT_KEYS_MAX {
                return None;
            }
        }
        self.windows.insert(key.clone(), (window, now));
        Some(now + window)
    }

    /// Whether `key` is hot (its writes go by UpdateItem, whose throttling is its own).
    pub fn contains(&self, key: &Key) -> bool {
        !self.windows.is_empty() && self.windows.contains_key(key)
    }

    /// Hot keys remembered.
    pub fn len(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::Table;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_window_doubles_while_throttled_up_to_the_max_and_halves_when_clean() {
        let mut hot = HotKeys::new(MS(100), MS(300));
        let (k, t) = (Key::new(Table::Retain, "k"), Instant::now());
        assert_eq!(hot.after_write(&k, false, t), None, "never throttled");
        assert_eq!(hot.after_write(&k, true, t), Some(t + MS(100)));
        assert_eq!(hot.after_write(&k, true, t), Some(t + MS(200)));
        assert_eq!(hot.after_write(&k, true, t), Some(t + MS(300)), "capped");
        assert_eq!(hot.after_write(&k, false, t), Some(t + MS(150)));
        assert_eq!(hot.len(), 1);
        assert_eq!(hot.after_write(&k, false, t), None, "75 ms < base: cool");
        assert_eq!(hot.len(), 0);
        let mut off = HotKeys::new(Duration::ZERO, MS(300));
        assert_eq!(off.after_write(&k, true, t), None);
    }

    #[test]
    fn past_the_bound_idle_keys_are_forgotten_and_busy_ones_kept() {
        let mut hot = HotKeys::new(MS(100), MS(300));
        let t = Instant::now();
        for i in 0..HOT_KEYS_MAX {
            hot.after_write(&Key::new(Table::Retain, format!("k{i}")), true, t);
        }
        let new = Key::new(Table::Retain, "new");
        assert_eq!(
            hot.after_write(&new, true, t + MS(1)),
            None,
            "full, none idle"
        );
        let later = t + HOT_KEY_MEMORY;
        assert_eq!(hot.after_write(&new, true, later), Some(later + MS(100)));
        assert_eq!(hot.len(), 1, "the idle ones were forgotten");
    }
}
