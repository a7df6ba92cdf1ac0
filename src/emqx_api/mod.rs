//! EMQX 5's REST API, the two calls the service makes: `POST /api/v5/clients/{clientid}/subscribe/bulk`
//! (a connecting client subscribed to its stored subscriptions, see [`subscribe`]) and
//! `POST /api/v5/publish/bulk` (`retained restore`).
//!
//! EMQX 4's backend subscribed a connecting client from inside the broker
//! (`on_subscribe_lookup`); ExHook's `client.connected` cannot answer with subscriptions, so the
//! service asks the broker's management API instead, after the hook has been answered.
//!
//! Authentication is HTTP basic with an EMQX API key and its secret (EMQX: System → API Keys).
//! The `Authorization` value is built once, marked sensitive and never logged; [`EmqxApi`]'s
//! `Debug` leaves it out. Plain http and https (rustls with ring, the system's root
//! certificates) are supported.
//!
//! Written from EMQX's published API documentation (the `clients` and `publish` API
//! references); the tests run against a stand-in server built from the same documents.

pub mod subscribe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::EmqxApiConfig;
use crate::lookup::Subscription;

/// The largest answer read from EMQX (its answers to these calls are a few KB).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// The first retry waits up to this long (full jitter), each further one twice as long …
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// … up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// MQTT 5's reason code "no matching subscribers": the message was accepted (a retained one is
/// stored by EMQX's retainer all the same).
pub const NO_MATCHING_SUBSCRIBERS: u8 = 16;

/// The two calls, as the closed `call` label of `mqtt_dynamo_emqx_api_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    SubscribeBulk,
    PublishBulk,
}

impl Call {
    pub const ALL: [Call; 2] = [Call::SubscribeBulk, Call::PublishBulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Call::SubscribeBulk => "subscribe_bulk",
            Call::PublishBulk => "publish_bulk",
        }
    }
}

/// How a call ended, as the closed `outcome` label of `mqtt_dynamo_emqx_api_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// 404: the client disconnected before the call (not an error).
    ClientGone,
    /// 401/403: EMQX refused the API key.
    Refused,
    /// Given up: out of `retry_for`, or an answer not worth retrying.
    Failed,
    /// Never made: the queue in front of the calls was full.
    Dropped,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 5] = [
        CallOutcome::Ok,
        CallOutcome::ClientGone,
        CallOutcome::Refused,
        CallOutcome::Failed,
        CallOutcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::ClientGone => "client_gone",
            CallOutcome::Refused => "refused",
            CallOutcome::Failed => "failed",
            CallOutcome::Dropped => "dropped",
        }
    }
}

/// Counts one call's end.
pub fn count(call: Call, outcome: CallOutcome) {
    metrics::counter!(
        crate::telemetry::catalogue::EMQX_API_CALLS_TOTAL,
        "call" => call.as_str(),
        "outcome" => outcome.as_str()
    )
    .increment(1);
}

/// Why the API client cannot be made.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("emqx_api.url must be set")]
    NoUrl,
    #[error("emqx_api.api_key and emqx_api.api_secret must be set with emqx_api.url")]
    NoCredentials,
    #[error("emqx_api.url {url:?} is not an http:// or https:// URL")]
    Url { url: String },
    #[error("emqx_api.url is https but no system root certificate could be loaded: {0}")]
    Roots(#[source] std::io::Error),
    #[error("emqx_api.api_key cannot be sent in an HTTP header")]
    Header,
}

/// Why a call failed.
#[derive(Debug, Error)]
pub enum CallError {
    /// 404: for a subscribe, the client is not connected (any more).
    #[error("EMQX answered 404 (not found): {body}")]
    NotFound { body: String },
    /// 401 or 403: the API key or its secret is wrong, or the key may not make this call.
    #[error(
        "EMQX refused the API key (HTTP {status}); check emqx_api.api_key and emqx_api.api_secret, and that the key is enabled and not expired"
    )]
    Refused { status: u16 },
    /// Any other status that is not a success.
    #[error("EMQX answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("no answer from EMQX: {0}")]
    Transport(String),
    #[error("EMQX did not answer within {0:?}")]
    Timeout(Duration),
    #[error("EMQX's answer cannot be read: {0}")]
    Answer(String),
}

impl CallError {
    /// Worth another attempt: no answer, a timeout, a 5xx or a 429.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Transport(_) | CallError::Timeout(_) => true,
            CallError::Status { status, .. } => *status >= 500 || *status == 429,
            CallError::NotFound { .. } | CallError::Refused { .. } | CallError::Answer(_) => false,
        }
    }
}

