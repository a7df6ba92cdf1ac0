//! Segment files: naming, creation with preallocation, the spare for the next roll, and the scan
//! that checks and numbers what an earlier run left.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use super::{Spool, codec};
use crate::lookup::ReadState;

/// One segment file, as the spool knows it.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) path: PathBuf,
    /// Bytes of whole records written (the feeder reads up to here).
    pub(super) bytes: u64,
    /// The number of the segment's first op, and one past its last.
    pub(super) first_seq: u64,
    pub(super) end_seq: u64,
    /// No more appends: the feeder may pass its end.
    pub(super) sealed: bool,
    /// The feeder has queued every record and the barrier.
    pub(super) fed: bool,
    /// Left by an earlier run (its ops were not recorded for lookups when appended).
    pub(super) replayed: bool,
    pub(super) created: Instant,
}

pub(super) fn segment_name(id: u64) -> String {
    format!("segment-{id:020}.spool")
}

pub(super) fn segment_id(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

/// What scanning one segment found.
pub(super) struct Scanned {
    /// Bytes of whole, valid records.
    good: u64,
    ops: u64,
    records: u64,
    /// Why the scan stopped before the end of the file, if it did (not for a zero-filled
    /// preallocated tail, which is simply where the data ends).
    damage: Option<String>,
}

/// Reads every record of `path`, stopping at the first torn or damaged one.
pub(super) fn scan(path: &Path) -> io::Result<Scanned> {
    let mut file = io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let len = fs::metadata(path)?.len();
    let mut s = Scanned {
        good: 0,
        ops: 0,
        records: 0,
        damage: None,
    };
    let mut payload = Vec::new();
    while s.good < len {
        let mut header = [0u8; codec::HEADER];
        if s.good + codec::HEADER as u64 > len {
            let mut rest = Vec::new();
            file.read_to_end(&mut rest)?;
            if rest.iter().any(|b| *b != 0) {
                s.damage = Some("torn record header".into());
            }
            break;
        }
        file.read_exact(&mut header)?;
        if header == [0u8; codec::HEADER] {
            // The preallocated, never written rest of the segment.
            break;
        }
        let n = match codec::payload_len(&header) {
            Ok(n) => n,
            Err(e) => {
                s.damage = Some(e.to_string());
                break;
            }
        };
        if s.good + (codec::HEADER + n) as u64 > len {
            s.damage = Some("torn record".into());
            break;
        }
        payload.resize(n, 0);
        file.read_exact(&mut payload)?;
        let count = codec::verify(&header, &payload).and_then(|()| codec::op_count(&payload));
        match count {
            Ok(ops) => {
                s.ops += ops;
                s.records += 1;
                s.good += (codec::HEADER + n) as u64;
            }
            Err(e) => {
                s.damage = Some(e.to_string());
                break;
            }
        }
    }
    Ok(s)
}

/// Records the ops of the first `good` bytes of segment `path` (checked by [`scan`]), numbered
/// from `first`, for lookups: read-your-writes over the replayed backlog (its topic index puts
/// included).
pub(super) fn replay_for_lookups(
    path: &Path,
    good: u64,
    first: u64,
    read: &ReadState,
) -> io::Result<()> {
    let mut file = io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let (mut pos, mut seq) = (0u64, first);
    let mut payload = Vec::new();
    while pos < good {
        let mut header = [0u8; codec::HEADER];
        file.read_exact(&mut header)?;
        let n = codec::payload_len(&header).map_err(io::Error::other)?;
        payload.resize(n, 0);
        file.read_exact(&mut payload)?;
        let ops = codec::decode(&payload).map_err(io::Error::other)?;
        read.record_replayed(&ops, seq);
        seq += ops.len() as u64;
        pos += (codec::HEADER + n) as u64;
    }
    Ok(())
}

/// Makes a directory entry change (a new or removed segment) durable.
pub(super) fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        warn!(dir = %dir.display(), error = %e, "cannot sync the spool directory");
    }
}

/// What an earlier run left in the spool directory, checked and numbered.
pub(super) struct Recovered {
    /// The sealed segments to replay, oldest first.
    pub segments: VecDeque<Segment>,
    pub bytes: u64,
    /// The number of the first op after the replayed ones.
    pub next_seq: u64,
    /// The id of the next segment to create.
    pub next_id: u64,
}

