//! The router: the OS thread that takes accepted writes off the ingest queue and spreads them
//! over the shards by key hash, gathering what arrives within `pipeline.route_gather` into one
//! message per shard.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tokio::sync::mpsc;
use tracing::error;

use super::ShardMsg;
use crate::pipeline::ingest::{ByteBudget, IngestMsg};
use crate::storage::item::{Key, Op};

/// A shard's gathered ops are sent once they reach this many, whatever the time.
const GATHER_MAX_OPS: usize = 1024;

/// The shard a key belongs to. `DefaultHasher::new()` uses fixed keys, so this is stable.
pub fn shard_of(key: &Key, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// The router: runs on its own OS thread, blocking on the crossbeam ingest queue and on the
/// shards' bounded inboxes (which is how a slow shard pushes back on ingest). Ends after
/// forwarding the shutdown marker to every shard.
///
/// - `rx`: the ingest queue; its byte `budget` is released as each event is taken.
/// - `shards`: each shard's inbox and the inbox's byte limit, reserved here before a send (so
///   this blocks while a shard's inbox holds its byte limit) and released by the shard.
/// - `gather`: after the first event of a quiet spell, the router sleeps this long and then
///   takes everything queued meanwhile, so the events of that time reach each shard as one
///   message: one wakeup of the router and of each shard per `gather` instead of per event
///   (senders find no router waiting, so they wake nothing). It adds at most `gather` to
///   ingest-to-durable latency; 0 routes each event as it comes. A gathered message carries its
///   first event's acceptance time (ages are never underestimated).
/// - Order: each shard's ops keep their queue order; a barrier is sent after everything
///   gathered before it.
/// - Drops nothing, unless a shard task has died (a bug; logged).
pub(crate) fn route(
    rx: Receiver<IngestMsg>,
    shards: Vec<(mpsc::Sender<ShardMsg>, Arc<ByteBudget>)>,
    budget: Arc<ByteBudget>,
    gather: Duration,
) {
    let mut gathered = Gathered::new(&shards);
    'run: while let Ok(first) = rx.recv() {
        if !gathered.take(first, &budget) {
            break;
        }
        if !gather.is_zero() {
            std::thread::sleep(gather);
        }
        while let Ok(msg) = rx.try_recv() {
            if !gathered.take(msg, &budget) {
                break 'run;
            }
        }
        gathered.send_all();
    }
    gathered.send_all();
    for (shard, _) in &shards {
        let _ = shard.blocking_send(ShardMsg::Shutdown);
    }
}

/// One shard's gathered ops (with their sequence numbers) and when the first was accepted.
type ShardOps = (Vec<(Op, u64)>, Option<Instant>);

/// The ops gathered for each shard.
struct Gathered<'a> {
    shards: &'a [(mpsc::Sender<ShardMsg>, Arc<ByteBudget>)],
    ops: Vec<ShardOps>,
}

impl<'a> Gathered<'a> {
    fn new(shards: &'a [(mpsc::Sender<ShardMsg>, Arc<ByteBudget>)]) -> Self {
        Gathered {
            shards,
            ops: (0..shards.len()).map(|_| (Vec::new(), None)).collect(),
        }
    }

    /// Takes one message off the ingest queue; `false` at the shutdown marker.
    fn take(&mut self, msg: IngestMsg, budget: &ByteBudget) -> bool {
        match msg {
            IngestMsg::Event(env) => {
                budget.release(env.bytes);
                let numbered = env.first_seq != 0;
                let n = self.shards.len();
                for (i, op) in env.ops.into_iter().enumerate() {
                    let seq = if numbered {
                        env.first_seq + i as u64
                    } else {
                        0
                    };
                    let s = shard_of(&op.key, n);
                    let (ops, since) = &mut self.ops[s];
                    ops.push((op, seq));
                    since.get_or_insert(env.accepted);
                    if ops.len() >= GATHER_MAX_OPS {
                        self.send(s);
                    }
                }
            }
            IngestMsg::Barrier(b) => {
                // Everything before the barrier goes ahead of it.
                self.send_all();
                for (shard, _) in self.shards {
                    let _ = shard.blocking_send(ShardMsg::Barrier(b));
                }
            }
            IngestMsg::Shutdown => return false,
        }
        true
    }

