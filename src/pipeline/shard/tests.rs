//! The shard task on paused time (`start_paused`, [`tokio::time::advance`]), with a flusher that
//! hands each flush to the test and answers it when the test says: the age trigger, hot-key
//! windows and spool barriers. No real sleeps: the test advances the clock, lets the shard run
//! ([`settle`]) and looks at what arrived.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, advance};

use super::{Shard, ShardMsg};
use crate::config::PipelineConfig;
use crate::pipeline::coalesce::Taken;
use crate::pipeline::concurrency::Concurrency;
use crate::pipeline::flush::retry::Deadline;
use crate::pipeline::flush::{Completed, Flush, KeyEnd};
use crate::pipeline::ingest::ByteBudget;
use crate::storage::item::{Key, Op, Table, Value, Write};
use crate::telemetry::stats::{DropReason, Stats};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// A flush handed to the test, and where to send how it ended.
type Call = (Vec<Taken>, oneshot::Sender<Vec<Completed>>);

/// Stands in for DynamoDB: every flush goes to the test, which answers it.
struct Scripted {
    calls: mpsc::UnboundedSender<Call>,
}

impl Flush for Scripted {
    fn flush(self: Arc<Self>, writes: Vec<Taken>) -> impl Future<Output = Vec<Completed>> + Send {
        let (tx, rx) = oneshot::channel();
        let _ = self.calls.send((writes, tx));
        async move { rx.await.unwrap_or_default() }
    }

    fn give_up(&self, _: &Key, _: &Write, _: DropReason, _: &str) {}
}

struct Harness {
    inbox: mpsc::Sender<ShardMsg>,
    calls: mpsc::UnboundedReceiver<Call>,
    acks: mpsc::UnboundedReceiver<u64>,
    task: tokio::task::JoinHandle<u64>,
}

fn start(cfg: PipelineConfig, spool: bool) -> Harness {
    let (inbox, rx) = mpsc::channel(64);
    let (calls_tx, calls) = mpsc::unbounded_channel();
    let (acks_tx, acks) = mpsc::unbounded_channel();
    let mut shard = Shard::new(
        rx,
        Arc::new(ByteBudget::new(1 << 20)),
        Arc::new(Deadline::new()),
        Arc::new(Scripted { calls: calls_tx }),
        Arc::new(Concurrency::new(1, 4, false)),
        cfg,
        Arc::new(Stats::default()),
        None,
    );
    if spool {
        shard = shard.with_barrier_ack(Box::new(move |b| {
            let _ = acks_tx.send(b);
        }));
    }
    Harness {
        inbox,
        calls,
        acks,
        task: tokio::spawn(shard.run()),
    }
}

/// Lets the shard and its flush tasks run until they wait again (no time passes).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn put(key: &Key, v: &str) -> Op {
    let mut item = key.to_item();
    item.insert("payload".into(), Value::S(v.into()));
    Op {
        key: key.clone(),
        write: Write::Put { item, fresh: false },
    }
}

impl Harness {
    /// Sends one op numbered `seq`, accepted now.
    async fn send(&self, op: Op, seq: u64) {
        let accepted = Instant::now().into_std();
        self.inbox
            .send(ShardMsg::Ops(vec![(op, seq)], accepted, 0))
            .await
            .expect("the shard runs");
        settle().await;
    }

    /// The next flush, if one has started.
    fn flushed(&mut self) -> Option<Call> {
        self.calls.try_recv().ok()
    }

    /// Answers `call`: every write ended as `end`.
    fn answer(call: Call, end: impl Fn(&Taken) -> KeyEnd) {
        let (writes, reply) = call;
        let done = writes
            .iter()
            .map(|t| Completed {
                key: t.key.clone(),
                since: t.since,
                seqs: t.seqs,
                end: end(t),
            })
            .collect();
        let _ = reply.send(done);
    }

    async fn shut_down(self) -> u64 {
        self.inbox
            .send(ShardMsg::Shutdown)
            .await
            .expect("the shard runs");
        self.task.await.expect("the shard ends")
    }
}

const WRITTEN: KeyEnd = KeyEnd::Written {
    hot: false,
    ambiguous: false,
    cost: None,
};
const WRITTEN_HOT: KeyEnd = KeyEnd::Written {
    hot: true,
    ambiguous: false,
    cost: None,
};

