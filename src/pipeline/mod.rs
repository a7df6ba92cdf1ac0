//! Wiring: ingest → router → shards → flusher, started and stopped as one [`Pipeline`].
//!
//! ```text
//! submit ─▶ crossbeam ingest queue ─▶ router thread ─▶ shard inboxes (tokio mpsc) ─▶ shard tasks
//!  (any thread; plans writes,          (splits by key      (bounded)                   (coalesce, flush,
//!   bounded in events and bytes)        hash)                                           ≤ max_in_flight)
//! ```
//!
//! With `[pipeline.spool]` on, submit appends to the [`crate::spool`] instead, and the spool's
//! feeder thread is the only sender on the ingest queue.

pub mod coalesce;
mod concurrency;
mod deadletter;
pub(crate) mod dedup;
pub(crate) mod expiry;
pub(crate) mod flush;
pub(crate) mod ingest;
mod shard;
pub mod topic_index;

use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use tokio::sync::mpsc;

use crate::pipeline::concurrency::Concurrency;
use tracing::error;

use crate::config::{DynamoConfig, PipelineConfig, StorageConfig};
use crate::lookup::{ReadState, Reader};
use crate::pipeline::flush::{Flusher, TableNames};
pub use crate::pipeline::ingest::{Admit, Receipt, Submission, SubmitError};
use crate::pipeline::ingest::{ByteBudget, Ingest};
use crate::pipeline::shard::{Shard, route};
use crate::rules::{RuleSet, StorageFormat};
use crate::spool::Spool;
use crate::telemetry::stats::{Stats, StatsSnapshot};

/// A running pipeline. Dropping it without [`Pipeline::shutdown`] abandons pending writes.
pub struct Pipeline {
    ingest: Arc<Ingest>,
    /// The router thread; it exits after forwarding the shutdown marker.
    router: Option<std::thread::JoinHandle<()>>,
    /// The shard tasks; each returns the writes it left to the spool at the shutdown deadline.
    shards: Vec<tokio::task::JoinHandle<u64>>,
    /// Fired when `shutdown_timeout` runs out during [`Pipeline::shutdown`].
    deadline: Arc<crate::pipeline::flush::retry::Deadline>,
    shutdown_timeout: std::time::Duration,
    spool: Option<Arc<Spool>>,
    stats: Arc<Stats>,
    limits: Limits,
    reader: Option<Arc<Reader>>,
    /// The adaptive limit on flushes in flight (for the gauge).
    concurrency: Arc<Concurrency>,
    /// The spool's feeder and syncer threads (when the spool is on); they end after the router
    /// has its shutdown marker and the last fsync.
    spool_threads: Vec<std::thread::JoinHandle<()>>,
}

/// A cheap, cloneable handle for submitting events from any thread, and for lookups.
#[derive(Clone, Debug)]
pub struct PipelineHandle {
    ingest: Arc<Ingest>,
    stats: Arc<Stats>,
    limits: Limits,
    /// The read side over the same tables and writes (`None` when `lookup.enabled` is off).
    reader: Option<Arc<Reader>>,
    concurrency: Arc<Concurrency>,
    /// Who submits through this handle: the `adapter` label of refusals.
    origin: crate::telemetry::stats::Origin,
    /// Told of every `client.connected` this handle accepts (subscribe on connect).
    connect_observer: Option<Arc<dyn ConnectObserver>>,
}

/// Told of every accepted `client.connected` event (see
/// [`PipelineHandle::with_connect_observer`]), after ingest accepted it.
///
/// Called on the submitting thread, often a hook call's: it must return at once (queue the
/// work, never wait for it), and it runs once per accepted event (a submission refused for a
/// full queue and accepted on a later try is reported once, at that try).
pub trait ConnectObserver: Send + Sync + std::fmt::Debug {
    fn connected(&self, clientid: &str);
}

