//! The read side: the seed's three lookups, answered from DynamoDB plus what the pipeline has
//! accepted but not yet written.
//!
//! - **Subscriptions** (`on_subscribe_lookup`): a client's rows of `mqtt_sub`, every Query page.
//! - **Retained** (`on_retain_lookup`): the retained messages matching a subscription filter. With
//!   `lookup.retained = "index"` the filter's topics (MQTT wildcards) are found in the shared
//!   topic index `mqtt_topic_index` that every instance writes ([`index`]), then only those
//!   items are read (BatchGetItem); the seed's literal-key mode stays available.
//! - **Offline** (`on_message_fetch_for_queue`): for a QoS > 0 subscription, the message ids of
//!   every matching topic of `mqtt_topic_msg_map`, ordered by the time inside the GUID (base62
//!   strings do not sort by time), limited to the newest `limit` published since `since`, and
//!   the messages read from `mqtt_msg` with BatchGetItem (≤ 100 keys a request, unprocessed keys
//!   retried), returned oldest first.
//!
//! Reads are strongly consistent, and every answer replays the [`ReadState`] overlay of
//! accepted-but-unsettled writes over what DynamoDB returned (see [`overlay`] for why that is
//! exact). No lookup scans a table: wildcard filters are answered by Queries of the shared
//! index, so a topic written through another instance is found as soon as its entry is in
//! DynamoDB.
//!
//! Shared subscriptions (`$share/group/f`, `$queue/f`) read the offline messages of `f`, and no
//! retained messages (MQTT does not send retained messages to shared subscriptions).
//!
//! Files: this one holds the [`Reader`], subscriptions and retained lookups; `batch_get` reads
//! items by key; `offline` orders offline messages; [`overlay`] is the read-your-writes overlay;
//! [`index`] queries the shared topic index; [`http`] the lookup API's routes.

mod batch_get;
pub mod http;
pub mod index;
mod offline;
pub mod overlay;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use thiserror::Error;

pub use offline::{guid_of, guid_time_us};
pub use overlay::ReadState;

use crate::config::{DynamoConfig, LookupConfig, MatchMode};
use crate::pipeline::flush::TableNames;
use crate::storage::item::{Item, Key, Table, Value};
use crate::storage::topic_index::IndexKind;
use crate::topic::{FilterError, TopicFilter};
use batch_get::replay;

pub use crate::storage::limits::MAX_BATCH_GET_KEYS;

/// Why a lookup failed. Nothing is half-answered: a lookup returns everything or this.
#[derive(Debug, Error)]
pub enum LookupError {
    #[error("invalid topic filter: {0}")]
    Filter(#[from] FilterError),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("DynamoDB {operation} on {table} failed: {message}")]
    Dynamo {
        operation: &'static str,
        table: String,
        message: String,
    },
    #[error("{table} still had unprocessed keys after {rounds} BatchGetItem rounds")]
    Unprocessed { table: String, rounds: u32 },
    #[error("an item of {table} cannot be read: {reason}")]
    BadItem { table: String, reason: String },
}

/// The lookups, as the closed label set of `mqtt_dynamo_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    Subscriptions,
    Retained,
    Offline,
}

impl LookupKind {
    pub const ALL: [LookupKind; 3] = [
        LookupKind::Subscriptions,
        LookupKind::Retained,
        LookupKind::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LookupKind::Subscriptions => "subscriptions",
            LookupKind::Retained => "retained",
            LookupKind::Offline => "offline",
        }
    }
}

/// Counts and times one lookup.
async fn measured<T>(
    kind: LookupKind,
    lookup: impl std::future::Future<Output = Result<T, LookupError>>,
) -> Result<T, LookupError> {
    let t0 = std::time::Instant::now();
    let result = lookup.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(crate::telemetry::catalogue::LOOKUPS_TOTAL, "kind" => kind.as_str(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(crate::telemetry::catalogue::LOOKUP_DURATION_SECONDS, "kind" => kind.as_str())
        .record(t0.elapsed().as_secs_f64());
    result
}

/// A payload as stored: text (`S`) or bytes (`B`, payloads that are not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

/// One message of `mqtt_msg` or `mqtt_retain`, with the attributes the seed writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub msgid: String,
    pub sender: Option<String>,
    pub qos: Option<i64>,
    pub retain: Option<bool>,
    pub payload: Option<Payload>,
    /// `arrived` as stored (seconds or milliseconds, per `storage.time_unit`).
    pub arrived: Option<i64>,
    /// The publish time inside the message id (µs since the epoch), when the id is an EMQX GUID.
    pub time_us: Option<u64>,
    /// When it expires (epoch seconds, the TTL attribute), if it does.
    pub expires_at: Option<i64>,
}

impl StoredMessage {
    /// Whether it has expired at `now_s` (epoch seconds): DynamoDB's TTL deletes an item once its
    /// TTL time is at or before now.
    pub fn expired_at(&self, now_s: u64) -> bool {
        self.expires_at
            .is_some_and(|at| at <= i64::try_from(now_s).unwrap_or(i64::MAX))
    }
}

/// One row of `mqtt_sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topic: String,
    pub qos: i64,
}