#[tokio::test(start_paused = true)]
async fn a_pending_write_is_flushed_when_it_reaches_max_batch_age_and_not_before() {
    let cfg = PipelineConfig {
        max_batch_age: MS(50),
        ..Default::default()
    };
    let mut h = start(cfg, false);
    let key = Key::new(Table::Retain, "t");
    h.send(put(&key, "a"), 0).await;
    assert!(h.flushed().is_none(), "one write, no size trigger");
    advance(MS(49)).await;
    settle().await;
    assert!(h.flushed().is_none(), "49 ms old");
    // Another write wakes the shard: the first is still too young.
    let other = Key::new(Table::Retain, "u");
    h.send(put(&other, "b"), 0).await;
    assert!(h.flushed().is_none(), "49 ms old, woken");
    advance(MS(1)).await;
    settle().await;
    let call = h.flushed().expect("flushed at 50 ms");
    let keys: Vec<&Key> = call.0.iter().map(|t| &t.key).collect();
    assert_eq!(keys, [&key, &other], "the younger write goes along");
    Harness::answer(call, |_| WRITTEN);
    assert_eq!(h.shut_down().await, 0);
}

/// After the write in flight completes at `now`, `op` is sent; asserts it waits exactly `window`
/// (it is older than `max_batch_age` long before), and returns its flush.
async fn held_for(h: &mut Harness, op: Op, window: Duration) -> Call {
    h.send(op, 0).await;
    advance(window - MS(1)).await;
    settle().await;
    assert!(h.flushed().is_none(), "held for {window:?}: not yet");
    advance(MS(1)).await;
    settle().await;
    h.flushed().expect("released at the end of the window")
}

