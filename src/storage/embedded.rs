//! The embedded DynamoDB: dynoxide (SQLite in memory) serving DynamoDB's HTTP API in-process, the
//! default when no endpoint is configured, so `mqtt-dynamo serve` works with nothing else
//! installed and `aws dynamodb scan --endpoint-url http://127.0.0.1:8000` can inspect it.
//! Its contents live as long as the process.

use std::net::SocketAddr;

use thiserror::Error;
use tokio::sync::oneshot;

#[derive(Debug, Error)]
pub enum EmbeddedError {
    #[error(
        "cannot listen on {addr} for the embedded DynamoDB: {source} (set [dynamodb] embedded_listen, or endpoint_url for an external DynamoDB)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the embedded DynamoDB: {0}")]
    Open(String),
}

/// A running embedded DynamoDB. Stop it with [`EmbeddedDynamo::stop`]; dropping it also stops it.
///
/// `stop_tx` exists only to be sent or dropped: either ends the server's graceful shutdown future.
pub struct EmbeddedDynamo {
    addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl EmbeddedDynamo {
    /// Listens on `listen` (port 0 for an ephemeral port) and serves an empty in-memory database.
    pub async fn start(listen: SocketAddr) -> Result<Self, EmbeddedError> {
        let db = dynoxide::Database::memory().map_err(|e| EmbeddedError::Open(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| EmbeddedError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmbeddedError::Bind {
                addr: listen,
                source,
            })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(dynoxide::server::serve_with_shutdown(
            listener,
            db,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Ok(EmbeddedDynamo {
            addr,
            stop_tx: Some(stop_tx),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL to give the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for open requests to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for EmbeddedDynamo {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}
