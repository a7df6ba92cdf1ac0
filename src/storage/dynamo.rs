//! The edge to DynamoDB: building the SDK client from the configuration, converting our values to
//! and from `AttributeValue`, and classifying errors into what the flusher should do with them.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::imds::region::ImdsRegionProvider;
use aws_config::meta::region::ProvideRegion;
use aws_config::profile::region::ProfileFileRegionProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use thiserror::Error;
use tracing::info;

use crate::config::{DEFAULT_REGION, DynamoConfig};
use crate::storage::item::{Item, Key, Table, Value};

/// How the client should retry on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdkRetries {
    /// The SDK's standard retries: for admin commands (`tables create`, checks).
    Standard,
    /// None: the pipeline's flusher owns retrying, with its own backoff and per-key ordering.
    Disabled,
}

/// Which AWS region chain a client consults when `[dynamodb] region` is unset (after it: the
/// [`DEFAULT_REGION`]), decided by the backend.
///
/// - Embedded: none. The in-process server ignores the region; nothing is looked up, so a start
///   never waits on a lookup.
/// - Endpoint (`endpoint_url` / `AWS_ENDPOINT_URL[_DYNAMODB]`): the environment and the profile,
///   not IMDS. Such an endpoint is nearly always an emulator, where the region is only the
///   signing scope; off EC2 an IMDS probe adds about a second to each start where the network
///   drops packets to 169.254.169.254 (measured: see README, "AWS credentials and region"). A
///   VPC endpoint of the real DynamoDB names its region in its URL: set `region` with it.
/// - AWS (DynamoDB itself): the whole chain, as AWS ships it: `AWS_REGION`, the profile's
///   `region`, then the instance's region from IMDS (`/latest/meta-data/placement/region`;
///   skipped when `AWS_EC2_METADATA_DISABLED=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionChain {
    None,
    EnvironmentAndProfile,
    Full,
}

/// Where a client's region came from (logged with it when the client is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    /// `[dynamodb] region`, or `AWS_REGION` / `AWS_DEFAULT_REGION` copied over it by
    /// [`DynamoConfig::apply_env`].
    Config,
    /// `AWS_REGION` / `AWS_DEFAULT_REGION` read by the SDK's provider (a library caller that did
    /// not apply the environment to its configuration).
    Environment,
    /// The `region` of the profile (`AWS_PROFILE`, or `default`) in `AWS_CONFIG_FILE`.
    Profile,
    /// The EC2 instance metadata service.
    Imds,
    /// None of the above: [`DEFAULT_REGION`].
    Default,
}

impl RegionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionSource::Config => "configuration",
            RegionSource::Environment => "environment",
            RegionSource::Profile => "profile",
            RegionSource::Imds => "IMDS",
            RegionSource::Default => "default",
        }
    }
}

/// Where a client's credentials come from (logged by name when the client is built; the keys
/// themselves never are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `[dynamodb] access_key_id`, `secret_access_key` and the optional `session_token`.
    Config,
    /// Fixed keys for the embedded DynamoDB, which accepts any.
    Embedded,
    /// aws-config's default chain: the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the profile (static keys, `role_arn`,
    /// `credential_process`, SSO), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`, IRSA), ECS
    /// container credentials, IMDS. Resolved at the first request and refreshed by the SDK.
    DefaultChain,
}

impl CredentialSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Config => "static keys from [dynamodb]",
            CredentialSource::Embedded => "fixed local keys (embedded DynamoDB)",
            CredentialSource::DefaultChain => "the AWS default credential chain",
        }
    }
}

/// The HTTPS client for DynamoDB and for everything the credential and region chains call
/// (STS, SSO, SSO-OIDC, ECS, IMDS): hyper 1 with rustls on ring, the one TLS stack in the build.
fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The region chain for a client of `cfg`; `embedded` when it talks to the embedded server.
pub fn region_chain(cfg: &DynamoConfig, embedded: bool) -> RegionChain {
    if embedded {
        RegionChain::None
    } else if cfg.endpoint_url.is_some() {
        RegionChain::EnvironmentAndProfile
    } else {
        RegionChain::Full
    }
}

/// The region: `[dynamodb] region`, else the sources `chain` allows in AWS's order
/// (environment, profile, IMDS), else [`DEFAULT_REGION`]. `conf` carries the HTTP client
/// IMDS is asked through.
pub async fn resolve_region(
    cfg: &DynamoConfig,
    chain: RegionChain,
    conf: &ProviderConfig,
) -> (Region, RegionSource) {
    if let Some(region) = &cfg.region {
        return (Region::new(region.clone()), RegionSource::Config);
    }
    if chain != RegionChain::None {
        if let Some(region) = EnvironmentVariableRegionProvider::new().region().await {
            return (region, RegionSource::Environment);
        }
        let profile = ProfileFileRegionProvider::builder().configure(conf).build();
        if let Some(region) = profile.region().await {
            return (region, RegionSource::Profile);
        }
    }
    if chain == RegionChain::Full {
        let imds = ImdsRegionProvider::builder().configure(conf).build();
        if let Some(region) = imds.region().await {
            return (region, RegionSource::Imds);
        }
    }
    (Region::from_static(DEFAULT_REGION), RegionSource::Default)
}

