//! Shards: the shard task that coalesces the writes of its keys and starts flushes; the router
//! that spreads writes over shards (`router`), hot-key windows (`hot_keys`) and spool
//! barriers (`barrier`) are files of their own.
//!
//! A key always hashes to the same shard, so one task owns all of a key's pending and in-flight
//! state and per-key order needs no locks. Shards hold keys of every table, so one flush can fill
//! a BatchWriteItem across tables.
//!
//! Time is tokio's clock ([`tokio::time::Instant`]), so the tests below run on paused time; the
//! coalescer keeps `std::time::Instant`s (the accepted instants ingest stamps), converted here.

mod barrier;
mod costly_keys;
mod hot_keys;
mod router;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::error;

pub(crate) use barrier::BarrierAck;
use barrier::Barriers;
use costly_keys::CostlyKeys;
use hot_keys::HotKeys;
pub(crate) use router::route;

use crate::config::PipelineConfig;
use crate::lookup::ReadState;
use crate::pipeline::coalesce::{Coalescer, PushOutcome, Seqs};
use crate::pipeline::concurrency::Concurrency;
use crate::pipeline::flush::{Completed, Flush, Flusher, KeyEnd};
use crate::pipeline::ingest::ByteBudget;
use crate::storage::item::{Key, Op, Table, Write};
use crate::telemetry::stats::{DropReason, FlushTrigger, Stats};

/// What a shard receives from the router.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// The writes of one event that hash to this shard, in event order, with their ingest
    /// sequence numbers, when the event was accepted (ingest's `std` clock, which the coalescer
    /// keeps), and the bytes reserved for them in the shard's inbox budget (released when the
    /// shard takes them).
    Ops(Vec<(Op, u64)>, std::time::Instant, usize),
    /// Every op numbered up to this that belongs to this shard is in its inbox ahead of the
    /// barrier; acknowledge it to the spool once they are all settled.
    Barrier(u64),
    /// No more writes will come: flush everything and exit.
    Shutdown,
}

/// The coalescer's instant for tokio's `t`.
fn coalescer_time(t: Instant) -> std::time::Instant {
    t.into_std()
}

/// One shard's task: owns a [`Coalescer`], takes writes from its inbox, and starts flushes
/// (through `F`, the [`Flusher`] outside tests).
///
/// - Blocks (awaits) on: its inbox, flush completions, the age deadline of its oldest write, the
///   end of a hot key's hold, the next barrier check, and a concurrency permit when it has a
///   flush to start and none is free.
/// - Stops reading its inbox while it holds `max_pending_keys` keys or `max_pending_bytes`
///   bytes, so its bounded inbox fills and the router, then ingest, push back.
/// - Drops nothing itself while running: a write leaves only when its flush reports it durable or
///   dropped. When the shutdown deadline fires it stops: without the spool every write it still
///   holds or receives is dead-lettered (`reason="shutdown"`); with the spool they are left there
///   (no barrier is passed any more, so their segments stay for the next start).
pub(crate) struct Shard<F: Flush = Flusher> {
    inbox: mpsc::Receiver<ShardMsg>,
    /// The inbox's byte limit, shared with the router (which reserves) — released as ops arrive.
    inbox_budget: Arc<ByteBudget>,
    /// `pipeline.shutdown_timeout` running out.
    deadline: Arc<crate::pipeline::flush::retry::Deadline>,
    /// The deadline fired and this shard stopped (see above).
    stopped: bool,
    /// Writes left to the spool at the deadline.
    left: u64,
    /// The pending writes of this shard's keys (this task is their only owner).
    coalescer: Coalescer,
    /// Sends the flushes (each in a task of its own, so the shard keeps coalescing meanwhile).
    flusher: Arc<F>,
    /// The adaptive limit on flushes in flight across all shards; its semaphore hands out one
    /// permit per flush.
    concurrency: Arc<Concurrency>,
    /// `concurrency`'s semaphore (a flush starts only with a permit; waiting for one blocks
    /// nothing else: it is one branch of the shard's select).
    permits: Arc<Semaphore>,
    /// A permit acquired while waiting, used by the next flush.
    spare: Option<OwnedSemaphorePermit>,
    /// Running flushes, and the keys each took (to release them even if a flush task panics,
    /// and for the barrier check: their ops are not settled yet).
    flushes: JoinSet<Vec<Completed>>,
    flush_keys: HashMap<tokio::task::Id, Vec<(Key, Seqs)>>,
    /// Told when a write settles, so lookups stop replaying its ops.
    read: Option<Arc<ReadState>>,
    /// Batching limits, flush age, hot-key windows, `ambiguous_hold`, pending limits.
    cfg: PipelineConfig,
    /// Counters and the shared pending/hot-key gauges.
    stats: Arc<Stats>,
    /// The router sent `Shutdown` (or is gone): flush everything, then end.
    draining: bool,
    /// The pending keys, bytes and hot keys last added to the shared gauges.
    published: (i64, i64, i64),
    /// With the spool on: the barriers received and how to acknowledge them. `None`: no spool.
    spool: Option<Barriers>,
    /// Keys DynamoDB throttled itself, and their windows.
    hot: HotKeys,
    /// Keys whose writes cost many write units, and their windows.
    costly: CostlyKeys,
    /// Where linger ends are counted from: they fall on multiples of a tick after it, so
    /// the writes whose linger ends together leave in full batches instead of one by one.
    epoch: Instant,
}

