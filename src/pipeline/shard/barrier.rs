//! Spool barriers: a shard acknowledges barrier `n` to the spool once no write it holds, pending
//! or in flight, carries an op numbered `n` or lower (every op before the barrier is settled).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How often a shard with barriers waiting checks them (a check walks every pending write).
pub(super) const BARRIER_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Tells the spool that this shard passed a barrier (`Spool::barrier_passed` for its index).
pub(crate) type BarrierAck = Box<dyn Fn(u64) + Send + Sync>;

/// The barriers one shard has received and not yet passed (owned by the shard task; nothing
/// blocks, nothing is dropped: a barrier waits as long as an op before it is unsettled, and after
/// the shutdown deadline none is passed, so the spool keeps their segments for the next start).
pub(super) struct Barriers {
    /// Acknowledges a passed barrier (and, implicitly, every earlier one).
    ack: BarrierAck,
    /// Barriers received and not yet passed, oldest first.
    waiting: VecDeque<u64>,
    /// When the barriers were last checked (checks are rate-limited, see
    /// [`BARRIER_CHECK_INTERVAL`]).
    checked: Instant,
}

impl std::fmt::Debug for Barriers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barriers")
            .field("waiting", &self.waiting)
            .field("checked", &self.checked)
            .finish_non_exhaustive()
    }
}

impl Barriers {
    pub fn new(ack: BarrierAck) -> Self {
        Barriers {
            ack,
            waiting: VecDeque::new(),
            checked: Instant::now(),
        }
    }

    pub fn push(&mut self, barrier: u64) {
        self.waiting.push_back(barrier);
    }

    /// Whether a check is worth making at `now`: barriers wait, and the last check is at least
    /// [`BARRIER_CHECK_INTERVAL`] old (or `force`).
    pub fn due(&self, now: Instant, force: bool) -> bool {
        !self.waiting.is_empty() && (force || now >= self.checked + BARRIER_CHECK_INTERVAL)
    }

    /// When the next check is due, while barriers wait.
    pub fn next_check(&self) -> Option<Instant> {
        (!self.waiting.is_empty()).then(|| self.checked + BARRIER_CHECK_INTERVAL)
    }

    /// Passes every barrier below `low`, the lowest op number in any write the shard holds
    /// (`None`: it holds none), and acknowledges the last one passed.
    pub fn pass(&mut self, low: Option<u64>, now: Instant) {
        self.checked = now;
        let mut passed = None;
        while let Some(&b) = self.waiting.front() {
            if low.is_some_and(|low| low <= b) {
                break;
            }
            passed = Some(b);
            self.waiting.pop_front();
        }
        if let Some(b) = passed {
            (self.ack)(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_barrier_passes_once_nothing_at_or_below_it_is_held_and_only_the_last_is_acked() {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&acked);
        let mut b = Barriers::new(Box::new(move |n| sink.lock().unwrap().push(n)));
        let t = Instant::now();
        assert!(!b.due(t, true), "nothing waits");
        b.push(5);
        b.push(9);
        assert!(b.due(t, true));
        b.pass(Some(5), t);
        assert!(acked.lock().unwrap().is_empty(), "op 5 is still held");
        assert!(!b.due(t, false), "just checked");
        assert_eq!(b.next_check(), Some(t + BARRIER_CHECK_INTERVAL));
        b.pass(Some(10), t + BARRIER_CHECK_INTERVAL);
        assert_eq!(*acked.lock().unwrap(), [9]);
        assert_eq!(b.next_check(), None);
        b.push(12);
        b.pass(None, t);
        assert_eq!(*acked.lock().unwrap(), [9, 12], "nothing held");
    }
}
