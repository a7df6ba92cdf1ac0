//! The pending-write table of one shard: the per-key pending writes (folded by the algebra), in
//! arrival order, with byte accounting, the age of the oldest, and the keys in flight or held.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::algebra::{Merged, merge};
use crate::storage::item::{Key, Op, Write};

/// What [`Coalescer::push`] did with an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The key had nothing pending: a new pending write.
    New,
    /// Folded into the key's pending write.
    Merged,
    /// Folded into the pending write and both vanished: no write is needed.
    Cancelled,
    /// Could not be folded; queued behind the key's pending write.
    Queued,
}

/// The ingest sequence numbers of the ops folded into one write, lowest and highest (see
/// [`crate::lookup::ReadState`], which keeps accepted ops visible to lookups until their write
/// settles). `0..=0` when nobody numbers ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seqs {
    pub first: u64,
    pub last: u64,
}

impl Seqs {
    pub fn one(seq: u64) -> Self {
        Seqs {
            first: seq,
            last: seq,
        }
    }

    fn union(self, other: Seqs) -> Self {
        Seqs {
            first: self.first.min(other.first),
            last: self.last.max(other.last),
        }
    }
}

/// Folds `write` (the ops `seqs`) onto the last of a key's pending `writes` (see [`merge`]);
/// returns how, and the ops that cancelled out, if any.
fn fold(
    key: &Key,
    writes: &mut VecDeque<(Write, Seqs)>,
    write: Write,
    seqs: Seqs,
) -> (PushOutcome, Option<Seqs>) {
    let Some((last, last_seqs)) = writes.pop_back() else {
        writes.push_back((write, seqs));
        return (PushOutcome::New, None);
    };
    match merge(key, last, write) {
        Merged::One(w) => {
            writes.push_back((w, last_seqs.union(seqs)));
            (PushOutcome::Merged, None)
        }
        Merged::Two(a, b) => {
            writes.push_back((a, last_seqs));
            writes.push_back((b, seqs));
            (PushOutcome::Queued, None)
        }
        Merged::Cancelled => (PushOutcome::Cancelled, Some(last_seqs.union(seqs))),
    }
}

/// A write taken out for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub key: Key,
    pub write: Write,
    /// When the oldest op folded into this write was accepted (for ingest-to-durable latency).
    pub since: Instant,
    /// The ops folded into it.
    pub seqs: Seqs,
    /// Send it so that DynamoDB reports its own cost (UpdateItem, not BatchExecuteStatement):
    /// set by the shard for keys known or suspected to be costly.
    pub measure: bool,
}

/// The pending writes of one key.
#[derive(Debug)]
struct Entry {
    /// Writes to apply in order, each with the ops folded into it; almost always one (see the
    /// module docs for when two).
    writes: VecDeque<(Write, Seqs)>,
    /// When the oldest op in this entry was accepted.
    since: Instant,
    /// Position marker in [`Coalescer::order`]; an order slot with another value is stale.
    seq: u64,
    /// Key plus write sizes, for the byte limits.
    bytes: usize,
}

impl Entry {
    fn measure(key: &Key, writes: &VecDeque<(Write, Seqs)>) -> usize {
        key.size() + writes.iter().map(|(w, _)| w.size()).sum::<usize>()
    }
}

/// Where a new entry goes in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Last: the usual.
    Last,
    /// First: it holds the oldest write of all (a requeued one).
    First,
    /// Out of line until its hold ends (a lingering key; [`Coalescer::release_due`] puts it
    /// last).
    Deferred,
}

