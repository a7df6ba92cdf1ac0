//! The retry loop with a scripted request (no SDK call is made) on paused time: backoff pauses pass
//! at once, nothing sleeps for real.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;
use crate::pipeline::flush::retry::{Deadline, RetryPolicy};
use crate::pipeline::flush::{Flusher, TableNames};
use crate::storage::item::Table;

/// Answers each attempt with the next scripted reply (then with `then()`), and logs the keys
/// each attempt carried. Shared by a request and the single-write requests split off it.
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    then: fn() -> Reply,
    sent: Mutex<Vec<Vec<Key>>>,
}

struct Scripted {
    script: Arc<Script>,
    writes: HashMap<Key, Write>,
}

impl Request for Scripted {
    const OPERATION: Operation = Operation::BatchWriteItem;
    const API: &'static str = "Scripted";

    fn attempt(&self, _: &Flusher, pending: &[Unit]) -> impl Future<Output = Reply> + Send {
        let keys: Vec<Key> = pending.iter().map(|u| u.key.clone()).collect();
        let script = Arc::clone(&self.script);
        // Like an SDK call, nothing is sent until the future is polled.
        async move {
            script.sent.lock().unwrap().push(keys);
            let next = script.replies.lock().unwrap().pop_front();
            next.unwrap_or_else(script.then)
        }
    }

    fn write(&self, key: &Key) -> Option<&Write> {
        self.writes.get(key)
    }

    fn alone(&self, key: &Key) -> Option<Self> {
        let write = self.writes.get(key)?.clone();
        Some(Scripted {
            script: Arc::clone(&self.script),
            writes: [(key.clone(), write)].into(),
        })
    }
}

fn flusher(spooled: bool, hand_back_hot: bool, deadline: Arc<Deadline>) -> Flusher {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .build();
    Flusher::new(
        Arc::new(crate::pipeline::concurrency::Concurrency::new(1, 4, true)),
        aws_sdk_dynamodb::Client::from_conf(conf),
        TableNames::new(&crate::config::DynamoConfig::default()),
        RetryPolicy {
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
            spooled,
            hand_back_hot,
        },
        deadline,
        Arc::new(crate::telemetry::stats::Stats::default()),
        Default::default(),
        0,
        Arc::new(crate::pipeline::expiry::ExpiryBook::new(
            0,
            &crate::rules::Expiry::default(),
        )),
    )
}

fn keys() -> [Key; 2] {
    [Key::new(Table::Msg, "a"), Key::new(Table::Msg, "b")]
}

/// Sends a request for `keys` (deletes) through `flusher`, answered by `replies` and then
/// `then()`; returns each key's end and flags, and the keys of every attempt.
async fn send(
    flusher: &Flusher,
    keys: &[Key],
    replies: Vec<Reply>,
    then: fn() -> Reply,
) -> (Vec<(Key, End, bool, bool)>, Vec<Vec<Key>>) {
    let script = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        then,
        sent: Mutex::new(Vec::new()),
    });
    let mut request = Scripted {
        script: Arc::clone(&script),
        writes: keys.iter().map(|k| (k.clone(), Write::Delete)).collect(),
    };
    let units = keys.iter().map(|k| Unit::new(k.clone(), Duration::ZERO));
    let mut ends: Vec<_> = flusher
        .settle(&mut request, units.collect())
        .await
        .into_iter()
        .map(|(u, end)| (u.key, end, u.hot, u.ambiguous))
        .collect();
    ends.sort_by(|a, b| a.0.hash.cmp(&b.0.hash));
    let sent = script.sent.lock().unwrap().clone();
    (ends, sent)
}

fn applied(unprocessed: &[&Key]) -> Reply {
    Reply::Applied {
        unprocessed: unprocessed.iter().map(|k| (*k).clone()).collect(),
        consumed: Vec::new(),
        diverted: Default::default(),
    }
}