/// Builds a DynamoDB client from `[dynamodb]`, talking to `endpoint` when given (the embedded
/// server) or the configured endpoint otherwise.
///
/// Credentials: the configured keys (with `session_token`) when set; else fixed local keys for
/// the embedded server; else aws-config's default credential chain ([`CredentialSource`]).
/// Region: see [`RegionChain`]. Logs the region, where it came from and the credential source
/// (never a key).
pub async fn client(cfg: &DynamoConfig, endpoint: Option<&str>, retries: SdkRetries) -> Client {
    let http = https_client();
    let chain = region_chain(cfg, endpoint.is_some());
    let provider_conf = ProviderConfig::default().with_http_client(http.clone());
    let (region, region_source) = resolve_region(cfg, chain, &provider_conf).await;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region.clone())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.connect_timeout)
                .operation_attempt_timeout(cfg.attempt_timeout)
                .build(),
        )
        .retry_config(sdk_retry_config(retries));
    if let Some(url) = endpoint.or(cfg.endpoint_url.as_deref()) {
        loader = loader.endpoint_url(url);
    }
    let credentials = if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key)
    {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.expose().to_string(),
            cfg.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "mqtt-dynamo-config",
        ));
        CredentialSource::Config
    } else if endpoint.is_some() {
        // The embedded DynamoDB accepts any keys; don't go looking for real ones.
        loader =
            loader.credentials_provider(Credentials::new("local", "local", None, None, "embedded"));
        CredentialSource::Embedded
    } else {
        CredentialSource::DefaultChain
    };
    info!(
        region = %region,
        region_source = region_source.as_str(),
        credentials = credentials.as_str(),
        "DynamoDB client: region {region} ({}), credentials: {}",
        region_source.as_str(),
        credentials.as_str()
    );
    Client::new(&loader.load().await)
}

fn sdk_retry_config(retries: SdkRetries) -> RetryConfig {
    match retries {
        SdkRetries::Standard => RetryConfig::standard(),
        SdkRetries::Disabled => RetryConfig::disabled(),
    }
}

/// A client like `client` (same endpoint, region, credentials and their cache) with other
/// retries: the service's pipeline client, so the region and the credentials are looked up once.
pub fn with_retries(client: &Client, retries: SdkRetries) -> Client {
    let conf = client
        .config()
        .to_builder()
        .retry_config(sdk_retry_config(retries))
        .build();
    Client::from_conf(conf)
}

/// Our value as the SDK's.
pub fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::S(s) => AttributeValue::S(s.clone()),
        Value::N(n) => AttributeValue::N(n.to_string()),
        Value::B(b) => AttributeValue::B(Blob::new(b.clone())),
        Value::Ss(set) => AttributeValue::Ss(set.iter().cloned().collect()),
    }
}

/// An item as the SDK's map.
pub fn to_attrs(item: &Item) -> HashMap<String, AttributeValue> {
    item.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect()
}

/// The key attributes of `key`.
pub fn key_attrs(key: &Key) -> HashMap<String, AttributeValue> {
    to_attrs(&key.to_item())
}

/// A value read from a table that is not one of the types the storage contract uses.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("attribute {name}: {reason}")]
pub struct ReadError {
    pub name: String,
    pub reason: String,
}

/// The SDK's value as ours.
pub fn from_attr(name: &str, v: &AttributeValue) -> Result<Value, ReadError> {
    let err = |reason: String| ReadError {
        name: name.to_string(),
        reason,
    };
    Ok(match v {
        AttributeValue::S(s) => Value::S(s.clone()),
        AttributeValue::N(n) => Value::N(
            n.parse()
                .map_err(|_| err(format!("number {n:?} is not an integer")))?,
        ),
        AttributeValue::B(b) => Value::B(b.as_ref().to_vec()),
        AttributeValue::Ss(set) => Value::Ss(set.iter().cloned().collect()),
        other => return Err(err(format!("unexpected type {other:?}"))),
    })
}

