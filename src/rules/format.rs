//! Storage formats: how message ids and times are written into the items.

use serde::{Deserialize, Serialize};

use crate::guid::{self, GuidError};
use crate::storage::item::Value;

/// How message ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgIdFormat {
    /// EMQX's base62 text (47 characters), what the 4.x backend stored.
    #[default]
    Base62,
    /// The 32-digit upper-case hex form EMQX 5 uses.
    Hex,
}

/// Unit of `online_at`, `offline_at` and `arrived`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds, as the seed's samples show.
    #[default]
    Seconds,
    Milliseconds,
}

/// How values are written. `StorageFormat::default()` is the seed's (no event time);
/// [`crate::config::StorageConfig::default`]'s `format()` is the service's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageFormat {
    pub msgid: MsgIdFormat,
    pub time: TimeUnit,
    pub expiry: Expiry,
    /// `[storage] event_time_order`: presence and retained writes carry the broker's event time
    /// and a condition that keeps an older event from overwriting a newer one
    /// ([`crate::storage::item::Timed`]); off, they are the seed's puts, deletes and guarded
    /// updates, applied in arrival order.
    pub event_time: bool,
}

/// How long a retained message's tombstone (what a clear leaves under event-time order) is
/// kept: its TTL attribute is set this far past the clear, so DynamoDB's TTL sweep removes it
/// (where TTL is on). A retained set stamped before the clear that reaches DynamoDB later than
/// this after it would be written.
pub const TOMBSTONE_TTL_S: u64 = 24 * 60 * 60;

/// How a message's expiry is stored: its `mqtt_msg` and `mqtt_retain` items carry `attribute`
/// (N, epoch seconds), DynamoDB's TTL attribute, when the publisher set a Message-Expiry-Interval
/// or a default applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The attribute's name (`[storage] ttl_attribute`, `expires_at` by default).
    pub attribute: std::sync::Arc<str>,
    /// For messages without an interval (`[storage] default_message_ttl`); `None`: they never
    /// expire, as in the seed.
    pub default_ttl_s: Option<u64>,
}

/// The TTL attribute's default name.
pub const DEFAULT_TTL_ATTRIBUTE: &str = "expires_at";

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            attribute: DEFAULT_TTL_ATTRIBUTE.into(),
            default_ttl_s: None,
        }
    }
}

impl Expiry {
    /// When a message received at `timestamp_ms` with `interval_s` expires, in epoch seconds.
    pub fn expires_at(&self, timestamp_ms: u64, interval_s: Option<u32>) -> Option<u64> {
        let ttl = interval_s.map(u64::from).or(self.default_ttl_s)?;
        Some((timestamp_ms / 1000).saturating_add(ttl))
    }
}

impl StorageFormat {
    pub(crate) fn time(&self, ms: u64) -> Value {
        let v = match self.time {
            TimeUnit::Seconds => ms / 1000,
            TimeUnit::Milliseconds => ms,
        };
        Value::N(i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// The stored form of a hex message id.
    pub fn msgid(&self, hex: &str) -> Result<String, GuidError> {
        let guid = guid::from_hex(hex)?;
        Ok(match self.msgid {
            MsgIdFormat::Base62 => guid::to_base62(guid),
            MsgIdFormat::Hex => guid::to_hex(guid),
        })
    }
}
