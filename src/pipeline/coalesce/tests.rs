//! The coalescer against the sequential model: for random event sequences, coalescing (with
//! writes taken and completed at random points, as the flusher does) and then applying gives the
//! same tables as applying every write in order — also when DynamoDB is ambiguous: an attempt may
//! be applied and then answered with an error (retried in place, or handed back to the shard), the
//! service may crash with writes in flight (applied or not) and replay a suffix of the ops from the
//! spool, some of which had already landed, and senders repeat publishes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::event::{ClientInfo, HookEvent, Message};
use crate::rules::{Action, Rule, RuleSet, StorageFormat};
use crate::storage::item::{Item, Key, Op, Table, Value, Write};
use crate::storage::model::TableModel;

#[derive(Debug, Clone)]
enum Step {
    Connect {
        client: u8,
        node: u8,
    },
    Disconnect {
        client: u8,
        node: u8,
    },
    Publish {
        client: u8,
        topic: u8,
        qos: u8,
        retain: bool,
        empty: bool,
        /// A sender repeating an earlier publish (this index into the published ones).
        repeat: Option<usize>,
    },
    Ack {
        client: u8,
        pick: usize,
    },
    Unsubscribe {
        client: u8,
        topic: u8,
    },
    /// Take up to this many requests' worth of writes and put them in flight.
    Take(usize),
    /// Complete (apply) up to this many in-flight writes, oldest first.
    Complete(usize),
    /// The same, as throttled: each completed key is held for this many milliseconds (hot key).
    CompleteHot(usize, u8),
    /// Hand up to this many in-flight writes back unapplied (throttled) and hold their keys.
    Requeue(usize, u8),
    /// Up to this many in-flight writes are applied and answered with an error (a 500 after the
    /// write landed, a timeout): then retried in place (applied again, completed) …
    AmbiguousRetry(usize),
    /// … or, throttled on the retry, handed back to the shard and their keys held.
    AmbiguousRequeue(usize, u8),
    /// The service dies: each write in flight was applied or not (bit i of the mask for the i-th),
    /// and on restart the spool replays every op from a point at or before the oldest unsettled
    /// one (`back` ops further back: a segment deleted later than it could have been).
    Crash {
        applied: u32,
        back: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..4u8, 0..2u8).prop_map(|(client, node)| Step::Connect { client, node }),
        4 => (0..4u8, 0..2u8).prop_map(|(client, node)| Step::Disconnect { client, node }),
        4 => (
            0..4u8,
            0..3u8,
            0..3u8,
            any::<bool>(),
            any::<bool>(),
            prop::option::weighted(0.15, any::<usize>())
        )
            .prop_map(|(client, topic, qos, retain, empty, repeat)| Step::Publish {
                client,
                topic,
                qos,
                retain,
                empty,
                repeat,
            }),
        4 => (0..4u8, any::<usize>()).prop_map(|(client, pick)| Step::Ack { client, pick }),
        4 => (0..4u8, 0..3u8).prop_map(|(client, topic)| Step::Unsubscribe { client, topic }),
        4 => (1..30usize).prop_map(Step::Take),
        4 => (1..30usize).prop_map(Step::Complete),
        4 => (1..30usize, 0..20u8).prop_map(|(n, ms)| Step::CompleteHot(n, ms)),
        4 => (1..30usize, 0..20u8).prop_map(|(n, ms)| Step::Requeue(n, ms)),
        3 => (1..30usize).prop_map(Step::AmbiguousRetry),
        3 => (1..30usize, 0..20u8).prop_map(|(n, ms)| Step::AmbiguousRequeue(n, ms)),
        1 => (any::<u32>(), 0..20u8).prop_map(|(applied, back)| Step::Crash { applied, back }),
    ]
}

fn client(c: u8, node: u8) -> ClientInfo {
    ClientInfo {
        node: format!("emqx@n{node}"),
        clientid: format!("c{c}"),
        ..Default::default()
    }
}

/// The pipeline as the property test plays it: the coalescer and the writes in flight, the table
/// they are applied to, and what ingest and the spool remember.
struct Sim {
    coalesced: TableModel,
    coalescer: Coalescer,
    in_flight: VecDeque<Taken>,
    /// Every message published, for acks and repeats to pick from.
    published: Vec<(String, String)>,
    dedup: crate::pipeline::dedup::Dedup,
    /// Every op accepted, by number (what the spool holds until it is settled).
    history: Vec<Op>,
    next_id: u128,
    format: StorageFormat,
    /// How late step i's event is, in steps of 2.5 s (cycled): with event-time order on, events
    /// then reach the pipeline out of their time order, as from a slower instance.
    late: Vec<u8>,
}

