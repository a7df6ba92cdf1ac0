//! Validation of a parsed configuration: the limits DynamoDB and the pipeline need, checked
//! before anything starts. The first limit broken (in the order below) is the error.

use super::{
    Config, ConfigError, EmqxApiConfig, FsyncPolicy, LookupConfig, MAX_BATCH_BYTES,
    MAX_BATCH_REQUESTS, PipelineConfig, SpoolConfig, StorageConfig,
};
use crate::storage::item::MAX_ITEM_BYTES;

/// One limit: whether it is broken, the key it is about, and what the key must be.
type Check = (bool, &'static str, &'static str);

impl Config {
    /// Checks every limit, then the rules.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let broken = lookup_checks(&self.lookup)
            .into_iter()
            .chain(pipeline_checks(&self.pipeline))
            .chain(spool_checks(&self.pipeline.spool))
            .chain(self.listener_and_key_checks())
            .chain(storage_checks(&self.storage))
            .chain(emqx_api_checks(&self.emqx_api))
            .find(|(broken, _, _)| *broken);
        if let Some((_, key, reason)) = broken {
            return Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            });
        }
        self.rule_set()?;
        Ok(())
    }

    /// TLS files and static AWS keys come in pairs, a client CA only with a certificate of the
    /// listener's own; ExHook must take one maximum-size item; a session token
    /// only with the keys.
    fn listener_and_key_checks(&self) -> [Check; 7] {
        let together = "tls_cert and tls_key go together";
        let client_ca = "needs tls_cert and tls_key: clients are verified only over TLS";
        [
            (
                self.exhook.tls_cert.is_some() != self.exhook.tls_key.is_some(),
                "exhook.tls_cert",
                together,
            ),
            (
                self.http.tls_cert.is_some() != self.http.tls_key.is_some(),
                "http.tls_cert",
                together,
            ),
            (
                self.exhook.tls_client_ca.is_some() && self.exhook.tls_cert.is_none(),
                "exhook.tls_client_ca",
                client_ca,
            ),
            (
                self.http.tls_client_ca.is_some() && self.http.tls_cert.is_none(),
                "http.tls_client_ca",
                client_ca,
            ),
            (
                self.exhook.max_message_bytes < MAX_ITEM_BYTES,
                "exhook.max_message_bytes",
                "must be at least 409600 (one maximum-size item)",
            ),
            (
                self.dynamodb.access_key_id.is_some() != self.dynamodb.secret_access_key.is_some(),
                "dynamodb.access_key_id",
                "access_key_id and secret_access_key go together",
            ),
            (
                self.dynamodb.session_token.is_some() && self.dynamodb.access_key_id.is_none(),
                "dynamodb.session_token",
                "a session_token goes with access_key_id and secret_access_key",
            ),
        ]
    }
}

/// The TTL attribute is an attribute of its own: not one the message items already carry.
fn storage_checks(s: &StorageConfig) -> [Check; 1] {
    const TAKEN: [&str; 7] = [
        "msgid", "topic", "sender", "qos", "retain", "payload", "arrived",
    ];
    [(
        s.ttl_attribute.is_empty() || TAKEN.contains(&s.ttl_attribute.as_str()),
        "storage.ttl_attribute",
        "must be a name of its own, not empty and none of msgid, topic, sender, qos, retain, payload, arrived",
    )]
}

fn lookup_checks(l: &LookupConfig) -> [Check; 2] {
    [
        (
            !(1..=1_000_000).contains(&l.scan_segments),
            "lookup.scan_segments",
            "must be 1 to 1000000",
        ),
        at_least_one("lookup.max_retained", l.max_retained),
    ]
}

/// DynamoDB's batch limits, the queue and flush limits, backoff and hot-key windows.
fn pipeline_checks(p: &PipelineConfig) -> Vec<Check> {
    let two_items = "must hold at least two maximum-size items (819200 bytes)";
    vec![
        (
            !(1..=MAX_BATCH_REQUESTS).contains(&p.max_batch_requests),
            "pipeline.max_batch_requests",
            "must be 1 to 25 (DynamoDB's BatchWriteItem limit)",
        ),
        (
            p.max_batch_bytes == 0 || p.max_batch_bytes > MAX_BATCH_BYTES,
            "pipeline.max_batch_bytes",
            "must be 1 to 16777216 (DynamoDB's 16 MB limit)",
        ),
        at_least_one("pipeline.shards", p.shards),
        at_least_one("pipeline.ingest_capacity_events", p.ingest_capacity_events),
        at_least_one("pipeline.shard_queue_capacity", p.shard_queue_capacity),
        at_least_one("pipeline.shard_queue_bytes", p.shard_queue_bytes),
        at_least_one("pipeline.max_in_flight", p.max_in_flight),
        at_least_one("pipeline.min_in_flight", p.min_in_flight),
        at_least_one("pipeline.max_pending_keys", p.max_pending_keys),
        (
            p.min_in_flight > p.max_in_flight,
            "pipeline.min_in_flight",
            "must not exceed pipeline.max_in_flight",
        ),
        (
            p.ingest_capacity_bytes < MAX_ITEM_BYTES * 2,
            "pipeline.ingest_capacity_bytes",
            two_items,
        ),
        (
            p.max_pending_bytes < MAX_ITEM_BYTES * 2,
            "pipeline.max_pending_bytes",
            two_items,
        ),
        (
            p.retry.initial_backoff.is_zero() || p.retry.max_backoff < p.retry.initial_backoff,
            "pipeline.retry",
            "initial_backoff must be positive and at most max_backoff",
        ),
        (
            p.hot_key_max_window < p.hot_key_window,
            "pipeline.hot_key_max_window",
            "must be at least pipeline.hot_key_window",
        ),
    ]
}