/// The answer to a retained lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// By topic.
    pub messages: Vec<StoredMessage>,
    /// More topics matched than `lookup.max_retained`; the rest were not read.
    pub truncated: bool,
}

/// An offline-messages request (EMQX's `max_returned_count` and `time_range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineQuery {
    pub filter: String,
    /// The subscription's QoS: a QoS 0 subscription gets nothing, as in the seed.
    pub qos: u8,
    /// At most this many (the newest); `None` means `lookup.max_returned_count`, `Some(0)` no
    /// limit.
    pub limit: Option<usize>,
    /// Only messages whose GUID time is at or after this (µs since the epoch); `None` means
    /// `lookup.time_range` before now, if set.
    pub since_us: Option<u64>,
}

/// The answer to an offline lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
    /// Topics whose message sets were read.
    pub topics: usize,
    /// Message ids in those sets.
    pub ids: usize,
    /// Ids that are not EMQX GUIDs: their time is unknown, so they sort first and are left out
    /// when a `since` applies.
    pub undated_ids: usize,
    /// Matching messages left out by the limit.
    pub truncated: bool,
}

/// Answers lookups. Cheap to share (`Arc`); all methods take `&self` and hold no lock across a
/// request (the overlay's stripes are locked for one map operation each).
#[derive(Debug)]
pub struct Reader {
    client: Client,
    tables: TableNames,
    state: Arc<ReadState>,
    cfg: LookupConfig,
    /// The TTL attribute (`[storage] ttl_attribute`): messages past it are not returned, even
    /// before DynamoDB's TTL sweep deletes them (which can take days).
    expiry_attribute: Arc<str>,
}

pub(crate) fn dynamo_error<E, R>(
    operation: &'static str,
    table: &str,
    e: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> LookupError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    LookupError::Dynamo {
        operation,
        table: table.to_string(),
        message: crate::storage::dynamo::error_text(&e),
    }
}

/// `$share/group/f` and `$queue/f` → `f`; `None` for other filters.
pub fn shared_filter(filter: &str) -> Option<&str> {
    if let Some(rest) = filter.strip_prefix("$queue/") {
        return Some(rest);
    }
    let rest = filter.strip_prefix("$share/")?;
    rest.split_once('/').map(|(_group, f)| f)
}

impl StoredMessage {
    /// Reads an item of `mqtt_msg` or `mqtt_retain`, its expiry from `expiry_attribute`.
    pub fn from_item(item: &Item, expiry_attribute: &str) -> StoredMessage {
        let s = |name: &str| match item.get(name) {
            Some(Value::S(s)) => Some(s.clone()),
            _ => None,
        };
        let n = |name: &str| match item.get(name) {
            Some(Value::N(n)) => Some(*n),
            _ => None,
        };
        let msgid = s("msgid").unwrap_or_default();
        StoredMessage {
            topic: s("topic").unwrap_or_default(),
            time_us: guid_time_us(&msgid),
            msgid,
            sender: s("sender"),
            qos: n("qos"),
            retain: n("retain").map(|r| r != 0),
            payload: match item.get("payload") {
                Some(Value::S(s)) => Some(Payload::Text(s.clone())),
                Some(Value::B(b)) => Some(Payload::Binary(b.clone())),
                _ => None,
            },
            arrived: n("arrived"),
            expires_at: n(expiry_attribute),
        }
    }
}

impl Reader {
    pub fn new(
        client: Client,
        dynamo: &DynamoConfig,
        state: Arc<ReadState>,
        cfg: LookupConfig,
    ) -> Self {
        Reader {
            client,
            tables: TableNames::new(dynamo),
            state,
            cfg,
            expiry_attribute: crate::rules::DEFAULT_TTL_ATTRIBUTE.into(),
        }
    }

    /// Reads message expiry from `attribute` instead of `expires_at`.
    pub fn with_expiry_attribute(mut self, attribute: &str) -> Self {
        self.expiry_attribute = attribute.into();
        self
    }

