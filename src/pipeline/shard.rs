//! Shards: the router that spreads accepted writes over shards by key hash, and the shard task
//! that coalesces them and starts flushes.
//!
//! A key always hashes to the same shard, so one task owns all of a key's pending and in-flight
//! state and per-key order needs no locks. Shards hold keys of every table, so one flush can fill
//! a BatchWriteItem across tables.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::error;

use crate::config::PipelineConfig;
use crate::lookup::ReadState;
use crate::pipeline::coalesce::{Coalescer, PushOutcome, Seqs};
use crate::pipeline::concurrency::Concurrency;
use crate::pipeline::flush::{Completed, Flusher, KeyEnd};
use crate::pipeline::ingest::{ByteBudget, IngestMsg};
use crate::storage::item::{Key, Op, Table};
use crate::telemetry::stats::{FlushTrigger, Stats};

/// What a shard receives from the router.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// The writes of one event that hash to this shard, in event order, with their ingest
    /// sequence numbers, when the event was accepted, and the bytes reserved for them in the
    /// shard's inbox budget (released when the shard takes them).
    Ops(Vec<(Op, u64)>, Instant, usize),
    /// Every op numbered up to this that belongs to this shard is in its inbox ahead of the
    /// barrier; acknowledge it to the spool once they are all settled.
    Barrier(u64),
    /// No more writes will come: flush everything and exit.
    Shutdown,
}

/// At most this many hot keys per shard are remembered …
const HOT_KEYS_MAX: usize = 10_000;
/// … and a key not throttled or written for this long is forgotten when room is needed.
const HOT_KEY_MEMORY: Duration = Duration::from_secs(60);

