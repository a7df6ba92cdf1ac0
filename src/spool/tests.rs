//! The spool on real files: replay after a crash, torn tails, the disk bound, group commit.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::*;
use crate::pipeline::ingest::{ByteBudget, IngestMsg};
use crate::storage::item::Op;
use crate::storage::item::{Key, Table, Value, Write};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        enabled: true,
        dir: dir.to_path_buf(),
        ..SpoolConfig::default()
    }
}

fn put(topic: &str, payload_len: usize) -> Op {
    let mut item = crate::storage::item::Item::new();
    item.insert("topic".into(), Value::S(topic.into()));
    item.insert("payload".into(), Value::B(vec![7; payload_len]));
    Op {
        key: Key::new(Table::Retain, topic),
        write: Write::Put { item, fresh: false },
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "LOCK")
        .collect();
    names.sort();
    names
}

/// Starts the feeder on `spool`; returns what it queues.
fn feed(spool: &Arc<Spool>) -> Receiver<IngestMsg> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let spool = Arc::clone(spool);
    let budget = Arc::new(ByteBudget::new(64 << 20));
    let releaser = Arc::clone(&budget);
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || super::feed::run(spool, tx, budget));
    std::thread::spawn(move || {
        for msg in rx {
            if let IngestMsg::Event(env) = &msg {
                releaser.release(env.bytes);
            }
            if out_tx.send(msg).is_err() {
                break;
            }
        }
    });
    out_rx
}

fn next(rx: &Receiver<IngestMsg>) -> IngestMsg {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the feeder queues the next message")
}

#[test]
fn a_crash_leaves_records_that_are_replayed_first_in_order_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let first = [put("a", 10), put("b", 20)];
    let second = [put("c", 30)];
    {
        let spool = Spool::open(&cfg, 1, None).unwrap();
        assert_eq!(spool.append(&first, None).unwrap().first_seq, 1);
        assert_eq!(spool.append(&second, None).unwrap().first_seq, 3);
        // The process dies here: no close, no feed. A record was being written when it died.
    }
    let files = segment_files(dir.path());
    assert_eq!(files, ["segment-00000000000000000001.spool"]);
    let path = dir.path().join(&files[0]);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        16 << 20,
        "segments are preallocated"
    );
    let whole = (codec::encode(&first).len() + codec::encode(&second).len()) as u64;
    let torn = &codec::encode(&[put("d", 40)])[..20];
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(torn, whole)
        .unwrap();

    let spool = Spool::open(&cfg, 2, None).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        whole,
        "the torn record and the zero tail are cut off"
    );
    // The replayed ops keep numbers 1..=3; a new event comes after them.
    assert_eq!(spool.append(&[put("e", 5)], None).unwrap().first_seq, 4);
    let rx = feed(&spool);
    match next(&rx) {
        IngestMsg::Event(env) => {
            assert_eq!((env.first_seq, env.ops.as_slice()), (1, &first[..]));
        }
        other => panic!("expected the first replayed record, got {other:?}"),
    }
    match next(&rx) {
        IngestMsg::Event(env) => assert_eq!((env.first_seq, env.ops.as_slice()), (3, &second[..])),
        other => panic!("expected the second replayed record, got {other:?}"),
    }
    assert!(matches!(next(&rx), IngestMsg::Barrier(3)));
    match next(&rx) {
        IngestMsg::Event(env) => assert_eq!(env.first_seq, 4),
        other => panic!("expected the new record, got {other:?}"),
    }
    // One shard passing the barrier is not enough; both are.
    spool.barrier_passed(0, 3);
    assert_eq!(segment_files(dir.path()).len(), 2);
    spool.barrier_passed(1, 3);
    assert_eq!(
        segment_files(dir.path()),
        ["segment-00000000000000000002.spool"],
        "the replayed segment is deleted once every shard passed it"
    );
    spool.close();
    assert!(matches!(next(&rx), IngestMsg::Barrier(4)));
    assert!(matches!(next(&rx), IngestMsg::Shutdown));
    spool.barrier_passed(0, 4);
    spool.barrier_passed(1, 4);
    assert!(
        segment_files(dir.path()).is_empty(),
        "a drained spool leaves no segment"
    );
    assert!(matches!(
        spool.append(&[put("f", 1)], None),
        Err(SpoolError::Closed)
    ));
}