/// One message of a bulk publish, as EMQX's `/publish/bulk` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishRequest {
    pub topic: String,
    /// `payload_encoding = "base64"`: always base64, so binary and text payloads go alike.
    pub payload: String,
    pub payload_encoding: &'static str,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties; only `message_expiry_interval` (seconds) is ever set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
}

impl PublishRequest {
    /// A retained message with `payload` (base64-encoded for the wire), expiring after
    /// `expiry_s` seconds if given.
    pub fn retained(
        topic: impl Into<String>,
        payload: &[u8],
        qos: u8,
        expiry_s: Option<u64>,
    ) -> Self {
        PublishRequest {
            topic: topic.into(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            payload_encoding: "base64",
            qos,
            retain: true,
            properties: expiry_s.map(|s| serde_json::json!({"message_expiry_interval": s})),
        }
    }
}

/// EMQX's per-message answer to a bulk publish: an `id` when published, a `reason_code` (MQTT 5
/// PUBACK codes) and `message` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishAnswer {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub reason_code: Option<u8>,
    #[serde(default)]
    pub message: Option<String>,
}

impl PublishAnswer {
    /// Published (or accepted without subscribers, which a retained message still is).
    pub fn published(&self) -> bool {
        match self.reason_code {
            None => true,
            Some(code) => code < 0x80 || code == NO_MATCHING_SUBSCRIBERS,
        }
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of EMQX's REST API: one connection pool, the basic-auth header, a time limit per
/// attempt. Cheap to share (`Arc`); calls take `&self` and may run concurrently (the pool
/// opens a connection per concurrent call).
pub struct EmqxApi {
    /// `url` without a trailing `/`.
    base: String,
    /// `Basic base64(key:secret)`, marked sensitive.
    auth: HeaderValue,
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for EmqxApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmqxApi")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EmqxApi {
    /// The client `[emqx_api]` describes (its `url`, key and secret must be set).
    pub fn new(cfg: &EmqxApiConfig) -> Result<Arc<EmqxApi>, SetupError> {
        let url = cfg.url.as_deref().ok_or(SetupError::NoUrl)?;
        let (Some(key), Some(secret)) = (cfg.api_key.as_deref(), cfg.api_secret.as_ref()) else {
            return Err(SetupError::NoCredentials);
        };
        let lower = url.to_ascii_lowercase();
        let https = lower.starts_with("https://");
        if !https && !lower.starts_with("http://") {
            return Err(SetupError::Url { url: url.into() });
        }
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:{}", secret.expose()));
        let mut auth =
            HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| SetupError::Header)?;
        auth.set_sensitive(true);
        let provider = rustls::crypto::ring::default_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
        {
            Ok(builder) => builder,
            Err(e) if https => return Err(SetupError::Roots(e)),
            // Plain http needs no roots.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| SetupError::Roots(std::io::Error::other(e)))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Arc::new(EmqxApi {
            base: url.trim_end_matches('/').to_string(),
            auth,
            client,
            timeout: cfg.request_timeout,
        }))
    }

    /// Subscribes the connected client `clientid` to `subs` (EMQX: `POST
    /// /api/v5/clients/{clientid}/subscribe/bulk`, one call for all of them).
    pub async fn subscribe_bulk(
        &self,
        clientid: &str,
        subs: &[Subscription],
    ) -> Result<(), CallError> {
        let body: Vec<serde_json::Value> = subs
            .iter()
            .map(|s| serde_json::json!({"topic": s.topic, "qos": s.qos}))
            .collect();
        let path = format!(
            "/api/v5/clients/{}/subscribe/bulk",
            percent_encode(clientid)
        );
        self.post(&path, &serde_json::Value::Array(body)).await?;
        Ok(())
    }

    /// Publishes `messages` (EMQX: `POST /api/v5/publish/bulk`): EMQX's answer for each, in
    /// order. A 400 that answers per message is such an answer too; a 400 that does not refuses
    /// the whole batch ([`CallError::Status`]).
    pub async fn publish_bulk(
        &self,
        messages: &[PublishRequest],
    ) -> Result<Vec<PublishAnswer>, CallError> {
        let body = serde_json::to_value(messages).map_err(|e| CallError::Answer(e.to_string()))?;
        let answer = match self.post("/api/v5/publish/bulk", &body).await {
            Ok(answer) => answer,
            Err(CallError::Status { status: 400, body }) => {
                return match serde_json::from_str::<Vec<PublishAnswer>>(&body) {
                    Ok(list) if list.len() == messages.len() => Ok(list),
                    _ => Err(CallError::Status { status: 400, body }),
                };
            }
            Err(e) => return Err(e),
        };
        let list: Vec<PublishAnswer> = serde_json::from_slice(&answer)
            .map_err(|e| CallError::Answer(format!("not a list of results: {e}")))?;
        if list.len() != messages.len() {
            return Err(CallError::Answer(format!(
                "{} results for {} messages",
                list.len(),
                messages.len()
            )));
        }
        Ok(list)
    }

    /// POSTs JSON `body` to `path`: the answer's body on a 2xx, else the error it means.
    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Bytes, CallError> {
        let uri = format!("{}{path}", self.base);
        let request = hyper::Request::post(&uri)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, self.auth.clone())
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| CallError::Transport(format!("bad request for {uri}: {e}")))?;
        let exchange = async {
            let answer = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Transport(error_chain(&e)))?;
            let status = answer.status().as_u16();
            let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, CallError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(self.timeout))??;
        let text = || {
            let s = String::from_utf8_lossy(&bytes);
            s.chars().take(300).collect::<String>()
        };
        match status {
            200..=299 => Ok(bytes),
            401 | 403 => Err(CallError::Refused { status }),
            404 => Err(CallError::NotFound { body: text() }),
            _ => Err(CallError::Status {
                status,
                body: text(),
            }),
        }
    }
}