/// The configured limits, for the capacity gauges.
#[derive(Clone, Copy, Debug)]
struct Limits {
    ingest_events: usize,
    ingest_bytes: usize,
    pending_keys: usize,
    pending_bytes: usize,
}

impl PipelineHandle {
    /// This handle, counting its refusals under `origin` (an adapter's own handle).
    pub fn for_origin(&self, origin: crate::telemetry::stats::Origin) -> PipelineHandle {
        PipelineHandle {
            origin,
            ..self.clone()
        }
    }

    /// This handle, telling `observer` of each `client.connected` it accepts.
    pub fn with_connect_observer(&self, observer: Arc<dyn ConnectObserver>) -> PipelineHandle {
        PipelineHandle {
            connect_observer: Some(observer),
            ..self.clone()
        }
    }

    /// Accepts an event's writes, or writes from no hook, as `admit` says (see [`Admit`]); the
    /// receipt says when the submission is durable (at once without the spool). An accepted
    /// `client.connected` is reported to the connect observer, if any.
    pub fn submit<'a>(
        &self,
        what: impl Into<Submission<'a>>,
        admit: Admit,
    ) -> Result<Receipt, SubmitError> {
        let what = what.into();
        let event: Option<&'a crate::event::HookEvent> = match &what {
            Submission::Event(event) => Some(*event),
            Submission::Ops(_) => None,
        };
        let connected = match (&self.connect_observer, event) {
            (Some(observer), Some(crate::event::HookEvent::ClientConnected { client, .. })) => {
                Some((observer, client.clientid.as_str()))
            }
            _ => None,
        };
        let receipt = self.ingest.submit(self.origin, what, admit)?;
        if let Some((observer, clientid)) = connected {
            observer.connected(clientid);
        }
        Ok(receipt)
    }

    /// Counts `n` refusals made before ingest saw the events (a request an adapter could not read
    /// or did not authorise, the rows of a refused HTTP request), or a `Full` that
    /// [`Admit::retried_by_caller`] left to the caller.
    pub fn count_refusals(&self, reason: crate::telemetry::stats::RejectReason, n: u64) {
        self.ingest.count(self.origin, reason, n);
    }

    /// The current (adaptive) limit on flushes in flight.
    pub fn in_flight_limit(&self) -> usize {
        self.concurrency.limit()
    }

    /// Lookups that see this pipeline's accepted writes.
    pub fn reader(&self) -> Option<&Arc<Reader>> {
        self.reader.as_ref()
    }

    /// How values are written (for adapters that check events before queueing them).
    pub fn format(&self) -> StorageFormat {
        self.ingest.format()
    }

    /// The hook points the configured rules use (what adapters should register).
    pub fn rules(&self) -> &RuleSet {
        self.ingest.rules()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Sets the queue and in-flight gauges from their current levels.
    pub fn sample_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.export_counters();
        let l = self.limits;
        let levels = [
            (
                "ingest",
                self.ingest.queued_events() as f64,
                self.ingest.queued_bytes() as f64,
            ),
            (
                "pending",
                self.stats.pending_keys.load(Relaxed).max(0) as f64,
                self.stats.pending_bytes.load(Relaxed).max(0) as f64,
            ),
        ];
        let caps = [
            (l.ingest_events as f64, l.ingest_bytes as f64),
            (l.pending_keys as f64, l.pending_bytes as f64),
        ];
        for ((stage, events, bytes), (cap_events, cap_bytes)) in levels.into_iter().zip(caps) {
            metrics::gauge!(crate::telemetry::catalogue::QUEUE_EVENTS, "stage" => stage)
                .set(events);
            metrics::gauge!(crate::telemetry::catalogue::QUEUE_BYTES, "stage" => stage).set(bytes);
            metrics::gauge!(crate::telemetry::catalogue::QUEUE_CAPACITY_EVENTS, "stage" => stage)
                .set(cap_events);
            metrics::gauge!(crate::telemetry::catalogue::QUEUE_CAPACITY_BYTES, "stage" => stage)
                .set(cap_bytes);
        }
        metrics::gauge!(crate::telemetry::catalogue::FLUSHES_IN_FLIGHT)
            .set(self.stats.flushes_in_flight.load(Relaxed).max(0) as f64);
        metrics::gauge!(crate::telemetry::catalogue::FLUSHES_IN_FLIGHT_LIMIT)
            .set(self.concurrency.limit() as f64);
        metrics::gauge!(crate::telemetry::catalogue::HOT_KEYS)
            .set(self.stats.hot_keys.load(Relaxed).max(0) as f64);
        for kind in crate::storage::topic_index::IndexKind::ALL {
            metrics::gauge!(crate::telemetry::catalogue::LOOKUP_INDEX_TOPICS, "index" => kind.as_str())
                .set(self.ingest.indexed_topics().len(kind) as f64);
        }
        if let Some(reader) = &self.reader {
            let state = reader.state();
            metrics::gauge!(crate::telemetry::catalogue::LOOKUP_PENDING_OPS)
                .set(state.pending_ops() as f64);
        }
    }

    /// Events waiting in the ingest queue, and its capacity.
    pub fn queue_depth(&self) -> (usize, usize) {
        (self.ingest.queued_events(), self.ingest.capacity_events())
    }
}

