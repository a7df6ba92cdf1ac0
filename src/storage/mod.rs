//! DynamoDB as this crate sees it: the tables, keys, values and writes ([`item`]); DynamoDB's
//! limits ([`limits`]); writes applied in order ([`model`]); the SDK client, conversions and error classes ([`dynamo`]); creating and
//! checking the tables ([`tables`]); and the in-process DynamoDB ([`embedded`]).

pub mod dynamo;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod item;
pub mod limits;
pub mod model;
pub mod tables;

/// Where DynamoDB is for one run: the embedded server (kept alive by this value) or the endpoint
/// the configuration (or AWS) names.
pub struct Backend {
    #[cfg(feature = "embedded")]
    embedded: Option<embedded::EmbeddedDynamo>,
}

/// Why the embedded DynamoDB could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[cfg(feature = "embedded")]
    #[error(transparent)]
    Embedded(#[from] embedded::EmbeddedError),
}

impl Backend {
    /// Starts the embedded DynamoDB when `cfg` names no endpoint and allows it; otherwise
    /// nothing runs here.
    pub async fn start(cfg: &crate::config::DynamoConfig) -> Result<Backend, BackendError> {
        #[cfg(feature = "embedded")]
        if cfg.endpoint_url.is_none() && cfg.embedded {
            let server = embedded::EmbeddedDynamo::start(cfg.embedded_listen).await?;
            tracing::info!(endpoint = %server.endpoint(), "embedded DynamoDB (in memory) is listening");
            return Ok(Backend {
                embedded: Some(server),
            });
        }
        #[cfg(not(feature = "embedded"))]
        let _ = cfg;
        Ok(Backend {
            #[cfg(feature = "embedded")]
            embedded: None,
        })
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

    /// Stops the embedded server, if any (its data is in memory and goes with it).
    pub async fn stop(self) {
        #[cfg(feature = "embedded")]
        if let Some(server) = self.embedded {
            server.stop().await;
        }
    }
}
