//! Repeated publishes: the message ids published and acked recently, so that a sender that
//! resends (an HTTP client retrying a partly accepted request, one publish through two adapters)
//! cannot bring back an acked message (see [`crate::pipeline::ingest`]'s module docs).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recently seen message ids, published and acked, bounded in count and age.
///
/// Striped by id hash (16 mutexes, each held for a few hash-set operations per publish or ack)
/// so that adapter threads rarely meet. Ids are kept as 64-bit hashes: a false match needs two
/// of ~10^5 ids to collide in 64 bits.
#[derive(Debug)]
pub(crate) struct Dedup {
    window: Duration,
    stripes: Vec<Mutex<DedupStripe>>,
}

#[derive(Debug)]
struct DedupStripe {
    published: RecentIds,
    acked: RecentIds,
}

/// A set of ids that forgets the oldest past `cap` entries or `window` of age.
#[derive(Debug)]
struct RecentIds {
    set: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<(u64, Instant)>,
    cap: usize,
}

impl RecentIds {
    fn new(cap: usize) -> Self {
        RecentIds {
            set: Default::default(),
            order: Default::default(),
            cap: cap.max(1),
        }
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(id, at)) = self.order.front() {
            if self.order.len() <= self.cap && now.saturating_duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            self.set.remove(&id);
        }
    }

    /// Inserts `id`; returns whether it was already there.
    fn insert(&mut self, id: u64, now: Instant) -> bool {
        if !self.set.insert(id) {
            return true;
        }
        self.order.push_back((id, now));
        false
    }
}

/// What [`Dedup::publish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A message id not seen before.
    New,
    /// Published before and not acked (within the window): store it as maybe applied.
    Published,
    /// Acked within the window: not stored again.
    Acked,
}

const DEDUP_STRIPES: usize = 16;

impl Dedup {
    pub(crate) fn new(window: Duration, max_ids: usize) -> Self {
        Dedup {
            window,
            stripes: (0..DEDUP_STRIPES)
                .map(|_| {
                    Mutex::new(DedupStripe {
                        published: RecentIds::new(max_ids / DEDUP_STRIPES),
                        acked: RecentIds::new(max_ids / DEDUP_STRIPES),
                    })
                })
                .collect(),
        }
    }

    fn hash(id: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    fn stripe(&self, id: u64) -> Option<std::sync::MutexGuard<'_, DedupStripe>> {
        self.stripes[(id % DEDUP_STRIPES as u64) as usize]
            .lock()
            .ok()
    }

    /// A publish of message `id`: records it as published and says whether it was seen before.
    pub(crate) fn publish(&self, id: &str) -> Seen {
        let (h, now) = (Self::hash(id), Instant::now());
        let Some(mut g) = self.stripe(h) else {
            return Seen::Published;
        };
        g.acked.expire(now, self.window);
        g.published.expire(now, self.window);
        if g.acked.set.contains(&h) {
            return Seen::Acked;
        }
        if g.published.insert(h, now) {
            Seen::Published
        } else {
            Seen::New
        }
    }

    /// An accepted ack of message `id`.
    pub(crate) fn acked(&self, id: &str) {
        let (h, now) = (Self::hash(id), Instant::now());
        if let Some(mut g) = self.stripe(h) {
            g.acked.expire(now, self.window);
            g.acked.insert(h, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeated message ids: a publish after its ack is recognised as acked, a second publish
    /// before it as already published; ids are forgotten past the window or the count.
    #[test]
    fn dedup_remembers_published_and_acked_ids_within_its_bounds() {
        let d = Dedup::new(Duration::from_secs(600), 32);
        assert_eq!(d.publish("a"), Seen::New);
        assert_eq!(d.publish("a"), Seen::Published);
        d.acked("a");
        assert_eq!(d.publish("a"), Seen::Acked);
        assert_eq!(d.publish("b"), Seen::New);
        // 16 stripes of 2 ids each: 100 more ids push the oldest out.
        for i in 0..100 {
            d.publish(&format!("x{i}"));
            d.acked(&format!("x{i}"));
        }
        assert_eq!(d.publish("b"), Seen::New, "forgotten past the count");
        let short = Dedup::new(Duration::ZERO, 32);
        short.acked("c");
        assert_eq!(short.publish("c"), Seen::New, "forgotten past the window");
    }
}