/// Why a pipeline could not start. Nothing of it keeps running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the dead-letter file {}: {source}", path.display())]
    DeadLetters {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the spool {}: {source}", dir.display())]
    Spool {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the pipeline's {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Starts a named pipeline thread.
fn spawn_thread(
    thread: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(format!("mqtt-dynamo-{thread}"))
        .spawn(f)
        .map_err(|source| StartError::Thread { thread, source })
}

/// The shard tasks, each with its bounded inbox: the router's senders and the tasks' handles
/// (each task returns how many writes it left to the spool at shutdown).
#[allow(clippy::type_complexity)]
fn spawn_shards(
    cfg: &PipelineConfig,
    flusher: &Arc<Flusher>,
    deadline: &Arc<crate::pipeline::flush::retry::Deadline>,
    concurrency: &Arc<Concurrency>,
    stats: &Arc<Stats>,
    read: &Option<Arc<ReadState>>,
    spool: Option<&Arc<Spool>>,
) -> (
    Vec<(mpsc::Sender<shard::ShardMsg>, Arc<ByteBudget>)>,
    Vec<tokio::task::JoinHandle<u64>>,
) {
    let mut senders = Vec::with_capacity(cfg.shards);
    let mut shards = Vec::with_capacity(cfg.shards);
    for index in 0..cfg.shards {
        let (tx, rx) = mpsc::channel(cfg.shard_queue_capacity);
        let inbox_budget = Arc::new(ByteBudget::new(cfg.shard_queue_bytes));
        senders.push((tx, Arc::clone(&inbox_budget)));
        let mut shard = Shard::new(
            rx,
            inbox_budget,
            Arc::clone(deadline),
            Arc::clone(flusher),
            Arc::clone(concurrency),
            cfg.clone(),
            Arc::clone(stats),
            read.clone(),
        );
        if let Some(spool) = spool {
            shard = shard.with_spool(Arc::clone(spool), index);
        }
        shards.push(tokio::spawn(shard.run()));
    }
    (senders, shards)
}

fn open_dead_letters(
    cfg: &PipelineConfig,
) -> Result<crate::pipeline::deadletter::DeadLetters, StartError> {
    crate::pipeline::deadletter::DeadLetters::open(cfg.dead_letter_path.as_deref()).map_err(
        |source| StartError::DeadLetters {
            path: cfg.dead_letter_path.clone().unwrap_or_default(),
            source,
        },
    )
}

/// The spool's feeder (segments back into the ingest queue, in order) and syncer (group-commit
/// fsync) threads; they end after the shutdown marker and the last fsync.
fn start_spool_threads(
    spool: &Arc<Spool>,
    tx: &crossbeam_channel::Sender<crate::pipeline::ingest::IngestMsg>,
    budget: &Arc<ByteBudget>,
) -> Result<Vec<std::thread::JoinHandle<()>>, StartError> {
    let (feed, tx, budget) = (Arc::clone(spool), tx.clone(), Arc::clone(budget));
    let feeder = spawn_thread("spool-feed", move || {
        crate::spool::feed::run(feed, tx, budget)
    })?;
    let sync = Arc::clone(spool);
    let syncer = spawn_thread("spool-sync", move || sync.run_syncer())?;
    Ok(vec![feeder, syncer])
}

impl Pipeline {
    /// Starts a pipeline with everything `cfg` says: `[pipeline]`, `[dynamodb]` table names,
    /// `[storage]` formats and the rules. Must be called inside a tokio runtime.
    pub fn from_config(
        cfg: &crate::config::Config,
        client: Client,
    ) -> Result<Pipeline, StartError> {
        let read = cfg
            .lookup
            .enabled
            .then(|| Arc::new(ReadState::new(cfg.lookup.read_your_writes)));
        let reader = read.as_ref().map(|state| {
            Arc::new(
                Reader::new(
                    client.clone(),
                    &cfg.dynamodb,
                    Arc::clone(state),
                    cfg.lookup.clone(),
                )
                .with_expiry_attribute(&cfg.storage.ttl_attribute),
            )
        });
        let mut pipeline = Pipeline::start(
            &cfg.pipeline,
            &cfg.dynamodb,
            &cfg.storage,
            cfg.rule_set()?,
            client,
            read,
        )?;
        pipeline.reader = reader;
        Ok(pipeline)
    }

    /// Starts the router thread and the shard tasks. Must be called inside a tokio runtime.
    pub fn start(
        cfg: &PipelineConfig,
        dynamo: &DynamoConfig,
        storage: &StorageConfig,
        rules: RuleSet,
        client: Client,
        read: Option<Arc<ReadState>>,
    ) -> Result<Pipeline, StartError> {
        let format = storage.format();
        let stats = Arc::new(Stats::default());
        let concurrency = Arc::new(Concurrency::new(
            cfg.min_in_flight,
            cfg.max_in_flight,
            cfg.adaptive_concurrency,
        ));
        let deadline = Arc::new(crate::pipeline::flush::retry::Deadline::new());
        let expiry = Arc::new(expiry::ExpiryBook::new(cfg.dedup_max_ids, &format.expiry));
        let index_client = client.clone();
        let flusher = Arc::new(
            Flusher::new(
                Arc::clone(&concurrency),
                client,
                TableNames::new(dynamo),
                crate::pipeline::flush::retry::RetryPolicy::new(
                    &cfg.retry,
                    cfg.spool.enabled,
                    !cfg.hot_key_window.is_zero(),
                ),
                Arc::clone(&deadline),
                Arc::clone(&stats),
                open_dead_letters(cfg)?,
                storage.max_msgid_set_kb * 1024,
                Arc::clone(&expiry),
            )
            .with_statements(cfg.batch_statements),
        );
        let spool = if cfg.spool.enabled {
            let spool = Spool::open(&cfg.spool, cfg.shards, read.clone()).map_err(|source| {
                StartError::Spool {
                    dir: cfg.spool.dir.clone(),
                    source,
                }
            })?;
            Some(spool)
        } else {
            None
        };
        let (tx, rx) = crossbeam_channel::bounded(cfg.ingest_capacity_events);
        let budget = Arc::new(ByteBudget::new(cfg.ingest_capacity_bytes));
        let spool_threads = match &spool {
            Some(spool) => start_spool_threads(spool, &tx, &budget)?,
            None => Vec::new(),
        };
        let (senders, shards) = spawn_shards(
            cfg,
            &flusher,
            &deadline,
            &concurrency,
            &stats,
            &read,
            spool.as_ref(),
        );
        let router_budget = Arc::clone(&budget);
        let gather = cfg.route_gather;
        let router = std::thread::Builder::new()
            .name("mqtt-dynamo-router".into())
            .spawn(move || route(rx, senders, router_budget, gather))
            .map_err(|source| StartError::Thread {
                thread: "router",
                source,
            })?;
        let ingest = Arc::new(
            Ingest::new(
                tx,
                budget,
                rules,
                format,
                Arc::clone(&stats),
                cfg.ingest_capacity_events,
                read,
            )
            .with_spool(spool.clone())
            .with_dedup(cfg.dedup_window, cfg.dedup_max_ids)
            .with_expiry(expiry)
            .with_spreading(storage.topic_index_spread_rate, |indexed| {
                topic_index::Spreader {
                    runtime: tokio::runtime::Handle::current(),
                    client: index_client,
                    table: dynamo.table_name(crate::storage::item::Table::TopicIndex),
                    levels: Arc::clone(indexed.levels()),
                    stats: Arc::clone(&stats),
                }
            }),
        );
        Ok(Pipeline {
            ingest,
            router: Some(router),
            shards,
            stats,
            limits: Limits {
                ingest_events: cfg.ingest_capacity_events,
                ingest_bytes: cfg.ingest_capacity_bytes,
                pending_keys: cfg.max_pending_keys * cfg.shards,
                pending_bytes: cfg.max_pending_bytes * cfg.shards,
            },
            reader: None,
            concurrency,
            spool_threads,
            deadline,
            shutdown_timeout: cfg.shutdown_timeout,
            spool,
        })
    }

    pub fn handle(&self) -> PipelineHandle {
        PipelineHandle {
            ingest: Arc::clone(&self.ingest),
            stats: Arc::clone(&self.stats),
            limits: self.limits,
            reader: self.reader.clone(),
            concurrency: Arc::clone(&self.concurrency),
            origin: crate::telemetry::stats::Origin::Api,
            connect_observer: None,
        }
    }

    /// Stops accepting events and writes everything accepted, for at most `shutdown_timeout`.
    /// Then, without the spool, what is still unwritten is dead-lettered (counted, logged); with
    /// it, the service stops and the backlog stays on disk for the next start. Returns the final
    /// counters.
    pub async fn shutdown(mut self) -> StatsSnapshot {
        let started = tokio::time::Instant::now();
        let timer = tokio::spawn({
            let (deadline, spool, timeout) = (
                Arc::clone(&self.deadline),
                self.spool.clone(),
                self.shutdown_timeout,
            );
            async move {
                tokio::time::sleep(timeout).await;
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    "pipeline.shutdown_timeout reached; stopping the drain"
                );
                if let Some(spool) = spool {
                    spool.abandon();
                }
                deadline.fire();
            }
        });
        let ingest = Arc::clone(&self.ingest);
        let router = self.router.take();
        // Closing may block on a full queue and joining blocks on the router: off the runtime.
        let joined = tokio::task::spawn_blocking(move || {
            ingest.close();
            router.map(|r| r.join())
        })
        .await;
        if !matches!(joined, Ok(None | Some(Ok(())))) {
            error!("the router thread failed during shutdown");
        }
        let mut left = 0;
        for shard in self.shards.drain(..) {
            match shard.await {
                Ok(n) => left += n,
                Err(e) => error!(error = %e, "a shard task failed during shutdown"),
            }
        }
        timer.abort();
        if self.deadline.passed() {
            tracing::warn!(
                after_s = started.elapsed().as_secs_f64(),
                writes_left_in_spool = left,
                dropped_at_deadline = self.stats.snapshot().dropped_shutdown,
                "stopped at the shutdown deadline"
            );
        }
        let threads = std::mem::take(&mut self.spool_threads);
        let joined =
            tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok()))
                .await;
        if !matches!(joined, Ok(true)) {
            error!("a spool thread failed during shutdown");
        }
        self.stats.snapshot()
    }
}