fn message(id: String, topic: String, from: String, payload: Vec<u8>) -> Message {
    Message {
        node: "emqx@n0".into(),
        id,
        qos: 1,
        from,
        topic,
        payload,
        retain: false,
        timestamp_ms: 1,
        username: None,
        expiry_interval_s: None,
    }
}

impl Sim {
    /// The hook event of step number `i`, if it is one.
    fn event(&mut self, step: &Step, i: usize) -> Option<HookEvent> {
        let late = match self.late.len() {
            0 => 0,
            n => u64::from(self.late[i % n]) * 2500,
        };
        Some(match *step {
            Step::Connect { client: c, node } => HookEvent::ClientConnected {
                client: client(c, node),
                connected_at_ms: 1_000_000 + i as u64 * 1000 - late,
            },
            Step::Disconnect { client: c, node } => HookEvent::ClientDisconnected {
                client: client(c, node),
                reason: "normal".into(),
                disconnected_at_ms: 1_000_000 + i as u64 * 1000 - late,
            },
            Step::Publish {
                client: c,
                topic,
                qos,
                retain,
                empty,
                repeat,
            } => {
                let (id, topic) = match repeat {
                    Some(pick) if !self.published.is_empty() => {
                        self.published[pick % self.published.len()].clone()
                    }
                    _ => {
                        self.next_id += 1;
                        let id = crate::guid::to_hex(self.next_id);
                        let topic = format!("t/{topic}");
                        self.published.push((id.clone(), topic.clone()));
                        (id, topic)
                    }
                };
                let payload = if empty {
                    vec![]
                } else {
                    format!("p{i}").into_bytes()
                };
                let mut message = message(id, topic, format!("c{c}"), payload);
                (message.qos, message.retain) = (qos, retain);
                message.timestamp_ms = 1_000_000 + i as u64 * 1000 - late;
                HookEvent::MessagePublish { message }
            }
            Step::Ack { client: c, pick } => {
                let (id, topic) = if self.published.is_empty() {
                    (crate::guid::to_hex(7), "t/0".to_string())
                } else {
                    self.published[pick % self.published.len()].clone()
                };
                HookEvent::MessageAcked {
                    client: client(c, 0),
                    message: message(id, topic, "x".into(), b"p".to_vec()),
                }
            }
            Step::Unsubscribe { client: c, topic } => HookEvent::SessionUnsubscribed {
                client: client(c, 0),
                topic: format!("t/{topic}"),
            },
            _ => return None,
        })
    }

    /// Ends up to `n` flights, oldest first, as `step` says: written, written but throttled (the
    /// key waits a window), throttled and handed back unapplied; or applied but answered with an
    /// error, then retried in place (applied twice) or handed back maybe applied.
    fn end_flights(&mut self, step: &Step, n: usize, at: Instant) {
        let (applied, hand_back, hold) = match *step {
            Step::Complete(_) => (1, false, None),
            Step::CompleteHot(_, ms) => (1, false, Some(ms)),
            Step::Requeue(_, ms) => (0, true, Some(ms)),
            Step::AmbiguousRetry(_) => (2, false, None),
            Step::AmbiguousRequeue(_, ms) => (1, true, Some(ms)),
            _ => return,
        };
        for _ in 0..n {
            let Some(t) = self.in_flight.pop_front() else {
                break;
            };
            for _ in 0..applied {
                self.coalesced.apply(&Op {
                    key: t.key.clone(),
                    write: t.write.clone(),
                });
            }
            self.coalescer.complete(&t.key);
            if hand_back {
                let mut write = t.write;
                if applied > 0 {
                    write.maybe_applied();
                }
                self.coalescer
                    .requeue(t.key.clone(), write, t.seqs, t.since);
            }
            if let Some(ms) = hold {
                self.coalescer
                    .hold(&t.key, at + Duration::from_millis(u64::from(ms)));
            }
        }
    }