/// How often a shard with barriers waiting checks them.
const BARRIER_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The shard a key belongs to. `DefaultHasher::new()` uses fixed keys, so this is stable.
pub fn shard_of(key: &Key, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// The router: runs on its own OS thread, blocking on the crossbeam ingest queue and on the
/// shards' bounded inboxes (which is how a slow shard pushes back on ingest). Ends after
/// forwarding the shutdown marker to every shard.
pub(crate) fn route(
    rx: Receiver<IngestMsg>,
    shards: Vec<(mpsc::Sender<ShardMsg>, Arc<ByteBudget>)>,
    budget: Arc<ByteBudget>,
) {
    let n = shards.len();
    let mut per_shard: Vec<Vec<(Op, u64)>> = (0..n).map(|_| Vec::new()).collect();
    for msg in rx {
        match msg {
            IngestMsg::Event(env) => {
                budget.release(env.bytes);
                let numbered = env.first_seq != 0;
                for (i, op) in env.ops.into_iter().enumerate() {
                    let seq = if numbered {
                        env.first_seq + i as u64
                    } else {
                        0
                    };
                    per_shard[shard_of(&op.key, n)].push((op, seq));
                }
                for (i, ops) in per_shard.iter_mut().enumerate() {
                    if ops.is_empty() {
                        continue;
                    }
                    let batch = std::mem::take(ops);
                    let (shard, inbox_budget) = &shards[i];
                    // Bounded in bytes as well as in messages: waits while the shard's inbox
                    // holds its byte limit (one message larger than the limit goes alone).
                    let bytes =
                        inbox_budget.reserve_wait(batch.iter().map(|(op, _)| op.size()).sum());
                    if shard
                        .blocking_send(ShardMsg::Ops(batch, env.accepted, bytes))
                        .is_err()
                    {
                        // Only after a shard task died (a bug): say so loudly.
                        error!(shard = i, "shard is gone; writes lost");
                    }
                }
            }
            IngestMsg::Barrier(b) => {
                for (shard, _) in &shards {
                    let _ = shard.blocking_send(ShardMsg::Barrier(b));
                }
            }
            IngestMsg::Shutdown => break,
        }
    }
    for (shard, _) in &shards {
        let _ = shard.blocking_send(ShardMsg::Shutdown);
    }
}

/// One shard's task: owns a [`Coalescer`], takes writes from its inbox, and starts flushes.
///
/// - Blocks (awaits) on: its inbox, flush completions, the age deadline of its oldest write, and a
///   concurrency permit when it has a flush to start and none is free.
/// - Stops reading its inbox while it holds `max_pending_keys` keys or `max_pending_bytes`
///   bytes, so its bounded inbox fills and the router, then ingest, push back.
/// - Drops nothing itself while running: a write leaves only when its flush reports it durable or
///   dropped. When the shutdown deadline fires it stops: without the spool every write it still
///   holds or receives is dead-lettered (`reason="shutdown"`); with the spool they are left there
///   (no barrier is passed any more, so their segments stay for the next start).
pub(crate) struct Shard {
    inbox: mpsc::Receiver<ShardMsg>,
    /// The inbox's byte limit, shared with the router (which reserves) — released as ops arrive.
    inbox_budget: Arc<ByteBudget>,
    /// `pipeline.shutdown_timeout` running out.
    deadline: Arc<crate::pipeline::flush::retry::Deadline>,
    /// The deadline fired and this shard stopped (see above).
    stopped: bool,
    /// Writes left to the spool at the deadline.
    left: u64,
    coalescer: Coalescer,
    flusher: Arc<Flusher>,
    /// The adaptive limit on flushes in flight across all shards; its semaphore hands out one
    /// permit per flush.
    concurrency: Arc<Concurrency>,
    permits: Arc<Semaphore>,
    /// A permit acquired while waiting, used by the next flush.
    spare: Option<OwnedSemaphorePermit>,
    /// Running flushes, and the keys each took (to release them even if a flush task panics).
    flushes: JoinSet<Vec<Completed>>,
    flush_keys: HashMap<tokio::task::Id, Vec<(Key, Seqs)>>,
    /// Told when a write settles, so lookups stop replaying its ops.
    read: Option<Arc<ReadState>>,
    cfg: PipelineConfig,
    stats: Arc<Stats>,
    draining: bool,
    /// The pending keys, bytes and hot keys last added to the shared gauges.
    published: (i64, i64, i64),
    /// The spool to acknowledge barriers to, and this shard's index there.
    spool: Option<(Arc<crate::spool::Spool>, usize)>,
    /// Barriers received and not yet passed, oldest first.
    barriers: std::collections::VecDeque<u64>,
    /// When the barriers were last checked (a check walks every pending write).
    barriers_checked: Instant,
    /// Hot keys: each one's current window, and when it was last throttled or written.
    hot: HashMap<Key, (Duration, Instant)>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inbox: mpsc::Receiver<ShardMsg>,
        inbox_budget: Arc<ByteBudget>,
        deadline: Arc<crate::pipeline::flush::retry::Deadline>,
        flusher: Arc<Flusher>,
        concurrency: Arc<Concurrency>,
        cfg: PipelineConfig,
        stats: Arc<Stats>,
        read: Option<Arc<ReadState>>,
    ) -> Self {
        Shard {
            read,
            inbox,
            inbox_budget,
            deadline,
            stopped: false,
            left: 0,
            coalescer: Coalescer::new(),
            flusher,
            permits: Arc::clone(concurrency.permits()),
            concurrency,
            spare: None,
            flushes: JoinSet::new(),
            flush_keys: HashMap::new(),
            cfg,
            stats,
            draining: false,
            published: (0, 0, 0),
            spool: None,
            barriers: Default::default(),
            barriers_checked: Instant::now(),
            hot: HashMap::new(),
        }
    }

    /// A hot key's window after one more write: doubled when DynamoDB throttled the key again,
    /// halved when it did not (and the key forgotten below `hot_key_window`). The key's next
    /// write is held back for the window.
    fn cool_or_heat(&mut self, key: &Key, throttled: bool, now: Instant) {
        let (base, max) = (self.cfg.hot_key_window, self.cfg.hot_key_max_window);
        if base.is_zero() {
            return;
        }
        let window = match (self.hot.get(key), throttled) {
            (None, false) => return,
            (None, true) => base,
            (Some((w, _)), true) => (*w * 2).min(max),
            (Some((w, _)), false) => *w / 2,
        };
        if window < base {
            self.hot.remove(key);
            return;
        }
        if self.hot.len() >= HOT_KEYS_MAX && !self.hot.contains_key(key) {
            // Forget keys not seen for a minute rather than grow without bound.
            self.hot
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < HOT_KEY_MEMORY);
            if self.hot.len() >= HOT_KEYS_MAX {
                return;
            }
        }
        self.hot.insert(key.clone(), (window, now));
        self.coalescer.hold(key, now + window);
    }

    /// Acknowledges barriers to `spool` as shard number `index`.
    pub fn with_spool(mut self, spool: Arc<crate::spool::Spool>, index: usize) -> Self {
        self.spool = Some((spool, index));
        self
    }

    /// The lowest op number in any write this shard holds, pending or in flight.
    fn lowest_live_seq(&self) -> Option<u64> {
        let pending = self.coalescer.min_seq();
        let in_flight = self
            .flush_keys
            .values()
            .flat_map(|keys| keys.iter().map(|(_, seqs)| seqs.first))
            .min();
        pending.into_iter().chain(in_flight).min()
    }

    /// Passes every barrier no held write is older than. A check walks every pending write, so
    /// it runs at most every 10 ms unless `force`d (at the end of a drain). Never after the
    /// shutdown deadline: what was left unwritten must stay in the spool.
    fn pass_barriers(&mut self, force: bool) {
        let Some((spool, index)) = &self.spool else {
            return;
        };
        if self.stopped {
            return;
        }
        if self.barriers.is_empty()
            || (!force && self.barriers_checked.elapsed() < BARRIER_CHECK_INTERVAL)
        {
            return;
        }
        self.barriers_checked = Instant::now();
        let low = self.lowest_live_seq();
        let mut passed = None;
        while let Some(&b) = self.barriers.front() {
            if low.is_some_and(|low| low <= b) {
                break;
            }
            passed = Some(b);
            self.barriers.pop_front();
        }
        if let Some(b) = passed {
            spool.barrier_passed(*index, b);
        }
    }

    /// Adds this shard's change in pending keys and bytes to the shared gauges.
    fn publish(&mut self) {
        let now = (
            self.coalescer.len() as i64,
            self.coalescer.bytes() as i64,
            self.hot.len() as i64,
        );
        if now != self.published {
            self.stats.hot_keys.fetch_add(
                now.2 - self.published.2,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.stats.pending_keys.fetch_add(
                now.0 - self.published.0,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.stats.pending_bytes.fetch_add(
                now.1 - self.published.1,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.published = now;
        }
    }

    /// Why to flush now, if at all.
    fn trigger(&mut self, now: Instant) -> Option<FlushTrigger> {
        if self.coalescer.ready() == 0 {
            return None;
        }
        if self.draining {
            return Some(FlushTrigger::Shutdown);
        }
        if self.coalescer.ready() >= self.cfg.max_batch_requests {
            return Some(FlushTrigger::Count);
        }
        if self.coalescer.bytes() >= self.cfg.max_batch_bytes {
            return Some(FlushTrigger::Bytes);
        }
        match self.coalescer.oldest() {
            Some(t) if now >= t + self.cfg.max_batch_age => Some(FlushTrigger::Age),
            _ => None,
        }
    }

    /// Starts flushes while there is a reason and a permit.
    fn dispatch(&mut self) {
        let now = Instant::now();
        while let Some(trigger) = self.trigger(now) {
            let permit = match self.spare.take() {
                Some(p) => p,
                None => match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let writes = self
                .coalescer
                .take(self.cfg.max_batch_requests, self.cfg.max_batch_bytes);
            if writes.is_empty() {
                self.spare = Some(permit);
                return;
            }
            let requests = writes.iter().map(|t| t.write.request_count()).sum();
            let bytes = writes.iter().map(|t| t.key.size() + t.write.size()).sum();
            self.stats.flushed(trigger, requests, bytes);
            let keys = writes.iter().map(|t| (t.key.clone(), t.seqs)).collect();
            let flusher = Arc::clone(&self.flusher);
            let concurrency = Arc::clone(&self.concurrency);
            let handle = self.flushes.spawn(async move {
                let done = flusher.flush(writes).await;
                concurrency.release(permit);
                done
            });
            self.flush_keys.insert(handle.id(), keys);
        }
    }

    fn completed(
        &mut self,
        joined: Result<(tokio::task::Id, Vec<Completed>), tokio::task::JoinError>,
    ) {
        self.stats.flush_done();
        let now = Instant::now();
        match joined {
            Ok((id, done)) => {
                self.flush_keys.remove(&id);
                let mut latencies = Vec::with_capacity(done.len());
                for c in done {
                    self.coalescer.complete(&c.key);
                    // A requeued write is always a hot one (throttled on its own key).
                    self.cool_or_heat(&c.key, c.hot, now);
                    if c.ambiguous && !self.cfg.ambiguous_hold.is_zero() {
                        // An attempt may still land: the key's next write goes after it.
                        self.coalescer
                            .hold_at_least(&c.key, now + self.cfg.ambiguous_hold);
                    }
                    match c.end {
                        KeyEnd::Requeue(write) => {
                            // Back in line, ahead of the key's newer ops, which merge into it
                            // while the key waits its window.
                            self.stats.requeued();
                            let vanished =
                                self.coalescer
                                    .requeue(c.key.clone(), write, c.seqs, c.since);
                            if let Some(read) = &self.read {
                                for seqs in vanished {
                                    read.settled(&c.key, seqs);
                                }
                            }
                        }
                        // Past the shutdown deadline with the spool on: the write stays in the
                        // spool (its barrier is never passed) and is replayed at the next start.
                        KeyEnd::Left => self.left += 1,
                        KeyEnd::Written | KeyEnd::Dropped => {
                            if let Some(read) = &self.read {
                                read.settled(&c.key, c.seqs);
                            }
                            if c.end == KeyEnd::Written {
                                latencies.push(now.saturating_duration_since(c.since));
                            }
                        }
                    }
                }
                self.stats.durable(&latencies);
            }
            Err(e) => {
                let keys = self.flush_keys.remove(&e.id()).unwrap_or_default();
                error!(error = %e, writes = keys.len(), "flush task failed; its writes are lost");
                self.stats.dropped(
                    crate::telemetry::stats::DropReason::RetriesExhausted,
                    keys.len() as u64,
                );
                for (k, seqs) in keys {
                    self.coalescer.complete(&k);
                    if let Some(read) = &self.read {
                        read.settled(&k, seqs);
                    }
                }
            }
        }
    }

    /// The shutdown deadline fired: stop, and give up (without the spool) or leave (with it)
    /// every write still pending here.
    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            tracing::warn!(
                pending = self.coalescer.len(),
                in_flight = self.coalescer.in_flight(),
                "shutdown deadline reached; {}",
                if self.spool.is_some() {
                    "unwritten events stay in the spool for the next start"
                } else {
                    "unwritten writes are dead-lettered"
                }
            );
        }
        let rest: Vec<(Key, crate::storage::item::Write, Seqs)> = self.coalescer.drain_pending();
        self.abandon(rest);
    }

    /// Writes that will not be sent: left to the spool, or dead-lettered and counted.
    fn abandon(&mut self, writes: Vec<(Key, crate::storage::item::Write, Seqs)>) {
        for (key, write, seqs) in writes {
            if self.spool.is_some() {
                self.left += 1;
                continue;
            }
            self.flusher.give_up(
                &key,
                &write,
                crate::telemetry::stats::DropReason::Shutdown,
                "not written when pipeline.shutdown_timeout ran out",
            );
            if let Some(read) = &self.read {
                read.settled(&key, seqs);
            }
        }
    }

    /// Ops received after the deadline: not coalesced, abandoned at once.
    fn abandon_ops(&mut self, ops: Vec<(Op, u64)>) {
        let writes = ops
            .into_iter()
            .map(|(op, seq)| (op.key, op.write, Seqs::one(seq)))
            .collect();
        self.abandon(writes);
    }

    fn push(&mut self, ops: Vec<(Op, u64)>, accepted: Instant) {
        let mut counts: HashMap<Table, (u64, u64)> = HashMap::new();
        for (op, seq) in ops {
            let table = op.key.table;
            let key = self
                .read
                .as_ref()
                .filter(|_| crate::lookup::state::tracked(table))
                .map(|_| op.key.clone());
            let (outcome, vanished) = self.coalescer.push_numbered(op, accepted, seq);
            if let (Some(read), Some(key), Some(seqs)) = (&self.read, key, vanished) {
                read.settled(&key, seqs);
            }
            match outcome {
                PushOutcome::Merged => counts.entry(table).or_default().0 += 1,
                PushOutcome::Cancelled => {
                    let c = counts.entry(table).or_default();
                    c.0 += 1;
                    c.1 += 1;
                }
                PushOutcome::New | PushOutcome::Queued => {}
            }
        }
        for (table, (merged, cancelled)) in counts {
            self.stats.coalesced(table, merged, cancelled);
        }
    }

    /// Writes left to the spool at the shutdown deadline (0 if it did not fire).
    pub async fn run(mut self) -> u64 {
        loop {
            let next_release = self.coalescer.release_due(Instant::now());
            if self.deadline.passed() {
                self.stop();
            } else {
                self.dispatch();
            }
            self.publish();
            self.pass_barriers(false);
            if self.draining && self.coalescer.is_empty() && self.flushes.is_empty() {
                self.pass_barriers(true);
                return self.left;
            }
            let now = Instant::now();
            let want_flush = !self.stopped && self.trigger(now).is_some();
            let accepting = !self.draining
                && (self.stopped
                    || (self.coalescer.len() < self.cfg.max_pending_keys
                        && self.coalescer.bytes() < self.cfg.max_pending_bytes));
            let mut wake = match self.coalescer.oldest() {
                Some(t) if !want_flush && self.coalescer.ready() > 0 => {
                    Some(t + self.cfg.max_batch_age)
                }
                _ => None,
            };
            if !self.barriers.is_empty() {
                let check = self.barriers_checked + BARRIER_CHECK_INTERVAL;
                wake = Some(wake.map_or(check, |w| w.min(check)));
            }
            if let Some(release) = next_release {
                wake = Some(wake.map_or(release, |w| w.min(release)));
            }
            let far = now + Duration::from_secs(3600);
            tokio::select! {
                Some(joined) = self.flushes.join_next_with_id(), if !self.flushes.is_empty() => {
                    self.completed(joined);
                }
                () = self.deadline.wait(), if !self.stopped => self.stop(),
                msg = self.inbox.recv(), if accepting => match msg {
                    Some(ShardMsg::Ops(ops, accepted, bytes)) => {
                        self.inbox_budget.release(bytes);
                        if self.stopped {
                            self.abandon_ops(ops);
                        } else {
                            self.push(ops, accepted);
                        }
                    }
                    Some(ShardMsg::Barrier(b)) => {
                        self.barriers.push_back(b);
                        self.pass_barriers(true);
                    }
                    Some(ShardMsg::Shutdown) | None => self.draining = true,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far).into()), if wake.is_some() => {}
                permit = Arc::clone(&self.permits).acquire_owned(), if want_flush && self.spare.is_none() => {
                    // The semaphore is never closed, so this is always Ok.
                    self.spare = permit.ok();
                }
            }
        }
    }
}