/// The pending-write table of one shard: at most one pending write per key (see the module docs),
/// kept in arrival order, and the set of keys that have a write in flight.
///
/// Invariants: a key in `in_flight` is never handed out again until [`Coalescer::complete`], a key
/// in `held` not before [`Coalescer::release_due`] passes its instant; `ready` counts entries whose
/// key is neither in flight nor held; `bytes` sums every entry's size.
///
/// Owned by one shard task: no locks, nothing blocks, nothing is dropped (a write leaves only
/// through [`Coalescer::take`], a cancellation reported by [`Coalescer::push_numbered`], or
/// [`Coalescer::drain_pending`] at the shutdown deadline). Instants are the caller's (`std`,
/// as ingest stamps them).
#[derive(Debug, Default)]
pub struct Coalescer {
    /// Pending writes by key.
    entries: HashMap<Key, Entry>,
    /// Keys in the order their entries were created, oldest first; slots whose seq no longer
    /// matches the entry are stale and skipped.
    order: VecDeque<(Key, u64)>,
    /// Keys with a write handed out and not yet completed.
    in_flight: HashSet<Key>,
    /// Hot keys whose next write waits until the given instant (see [`Coalescer::hold`]).
    held: HashMap<Key, Instant>,
    /// The holds by when they end, earliest first, so releasing them costs nothing per pending
    /// key; an entry whose instant no longer matches `held` (replaced, or released) is stale.
    ends: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Lingering keys whose entry is not in `order` yet: it joins the line when the hold ends, so
    /// thousands of lingering writes are never walked past by `take` and `oldest`.
    deferred: HashSet<Key>,
    /// The next slot number in `order` (so a recreated entry makes its old slot stale).
    next_seq: u64,
    /// Entries whose key is neither in flight nor held: what a flush could take now.
    ready: usize,
    /// Bytes of all pending writes, for the shard's byte limits and the bytes trigger.
    bytes: usize,
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The lowest op number folded into any pending write (not counting writes handed out).
    pub fn min_seq(&self) -> Option<u64> {
        self.entries
            .values()
            .flat_map(|e| e.writes.iter().map(|(_, seqs)| seqs.first))
            .min()
    }

    /// Folds `op`, accepted at `accepted`, into the pending writes.
    pub fn push(&mut self, op: Op, accepted: Instant) -> PushOutcome {
        self.push_numbered(op, accepted, 0).0
    }

    /// Like [`Coalescer::push`] for an op with ingest sequence number `seq`; when the op cancels
    /// the key's pending write outright, also returns the ops that vanished with it (they will
    /// never be written, so nobody will report them settled).
    pub fn push_numbered(
        &mut self,
        op: Op,
        accepted: Instant,
        seq: u64,
    ) -> (PushOutcome, Option<Seqs>) {
        let Op { key, write } = op;
        let Some(entry) = self.entries.get_mut(&key) else {
            self.insert_entry(
                key,
                VecDeque::from([(write, Seqs::one(seq))]),
                accepted,
                Place::Last,
            );
            return (PushOutcome::New, None);
        };
        let (outcome, vanished) = fold(&key, &mut entry.writes, write, Seqs::one(seq));
        self.bytes -= entry.bytes;
        if entry.writes.is_empty() {
            self.entries.remove(&key);
            if self.available(&key) {
                self.ready -= 1;
            }
        } else {
            entry.bytes = Entry::measure(&key, &entry.writes);
            self.bytes += entry.bytes;
        }
        // A cancelled write whose entry still has an earlier write is still a merge.
        if outcome == PushOutcome::Cancelled && self.entries.contains_key(&key) {
            (PushOutcome::Merged, vanished)
        } else {
            (outcome, vanished)
        }
    }

    /// Adds a new entry for `key` (which has none) at `place` in line.
    fn insert_entry(
        &mut self,
        key: Key,
        writes: VecDeque<(Write, Seqs)>,
        since: Instant,
        place: Place,
    ) {
        let slot = self.next_seq;
        self.next_seq += 1;
        let bytes = Entry::measure(&key, &writes);
        self.bytes += bytes;
        if self.available(&key) {
            self.ready += 1;
        }
        match place {
            Place::Last => self.order.push_back((key.clone(), slot)),
            Place::First => self.order.push_front((key.clone(), slot)),
            Place::Deferred => {
                self.deferred.insert(key.clone());
            }
        }
        if place != Place::Deferred {
            // In line from now on, whatever a linger said.
            self.deferred.remove(&key);
        }
        self.entries.insert(
            key,
            Entry {
                writes,
                since,
                seq: slot,
                bytes,
            },
        );
    }