    /// The service dies with writes in flight (bit i of `applied`: the i-th was applied) and
    /// restarts, replaying the spool from `back` ops before the oldest unsettled one.
    fn crash(&mut self, applied: u32, back: u8, at: Instant) {
        // Everything before the oldest unsettled op (pending or in flight: the service never
        // heard how those flights ended) is in the table; the spool holds at least the rest.
        let unsettled = self
            .coalescer
            .min_seq()
            .into_iter()
            .chain(self.in_flight.iter().map(|t| t.seqs.first))
            .min()
            .unwrap_or(self.history.len() as u64 + 1);
        for (bit, t) in self.in_flight.drain(..).enumerate() {
            if bit < 32 && applied & (1 << bit) != 0 {
                self.coalesced.apply(&Op {
                    key: t.key,
                    write: t.write,
                });
            }
        }
        let from = unsettled.saturating_sub(u64::from(back)).max(1);
        self.coalescer = Coalescer::new();
        for seq in from..=self.history.len() as u64 {
            let mut op = self.history[seq as usize - 1].clone();
            op.write.maybe_applied();
            self.coalescer.push_numbered(op, at, seq);
        }
    }

    /// Plans `event`, passes repeated publishes through ingest's dedup (an acked one is dropped,
    /// an unacked one marked maybe applied) and numbers and pushes the ops; returns them.
    fn accept(&mut self, event: &HookEvent, rules: &RuleSet, at: Instant) -> Vec<Op> {
        let mut ops = rules
            .plan(event, &self.format)
            .expect("generated events are valid");
        match event {
            HookEvent::MessagePublish { message } if !ops.is_empty() => {
                match self.dedup.publish(&message.id) {
                    crate::pipeline::dedup::Seen::New => {}
                    crate::pipeline::dedup::Seen::Published => {
                        ops.iter_mut().for_each(|op| op.write.maybe_applied())
                    }
                    crate::pipeline::dedup::Seen::Acked => ops.clear(),
                }
            }
            HookEvent::MessageAcked { message, .. } => self.dedup.acked(&message.id),
            _ => {}
        }
        for op in &ops {
            self.history.push(op.clone());
            self.coalescer
                .push_numbered(op.clone(), at, self.history.len() as u64);
        }
        ops
    }

    /// Finishes what is in flight, then flushes the rest, until nothing is left.
    fn drain(&mut self, later: Instant) {
        loop {
            for t in self.in_flight.drain(..) {
                self.coalesced.apply(&Op {
                    key: t.key.clone(),
                    write: t.write,
                });
                self.coalescer.complete(&t.key);
            }
            self.coalescer.release_due(later);
            let batch = self.coalescer.take(25, usize::MAX);
            if batch.is_empty() {
                break;
            }
            self.in_flight.extend(batch);
        }
    }
}

/// Replays `steps` through the rules, then both ways; returns (sequential, coalesced).
///
/// The coalesced side plays the pipeline: ops are numbered as ingest numbers them, repeated
/// publishes go through ingest's [`crate::pipeline::dedup::Dedup`] (an acked one is dropped, an
/// unacked one marked maybe applied), and a crash replays the spool's suffix marked maybe applied.
fn run(steps: &[Step], rules: &RuleSet, initial: &TableModel) -> (TableModel, TableModel, u64) {
    run_with(steps, rules, initial, StorageFormat::default(), Vec::new())
}

/// [`run`] with a storage format, and events `late` (see [`Sim::late`]).
fn run_with(
    steps: &[Step],
    rules: &RuleSet,
    initial: &TableModel,
    format: StorageFormat,
    late: Vec<u8>,
) -> (TableModel, TableModel, u64) {
    let mut sequential = initial.clone();
    let mut sim = Sim {
        coalesced: initial.clone(),
        coalescer: Coalescer::new(),
        in_flight: VecDeque::new(),
        published: Vec::new(),
        dedup: crate::pipeline::dedup::Dedup::new(Duration::from_secs(3600), 100_000),
        history: Vec::new(),
        next_id: 1u128 << 80,
        format,
        late,
    };
    let now = Instant::now();
    let mut ops_total = 0u64;
    for (i, step) in steps.iter().enumerate() {
        let at = now + Duration::from_millis(i as u64);
        sim.coalescer.release_due(at);
        match *step {
            Step::Take(n) => sim.in_flight.extend(sim.coalescer.take(n, usize::MAX)),
            Step::Complete(n)
            | Step::CompleteHot(n, _)
            | Step::Requeue(n, _)
            | Step::AmbiguousRetry(n)
            | Step::AmbiguousRequeue(n, _) => sim.end_flights(step, n, at),
            Step::Crash { applied, back } => sim.crash(applied, back, at),
            _ => {}
        }
        if let Some(event) = sim.event(step, i) {
            for op in sim.accept(&event, rules, at) {
                ops_total += 1;
                sequential.apply(&op);
            }
        }
    }
    sim.drain(now + Duration::from_secs(3600));
    let coalescer = &sim.coalescer;
    assert!(
        coalescer.is_empty(),
        "drained coalescer still holds {} keys",
        coalescer.len()
    );
    assert_eq!(coalescer.bytes(), 0);
    assert_eq!(coalescer.ready(), 0);
    (sequential, sim.coalesced, ops_total)
}