/// A whole item read from `table`, with its key.
pub fn from_attrs(
    table: Table,
    attrs: &HashMap<String, AttributeValue>,
) -> Result<(Key, Item), ReadError> {
    let item = attrs
        .iter()
        .map(|(k, v)| Ok((k.clone(), from_attr(k, v)?)))
        .collect::<Result<Item, ReadError>>()?;
    let key = key_of(table, &item).ok_or_else(|| ReadError {
        name: table.key_names().0.to_string(),
        reason: "missing key attribute".into(),
    })?;
    Ok((key, item))
}

/// The key of an item (or of a key map) of `table`.
pub fn key_of(table: Table, item: &Item) -> Option<Key> {
    let (hash_name, range_name) = table.key_names();
    let Some(Value::S(hash)) = item.get(hash_name) else {
        return None;
    };
    let range = match range_name {
        Some(name) => match item.get(name) {
            Some(Value::S(r)) => Some(r.clone()),
            _ => return None,
        },
        None => None,
    };
    Some(Key {
        table,
        hash: hash.clone(),
        range,
    })
}

/// The key of an SDK attribute map of `table`.
pub fn key_of_attrs(table: Table, attrs: &HashMap<String, AttributeValue>) -> Option<Key> {
    let (hash_name, range_name) = table.key_names();
    let hash = attrs.get(hash_name)?.as_s().ok()?.clone();
    let range = match range_name {
        Some(name) => Some(attrs.get(name)?.as_s().ok()?.clone()),
        None => None,
    };
    Some(Key { table, hash, range })
}

/// What a failed request means for the flusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// DynamoDB asked us to slow down: retry after backoff.
    Throttled { code: &'static str },
    /// The request itself is invalid (ValidationException): retrying it unchanged cannot help.
    Invalid { message: String },
    /// A guarded update's condition did not hold.
    ConditionFailed,
    /// DynamoDB refused the credentials: nothing changes until someone fixes them, so retries
    /// wait the longest backoff (no retry storm) and readiness fails.
    Credentials { code: String, message: String },
    /// Anything else — 5xx, transport errors, timeouts, missing tables, credentials: retried
    /// with backoff until the retry budget runs out.
    Transient { code: String, message: String },
}

/// Throttling error codes, as static strings for metric labels.
pub(crate) const THROTTLE_CODES: [&str; 4] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "Throttling",
];

/// Error codes meaning the credentials were refused (wrong, expired, missing or not allowed).
pub const CREDENTIAL_CODES: [&str; 8] = [
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationTokenException",
    "AccessDeniedException",
    "InvalidClientTokenId",
];

/// Classifies an SDK error.
pub fn classify<E, R>(err: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().unwrap_or_default();
    let message = err.message().unwrap_or_default().to_string();
    if let Some(code) = THROTTLE_CODES.iter().find(|c| **c == code) {
        return Failure::Throttled { code };
    }
    match code {
        "ValidationException" => Failure::Invalid { message },
        "ConditionalCheckFailedException" => Failure::ConditionFailed,
        code if CREDENTIAL_CODES.contains(&code) => Failure::Credentials {
            code: code.to_string(),
            message,
        },
        _ => {
            let code = match err {
                SdkError::TimeoutError(_) => "timeout".to_string(),
                SdkError::DispatchFailure(_) => "dispatch_failure".to_string(),
                _ if code.is_empty() => "unknown".to_string(),
                _ => code.to_string(),
            };
            let message = if message.is_empty() {
                format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(err))
            } else {
                message
            };
            Failure::Transient { code, message }
        }
    }
}

/// The throttling reasons DynamoDB documents (`<Table|Index><Read|Write><LimitType>`), the closed
/// label set of `mqtt_dynamo_dynamodb_throttling_reasons_total`; anything else is `other`.
pub const THROTTLING_REASONS: [&str; 16] = [
    "TableReadProvisionedThroughputExceeded",
    "TableWriteProvisionedThroughputExceeded",
    "TableReadAccountLimitExceeded",
    "TableWriteAccountLimitExceeded",
    "TableReadKeyRangeThroughputExceeded",
    "TableWriteKeyRangeThroughputExceeded",
    "TableReadMaxOnDemandThroughputExceeded",
    "TableWriteMaxOnDemandThroughputExceeded",
    "IndexReadProvisionedThroughputExceeded",
    "IndexWriteProvisionedThroughputExceeded",
    "IndexReadAccountLimitExceeded",
    "IndexWriteAccountLimitExceeded",
    "IndexReadKeyRangeThroughputExceeded",
    "IndexWriteKeyRangeThroughputExceeded",
    "IndexReadMaxOnDemandThroughputExceeded",
    "IndexWriteMaxOnDemandThroughputExceeded",
];

/// Whether any of `reasons` is a key-range limit (a hot partition key), as opposed to table or
/// account capacity.
pub fn names_key_range(reasons: &[aws_sdk_dynamodb::types::ThrottlingReason]) -> bool {
    reasons.iter().any(|r| {
        r.reason()
            .is_some_and(|r| r.contains("KeyRangeThroughputExceeded"))
    })
}

