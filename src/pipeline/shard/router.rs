//! The router: the OS thread that takes accepted writes off the ingest queue and spreads them
//! over the shards by key hash.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use tokio::sync::mpsc;
use tracing::error;

use super::ShardMsg;
use crate::pipeline::ingest::{ByteBudget, IngestMsg};
use crate::storage::item::{Key, Op};

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
/// - Drops nothing, unless a shard task has died (a bug; logged).
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