#[allow(clippy::needless_range_loop)]
fn initial_state() -> impl Strategy<Value = TableModel> {
    (
        any::<[bool; 4]>(),
        any::<[u8; 4]>(),
        any::<[bool; 3]>(),
        any::<[u8; 7]>(),
    )
        .prop_map(|(present, nodes, retained, stamps)| {
            // Some items carry an event time (written under event-time order, by another
            // instance): 0..=255 steps of 0.5 s into the run, or none.
            let stamp = |i: usize| {
                (stamps[i] % 3 != 0).then(|| Value::N(1_000_000 + i64::from(stamps[i]) * 500))
            };
            let mut model = TableModel::new();
            for c in 0..4 {
                if present[c] {
                    let key = Key::new(Table::Client, format!("c{c}"));
                    let mut item: Item = key.to_item();
                    item.insert("node".into(), Value::S(format!("emqx@n{}", nodes[c] % 2)));
                    item.insert("connect_state".into(), Value::N(1));
                    item.insert("online_at".into(), Value::N(5));
                    item.insert("offline_at".into(), Value::N(0));
                    if let Some(at) = stamp(c) {
                        item.insert("event_ms".into(), at.clone());
                        item.insert("connected_ms".into(), at);
                    }
                    model.insert(key, item);
                }
            }
            for t in 0..3 {
                if retained[t] {
                    let key = Key::new(Table::Retain, format!("t/{t}"));
                    let mut item = key.to_item();
                    item.insert("payload".into(), Value::S("old".into()));
                    if let Some(at) = stamp(4 + t) {
                        item.insert("event_ms".into(), at);
                    }
                    model.insert(key.clone(), item);
                    let acked = Key::with_range(Table::Acked, format!("t/{t}"), "c1");
                    model.insert(acked.clone(), acked.to_item());
                    let map = Key::new(Table::TopicMsgMap, format!("t/{t}"));
                    let mut item = map.to_item();
                    item.insert(
                        "MsgId".into(),
                        Value::Ss(BTreeSet::from(["old-id".to_string()])),
                    );
                    model.insert(map, item);
                }
            }
            model
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn coalescing_equals_sequential_application(
        steps in prop::collection::vec(step(), 0..120),
        initial in initial_state(),
        with_store in any::<bool>(),
    ) {
        let mut rules = RuleSet::default().rules().to_vec();
        if with_store {
            rules.push(Rule::new("message.publish", Action::OnMessageStore, Some("#")).unwrap());
        }
        let (sequential, coalesced, _) = run(&steps, &RuleSet::new(rules), &initial);
        prop_assert_eq!(sequential.normalized(), coalesced.normalized());
    }

    /// The same under event-time order, with events reaching the pipeline out of their time
    /// order (a slower instance): the model applies each timed write's DynamoDB condition, so
    /// folding a newer write over an older one, keeping queues where no one write is both,
    /// requeues and writes applied twice (an ambiguous answer, retried) all end in the tables
    /// the conditions give in arrival order.
    ///
    /// Without crashes: replaying a spool suffix is not the same as applying it once when the
    /// events in it are out of time order across nodes. After `connect(m, 1)`, `disconnect(n, 5)`
    /// (refused: the client is on `m`) and `connect(n, 3)` (applied), a replay of the last two
    /// applies the disconnect (now on `n`, and 3 < 5): offline, which is what event-time order
    /// gives, where arrival order gave online. ARCHITECTURE.md, "Event-time order", has this.
    #[test]
    fn event_time_coalescing_equals_sequential_application(
        steps in prop::collection::vec(step(), 0..120)
            .prop_map(|s| s.into_iter().filter(|s| !matches!(s, Step::Crash { .. })).collect::<Vec<_>>()),
        initial in initial_state(),
        late in prop::collection::vec(prop_oneof![3 => Just(0u8), 1 => 1..4u8], 1..16),
    ) {
        let format = StorageFormat { event_time: true, ..StorageFormat::default() };
        let (sequential, coalesced, _) =
            run_with(&steps, &RuleSet::default(), &initial, format, late);
        prop_assert_eq!(sequential.normalized(), coalesced.normalized());
    }
}

/// Write-level algebra cases the event model does not reach.
#[derive(Debug, Clone)]
enum RawWrite {
    Put(u8),
    Delete,
    Update {
        node: Option<u8>,
        sets_node: bool,
        v: u8,
    },
    Add,
    Del(u8),
}

fn raw_write() -> impl Strategy<Value = RawWrite> {
    prop_oneof![
        (0..3u8).prop_map(RawWrite::Put),
        Just(RawWrite::Delete),
        (prop::option::of(0..2u8), any::<bool>(), any::<u8>())
            .prop_map(|(node, sets_node, v)| RawWrite::Update { node, sets_node, v }),
        Just(RawWrite::Add),
        (0..20u8).prop_map(RawWrite::Del),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn raw_writes_on_one_key_equal_sequential_application(
        writes in prop::collection::vec((raw_write(), any::<bool>()), 0..60),
        start in prop::option::of(0..2u8),
    ) {
        let key = Key::new(Table::Client, "k");
        let mut initial = TableModel::new();
        if let Some(node) = start {
            let mut item = key.to_item();
            item.insert("node".into(), Value::S(format!("n{node}")));
            initial.insert(key.clone(), item);
        }
        let mut sequential = initial.clone();
        let mut coalesced = initial;
        let mut coalescer = Coalescer::new();
        let mut next_member = 100u32;
        let mut added: Vec<String> = Vec::new();
        let now = Instant::now();
        for (w, flush) in writes {
            let write = match w {
                RawWrite::Put(n) => {
                    let mut item = key.to_item();
                    item.insert("node".into(), Value::S(format!("n{n}")));
                    Write::Put { item, fresh: false }
                }
                RawWrite::Delete => Write::Delete,
                RawWrite::Update { node, sets_node, v } => {
                    let mut set: BTreeMap<String, Value> = [("v".to_string(), Value::N(i64::from(v)))].into();
                    if sets_node {
                        set.insert("node".into(), Value::S(format!("n{}", v % 2)));
                    }
                    Write::Update { set, guard: node.map(|n| ("node".to_string(), Value::S(format!("n{n}")))) }
                }
                RawWrite::Add => {
                    next_member += 1;
                    added.push(format!("m{next_member}"));
                    Write::SetDelta { attr: "MsgId".into(), add: [format!("m{next_member}")].into(), del: BTreeSet::new(), fresh: true }
                }
                RawWrite::Del(i) => {
                    let m = added.get(usize::from(i)).cloned().unwrap_or_else(|| format!("x{i}"));
                    Write::SetDelta { attr: "MsgId".into(), add: BTreeSet::new(), del: [m].into(), fresh: true }
                }
            };
            let op = Op { key: key.clone(), write };
            sequential.apply(&op);
            coalescer.push(op, now);
            if flush {
                for t in coalescer.take(25, usize::MAX) {
                    coalesced.apply(&Op { key: t.key.clone(), write: t.write });
                    coalescer.complete(&t.key);
                }
            }
        }
        loop {
            let batch = coalescer.take(25, usize::MAX);
            if batch.is_empty() { break; }
            for t in batch {
                coalesced.apply(&Op { key: t.key.clone(), write: t.write });
                coalescer.complete(&t.key);
            }
        }
        prop_assert_eq!(sequential.normalized(), coalesced.normalized());
    }
}

#[test]
fn publish_then_ack_before_flush_writes_nothing() {
    let rules = RuleSet::default();
    let format = StorageFormat::default();
    let message = Message {
        node: "emqx@n0".into(),
        id: crate::guid::to_hex(1 << 90),
        qos: 1,
        from: "p".into(),
        topic: "t".into(),
        payload: b"x".to_vec(),
        retain: false,
        timestamp_ms: 1,
        username: None,
        expiry_interval_s: None,
    };
    let mut coalescer = Coalescer::new();
    let now = Instant::now();
    let publish = HookEvent::MessagePublish {
        message: message.clone(),
    };
    let ack = HookEvent::MessageAcked {
        client: client(1, 0),
        message,
    };
    for op in rules.plan(&publish, &format).unwrap() {
        assert_eq!(coalescer.push(op, now), PushOutcome::New);
    }
    let outcomes: Vec<_> = rules
        .plan(&ack, &format)
        .unwrap()
        .into_iter()
        .map(|op| coalescer.push(op, now))
        .collect();
    assert_eq!(
        outcomes,
        [
            PushOutcome::New,
            PushOutcome::Cancelled,
            PushOutcome::Cancelled
        ]
    );
    // Only the mqtt_acked put remains.
    let taken = coalescer.take(25, usize::MAX);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].key.table, Table::Acked);
}

#[test]
fn in_flight_keys_are_not_handed_out_twice() {
    let key = Key::new(Table::Retain, "t");
    let put = |p: &str| {
        let mut item = key.to_item();
        item.insert("payload".into(), Value::S(p.into()));
        Op {
            key: key.clone(),
            write: Write::Put { item, fresh: false },
        }
    };
    let now = Instant::now();
    let mut c = Coalescer::new();
    c.push(put("a"), now);
    let first = c.take(25, usize::MAX);
    assert_eq!(first.len(), 1);
    assert_eq!(c.push(put("b"), now), PushOutcome::New);
    assert_eq!(
        c.push(
            Op {
                key: key.clone(),
                write: Write::Delete
            },
            now
        ),
        PushOutcome::Merged
    );
    assert_eq!(c.ready(), 0);
    assert!(c.take(25, usize::MAX).is_empty(), "the key is in flight");
    c.complete(&key);
    assert_eq!(c.ready(), 1);
    let second = c.take(25, usize::MAX);
    assert_eq!(second[0].write, Write::Delete);
}

#[test]
fn take_respects_request_and_byte_limits_and_age_order() {
    let now = Instant::now();
    let mut c = Coalescer::new();
    for i in 0..60 {
        c.push(
            Op {
                key: Key::new(Table::Msg, format!("m{i}")),
                write: Write::Delete,
            },
            now + Duration::from_millis(i),
        );
    }
    let batch = c.take(25, usize::MAX);
    assert_eq!(batch.len(), 25);
    assert_eq!(batch[0].key.hash, "m0");
    assert_eq!(c.oldest(), Some(now + Duration::from_millis(25)));
    // Each key is "msgid" (5) + "mNN" (3) = 8 bytes.
    let batch = c.take(25, 8 * 3);
    assert_eq!(batch.len(), 3);
    assert_eq!(c.len(), 32);
}

/// Every pushed op's number ends up in exactly one range: the write it was folded into, or
/// the cancelled pair it vanished with.
#[test]
fn sequence_numbers_follow_the_ops() {
    use crate::pipeline::coalesce::Seqs;
    let now = Instant::now();
    let mut c = Coalescer::new();
    let key = Key::new(Table::Retain, "t");
    let put = |p: &str| {
        let mut item = key.to_item();
        item.insert("payload".into(), Value::S(p.into()));
        Op {
            key: key.clone(),
            write: Write::Put { item, fresh: false },
        }
    };
    assert_eq!(c.push_numbered(put("a"), now, 10), (PushOutcome::New, None));
    assert_eq!(
        c.push_numbered(put("b"), now, 12),
        (PushOutcome::Merged, None)
    );
    let taken = c.take(25, usize::MAX);
    assert_eq!(
        taken[0].seqs,
        Seqs {
            first: 10,
            last: 12
        }
    );
    // While that write is in flight, a fresh message put and its delete cancel out.
    let msg = Key::new(Table::Msg, "m");
    let fresh = Op {
        key: msg.clone(),
        write: Write::Put {
            item: msg.to_item(),
            fresh: true,
        },
    };
    assert_eq!(c.push_numbered(fresh, now, 20), (PushOutcome::New, None));
    assert_eq!(
        c.push_numbered(
            Op {
                key: msg.clone(),
                write: Write::Delete
            },
            now,
            21
        ),
        (
            PushOutcome::Cancelled,
            Some(Seqs {
                first: 20,
                last: 21
            })
        )
    );
    assert!(c.is_empty());
}

#[test]
fn a_held_key_waits_its_window_while_others_go_and_its_ops_merge() {
    let hot = Key::new(Table::Retain, "hot");
    let cold = Key::new(Table::Retain, "cold");
    let put = |key: &Key, p: &str| {
        let mut item = key.to_item();
        item.insert("payload".into(), Value::S(p.into()));
        Op {
            key: key.clone(),
            write: Write::Put { item, fresh: false },
        }
    };
    let t0 = Instant::now();
    let mut c = Coalescer::new();
    c.push(put(&hot, "1"), t0);
    let first = c.take(25, usize::MAX);
    assert_eq!(first.len(), 1);
    // Throttled: the key waits 100 ms after its write completes.
    c.complete(&hot);
    c.hold(&hot, t0 + Duration::from_millis(100));
    assert_eq!(c.held(), 1);
    c.push(put(&hot, "2"), t0 + Duration::from_millis(1));
    c.push(put(&cold, "x"), t0 + Duration::from_millis(2));
    assert_eq!(
        c.push(put(&hot, "3"), t0 + Duration::from_millis(3)),
        PushOutcome::Merged
    );
    assert_eq!(c.ready(), 1, "only the cold key is ready");
    assert_eq!(
        c.oldest(),
        Some(t0 + Duration::from_millis(2)),
        "a held write does not count towards the flush age"
    );
    let taken = c.take(25, usize::MAX);
    assert_eq!(taken.iter().map(|t| &t.key).collect::<Vec<_>>(), [&cold]);
    c.complete(&cold);
    assert_eq!(
        c.release_due(t0 + Duration::from_millis(99)),
        Some(t0 + Duration::from_millis(100))
    );
    assert!(c.take(25, usize::MAX).is_empty());
    assert_eq!(c.release_due(t0 + Duration::from_millis(100)), None);
    assert_eq!(c.ready(), 1);
    let taken = c.take(25, usize::MAX);
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0].write,
        put(&hot, "3").write,
        "2 and 3 merged into one write"
    );
    // Held while in flight: not ready after completing until the hold ends.
    c.push(put(&hot, "4"), t0);
    c.hold(&hot, t0 + Duration::from_millis(500));
    c.complete(&hot);
    assert_eq!(c.ready(), 0);
    c.release_due(t0 + Duration::from_millis(500));
    assert_eq!(c.ready(), 1);
}

