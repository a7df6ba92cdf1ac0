//! A DynamoDB endpoint that accepts connections and never answers: an outage that times out.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::test_util::backend::config_at;

/// A DynamoDB endpoint that accepts connections and never answers: an outage that times out.
pub struct Stalled {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Stalled {
    pub async fn start() -> Stalled {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        Stalled { addr, task }
    }

    /// A configuration against this endpoint with the smallest queues, so they fill at once,
    /// and short timeouts and retry budget, so the outage ends the writes quickly.
    pub fn tiny_config(&self) -> Config {
        let mut cfg = config_at(format!("http://{}", self.addr));
        cfg.dynamodb.attempt_timeout = Duration::from_millis(100);
        cfg.pipeline.shards = 1;
        cfg.pipeline.ingest_capacity_events = 2;
        cfg.pipeline.shard_queue_capacity = 1;
        cfg.pipeline.max_pending_keys = 1;
        cfg.pipeline.max_in_flight = 1;
        cfg.pipeline.max_batch_age = Duration::from_millis(1);
        cfg.pipeline.retry.initial_backoff = Duration::from_millis(5);
        cfg.pipeline.retry.max_backoff = Duration::from_millis(20);
        cfg.pipeline.retry.max_elapsed = Duration::from_millis(500);
        cfg
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.task.abort();
    }
}