#[tokio::test(start_paused = true)]
async fn a_hot_keys_window_doubles_while_throttled_and_halves_per_clean_write() {
    let cfg = PipelineConfig {
        max_batch_age: MS(1),
        hot_key_window: MS(100),
        hot_key_max_window: MS(300),
        ..Default::default()
    };
    let mut h = start(cfg, false);
    let key = Key::new(Table::Retain, "hot");
    h.send(put(&key, "1"), 0).await;
    advance(MS(1)).await;
    settle().await;
    let call = h.flushed().expect("age trigger");
    Harness::answer(call, |_| WRITTEN_HOT);
    settle().await;
    let call = held_for(&mut h, put(&key, "2"), MS(100)).await;
    Harness::answer(call, |_| WRITTEN_HOT);
    settle().await;
    let call = held_for(&mut h, put(&key, "3"), MS(200)).await;
    Harness::answer(call, |_| WRITTEN_HOT);
    settle().await;
    let call = held_for(&mut h, put(&key, "4"), MS(300)).await;
    Harness::answer(call, |_| WRITTEN);
    settle().await;
    let call = held_for(&mut h, put(&key, "5"), MS(150)).await;
    // Throttled and handed back: back in line, its window doubled, newer ops folded into it.
    Harness::answer(call, |t| KeyEnd::Requeue {
        write: t.write.clone(),
        ambiguous: false,
    });
    settle().await;
    let call = held_for(&mut h, put(&key, "6"), MS(300)).await;
    assert_eq!(call.0.len(), 1);
    assert_eq!(call.0[0].write, put(&key, "6").write, "5 and 6 merged");
    Harness::answer(call, |_| WRITTEN);
    settle().await;
    // 150 ms, then 75 ms < the base: forgotten, only the age trigger is left.
    let call = held_for(&mut h, put(&key, "7"), MS(150)).await;
    Harness::answer(call, |_| WRITTEN);
    settle().await;
    let call = held_for(&mut h, put(&key, "8"), MS(1)).await;
    Harness::answer(call, |_| WRITTEN);
    assert_eq!(h.shut_down().await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_barrier_is_passed_only_once_every_write_before_it_is_durable() {
    let cfg = PipelineConfig {
        max_batch_requests: 1,
        hot_key_window: MS(100),
        ..Default::default()
    };
    let mut h = start(cfg, true);
    let (a, b, c) = (
        Key::new(Table::Retain, "a"),
        Key::new(Table::Retain, "b"),
        Key::new(Table::Retain, "c"),
    );
    h.send(put(&a, "1"), 1).await;
    h.send(put(&b, "2"), 2).await;
    h.inbox.send(ShardMsg::Barrier(2)).await.expect("runs");
    h.send(put(&c, "3"), 3).await;
    let (fa, fb, fc) = (
        h.flushed().expect("a"),
        h.flushed().expect("b"),
        h.flushed().expect("c"),
    );
    assert!(h.acks.try_recv().is_err(), "ops 1 and 2 are in flight");
    Harness::answer(fb, |_| WRITTEN);
    settle().await;
    advance(super::barrier::BARRIER_CHECK_INTERVAL).await;
    settle().await;
    assert!(h.acks.try_recv().is_err(), "op 1 is still in flight");
    // Throttled and handed back: pending again, not durable.
    Harness::answer(fa, |t| KeyEnd::Requeue {
        write: t.write.clone(),
        ambiguous: false,
    });
    settle().await;
    advance(super::barrier::BARRIER_CHECK_INTERVAL).await;
    settle().await;
    assert!(h.acks.try_recv().is_err(), "op 1 is back in line");
    advance(MS(100)).await;
    settle().await;
    let fa = h.flushed().expect("a again, after its window");
    Harness::answer(fa, |_| WRITTEN);
    settle().await;
    advance(super::barrier::BARRIER_CHECK_INTERVAL).await;
    settle().await;
    assert_eq!(
        h.acks.try_recv().ok(),
        Some(2),
        "op 3 (after it) does not hold it"
    );
    Harness::answer(fc, |_| WRITTEN);
    assert_eq!(h.shut_down().await, 0);
}

/// `[pipeline.linger]`: a new mqtt_msg write waits its table's linger (not only max_batch_age),
/// so the ack's delete that arrives meanwhile cancels it and nothing is sent; a table without
/// linger goes out at max_batch_age as before.
#[tokio::test(start_paused = true)]
async fn a_lingering_table_waits_for_the_event_that_cancels_its_write() {
    let cfg = PipelineConfig {
        max_batch_age: MS(10),
        linger: crate::config::LingerConfig {
            mqtt_msg: MS(500),
            ..crate::config::LingerConfig::none()
        },
        ..Default::default()
    };
    let mut h = start(cfg, false);
    let msg = Key::new(Table::Msg, "id1");
    let retained = Key::new(Table::Retain, "t");
    h.send(put(&msg, "m"), 0).await;
    h.send(put(&retained, "r"), 1).await;
    advance(MS(10)).await;
    settle().await;
    let call = h.flushed().expect("the retained write at max_batch_age");
    let keys: Vec<&Key> = call.0.iter().map(|t| &t.key).collect();
    assert_eq!(keys, [&retained], "the message lingers");
    Harness::answer(call, |_| WRITTEN);
    advance(MS(489)).await;
    settle().await;
    assert!(h.flushed().is_none(), "499 ms: still lingering");
    // The ack arrives: its delete cancels the pending put outright.
    h.send(
        Op {
            key: msg.clone(),
            write: Write::Delete,
        },
        2,
    )
    .await;
    advance(MS(1000)).await;
    settle().await;
    let call = h
        .flushed()
        .expect("a delete for a put that was not fresh still goes out");
    assert_eq!(call.0.len(), 1);
    assert!(
        matches!(call.0[0].write, Write::Delete),
        "the put is replaced: one delete, never the put"
    );
    assert!(h.flushed().is_none());
    Harness::answer(call, |_| WRITTEN);

    // A fresh put (a message first stored) and its delete cancel outright: nothing is sent.
    let fresh = Key::new(Table::Msg, "id3");
    let mut item = fresh.to_item();
    item.insert("payload".into(), Value::S("m".into()));
    h.send(
        Op {
            key: fresh.clone(),
            write: Write::Put { item, fresh: true },
        },
        4,
    )
    .await;
    advance(MS(100)).await;
    h.send(
        Op {
            key: fresh.clone(),
            write: Write::Delete,
        },
        5,
    )
    .await;
    advance(MS(2000)).await;
    settle().await;
    assert!(h.flushed().is_none(), "cancelled: nothing to send");

    // Messages that no ack meets go out when their linger ends, on the next max_batch_age tick
    // (counted from the shard's start), together: sent at 3,604 ms, + 500 ms rounds up to
    // 4,110 ms, where the one sent at 3,607 ms (due 4,107 ms) leaves with it.
    advance(MS(5)).await;
    let lonely = Key::new(Table::Msg, "id2");
    h.send(put(&lonely, "m"), 6).await;
    advance(MS(3)).await;
    let later = Key::new(Table::Msg, "id4");
    h.send(put(&later, "m"), 7).await;
    advance(MS(502)).await;
    settle().await;
    assert!(h.flushed().is_none(), "4,109 ms: the tick is at 4,110");
    advance(MS(1)).await;
    settle().await;
    let call = h.flushed().expect("released at the tick");
    let keys: Vec<&Key> = call.0.iter().map(|t| &t.key).collect();
    assert_eq!(keys, [&lonely, &later], "one batch");
    Harness::answer(call, |_| WRITTEN);
    assert_eq!(h.shut_down().await, 0);
}
