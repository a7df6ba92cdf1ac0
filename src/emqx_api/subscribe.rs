//! Subscribe on connect: what EMQX 4's `on_subscribe_lookup` did, through EMQX 5's REST API.
//!
//! ```text
//! accepted client.connected ─▶ ConnectSubscriber::connected ─▶ bounded queue ─▶ worker task
//!  (PipelineHandle::submit,     (try_send: never waits;        (QUEUE_CAPACITY)  (≤ max_concurrent
//!   the hook's thread)           full: counted, logged, dropped)                  calls at once)
//!                                                                  each call: Reader::subscriptions
//!                                                                  (read-your-writes), then
//!                                                                  POST …/subscribe/bulk, retried
//! ```
//!
//! The hook's answer never waits for any of this. A client with no rows in `mqtt_sub` costs one
//! Query and no call. Outcomes are counted in `mqtt_dynamo_emqx_api_calls_total{call =
//! "subscribe_bulk"}`: `ok`; `client_gone` (404: it disconnected first; not an error, not
//! retried); `refused` (401/403: the API key is wrong; logged at most once a minute, that call
//! given up); `failed` (5xx, no answer, a DynamoDB read error: retried with backoff for
//! `retry_for`, then given up and logged); `dropped` (the queue was full).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, warn};

use super::{Backoff, Call, CallError, CallOutcome, EmqxApi, count};
use crate::config::EmqxApiConfig;
use crate::lookup::{LookupError, Reader};
use crate::pipeline::ConnectObserver;
use crate::telemetry::stats::LogGate;

/// Connects waiting for a subscribe call at most; past it a connect's subscribe is dropped.
pub const QUEUE_CAPACITY: usize = 4096;

/// The front of subscribe-on-connect: told of each accepted `client.connected`, it queues the
/// client id for the worker [`start`] runs.
///
/// Shared by every submitting thread (behind an `Arc`, inside each [`crate::PipelineHandle`]);
/// [`ConnectObserver::connected`] only `try_send`s into the bounded queue, so a hook call never
/// waits here. When the queue is full the subscribe (not the event) is dropped, counted as
/// `outcome="dropped"` and logged (at most once a second).
#[derive(Debug)]
pub struct ConnectSubscriber {
    queue: mpsc::Sender<String>,
    dropped: AtomicU64,
    drop_log: LogGate,
}

impl ConnectSubscriber {
    /// Subscribes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

impl ConnectObserver for ConnectSubscriber {
    fn connected(&self, clientid: &str) {
        match self.queue.try_send(clientid.to_string()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
                count(Call::SubscribeBulk, CallOutcome::Dropped);
                if let Some(held) = self.drop_log.allow() {
                    warn!(
                        clientid,
                        dropped_total = self.dropped.load(Relaxed),
                        held_back = held,
                        queue = QUEUE_CAPACITY,
                        "subscribe-on-connect queue full: this client is not subscribed to its stored subscriptions"
                    );
                }
            }
            // The worker is gone (shutting down): nothing to do.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// What one subscribe call needs, shared by the worker's tasks.
#[derive(Debug)]
struct Worker {
    api: Arc<EmqxApi>,
    reader: Arc<Reader>,
    retry_for: Duration,
    /// 401/403 are logged at most once a minute.
    refused_log: LogGate,
}

/// Starts subscribe-on-connect: the [`ConnectSubscriber`] to hand to the pipeline handle, and
/// the worker task (abort it to stop; its in-flight calls are aborted with it).
///
/// The worker takes a client id from the queue only when one of `max_concurrent` permits is
/// free, so at most that many calls are in flight and the rest wait in the queue.
pub fn start(
    api: Arc<EmqxApi>,
    reader: Arc<Reader>,
    cfg: &EmqxApiConfig,
) -> (Arc<ConnectSubscriber>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let subscriber = Arc::new(ConnectSubscriber {
        queue: tx,
        dropped: AtomicU64::new(0),
        drop_log: LogGate::new(),
    });
    let worker = Arc::new(Worker {
        api,
        reader,
        retry_for: cfg.retry_for,
        refused_log: LogGate::every(Duration::from_secs(60)),
    });
    let task = tokio::spawn(run(rx, worker, cfg.max_concurrent.max(1)));
    (subscriber, task)
}

async fn run(mut queue: mpsc::Receiver<String>, worker: Arc<Worker>, max_concurrent: usize) {
    let permits = Arc::new(Semaphore::new(max_concurrent));
    // Dropped with this task (abort), which aborts every call in it.
    let mut calls = JoinSet::new();
    loop {
        while calls.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let Some(clientid) = queue.recv().await else {
            break;
        };
        let worker = Arc::clone(&worker);
        calls.spawn(async move {
            worker.subscribe(&clientid).await;
            drop(permit);
        });
    }
    while calls.join_next().await.is_some() {}
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("reading mqtt_sub: {0}")]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Api(#[from] CallError),
}

impl Worker {
    /// Reads `clientid`'s stored subscriptions and, if there are any, subscribes it to them in
    /// one call, retrying as the module doc says. Counts and logs the end.
    async fn subscribe(&self, clientid: &str) {
        let mut backoff = Backoff::new(self.retry_for);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failure = match self.attempt(clientid).await {
                Ok(0) => {
                    debug!(clientid, "no stored subscriptions");
                    return;
                }
                Ok(n) => {
                    count(Call::SubscribeBulk, CallOutcome::Ok);
                    debug!(
                        clientid,
                        subscriptions = n,
                        attempts,
                        "subscribed on connect"
                    );
                    return;
                }
                Err(f) => f,
            };
            let retryable = match &failure {
                Failure::Api(CallError::NotFound { .. }) => {
                    count(Call::SubscribeBulk, CallOutcome::ClientGone);
                    debug!(
                        clientid,
                        "client gone before its subscriptions were restored"
                    );
                    return;
                }
                Failure::Api(CallError::Refused { status }) => {
                    count(Call::SubscribeBulk, CallOutcome::Refused);
                    if let Some(held) = self.refused_log.allow() {
                        error!(
                            clientid,
                            status,
                            refused_since_last_line = held,
                            error = %failure,
                            "EMQX refused the subscribe-on-connect call; clients are not subscribed to their stored subscriptions"
                        );
                    }
                    return;
                }
                Failure::Api(e) => e.retryable(),
                // DynamoDB may answer again (read errors are not classified further).
                Failure::Lookup(LookupError::Invalid { .. }) => false,
                Failure::Lookup(_) => true,
            };
            match backoff.next_wait().filter(|_| retryable) {
                Some(wait) => {
                    debug!(clientid, attempts, error = %failure, wait_ms = wait.as_millis() as u64, "subscribe on connect: retrying");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    count(Call::SubscribeBulk, CallOutcome::Failed);
                    warn!(
                        clientid,
                        attempts,
                        error = %failure,
                        "subscribe on connect given up; the client is not subscribed to its stored subscriptions"
                    );
                    return;
                }
            }
        }
    }

    /// One attempt: the number of subscriptions made (0: none stored, no call).
    async fn attempt(&self, clientid: &str) -> Result<usize, Failure> {
        let subs = self.reader.subscriptions(clientid).await?;
        if subs.is_empty() {
            return Ok(0);
        }
        self.api.subscribe_bulk(clientid, &subs).await?;
        Ok(subs.len())
    }
}