#[test]
fn damage_in_the_middle_keeps_what_comes_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let spool = Spool::open(&cfg, 1, None).unwrap();
        for i in 0..3 {
            spool.append(&[put(&format!("t{i}"), 100)], None).unwrap();
        }
    }
    let path = dir.path().join("segment-00000000000000000001.spool");
    let mut bytes = fs::read(&path).unwrap();
    let record = codec::encode(&[put("t0", 100)]).len();
    bytes[record + 30] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let spool = Spool::open(&cfg, 1, None).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, record);
    let rx = feed(&spool);
    assert!(matches!(next(&rx), IngestMsg::Event(env) if env.first_seq == 1));
    assert!(matches!(next(&rx), IngestMsg::Barrier(1)));
}

#[test]
fn a_full_spool_refuses_with_a_clear_error_until_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_mb: 1,
        max_mb: 2,
        ..config(dir.path())
    };
    let spool = Spool::open(&cfg, 1, None).unwrap();
    let mut accepted = 0u64;
    let err = loop {
        match spool.append(&[put(&format!("t{accepted}"), 100_000)], None) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the bound must be reached");
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(
        err.to_string().starts_with("the spool is full (")
            && err.to_string().ends_with(" of 2097152 bytes)"),
        "{err}"
    );
    assert!(accepted >= 19, "about 2 MB fit: {accepted}");
    // A waiting append gives up at its deadline …
    let started = Instant::now();
    let waited = spool.append(
        &[put("w", 100_000)],
        Some(started + Duration::from_millis(50)),
    );
    assert!(matches!(waited, Err(SpoolError::Full { .. })));
    // … and goes through once the feeder and the shard free a segment.
    let rx = feed(&spool);
    let mut barrier = None;
    while barrier.is_none() {
        if let IngestMsg::Barrier(b) = next(&rx) {
            barrier = Some(b);
        }
    }
    spool.barrier_passed(0, barrier.unwrap_or_default());
    spool.append(&[put("after", 100_000)], None).unwrap();
}

#[test]
fn always_acknowledges_after_the_fsync_that_covers_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path()), 1, None).unwrap();
    let syncer = {
        let spool = Arc::clone(&spool);
        std::thread::spawn(move || spool.run_syncer())
    };
    let tickets: Vec<u64> = (0..10)
        .map(|i| {
            spool
                .append(&[put(&format!("t{i}"), 10)], None)
                .unwrap()
                .ticket
        })
        .collect();
    assert_eq!(tickets, (1..=10).collect::<Vec<_>>());
    spool.wait_synced(10).unwrap();
    assert!(*spool.synced.lock().unwrap() >= 10);
    spool.close();
    syncer.join().unwrap();
}

#[test]
fn one_service_per_spool_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let first = Spool::open(&cfg, 1, None).unwrap();
    let err = Spool::open(&cfg, 1, None).expect_err("the directory is locked");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert_eq!(
        err.to_string(),
        format!(
            "the spool directory {} is in use by another mqtt-dynamo (process {}); one service per spool directory",
            dir.path().display(),
            std::process::id()
        )
    );
    drop(first);
    Spool::open(&cfg, 1, None).expect("the lock goes with the spool that held it");
}

/// After a restart the backlog is visible to lookups before the feeder reaches it: a retained
/// clear still in the spool hides the stale message, and the replayed ops are marked maybe
/// applied when they are fed.
#[test]
fn a_replayed_backlog_is_visible_to_lookups_at_once_and_fed_as_maybe_applied() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let clear = Op {
        key: Key::new(Table::Retain, "r/1"),
        write: Write::Delete,
    };
    let msg = Op {
        key: Key::new(Table::Msg, "m1"),
        write: Write::Put {
            item: Key::new(Table::Msg, "m1").to_item(),
            fresh: true,
        },
    };
    {
        let spool = Spool::open(&cfg, 1, None).unwrap();
        spool.append(&[put("r/1", 5)], None).unwrap();
        spool.append(&[clear.clone(), msg.clone()], None).unwrap();
        // Killed: nothing fed, nothing settled.
    }
    let read = Arc::new(ReadState::new(true));
    let spool = Spool::open(&cfg, 1, Some(Arc::clone(&read))).unwrap();
    assert_eq!(
        read.pending(&clear.key),
        vec![put("r/1", 5).write, Write::Delete],
        "the backlog's ops for the key, in order, before anything is fed"
    );
    let rx = feed(&spool);
    let mut fed = Vec::new();
    while fed.len() < 3 {
        if let IngestMsg::Event(env) = next(&rx) {
            fed.extend(env.ops);
        }
    }
    assert!(
        fed.iter().all(|op| !op.write.is_fresh()),
        "replayed ops are maybe applied: {fed:?}"
    );
    spool.close();
}