    fn send_all(&mut self) {
        for s in 0..self.shards.len() {
            self.send(s);
        }
    }

    /// Sends shard `s` what was gathered for it.
    fn send(&mut self, s: usize) {
        let (ops, since) = &mut self.ops[s];
        let (Some(accepted), false) = (since.take(), ops.is_empty()) else {
            return;
        };
        let batch = std::mem::take(ops);
        let (shard, inbox_budget) = &self.shards[s];
        // Bounded in bytes as well as in messages: waits while the shard's inbox holds its byte
        // limit (one message larger than the limit goes alone).
        let bytes = inbox_budget.reserve_wait(batch.iter().map(|(op, _)| op.size()).sum());
        if shard
            .blocking_send(ShardMsg::Ops(batch, accepted, bytes))
            .is_err()
        {
            // Only after a shard task died (a bug): say so loudly.
            error!(shard = s, "shard is gone; writes lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ingest::Envelope;
    use crate::storage::item::{Table, Write};

    fn event(keys: &[&str], first_seq: u64) -> IngestMsg {
        IngestMsg::Event(Envelope {
            ops: keys
                .iter()
                .map(|k| Op {
                    key: Key::new(Table::Retain, *k),
                    write: Write::Delete,
                })
                .collect(),
            bytes: 0,
            accepted: Instant::now(),
            first_seq,
        })
    }

    /// What one shard received: each message as its ops' keys (or a marker).
    fn received(rx: &mut mpsc::Receiver<ShardMsg>) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            got.push(match msg {
                ShardMsg::Ops(ops, _, _) => ops
                    .iter()
                    .map(|(op, seq)| format!("{}#{seq}", op.key.hash))
                    .collect::<Vec<_>>()
                    .join(","),
                ShardMsg::Barrier(b) => format!("barrier {b}"),
                ShardMsg::Shutdown => "shutdown".into(),
            });
        }
        got
    }

    /// Events queued together reach a shard as one message in queue order; a barrier goes after
    /// everything before it and splits what follows; shutdown ends it. (Everything is queued
    /// before the router starts, so no timing is involved.)
    #[test]
    fn queued_events_reach_a_shard_as_one_message_in_order_and_barriers_split_them() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (shard_tx, mut shard_rx) = mpsc::channel(64);
        tx.send(event(&["a", "b"], 1)).unwrap();
        tx.send(event(&["c"], 3)).unwrap();
        tx.send(IngestMsg::Barrier(3)).unwrap();
        tx.send(event(&["d"], 4)).unwrap();
        tx.send(IngestMsg::Shutdown).unwrap();
        let shards = vec![(shard_tx, Arc::new(ByteBudget::new(1 << 20)))];
        route(
            rx,
            shards,
            Arc::new(ByteBudget::new(1 << 20)),
            Duration::ZERO,
        );
        assert_eq!(
            received(&mut shard_rx),
            ["a#1,b#2,c#3", "barrier 3", "d#4", "shutdown"]
        );
    }

    /// A shard's gathered ops go out at [`GATHER_MAX_OPS`] even while more are queued.
    #[test]
    fn a_shard_gets_at_most_gather_max_ops_per_message() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (shard_tx, mut shard_rx) = mpsc::channel(64);
        let keys: Vec<String> = (0..GATHER_MAX_OPS + 1).map(|i| format!("k{i}")).collect();
        for k in &keys {
            tx.send(event(&[k], 0)).unwrap();
        }
        tx.send(IngestMsg::Shutdown).unwrap();
        let shards = vec![(shard_tx, Arc::new(ByteBudget::new(1 << 30)))];
        route(
            rx,
            shards,
            Arc::new(ByteBudget::new(1 << 30)),
            Duration::ZERO,
        );
        let mut sizes = Vec::new();
        while let Ok(msg) = shard_rx.try_recv() {
            if let ShardMsg::Ops(ops, _, _) = msg {
                sizes.push(ops.len());
            }
        }
        assert_eq!(sizes, [GATHER_MAX_OPS, 1]);
    }
}
