//! DynamoDB's limits, in one place: item and key sizes, requests per BatchWriteItem and its size,
//! keys per BatchGetItem, and the check every path that builds a key uses.

/// DynamoDB's maximum item size (names and values, UTF-8 / raw bytes), 400 KB.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// DynamoDB's limit on a partition (hash) key value, in bytes.
pub const MAX_HASH_KEY_BYTES: usize = 2048;

/// DynamoDB's limit on a sort (range) key value, in bytes.
pub const MAX_RANGE_KEY_BYTES: usize = 1024;

/// Why a key attribute value cannot be a DynamoDB key: every path that builds a key (planning an
/// event, the subscription API, lookups) checks with this, so they all refuse alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes; DynamoDB keys are limited to {limit} bytes")]
    TooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
}

impl KeyError {
    /// The attribute the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            KeyError::Empty { field } | KeyError::TooLong { field, .. } => field,
        }
    }
}

/// Checks one key attribute value: not empty, at most `limit` bytes.
pub fn check_key_part(field: &'static str, value: &str, limit: usize) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty { field });
    }
    if value.len() > limit {
        return Err(KeyError::TooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

/// DynamoDB's limit on requests in one BatchWriteItem.
pub const MAX_BATCH_REQUESTS: usize = 25;

/// DynamoDB's limit on one BatchWriteItem's size.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// BatchGetItem's limit on keys per request.
pub const MAX_BATCH_GET_KEYS: usize = 100;