/// `[emqx_api]`, when `url` is set: an http(s) URL, the key and secret, a positive timeout and
/// at least one call in flight.
fn emqx_api_checks(a: &EmqxApiConfig) -> [Check; 5] {
    let on = a.url.is_some();
    let scheme_ok = a.url.as_deref().is_none_or(|u| {
        let u = u.to_ascii_lowercase();
        (u.starts_with("http://") || u.starts_with("https://"))
            && u.parse::<hyper::Uri>()
                .is_ok_and(|uri| uri.host().is_some())
    });
    [
        (
            !scheme_ok,
            "emqx_api.url",
            "must be an http:// or https:// URL with a host (EMQX's dashboard listener, e.g. http://127.0.0.1:18083)",
        ),
        (
            on && a.api_key.as_deref().is_none_or(str::is_empty),
            "emqx_api.api_key",
            "must be set when emqx_api.url is (an EMQX API key, sent as HTTP basic auth)",
        ),
        (
            on && a.api_secret.as_ref().is_none_or(|s| s.expose().is_empty()),
            "emqx_api.api_secret",
            "must be set when emqx_api.url is (the API key's secret; or api_secret_file)",
        ),
        (
            on && a.request_timeout.is_zero(),
            "emqx_api.request_timeout",
            "must be positive",
        ),
        at_least_one("emqx_api.max_concurrent", a.max_concurrent),
    ]
}

/// A count that must not be zero.
fn at_least_one(key: &'static str, v: usize) -> Check {
    (v == 0, key, "must be at least 1")
}

/// The spool's limits, when it is on.
fn spool_checks(s: &SpoolConfig) -> [Check; 4] {
    let on = s.enabled;
    [
        (
            on && s.segment_mb == 0,
            "pipeline.spool.segment_mb",
            "must be at least 1",
        ),
        (
            on && s.max_mb < 2 * s.segment_mb,
            "pipeline.spool.max_mb",
            "must be at least twice pipeline.spool.segment_mb",
        ),
        (
            on && s.fsync == FsyncPolicy::Interval && s.fsync_interval.is_zero(),
            "pipeline.spool.fsync_interval",
            "must be positive",
        ),
        (
            on && s.segment_age.is_zero(),
            "pipeline.spool.segment_age",
            "must be positive",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(text: &str) -> Option<&'static str> {
        match Config::parse(text, "t") {
            Ok(_) => None,
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn each_broken_limit_names_its_key_and_the_first_one_wins() {
        assert_eq!(
            key_of("[lookup]\nscan_segments = 0\n"),
            Some("lookup.scan_segments")
        );
        assert_eq!(key_of("[pipeline]\nshards = 0\n"), Some("pipeline.shards"));
        assert_eq!(
            key_of("[storage]\nttl_attribute = \"arrived\"\n"),
            Some("storage.ttl_attribute")
        );
        assert_eq!(key_of("[storage]\nttl_attribute = \"ttl\"\n"), None);
        assert_eq!(
            key_of("[pipeline]\nmin_in_flight = 9\nmax_in_flight = 8\n"),
            Some("pipeline.min_in_flight")
        );
        // The spool's limits apply only when it is on.
        assert_eq!(key_of("[pipeline.spool]\nsegment_mb = 0\n"), None);
        assert_eq!(
            key_of("[pipeline.spool]\nenabled = true\nsegment_mb = 0\n"),
            Some("pipeline.spool.segment_mb")
        );
        assert_eq!(
            key_of("[http]\ntls_key = \"k.pem\"\n"),
            Some("http.tls_cert")
        );
        // [emqx_api]: off without url; with it, the key and the secret are required.
        assert_eq!(key_of("[emqx_api]\napi_key = \"k\"\n"), None);
        assert_eq!(
            key_of("[emqx_api]\nurl = \"http://127.0.0.1:18083\"\n"),
            Some("emqx_api.api_key")
        );
        assert_eq!(
            key_of("[emqx_api]\nurl = \"http://127.0.0.1:18083\"\napi_key = \"k\"\n"),
            Some("emqx_api.api_secret")
        );
        assert_eq!(
            key_of("[emqx_api]\nurl = \"ftp://x\"\napi_key = \"k\"\napi_secret = \"s\"\n"),
            Some("emqx_api.url")
        );
        assert_eq!(
            key_of(
                "[emqx_api]\nurl = \"https://emqx:18083\"\napi_key = \"k\"\napi_secret = \"s\"\n"
            ),
            None
        );
        assert_eq!(
            key_of("[exhook]\ntls_client_ca = \"ca.pem\"\n"),
            Some("exhook.tls_client_ca")
        );
        assert_eq!(
            key_of("[http]\ntls_client_ca = \"ca.pem\"\n"),
            Some("http.tls_client_ca")
        );
        assert_eq!(
            key_of(
                "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\n"
            ),
            None
        );
        assert_eq!(
            key_of("[dynamodb]\nsession_token = \"t\"\n"),
            Some("dynamodb.session_token")
        );
        assert_eq!(
            key_of(
                "[dynamodb]\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\nsession_token = \"t\"\n"
            ),
            None
        );
        // Both broken: the pipeline's limit comes before the listener's.
        assert_eq!(
            key_of("[pipeline]\nshards = 0\n[exhook]\nmax_message_bytes = 1\n"),
            Some("pipeline.shards")
        );
    }
}