    /// The stored message `item`, unless it expired by now or is a tombstone.
    fn unexpired(&self, item: &Item) -> Option<StoredMessage> {
        // A retained message's tombstone (a clear under event-time order) holds no message.
        if !item.contains_key("msgid") {
            return None;
        }
        let message = StoredMessage::from_item(item, &self.expiry_attribute);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (!message.expired_at(now_s)).then_some(message)
    }

    pub fn state(&self) -> &Arc<ReadState> {
        &self.state
    }

    pub fn config(&self) -> &LookupConfig {
        &self.cfg
    }

    /// A client's subscriptions (`mqtt_sub`, every Query page), by topic.
    pub async fn subscriptions(&self, clientid: &str) -> Result<Vec<Subscription>, LookupError> {
        measured(
            LookupKind::Subscriptions,
            self.subscriptions_inner(clientid),
        )
        .await
    }

    async fn subscriptions_inner(&self, clientid: &str) -> Result<Vec<Subscription>, LookupError> {
        if clientid.is_empty() {
            return Err(LookupError::Invalid {
                what: "clientid",
                reason: "must not be empty".into(),
            });
        }
        let pending = self.state.pending_under(Table::Sub, clientid);
        let name = self.tables.name(Table::Sub);
        let mut items = BTreeMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(name)
                .key_condition_expression("#c = :c")
                .expression_attribute_names("#c", "clientid")
                .expression_attribute_values(":c", AttributeValue::S(clientid.to_string()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| dynamo_error("Query", name, e))?;
            for attrs in page.items() {
                let (key, item) =
                    crate::storage::dynamo::from_attrs(Table::Sub, attrs).map_err(|e| {
                        LookupError::BadItem {
                            table: name.to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                items.insert(key, item);
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        for (key, writes) in &pending {
            replay(&mut items, key, writes);
        }
        Ok(items
            .into_iter()
            .filter_map(|(key, item)| {
                let qos = match item.get("qos") {
                    Some(Value::N(q)) => *q,
                    _ => 0,
                };
                key.range.map(|topic| Subscription { topic, qos })
            })
            .collect())
    }

    /// The topics of `table` matching `filter` (from the shared index), or the filter itself in
    /// literal mode or when it has no wildcard.
    async fn topics(
        &self,
        filter: &TopicFilter,
        mode: MatchMode,
        table: Table,
    ) -> Result<Vec<String>, LookupError> {
        if mode == MatchMode::Literal || !filter.has_wildcard() {
            return Ok(vec![filter.as_str().to_string()]);
        }
        let kind = IndexKind::of(table).ok_or_else(|| LookupError::Invalid {
            what: "table",
            reason: format!("{table} has no topic index"),
        })?;
        self.indexed_topics(filter, kind).await
    }

    /// The retained messages for a subscription to `filter`, by topic.
    pub async fn retained(&self, filter: &str) -> Result<Retained, LookupError> {
        measured(LookupKind::Retained, self.retained_inner(filter)).await
    }

    async fn retained_inner(&self, filter: &str) -> Result<Retained, LookupError> {
        let parsed = TopicFilter::new(filter)?;
        if shared_filter(filter).is_some() {
            return Ok(Retained {
                messages: Vec::new(),
                truncated: false,
            });
        }
        let mut topics = self
            .topics(&parsed, self.cfg.retained, Table::Retain)
            .await?;
        let truncated = topics.len() > self.cfg.max_retained;
        topics.truncate(self.cfg.max_retained);
        let keys: Vec<Key> = topics
            .into_iter()
            .map(|t| Key::new(Table::Retain, t))
            .collect();
        let items = self.read_through(Table::Retain, &keys).await?;
        Ok(Retained {
            messages: items.values().filter_map(|i| self.unexpired(i)).collect(),
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters_name_their_topic_filter() {
        assert_eq!(shared_filter("$share/g/a/+"), Some("a/+"));
        assert_eq!(shared_filter("$queue/a/b"), Some("a/b"));
        assert_eq!(shared_filter("$share/g"), None);
        assert_eq!(shared_filter("a/b"), None);
    }

    #[test]
    fn guid_times_from_both_encodings() {
        let guid: u128 = (1_562_308_553_981_613u128 << 64) | 1;
        assert_eq!(
            guid_time_us(&crate::guid::to_hex(guid)),
            Some(1_562_308_553_981_613)
        );
        assert_eq!(
            guid_time_us(&crate::guid::to_base62(guid)),
            Some(1_562_308_553_981_613)
        );
        assert_eq!(guid_time_us("not-a-guid"), None);
    }
}