    /// Takes the oldest ready writes, one per key, until `max_requests` DynamoDB requests or
    /// `max_bytes` are reached (at least one write when any is ready). Their keys are in flight
    /// until [`Coalescer::complete`].
    pub fn take(&mut self, max_requests: usize, max_bytes: usize) -> Vec<Taken> {
        let mut taken = Vec::new();
        let mut skipped = Vec::new();
        let (mut requests, mut bytes) = (0usize, 0usize);
        while self.ready > 0 {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.seq != seq {
                continue;
            }
            if self.in_flight.contains(&key) || self.held.contains_key(&key) {
                skipped.push((key, seq));
                continue;
            }
            let (head, _) = entry.writes.front().expect("entries are never empty");
            let (req, size) = (head.request_count(), key.size() + head.size());
            if !taken.is_empty() && (requests + req > max_requests || bytes + size > max_bytes) {
                skipped.push((key, seq));
                break;
            }
            requests += req;
            bytes += size;
            let (write, seqs) = entry.writes.pop_front().expect("entries are never empty");
            let since = entry.since;
            self.bytes -= entry.bytes;
            self.ready -= 1;
            if entry.writes.is_empty() {
                self.entries.remove(&key);
            } else {
                entry.bytes = Entry::measure(&key, &entry.writes);
                self.bytes += entry.bytes;
                skipped.push((key.clone(), seq));
            }
            self.in_flight.insert(key.clone());
            taken.push(Taken {
                key,
                write,
                since,
                seqs,
                measure: false,
            });
        }
        for slot in skipped.into_iter().rev() {
            self.order.push_front(slot);
        }
        taken
    }

    /// Marks the in-flight write of `key` as finished (written or given up), so the key's next
    /// pending write may go.
    pub fn complete(&mut self, key: &Key) {
        if self.in_flight.remove(key) && self.available(key) && self.entries.contains_key(key) {
            self.ready += 1;
        }
    }