/// The certainty rule on one key: a maybe-applied put or ADD is never cancelled by a later
/// delete or DELETE; a certain one is.
#[test]
fn maybe_applied_writes_are_not_cancelled_by_a_later_delete() {
    let msg = Key::new(Table::Msg, "m");
    let put = |fresh| Write::Put {
        item: msg.to_item(),
        fresh,
    };
    assert_eq!(merge(&msg, put(true), Write::Delete), Merged::Cancelled);
    assert_eq!(
        merge(&msg, put(false), Write::Delete),
        Merged::One(Write::Delete)
    );
    // A certain put folded into a maybe-applied one stays maybe applied.
    assert_eq!(merge(&msg, put(false), put(true)), Merged::One(put(false)));
    let map = Key::new(Table::TopicMsgMap, "t");
    let delta = |add: &[&str], del: &[&str], fresh| Write::SetDelta {
        attr: "MsgId".into(),
        add: add.iter().map(|s| s.to_string()).collect(),
        del: del.iter().map(|s| s.to_string()).collect(),
        fresh,
    };
    assert_eq!(
        merge(&map, delta(&["a"], &[], true), delta(&[], &["a"], true)),
        Merged::Cancelled
    );
    assert_eq!(
        merge(
            &map,
            delta(&["a", "b"], &[], false),
            delta(&[], &["a"], true)
        ),
        Merged::One(delta(&["b"], &["a"], false))
    );
}

/// One key in a long retry must not make every other write flush at once: the age trigger
/// counts only writes that could be sent now.
#[test]
fn pending_writes_of_in_flight_keys_do_not_drive_the_flush_age() {
    let t0 = Instant::now();
    let mut c = Coalescer::new();
    let slow = Key::new(Table::Retain, "slow");
    let op = |key: &Key| Op {
        key: key.clone(),
        write: Write::Delete,
    };
    c.push(op(&slow), t0);
    assert_eq!(c.take(25, usize::MAX).len(), 1);
    // The slow key's next write waits behind its flight; another key arrives later.
    c.push(op(&slow), t0 + Duration::from_millis(1));
    let other = Key::new(Table::Retain, "other");
    c.push(op(&other), t0 + Duration::from_millis(40));
    assert_eq!(c.oldest(), Some(t0 + Duration::from_millis(40)));
    c.complete(&slow);
    assert_eq!(c.oldest(), Some(t0 + Duration::from_millis(1)));
}