fn transient() -> Reply {
    Reply::Transient {
        code: "InternalServerError".into(),
        message: "boom".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn unprocessed_items_are_resent_alone_and_marked_hot() {
    let f = flusher(false, false, Arc::new(Deadline::new()));
    let [a, b] = keys();
    let (ends, sent) = send(&f, &[a.clone(), b.clone()], vec![applied(&[&b])], || {
        applied(&[])
    })
    .await;
    assert_eq!(
        ends,
        [
            (a.clone(), End::Written, false, false),
            (b.clone(), End::Written, true, false)
        ]
    );
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1], [b]);
}

#[tokio::test(start_paused = true)]
async fn with_hot_key_windows_on_an_unprocessed_write_is_handed_back_unsent() {
    let f = flusher(false, true, Arc::new(Deadline::new()));
    let [a, b] = keys();
    let (ends, sent) = send(&f, &[a.clone(), b.clone()], vec![applied(&[&b])], || {
        applied(&[])
    })
    .await;
    assert_eq!(
        ends,
        [
            (a, End::Written, false, false),
            (b, End::HandedBack, true, false)
        ]
    );
    assert_eq!(sent.len(), 1, "not retried here");
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_attempt_marks_the_write_whatever_comes_after() {
    let f = flusher(false, true, Arc::new(Deadline::new()));
    let [a, _] = keys();
    let (ends, _) = send(&f, std::slice::from_ref(&a), vec![transient()], || {
        applied(&[])
    })
    .await;
    assert_eq!(ends, [(a.clone(), End::Written, false, true)]);
    // Ambiguous, then throttled on its own key: handed back, still ambiguous.
    let hot = Reply::Throttled {
        code: "ThrottlingException",
        own_key: true,
        reasons: Vec::new(),
    };
    let (ends, _) = send(&f, std::slice::from_ref(&a), vec![transient(), hot], || {
        applied(&[])
    })
    .await;
    assert_eq!(ends, [(a, End::HandedBack, true, true)]);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_batch_is_resent_one_by_one_and_only_the_poison_is_dropped() {
    let f = flusher(false, false, Arc::new(Deadline::new()));
    let [a, b] = keys();
    let invalid = || Reply::Invalid {
        message: "bad".into(),
    };
    let (ends, sent) = send(
        &f,
        &[a.clone(), b.clone()],
        vec![invalid(), invalid()],
        || applied(&[]),
    )
    .await;
    let dropped = ends.iter().filter(|e| e.1 == End::Dropped).count();
    let written = ends.iter().filter(|e| e.1 == End::Written).count();
    assert_eq!((dropped, written), (1, 1));
    assert_eq!(sent.len(), 3, "the batch, then each write alone");
    assert!(sent[1..].iter().all(|s| s.len() == 1));
    assert_eq!(f.stats.snapshot().dropped_rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn without_the_spool_a_failing_write_is_given_up_after_max_elapsed() {
    let f = flusher(false, false, Arc::new(Deadline::new()));
    let [a, _] = keys();
    let (ends, sent) = send(&f, std::slice::from_ref(&a), vec![], transient).await;
    assert_eq!(ends, [(a, End::Dropped, false, true)]);
    assert!(sent.len() > 5, "retried with backoff until max_elapsed");
    assert_eq!(f.stats.snapshot().dropped_retries_exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn past_the_shutdown_deadline_the_spool_keeps_the_write_and_otherwise_it_is_dropped() {
    let deadline = Arc::new(Deadline::new());
    deadline.fire();
    let [a, _] = keys();
    let spooled = flusher(true, true, Arc::clone(&deadline));
    let (ends, sent) = send(&spooled, std::slice::from_ref(&a), vec![], transient).await;
    assert_eq!(
        ends,
        [(a.clone(), End::Left, false, true)],
        "abandoned: maybe applied"
    );
    assert_eq!(sent.len(), 0, "never sent");
    let plain = flusher(false, true, deadline);
    let (ends, _) = send(&plain, std::slice::from_ref(&a), vec![], transient).await;
    assert_eq!(ends, [(a, End::Dropped, false, true)]);
    assert_eq!(plain.stats.snapshot().dropped_shutdown, 1);
}
