//! DynamoDB as this crate sees it: the tables, keys, values and writes ([`item`]); DynamoDB's
//! limits ([`limits`]); writes applied in order ([`model`]); the SDK client, conversions and error classes ([`dynamo`]); creating and
//! checking the tables ([`tables`]); the shared topic index's key shape ([`topic_index`]); and the
//! in-process DynamoDB ([`embedded`]).

pub mod dynamo;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod item;
pub mod limits;
pub mod model;
pub mod tables;
pub mod topic_index;

/// Where DynamoDB is for one run: the embedded server (kept alive by this value) or the endpoint
/// the configuration (or AWS) names; `describe` is the one line the start log, `/readyz` and
/// `mqtt_dynamo_build_info` show.
pub struct Backend {
    #[cfg(feature = "embedded")]
    embedded: Option<embedded::EmbeddedDynamo>,
    choice: crate::config::BackendChoice,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[cfg(feature = "embedded")]
    #[error(transparent)]
    Embedded(#[from] embedded::EmbeddedError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "[dynamodb] asks for the embedded DynamoDB, but this build has no \"embedded\" feature; set endpoint_url, or embedded = false for DynamoDB in the region"
    )]
    NoEmbedded,
}

impl Backend {
    /// Starts the embedded DynamoDB when `cfg` (with the process environment) chooses it;
    /// otherwise nothing runs here.
    pub async fn start(cfg: &crate::config::DynamoConfig) -> Result<Backend, BackendError> {
        let choice = cfg.backend(|k| std::env::var(k).ok())?;
        match &choice {
            #[cfg(feature = "embedded")]
            crate::config::BackendChoice::Embedded { path } => {
                let server =
                    embedded::EmbeddedDynamo::start_at(cfg.embedded_listen, path.as_deref())
                        .await?;
                let store = path
                    .as_ref()
                    .map_or("in memory".to_string(), |p| format!("in {}", p.display()));
                tracing::info!(endpoint = %server.endpoint(), "embedded DynamoDB ({store}) is listening");
                Ok(Backend {
                    embedded: Some(server),
                    choice,
                })
            }
            #[cfg(not(feature = "embedded"))]
            crate::config::BackendChoice::Embedded { .. } => Err(BackendError::NoEmbedded),
            _ => Ok(Backend {
                #[cfg(feature = "embedded")]
                embedded: None,
                choice,
            }),
        }
    }

    /// The embedded server's endpoint URL (`None`: use the configured one, or AWS).
    pub fn endpoint(&self) -> Option<String> {
        #[cfg(feature = "embedded")]
        return self
            .embedded
            .as_ref()
            .map(embedded::EmbeddedDynamo::endpoint);
        #[cfg(not(feature = "embedded"))]
        None
    }

    pub fn is_embedded(&self) -> bool {
        self.endpoint().is_some()
    }

    /// The backend in words: "embedded in memory at URL", "embedded at FILE (URL)",
    /// "endpoint URL", or "AWS region R" (`region` is the one the SDK client resolved).
    pub fn describe(&self, region: &str) -> String {
        use crate::config::BackendChoice;
        let url = self.endpoint().unwrap_or_default();
        match &self.choice {
            BackendChoice::Embedded { path: None } => format!("embedded in memory at {url}"),
            BackendChoice::Embedded { path: Some(p) } => {
                format!("embedded at {} ({url})", p.display())
            }
            BackendChoice::Endpoint(u) => format!("endpoint {u}"),
            BackendChoice::Aws => format!("AWS region {region}"),
        }
    }

    /// The backend's kind, the `backend` label of `mqtt_dynamo_build_info`: `embedded_memory`,
    /// `embedded_file`, `endpoint` or `aws`.
    pub fn kind(&self) -> &'static str {
        use crate::config::BackendChoice;
        match &self.choice {
            BackendChoice::Embedded { path: None } => "embedded_memory",
            BackendChoice::Embedded { path: Some(_) } => "embedded_file",
            BackendChoice::Endpoint(_) => "endpoint",
            BackendChoice::Aws => "aws",
        }
    }

    /// Stops the embedded server, if any (in memory, its data goes with it).
    pub async fn stop(self) {
        #[cfg(feature = "embedded")]
        if let Some(server) = self.embedded {
            server.stop().await;
        }
    }
}