/// The error and its sources, `: `-joined (hyper's own message is only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `s` as one path segment: RFC 3986's unreserved characters as they are, every other byte
/// `%XX` (a client id may hold `/`, `?`, `#`, spaces or any UTF-8).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Exponential backoff with full jitter, bounded by a deadline: `retry_for` from the first
/// attempt.
#[derive(Debug)]
pub struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    pub fn new(retry_for: Duration) -> Self {
        Backoff {
            deadline: Instant::now() + retry_for,
            next: INITIAL_BACKOFF,
        }
    }

    /// How long to wait before the next attempt, or `None` when that wait would end past the
    /// deadline (give up).
    pub fn next_wait(&mut self) -> Option<Duration> {
        let cap = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let wait = cap.mul_f64(fastrand::f64());
        (Instant::now() + wait <= self.deadline).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_one_path_segment() {
        assert_eq!(percent_encode("c1-a.b_c~"), "c1-a.b_c~");
        assert_eq!(percent_encode("a/b c?#%"), "a%2Fb%20c%3F%23%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn what_is_retried() {
        let status = |status| CallError::Status {
            status,
            body: String::new(),
        };
        assert!(status(500).retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(400).retryable());
        assert!(!CallError::Refused { status: 401 }.retryable());
        assert!(
            !CallError::NotFound {
                body: String::new()
            }
            .retryable()
        );
        assert!(CallError::Timeout(Duration::from_secs(1)).retryable());
    }

    #[test]
    fn reason_codes() {
        let a = |code: Option<u8>| PublishAnswer {
            id: None,
            reason_code: code,
            message: None,
        };
        assert!(a(None).published());
        assert!(a(Some(NO_MATCHING_SUBSCRIBERS)).published());
        assert!(!a(Some(0x87)).published());
        assert!(!a(Some(0x90)).published());
    }

    #[test]
    fn backoff_ends_at_the_deadline() {
        let mut b = Backoff::new(Duration::ZERO);
        // Full jitter may draw zero; the deadline is already reached for anything longer.
        for _ in 0..20 {
            if let Some(w) = b.next_wait() {
                assert!(w.is_zero());
            }
        }
        let mut b = Backoff::new(Duration::from_secs(3600));
        for _ in 0..20 {
            assert!(b.next_wait().is_some_and(|w| w <= MAX_BACKOFF));
        }
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let cfg = EmqxApiConfig {
            url: Some("http://127.0.0.1:18083/".into()),
            api_key: Some("key1".into()),
            api_secret: Some(crate::config::Secret::new("s3cr3t-value")),
            ..EmqxApiConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let api = EmqxApi::new(&cfg).expect("client");
        let debug = format!("{api:?} {cfg:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        let encoded = base64::engine::general_purpose::STANDARD.encode("key1:s3cr3t-value");
        assert!(!debug.contains(&encoded), "{debug}");
        assert!(api.auth.is_sensitive());
        assert_eq!(api.base, "http://127.0.0.1:18083");
    }
}