/// Scans every segment in `dir` record by record, cuts torn or damaged tails (counted, logged),
/// numbers the surviving ops ahead of any new one (through `read` when lookups number ops) and
/// records them for lookups.
pub(super) fn recover(dir: &Path, read: Option<&ReadState>) -> io::Result<Recovered> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut segments = VecDeque::new();
    let mut total_ops = 0u64;
    let mut scanned = Vec::new();
    for id in &ids {
        let path = dir.join(segment_name(*id));
        let s = scan(&path)?;
        let len = fs::metadata(&path)?.len();
        if let Some(why) = &s.damage {
            warn!(
                segment = %path.display(),
                kept_bytes = s.good,
                cut_bytes = len - s.good,
                reason = %why,
                "spool segment ends in a torn or damaged record (expected after a crash mid-write); cut there"
            );
            metrics::counter!(crate::telemetry::catalogue::SPOOL_RECORDS_TOTAL, "outcome" => "cut")
                .increment(1);
        }
        if s.good < len {
            // Damage, or the zeros of a preallocated segment: either way nothing to keep.
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(s.good)?;
        }
        total_ops += s.ops;
        scanned.push((path, s));
    }
    // Numbers for the replayed ops come before any new event's.
    let mut first = match read {
        Some(r) => r.reserve(total_ops),
        None => 1,
    };
    let next_seq = first + total_ops;
    let mut bytes = 0;
    let mut records = 0;
    for ((path, s), id) in scanned.into_iter().zip(&ids) {
        bytes += s.good;
        records += s.records;
        if let Some(read) = read {
            // Lookups see the backlog at once, not only once the feeder reaches it.
            replay_for_lookups(&path, s.good, first, read)?;
        }
        segments.push_back(Segment {
            id: *id,
            path,
            bytes: s.good,
            first_seq: first,
            end_seq: first + s.ops,
            sealed: true,
            fed: false,
            replayed: true,
            created: Instant::now(),
        });
        first += s.ops;
    }
    if records > 0 {
        info!(
        dir = %dir.display(),
        segments = segments.len(),
        records,
        ops = total_ops,
        bytes,
        "spool holds events from an earlier run; replaying them before new events"
        );
    }
    Ok(Recovered {
        segments,
        bytes,
        next_seq,
        next_id: ids.last().map_or(1, |id| id + 1),
    })
}

impl Spool {
    /// Creates segment file `id`, filled with `prealloc` zero bytes (synced) when non-zero.
    pub(super) fn create_file(dir: &Path, id: u64, prealloc: u64) -> io::Result<File> {
        let path = dir.join(segment_name(id));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create spool segment {}: {e}", path.display()),
                )
            })?;
        if prealloc > 0 {
            let zeros = vec![0u8; 1 << 20];
            let mut left = prealloc;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                (&file).write_all(&zeros[..n])?;
                left -= n as u64;
            }
            file.sync_all()?;
        }
        sync_dir(dir);
        Ok(file)
    }

    pub(super) fn new_segment(dir: &Path, id: u64, first_seq: u64) -> Segment {
        Segment {
            id,
            path: dir.join(segment_name(id)),
            bytes: 0,
            first_seq,
            end_seq: first_seq,
            sealed: false,
            fed: false,
            replayed: false,
            created: Instant::now(),
        }
    }

    pub(super) fn create_segment(
        dir: &Path,
        id: u64,
        first_seq: u64,
        prealloc: u64,
    ) -> io::Result<(File, Segment)> {
        let file = Self::create_file(dir, id, prealloc)?;
        Ok((file, Self::new_segment(dir, id, first_seq)))
    }

    /// Prepares the next segment's file ahead of its roll, once the active segment is half full
    /// or half its age. Called by the feeder between records; the zero-filling happens outside
    /// the lock.
    pub(crate) fn prepare_spare(&self) {
        let size = self.cfg.segment_mb << 20;
        let id = {
            let g = self.lock();
            let due = g.segments.back().is_some_and(|s| {
                s.bytes * 2 >= size
                    || (s.bytes > 0 && s.created.elapsed() * 2 >= self.cfg.segment_age)
            });
            if g.closed || g.spare.is_some() || !due {
                return;
            }
            g.next_id
        };
        // If a roll creates this id first, `create_new` fails here and the roll's file is used.
        let Ok(file) = Self::create_file(&self.dir, id, size) else {
            return;
        };
        let mut g = self.lock();
        if g.next_id == id && g.spare.is_none() && !g.closed {
            g.spare = Some((id, file));
        } else {
            drop(g);
            let _ = fs::remove_file(self.dir.join(segment_name(id)));
        }
    }
}
