//! The feeder thread: reads the spool's segments back in order and queues their records for the
//! router, then a barrier after each sealed segment; after the spool closes, the shutdown marker.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tracing::error;

use super::{Spool, codec};
use crate::pipeline::ingest::{ByteBudget, Envelope, IngestMsg};
use crate::storage::item::Op;

/// Where the feeder is: one open segment.
struct Cursor {
    id: u64,
    /// Read with positional reads only: the writer fills a preallocated file in place, so a
    /// buffered reader could hold zeros that have since been overwritten.
    file: File,
    /// Bytes of the segment already queued.
    pos: u64,
    /// The number of the next op.
    seq: u64,
    /// The segment was left by an earlier run: its ops were never recorded for lookups.
    replayed: bool,
}

/// What to do next, decided under the spool lock and done without it.
enum Step {
    /// Queue the records of the current segment up to this offset.
    Read(u64),
    /// The current segment is fully queued: queue its barrier (its last op's number).
    Barrier(u64),
    /// The spool is closed and everything is queued.
    Finish,
}

impl Spool {
    fn next_step(&self, cur: &mut Option<Cursor>) -> io::Result<Step> {
        let mut g = self.lock();
        loop {
            if self.is_abandoned() {
                return Ok(Step::Finish);
            }
            if cur.is_none() {
                match g.segments.iter().find(|s| !s.fed) {
                    Some(seg) => {
                        *cur = Some(Cursor {
                            id: seg.id,
                            file: File::open(&seg.path)?,
                            pos: 0,
                            seq: seg.first_seq,
                            replayed: seg.replayed,
                        });
                    }
                    None if g.closed => return Ok(Step::Finish),
                    None => {
                        g = self
                            .changed
                            .wait_timeout(g, Duration::from_secs(1))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        continue;
                    }
                }
            }
            let Some(c) = cur.as_ref() else { continue };
            let backlog: u64 = g
                .segments
                .iter()
                .filter(|s| !s.fed)
                .map(|s| s.bytes)
                .sum::<u64>()
                .saturating_sub(c.pos);
            metrics::gauge!(crate::telemetry::catalogue::SPOOL_BACKLOG_BYTES).set(backlog as f64);
            let age = self.cfg.segment_age;
            let Some(seg) = g.segments.iter_mut().find(|s| s.id == c.id) else {
                // Only fed segments are deleted, so this cannot happen; start over if it does.
                *cur = None;
                continue;
            };
            if c.pos < seg.bytes {
                return Ok(Step::Read(seg.bytes));
            }
            if seg.sealed {
                seg.fed = true;
                let barrier = seg.end_seq.saturating_sub(1);
                *cur = None;
                return Ok(Step::Barrier(barrier));
            }
            // The active segment, fully queued: seal it once it is old enough, so a quiet spool
            // still frees its disk.
            let elapsed = seg.created.elapsed();
            if seg.bytes > 0 && elapsed >= age {
                self.roll(&mut g)?;
                continue;
            }
            let wait = if seg.bytes > 0 { age - elapsed } else { age };
            g = self
                .changed
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Why a record written earlier could not be read back.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("cannot read the segment: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// Reads one record at the cursor: its ops and its size on disk.
fn read_record(c: &mut Cursor, payload: &mut Vec<u8>) -> Result<(Vec<Op>, u64), ReadError> {
    let mut header = [0u8; codec::HEADER];
    c.file.read_exact_at(&mut header, c.pos)?;
    let n = codec::payload_len(&header)?;
    payload.resize(n, 0);
    c.file
        .read_exact_at(payload, c.pos + codec::HEADER as u64)?;
    codec::verify(&header, payload)?;
    let ops = codec::decode(payload)?;
    Ok((ops, (codec::HEADER + n) as u64))
}

/// The feeder thread's body. Blocks on the spool (waiting for records) and on the ingest queue
/// (waiting for room); holds at most one record in memory. Ends after queuing the shutdown marker,
/// or if the router is gone.
pub(crate) fn run(spool: Arc<Spool>, tx: Sender<IngestMsg>, budget: Arc<ByteBudget>) {
    let mut cur: Option<Cursor> = None;
    let mut payload = Vec::new();
    loop {
        spool.prepare_spare();
        let step = match spool.next_step(&mut cur) {
            Ok(step) => step,
            Err(e) => {
                error!(error = %e, "cannot read the spool; retrying in a second");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        match step {
            Step::Read(upto) => {
                let Some(c) = cur.as_mut() else { continue };
                while c.pos < upto && !spool.is_abandoned() {
                    let (mut ops, len) = match read_record(c, &mut payload) {
                        Ok(r) => r,
                        Err(why) => {
                            // The bytes were checked when written or scanned: only damage on
                            // disk since then gets here. Skip what is left of the segment.
                            error!(segment = c.id, offset = c.pos, reason = %why,
                                "spool segment unreadable after it was written; its remaining records are lost");
                            metrics::counter!(crate::telemetry::catalogue::SPOOL_RECORDS_TOTAL, "outcome" => "cut")
                                .increment(1);
                            c.pos = upto;
                            break;
                        }
                    };
                    c.pos += len;
                    let first_seq = c.seq;
                    c.seq += ops.len() as u64;
                    if c.replayed {
                        metrics::counter!(crate::telemetry::catalogue::SPOOL_RECORDS_TOTAL, "outcome" => "replayed")
                            .increment(1);
                        // Part of the replayed suffix may already be in the table: the
                        // coalescer must not cancel a later delete against these.
                        for op in &mut ops {
                            op.write.maybe_applied();
                        }
                    }
                    let bytes = ops.iter().map(Op::size).sum::<usize>().min(budget.limit);
                    let mut reserved = false;
                    while !reserved && !spool.is_abandoned() {
                        reserved =
                            budget.reserve(bytes, Some(Instant::now() + Duration::from_secs(1)));
                    }
                    if !reserved {
                        break;
                    }
                    let env = Envelope {
                        ops,
                        bytes,
                        accepted: Instant::now(),
                        first_seq,
                    };
                    if tx.send(IngestMsg::Event(env)).is_err() {
                        error!("the router is gone; the spool feeder stops");
                        return;
                    }
                }
            }
            Step::Barrier(b) => {
                if tx.send(IngestMsg::Barrier(b)).is_err() {
                    return;
                }
            }
            Step::Finish => {
                let _ = tx.send(IngestMsg::Shutdown);
                return;
            }
        }
    }
}
