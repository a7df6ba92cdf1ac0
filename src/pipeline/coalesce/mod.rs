//! Per-key coalescing: the write algebra and the pending-write table it maintains.
//!
//! Within a flush window each key holds one pending write, built by [`merge`] so that applying the
//! merged write gives the same table state as applying every write in order (README, "What is stored"):
//!
//! | earlier ∘ later | result |
//! |---|---|
//! | put ∘ put | the later put (certain only if the earlier one was) |
//! | put ∘ delete | delete; **nothing at all** when the put is certain (`fresh`, below) |
//! | put ∘ update | the put with the update applied (its guard evaluated against the put) |
//! | put ∘ set delta | the put with the set changed |
//! | delete ∘ put | the put |
//! | delete ∘ update | delete when guarded (the guard fails on a missing item); otherwise a put of key + SETs |
//! | delete ∘ set delta | a put of key + the added members; delete when nothing is added |
//! | update ∘ update | one update, later SETs winning, when both have the same guard and the first does not SET the guard attribute |
//! | set delta ∘ set delta | one delta: an ADD withdraws a pending DELETE of that member; a DELETE of a pending ADD withdraws the ADD, and when the earlier delta is not certain, also stays as a DELETE |
//! | anything ∘ put / delete | the put / delete |
//! | put ∘ timed | the put, with the timed write applied if its condition holds on it |
//! | delete ∘ timed | a put of key + SETs for a connect or a retained set (they hold on a missing item); delete for a disconnect |
//! | timed ∘ timed | the newer one for two retained writes, two connects from one node, two disconnects from one node, and a disconnect then a newer connect; a connect then a newer disconnect from its node: both on the connect's condition, or else the disconnect alone; otherwise both |
//!
//! **The certainty rule.** Cancelling — put∘delete to nothing, ADD∘DELETE of one member to
//! nothing — is sound only while no attempt that carried the earlier write can have been applied
//! and nothing earlier can have put it there. A write is *certain* (`fresh` on
//! [`Write::Put`](crate::storage::item::Write::Put) and
//! [`Write::SetDelta`](crate::storage::item::Write::SetDelta)) when it was planned from a message id seen for the
//! first time and has never been sent, or every attempt that carried it ended with a definite
//! "not applied" (UnprocessedItems, a throttling or validation error). It is *maybe applied* —
//! [`Write::maybe_applied`](crate::storage::item::Write::maybe_applied) — when an attempt ended ambiguously (a timeout, a 5xx, a reset:
//! DynamoDB says such a request "may or may not have succeeded") and the write is then handed back
//! to its shard, when it was replayed from the spool (a suffix of which may already be in the
//! table), or when its message id was already seen (a sender that repeats itself). Anything folded
//! into a maybe-applied write is maybe applied too. For a maybe-applied write the later delete /
//! `DELETE` is written: costlier by one write, never a resurrection. Without faults, replays and
//! duplicates every write is certain, so the rule costs nothing.
//!
//! **Timed writes** (event-time order, [`Timed`](crate::storage::item::Timed)) carry a
//! condition on the stored item, which the shard cannot see, so a fold must be exact for every
//! stored item. For two retained writes: if the earlier one applies (`event_ms <= t1`), the
//! later, newer one applies on its own too and rewrites every attribute; if it does not
//! (`event_ms > t1`), an older later one cannot either. Two connects from one node and two
//! disconnects from one node work the same way (the node is unchanged between them); a
//! disconnect then a newer connect is the connect (whenever the disconnect applies, so does the
//! connect, and it rewrites what the disconnect set). A connect followed by its disconnect
//! cannot be one plain write — the connect may be refused (a newer event stored) while the
//! disconnect still holds — so it becomes one with a fallback: both on the connect's condition
//! (after the connect the disconnect's always holds), and when DynamoDB refuses that, the
//! disconnect alone on its own (`Timed::or_else`; the flusher sends it on ConditionalCheckFailed).
//! Such a write folds with nothing further; connects from two nodes stay two writes.
//!
//! The few pairs the algebra cannot fold into one write (two updates guarded by different values,
//! an update and a set delta on one key) stay as a short queue for that key, sent one after the
//! other; the flusher never has two writes of one key in flight.
//!
//! [`Coalescer`] is a pure data structure: no I/O, no clock of its own (callers pass the instant an
//! op was accepted). The shard that owns it decides when to flush.
//!
//! Files: `algebra` folds two writes to one key ([`merge`]); `pending` is the table of pending
//! writes ([`Coalescer`]); `tests` checks both against the sequential model.

mod algebra;
mod pending;
#[cfg(test)]
mod tests;

pub use algebra::{Merged, merge};
pub use pending::{Coalescer, PushOutcome, Seqs, Taken};