impl<F: Flush> Shard<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inbox: mpsc::Receiver<ShardMsg>,
        inbox_budget: Arc<ByteBudget>,
        deadline: Arc<crate::pipeline::flush::retry::Deadline>,
        flusher: Arc<F>,
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
            hot: HotKeys::new(cfg.hot_key_window, cfg.hot_key_max_window),
            costly: CostlyKeys::new(cfg.cost_window, cfg.cost_max_window),
            cfg,
            stats,
            draining: false,
            published: (0, 0, 0),
            spool: None,
            epoch: Instant::now(),
        }
    }

    /// When a write that must wait `linger` from now may go: the next tick at or after
    /// `now + linger`, a tick being `max_batch_age` or `linger` if shorter (so never more than
    /// twice the linger).
    fn linger_end(&self, linger: Duration) -> Instant {
        let end = Instant::now() + linger;
        let tick = self.cfg.max_batch_age.min(linger).as_nanos();
        if tick == 0 {
            return end;
        }
        let since = end.saturating_duration_since(self.epoch).as_nanos();
        let ticks = since.div_ceil(tick);
        let rounded = u64::try_from(ticks * tick).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(rounded)
    }

    /// Acknowledges barriers to `spool` as shard number `index`.
    pub fn with_spool(self, spool: Arc<crate::spool::Spool>, index: usize) -> Self {
        self.with_barrier_ack(Box::new(move |b| spool.barrier_passed(index, b)))
    }

    /// Acknowledges barriers through `ack` (the spool is on).
    pub fn with_barrier_ack(mut self, ack: BarrierAck) -> Self {
        self.spool = Some(Barriers::new(ack));
        self
    }

    /// A hot key's window after one more write (see [`HotKeys::after_write`]): the key's next
    /// write is held back for it.
    fn cool_or_heat(&mut self, key: &Key, throttled: bool, now: Instant) {
        if let Some(until) = self.hot.after_write(key, throttled, now) {
            self.coalescer.hold(key, coalescer_time(until));
        }
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
        let now = Instant::now();
        if self.stopped || !self.spool.as_ref().is_some_and(|b| b.due(now, force)) {
            return;
        }
        let low = self.lowest_live_seq();
        if let Some(barriers) = &mut self.spool {
            barriers.pass(low, now);
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

    /// When the oldest write that could be sent now reaches `max_batch_age`.
    fn age_due(&mut self) -> Option<Instant> {
        let oldest = self.coalescer.oldest()?;
        Some(Instant::from_std(oldest) + self.cfg.max_batch_age)
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
        match self.age_due() {
            Some(due) if now >= due => Some(FlushTrigger::Age),
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
            let mut writes = self
                .coalescer
                .take(self.cfg.max_batch_requests, self.cfg.max_batch_bytes);
            for t in &mut writes {
                // Costly and hot keys go by UpdateItem: its consumed capacity and throttling
                // are the key's own (a hot key's statement could fail its condition, charged,
                // just before its UpdateItem needs the capacity).
                t.measure = self.costly.measure(&t.key) || self.hot.contains(&t.key);
            }
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

    /// A flush task ended: every write it took is settled, handed back, or (if it panicked)
    /// counted as lost.
    fn completed(
        &mut self,
        joined: Result<(tokio::task::Id, Vec<Completed>), tokio::task::JoinError>,
    ) {
        self.stats.flush_done();
        match joined {
            Ok((id, done)) => {
                self.flush_keys.remove(&id);
                let now = Instant::now();
                let latencies: Vec<Duration> = done
                    .into_iter()
                    .filter_map(|c| self.key_completed(c, now))
                    .collect();
                self.stats.durable(&latencies);
            }
            Err(e) => {
                let keys = self.flush_keys.remove(&e.id()).unwrap_or_default();
                error!(error = %e, writes = keys.len(), "flush task failed; its writes are lost");
                self.stats
                    .dropped(DropReason::RetriesExhausted, keys.len() as u64);
                for (k, seqs) in keys {
                    self.coalescer.complete(&k);
                    if let Some(read) = &self.read {
                        read.settled(&k, seqs);
                    }
                }
            }
        }
    }

    /// One key's write ended: releases the key, sets its holds, and puts a handed-back write
    /// back in line. Returns the ingest-to-durable latency of a written one.
    fn key_completed(&mut self, c: Completed, now: Instant) -> Option<Duration> {
        self.coalescer.complete(&c.key);
        self.cool_or_heat(&c.key, c.end.hot(), now);
        if let KeyEnd::Written { cost, .. } = &c.end
            && let Some(until) = self.costly.after_write(&c.key, *cost, now)
        {
            // Costly: the key's next write waits, so more of its changes merge into it.
            self.coalescer.hold_at_least(&c.key, coalescer_time(until));
        }
        if c.end.ambiguous() && !self.cfg.ambiguous_hold.is_zero() {
            // An attempt may still land: the key's next write goes after it.
            self.coalescer
                .hold_at_least(&c.key, coalescer_time(now + self.cfg.ambiguous_hold));
        }
        match c.end {
            KeyEnd::Requeue { write, .. } => {
                // Back in line, ahead of the key's newer ops, which merge into it while the key
                // waits its window.
                self.stats.requeued();
                let vanished = self
                    .coalescer
                    .requeue(c.key.clone(), write, c.seqs, c.since);
                if let Some(read) = &self.read {
                    for seqs in vanished {
                        read.settled(&c.key, seqs);
                    }
                }
                None
            }
            // Past the shutdown deadline with the spool on: the write stays in the spool (its
            // barrier is never passed) and is replayed at the next start.
            KeyEnd::Left => {
                self.left += 1;
                None
            }
            KeyEnd::Written { .. } | KeyEnd::Dropped { .. } => {
                if let Some(read) = &self.read {
                    read.settled(&c.key, c.seqs);
                }
                matches!(c.end, KeyEnd::Written { .. })
                    .then(|| coalescer_time(now).saturating_duration_since(c.since))
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
        let rest: Vec<(Key, Write, Seqs)> = self.coalescer.drain_pending();
        self.abandon(rest);
    }

    /// Writes that will not be sent: left to the spool, or dead-lettered and counted.
    fn abandon(&mut self, writes: Vec<(Key, Write, Seqs)>) {
        for (key, write, seqs) in writes {
            if self.spool.is_some() {
                self.left += 1;
                continue;
            }
            self.flusher.give_up(
                &key,
                &write,
                DropReason::Shutdown,
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

    fn push(&mut self, ops: Vec<(Op, u64)>, accepted: std::time::Instant) {
        let mut counts: HashMap<Table, (u64, u64)> = HashMap::new();
        for (op, seq) in ops {
            let table = op.key.table;
            let key = self
                .read
                .as_ref()
                .filter(|_| crate::lookup::overlay::tracked(table))
                .map(|_| op.key.clone());
            let linger = self.cfg.linger.of(table);
            let (outcome, vanished) = if linger.is_zero() {
                self.coalescer.push_numbered(op, accepted, seq)
            } else {
                // A new pending write waits its table's linger, so later events meet it.
                let end = coalescer_time(self.linger_end(linger));
                self.coalescer.push_lingering(op, accepted, seq, end)
            };
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

    /// One message from the inbox (`None`: the router is gone).
    fn received(&mut self, msg: Option<ShardMsg>) {
        match msg {
            Some(ShardMsg::Ops(ops, accepted, bytes)) => {
                self.inbox_budget.release(bytes);
                if self.stopped {
                    self.abandon_ops(ops);
                } else {
                    self.push(ops, accepted);
                }
            }
            Some(ShardMsg::Barrier(b)) => {
                if let Some(barriers) = &mut self.spool {
                    barriers.push(b);
                }
                self.pass_barriers(true);
            }
            Some(ShardMsg::Shutdown) | None => self.draining = true,
        }
    }

    /// When to wake without a message or a completion: the oldest ready write's age deadline
    /// (unless a flush is wanted now), the next barrier check, the end of the next hold.
    fn next_wake(&mut self, want_flush: bool, next_release: Option<Instant>) -> Option<Instant> {
        let age = if !want_flush && self.coalescer.ready() > 0 {
            self.age_due()
        } else {
            None
        };
        let barrier = self.spool.as_ref().and_then(Barriers::next_check);
        [age, barrier, next_release].into_iter().flatten().min()
    }

    /// Runs the shard until it has drained; returns the writes left to the spool at the
    /// shutdown deadline (0 if it did not fire).
    pub async fn run(mut self) -> u64 {
        loop {
            let next_release = self
                .coalescer
                .release_due(coalescer_time(Instant::now()))
                .map(Instant::from_std);
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
            let wake = self.next_wake(want_flush, next_release);
            let far = now + Duration::from_secs(3600);
            tokio::select! {
                Some(joined) = self.flushes.join_next_with_id(), if !self.flushes.is_empty() => {
                    self.completed(joined);
                }
                () = self.deadline.wait(), if !self.stopped => self.stop(),
                msg = self.inbox.recv(), if accepting => self.received(msg),
                _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {}
                permit = Arc::clone(&self.permits).acquire_owned(), if want_flush && self.spare.is_none() => {
                    // The semaphore is never closed, so this is always Ok.
                    self.spare = permit.ok();
                }
            }
        }
    }
}