    /// Puts back a write that was handed out and not applied (DynamoDB throttled its key), ahead
    /// of the key's pending writes, which are folded into it in order. Call after
    /// [`Coalescer::complete`]. Returns the ops that cancelled out on the way (nobody will report
    /// them settled), one range per cancellation.
    pub fn requeue(&mut self, key: Key, write: Write, seqs: Seqs, since: Instant) -> Vec<Seqs> {
        let Some(entry) = self.entries.remove(&key) else {
            self.insert_entry(key, VecDeque::from([(write, seqs)]), since, Place::First);
            return Vec::new();
        };
        self.bytes -= entry.bytes;
        let mut writes: VecDeque<(Write, Seqs)> = VecDeque::from([(write, seqs)]);
        let mut vanished = Vec::new();
        for (w, s) in entry.writes {
            if let (_, Some(gone)) = fold(&key, &mut writes, w, s) {
                vanished.push(gone);
            }
        }
        if writes.is_empty() {
            if self.available(&key) {
                self.ready -= 1;
            }
            return vanished;
        }
        let bytes = Entry::measure(&key, &writes);
        self.bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                writes,
                since: since.min(entry.since),
                seq: entry.seq,
                bytes,
            },
        );
        vanished
    }

    /// Neither in flight nor held.
    fn available(&self, key: &Key) -> bool {
        !self.in_flight.contains(key) && !self.held.contains_key(key)
    }

    /// Keeps `key`'s next write back until `until` (a hot key's window: its ops keep merging
    /// meanwhile). Other keys are not affected. A later hold replaces an earlier one.
    pub fn hold(&mut self, key: &Key, until: Instant) {
        let was_available = self.available(key);
        self.held.insert(key.clone(), until);
        self.ends.push(Reverse((until, key.clone())));
        if was_available && self.entries.contains_key(key) {
            self.ready -= 1;
        }
    }

    /// Like [`Coalescer::hold`], but never shortens a hold already in place.
    pub fn hold_at_least(&mut self, key: &Key, until: Instant) {
        if self.held.get(key).is_none_or(|held| *held < until) {
            self.hold(key, until);
        }
    }

    /// Ends the holds due at `now`; returns when the next one ends.
    pub fn release_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((until, _))) = self.ends.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((until, key))) = self.ends.pop() else {
                break;
            };
            if self.held.get(&key) != Some(&until) {
                continue;
            }
            self.held.remove(&key);
            let deferred = self.deferred.remove(&key);
            if let Some(entry) = self.entries.get(&key) {
                if deferred {
                    self.order.push_back((key.clone(), entry.seq));
                }
                if !self.in_flight.contains(&key) {
                    self.ready += 1;
                }
            }
        }
        // Drop stale ends at the top, so the next wake-up is a real one.
        while let Some(Reverse((until, key))) = self.ends.peek() {
            if self.held.get(key) == Some(until) {
                return Some(*until);
            }
            self.ends.pop();
        }
        None
    }

    /// Like [`Coalescer::push_numbered`], but a write that creates the key's entry waits until
    /// `until` first (a lingering table): held, and out of line until then.
    pub fn push_lingering(
        &mut self,
        op: Op,
        accepted: Instant,
        seq: u64,
        until: Instant,
    ) -> (PushOutcome, Option<Seqs>) {
        if self.entries.contains_key(&op.key) {
            return self.push_numbered(op, accepted, seq);
        }
        let Op { key, write } = op;
        // Held already for another reason (a hot key): it keeps its place in line as before.
        let place = if self.held.contains_key(&key) {
            Place::Last
        } else {
            Place::Deferred
        };
        self.hold_at_least(&key, until);
        let writes = VecDeque::from([(write, Seqs::one(seq))]);
        self.insert_entry(key, writes, accepted, place);
        (PushOutcome::New, None)
    }

    /// Takes every pending write out, oldest key first, each key's writes in order (the shutdown
    /// deadline: they will not be sent). Keys in flight stay in flight.
    pub fn drain_pending(&mut self) -> Vec<(Key, Write, Seqs)> {
        let mut out = Vec::new();
        for (key, slot) in std::mem::take(&mut self.order) {
            if self.entries.get(&key).is_some_and(|e| e.seq == slot)
                && let Some(entry) = self.entries.remove(&key)
            {
                out.extend(entry.writes.into_iter().map(|(w, s)| (key.clone(), w, s)));
            }
        }
        // Every entry has its live slot in `order`, so none is left; if one were, it still goes
        // out rather than vanishing.
        for (key, entry) in self.entries.drain() {
            out.extend(entry.writes.into_iter().map(|(w, s)| (key.clone(), w, s)));
        }
        self.held.clear();
        self.ends.clear();
        self.deferred.clear();
        self.ready = 0;
        self.bytes = 0;
        out
    }

    /// Keys held back as hot.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the oldest pending write that could be sent now was accepted. Writes of held keys and
    /// of keys with a write in flight do not count: a hot key's window, or one key in a long
    /// retry, must not make every other write flush early (and alone).
    pub fn oldest(&mut self) -> Option<Instant> {
        while let Some((key, seq)) = self.order.front() {
            match self.entries.get(key) {
                Some(e) if e.seq == *seq => break,
                _ => {
                    self.order.pop_front();
                }
            }
        }
        self.order
            .iter()
            .filter(|(key, _)| self.available(key))
            .find_map(|(key, seq)| self.entries.get(key).filter(|e| e.seq == *seq))
            .map(|e| e.since)
    }

    /// Keys with pending writes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pending writes whose key has nothing in flight.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Bytes of all pending writes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keys with a write in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