/// Counts the ThrottlingReasons a throttling error carries, when DynamoDB sends them (hot key
/// versus capacity).
pub fn record_throttling_reasons(reasons: &[aws_sdk_dynamodb::types::ThrottlingReason]) {
    for r in reasons {
        let label = r
            .reason()
            .and_then(|got| {
                THROTTLING_REASONS
                    .iter()
                    .find(|known| **known == got)
                    .copied()
            })
            .unwrap_or("other");
        metrics::counter!(crate::telemetry::catalogue::DYNAMODB_THROTTLING_REASONS_TOTAL, "reason" => label)
            .increment(1);
    }
}

/// Defines a function returning the ThrottlingReasons an API's error carries, if any (the three
/// throttling errors carry them; the SDK has no trait for it).
macro_rules! throttling_reasons_of {
    ($(#[$doc:meta])* $name:ident, $($error:ident)::+) => {
        $(#[$doc])*
        pub fn $name<R>(
            err: &SdkError<$($error)::+, R>,
        ) -> &[aws_sdk_dynamodb::types::ThrottlingReason] {
            use $($error)::+ as E;
            match err.as_service_error() {
                Some(E::ThrottlingException(e)) => e.throttling_reasons(),
                Some(E::ProvisionedThroughputExceededException(e)) => e.throttling_reasons(),
                Some(E::RequestLimitExceeded(e)) => e.throttling_reasons(),
                _ => &[],
            }
        }
    };
}

throttling_reasons_of!(
    /// The ThrottlingReasons of a BatchWriteItem error, if it carries any.
    batch_throttling_reasons,
    aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemError
);
throttling_reasons_of!(
    /// The ThrottlingReasons of an UpdateItem error, if it carries any.
    update_throttling_reasons,
    aws_sdk_dynamodb::operation::update_item::UpdateItemError
);

/// An SDK error as one line: DynamoDB's code and message when it answered, else the whole chain
/// (connection refused, timeout, …).
pub fn error_text<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string(),
    }
}

/// Full-jitter exponential backoff: a uniform delay in `[0, min(max, initial · 2^attempt))`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let cap = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    cap.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_has_its_region_chain() {
        let mut cfg = DynamoConfig::default();
        assert_eq!(region_chain(&cfg, true), RegionChain::None);
        assert_eq!(region_chain(&cfg, false), RegionChain::Full);
        cfg.endpoint_url = Some("http://127.0.0.1:8000".into());
        assert_eq!(
            region_chain(&cfg, false),
            RegionChain::EnvironmentAndProfile
        );
        // The embedded server wins over a configured endpoint (the backend's own URL).
        assert_eq!(region_chain(&cfg, true), RegionChain::None);
    }

    #[tokio::test]
    async fn the_configured_region_comes_first_and_no_chain_means_the_default() {
        // Neither case consults the process's environment, profile or IMDS.
        let conf = ProviderConfig::default();
        let mut cfg = DynamoConfig::default();
        assert_eq!(
            resolve_region(&cfg, RegionChain::None, &conf).await,
            (Region::from_static(DEFAULT_REGION), RegionSource::Default)
        );
        cfg.region = Some("eu-central-1".into());
        assert_eq!(
            resolve_region(&cfg, RegionChain::Full, &conf).await,
            (Region::new("eu-central-1"), RegionSource::Config)
        );
    }

    #[test]
    fn values_round_trip() {
        for v in [
            Value::S("x".into()),
            Value::N(-42),
            Value::B(vec![0, 255]),
            Value::Ss(["a".to_string(), "b".to_string()].into()),
        ] {
            assert_eq!(from_attr("a", &to_attr(&v)).unwrap(), v);
        }
        assert!(from_attr("a", &AttributeValue::N("1.5".into())).is_err());
        assert!(from_attr("a", &AttributeValue::Bool(true)).is_err());
    }

    #[test]
    fn backoff_is_bounded() {
        let (i, m) = (Duration::from_millis(25), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = backoff(attempt, i, m);
            assert!(d < m, "{d:?}");
            assert!(d < i * 2u32.pow(attempt.min(20)), "{d:?}");
        }
    }

    #[test]
    fn keys_are_read_back() {
        let key = Key::with_range(Table::Acked, "t", "c");
        assert_eq!(
            key_of_attrs(Table::Acked, &key_attrs(&key)),
            Some(key.clone())
        );
        assert_eq!(key_of(Table::Acked, &key.to_item()), Some(key));
        assert_eq!(key_of(Table::Msg, &Item::new()), None);
    }
}
