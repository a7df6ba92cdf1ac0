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

/// How values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StorageFormat {
    pub msgid: MsgIdFormat,
    pub time: TimeUnit,
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
