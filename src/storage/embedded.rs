//! The embedded DynamoDB: dynoxide (SQLite, in memory or in a file) serving DynamoDB's HTTP API
//! in-process, the default when no endpoint is configured, so `mqtt-dynamo serve` works with
//! nothing else installed and `aws dynamodb scan --endpoint-url http://127.0.0.1:8000` can
//! inspect it. In memory its contents live as long as the process; with `embedded_path` they
//! are in that SQLite file and survive restarts.

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
    #[error("cannot open the embedded DynamoDB{}: {reason}", .path.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default())]
    Open {
        path: Option<std::path::PathBuf>,
        reason: String,
    },
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
        Self::start_at(listen, None).await
    }

    /// As [`EmbeddedDynamo::start`], with the database in the SQLite file `path` (created if
    /// missing, its tables and items kept from earlier runs) when given.
    pub async fn start_at(
        listen: SocketAddr,
        path: Option<&std::path::Path>,
    ) -> Result<Self, EmbeddedError> {
        let open_error = |e: dynoxide::DynoxideError| EmbeddedError::Open {
            path: path.map(std::path::Path::to_path_buf),
            reason: e.to_string(),
        };
        let db = match path {
            None => dynoxide::Database::memory().map_err(open_error)?,
            Some(path) => {
                let text = path.to_str().ok_or_else(|| EmbeddedError::Open {
                    path: Some(path.to_path_buf()),
                    reason: "the path is not valid UTF-8".into(),
                })?;
                dynoxide::Database::new(text).map_err(open_error)?
            }
        };
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
