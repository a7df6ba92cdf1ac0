//! Appending records under the append lock, rolling segments, and the group-commit syncer that
//! fsyncs on behalf of every waiting caller.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{error, warn};

use super::{Inner, Spool, SpoolError, codec};
use crate::config::FsyncPolicy;
use crate::storage::item::Op;
use crate::telemetry::stats::LogGate;

/// Rate limit for the "spool is full" log line.
static FULL_LOG: LogGate = LogGate::new();

/// A successful append: the ticket to wait on, and the number of the record's first op.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub ticket: u64,
    pub first_seq: u64,
}

impl Spool {
    /// Appends one event's writes, waiting until `deadline` (if any) for room. Numbers the ops
    /// (and records them for lookups) under the append lock.
    pub fn append(&self, ops: &[Op], deadline: Option<Instant>) -> Result<Appended, SpoolError> {
        let record = codec::encode(ops);
        let len = record.len() as u64;
        let limit = self.cfg.max_mb << 20;
        let mut g = self.lock();
        loop {
            if g.closed {
                return Err(SpoolError::Closed);
            }
            if g.bytes + len <= limit {
                break;
            }
            let now = Instant::now();
            match deadline {
                Some(d) if now < d => {
                    g = self
                        .freed
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                _ => {
                    metrics::counter!(crate::telemetry::catalogue::SPOOL_RECORDS_TOTAL, "outcome" => "refused")
                        .increment(1);
                    if let Some(held) = FULL_LOG.allow() {
                        warn!(
                            used_bytes = g.bytes,
                            limit_bytes = limit,
                            held_back = held,
                            "spool full (pipeline.spool.max_mb): new events refused until DynamoDB catches up"
                        );
                    }
                    return Err(SpoolError::Full {
                        used: g.bytes,
                        limit,
                    });
                }
            }
        }
        let at = g.segments.back().map_or(0, |s| s.bytes);
        if let Err(e) = g.active.write_all_at(&record, at) {
            // The segment's end does not move: the next append overwrites the partial record,
            // and a restart cuts it off. The event is refused.
            error!(error = %e, "spool append failed; event refused");
            metrics::counter!(crate::telemetry::catalogue::SPOOL_RECORDS_TOTAL, "outcome" => "failed")
                .increment(1);
            return Err(SpoolError::Io(e));
        }
        let n = ops.len() as u64;
        let first_seq = match &self.read {
            Some(read) => read.record(ops),
            None => {
                let s = g.next_seq;
                g.next_seq += n;
                s
            }
        };
        g.ticket += 1;
        g.bytes += len;
        let ticket = g.ticket;
        let roll = match g.segments.back_mut() {
            Some(seg) => {
                seg.bytes += len;
                seg.end_seq = first_seq + n;
                seg.bytes >= self.cfg.segment_mb << 20
            }
            None => false,
        };
        if roll && let Err(e) = self.roll(&mut g) {
            error!(error = %e, "cannot start a new spool segment; appending to the current one");
        }
        drop(g);
        metrics::counter!(crate::telemetry::catalogue::SPOOL_RECORDS_TOTAL, "outcome" => "appended").increment(1);
        self.changed.notify_all();
        Ok(Appended { ticket, first_seq })
    }

    /// Seals the active segment (its zero tail cut, synced) and starts the next one, in the
    /// spare file when the feeder prepared one.
    pub(super) fn roll(&self, g: &mut Inner) -> io::Result<()> {
        let first_seq = g.segments.back().map_or(g.next_seq, |s| s.end_seq);
        let (file, segment) = match g.spare.take() {
            Some((id, file)) if id == g.next_id => {
                (file, Self::new_segment(&self.dir, id, first_seq))
            }
            other => {
                g.spare = other;
                Self::create_segment(&self.dir, g.next_id, first_seq, 0)?
            }
        };
        g.next_id += 1;
        let end = g.segments.back().map_or(0, |s| s.bytes);
        if let Err(e) = g.active.set_len(end).and_then(|()| g.active.sync_data()) {
            self.sync_error(&e);
        }
        if let Some(seg) = g.segments.back_mut() {
            seg.sealed = true;
        }
        g.segments.push_back(segment);
        g.active = Arc::new(file);
        self.update_gauges(g);
        Ok(())
    }

    pub(super) fn sync_error(&self, e: &io::Error) {
        error!(error = %e, "spool fsync failed: events are not known to be durable; refusing to acknowledge them");
        self.sync_failed.store(true, Ordering::Relaxed);
        self.synced_cv.notify_all();
        self.synced_watch.send_modify(|_| {});
    }

    /// Blocks until `ticket` is on stable storage (returns at once under `fsync = "interval"`).
    pub fn wait_synced(&self, ticket: u64) -> Result<(), SpoolError> {
        if self.cfg.fsync == FsyncPolicy::Interval {
            return Ok(());
        }
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        while *synced < ticket {
            if self.sync_failed.load(Ordering::Relaxed) {
                return Err(SpoolError::SyncFailed);
            }
            synced = self
                .synced_cv
                .wait(synced)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Waits (async) until `ticket` is on stable storage.
    pub async fn synced(&self, ticket: u64) -> Result<(), SpoolError> {
        if self.cfg.fsync == FsyncPolicy::Interval {
            return Ok(());
        }
        let mut rx = self.synced_watch.subscribe();
        let failed = &self.sync_failed;
        match rx
            .wait_for(|s| *s >= ticket || failed.load(Ordering::Relaxed))
            .await
        {
            Ok(s) if *s >= ticket => Ok(()),
            _ => Err(SpoolError::SyncFailed),
        }
    }

    /// The syncer thread: fsyncs the active segment whenever records were appended since the
    /// last fsync (`always`: at once, so one fsync covers everything appended while the previous
    /// ran; `interval`: every `fsync_interval`). Ends when the spool is closed and synced.
    pub(crate) fn run_syncer(self: Arc<Self>) {
        let interval = self.cfg.fsync_interval;
        let mut done = 0u64;
        loop {
            let (file, ticket, closed) = {
                let mut g = self.lock();
                while g.ticket == done && !g.closed {
                    g = match self.cfg.fsync {
                        FsyncPolicy::Always => {
                            self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
                        }
                        FsyncPolicy::Interval => {
                            self.changed
                                .wait_timeout(g, interval)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                    };
                }
                (Arc::clone(&g.active), g.ticket, g.closed)
            };
            if ticket > done {
                if self.cfg.fsync == FsyncPolicy::Interval {
                    std::thread::sleep(interval);
                }
                let started = Instant::now();
                match file.sync_data() {
                    Ok(()) => {
                        metrics::histogram!(
                            crate::telemetry::catalogue::SPOOL_FSYNC_DURATION_SECONDS
                        )
                        .record(started.elapsed().as_secs_f64());
                        done = ticket;
                        *self.synced.lock().unwrap_or_else(|p| p.into_inner()) = ticket;
                        self.synced_cv.notify_all();
                        self.synced_watch.send_replace(ticket);
                    }
                    Err(e) => {
                        self.sync_error(&e);
                        return;
                    }
                }
            } else if closed {
                return;
            }
        }
    }
}
