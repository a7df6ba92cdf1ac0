//! MsgId trimming: keeping an `mqtt_topic_msg_map` item's `MsgId` set under
//! `storage.max_msgid_set_kb` (and under DynamoDB's 400 KB item limit) by removing its oldest
//! message ids.

use aws_sdk_dynamodb::types::AttributeValue;
use tracing::warn;

use super::Flusher;
use crate::storage::dynamo;
use crate::storage::item::{Key, MAX_ITEM_BYTES};
use crate::telemetry::stats::LogGate;

static TRIM_LOG: LogGate = LogGate::new();

/// `storage.max_msgid_set_kb` in bytes (0: no cap), and when to trim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MsgIdCap(pub usize);

impl MsgIdCap {
    /// After an ADD to a set that consumed `units` write capacity units: the size to trim the
    /// item to, if it is past the cap. An update costs the larger of the item before and after,
    /// in KB: the set item's size, without reading it.
    pub fn after_add(self, units: f64) -> Option<usize> {
        (self.0 > 0 && units * 1024.0 > self.0 as f64).then_some(self.0 * 3 / 4)
    }

    /// Whether a set item of about `bytes` would start past the cap (an INSERT of it would skip
    /// the trim an UpdateItem's consumed capacity starts).
    pub fn starts_past(self, bytes: usize) -> bool {
        self.0 > 0 && bytes + 64 > self.0
    }

    /// After DynamoDB refused an ADD because the item would pass 400 KB: the size to trim to.
    pub fn after_refusal(self) -> usize {
        let cap = match self.0 {
            0 => MAX_ITEM_BYTES,
            c => c.min(MAX_ITEM_BYTES),
        };
        cap * 3 / 4
    }
}

/// Whether DynamoDB's ValidationException `message` says an ADD made the item too large.
pub(super) fn refused_as_too_large(message: &str) -> bool {
    message.contains("Item size to update has exceeded")
}

/// The ids to remove from a set of `size` bytes to bring it to `target`: expired ones first
/// (`expired`), then the oldest (by GUID: time, then sequence; ids that are not GUIDs first).
/// Returns them and the size after.
fn oldest_ids(
    ids: Vec<String>,
    mut size: usize,
    target: usize,
    expired: impl Fn(&str) -> bool,
) -> (Vec<String>, usize) {
    let mut by_age: Vec<(bool, u128, String)> = ids
        .into_iter()
        .map(|id| (!expired(&id), crate::lookup::guid_of(&id).unwrap_or(0), id))
        .collect();
    by_age.sort_unstable();
    let mut oldest = Vec::new();
    for (_, _, id) in by_age {
        if size <= target {
            break;
        }
        size -= id.len();
        oldest.push(id);
    }
    (oldest, size)
}

impl Flusher {
    /// Removes the oldest ids from `key`'s set `attr` until the item is at most `target` bytes.
    /// Runs while the key is in flight, so no write of ours races it. Best effort: a failure is
    /// logged and the caller goes on.
    pub(super) async fn trim_set(&self, key: &Key, attr: &str, target: usize) {
        let table = self.tables.name(key.table);
        let got = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(dynamo::key_attrs(key)))
            .consistent_read(true)
            .send()
            .await;
        let ids: Vec<String> = match &got {
            Ok(out) => match out.item().and_then(|i| i.get(attr)) {
                Some(AttributeValue::Ss(ids)) => ids.clone(),
                _ => return,
            },
            Err(e) => {
                if let Some(held) = TRIM_LOG.allow() {
                    warn!(held_back = held, topic = %key.hash, error = %dynamo::error_text(e), "cannot read a MsgId set to trim it");
                }
                return;
            }
        };
        let size = key.size() + attr.len() + ids.iter().map(String::len).sum::<usize>();
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (oldest, size) = oldest_ids(ids, size, target, |id| self.expiry.expired(id, now_s));
        if oldest.is_empty() {
            return;
        }
        let n = oldest.len() as u64;
        let result = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(dynamo::key_attrs(key)))
            .update_expression("DELETE #s :m")
            .expression_attribute_names("#s", attr)
            .expression_attribute_values(":m", AttributeValue::Ss(oldest))
            .send()
            .await;
        match result {
            Ok(_) => {
                self.stats.trimmed(n);
                if let Some(held) = TRIM_LOG.allow() {
                    warn!(held_back = held, topic = %key.hash, removed = n, bytes_after = size, "MsgId set at its size cap; the oldest ids were removed (their messages stay in mqtt_msg)");
                }
            }
            Err(e) => {
                if let Some(held) = TRIM_LOG.allow() {
                    warn!(held_back = held, topic = %key.hash, error = %dynamo::error_text(&e), "cannot trim a MsgId set");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_trimmed_to_three_quarters_of_its_cap_once_past_it() {
        let cap = MsgIdCap(100 * 1024);
        assert_eq!(cap.after_add(99.0), None);
        assert_eq!(cap.after_add(101.0), Some(75 * 1024));
        assert_eq!(MsgIdCap(0).after_add(1000.0), None, "no cap");
        assert_eq!(MsgIdCap(0).after_refusal(), MAX_ITEM_BYTES * 3 / 4);
        assert_eq!(
            MsgIdCap(10 * MAX_ITEM_BYTES).after_refusal(),
            MAX_ITEM_BYTES * 3 / 4
        );
        assert_eq!(cap.after_refusal(), 75 * 1024);
    }

    #[test]
    fn the_oldest_ids_go_first_and_non_guids_before_them() {
        let old = crate::guid::to_hex(1 << 80);
        let new = crate::guid::to_hex(1 << 90);
        let ids = vec![new.clone(), "no-guid".to_string(), old.clone()];
        let size: usize = ids.iter().map(String::len).sum();
        let never = |_: &str| false;
        let (gone, after) = oldest_ids(ids.clone(), size, size - 1, never);
        assert_eq!(gone, ["no-guid".to_string()]);
        assert_eq!(after, size - 7);
        let (gone, _) = oldest_ids(ids.clone(), size, new.len(), never);
        assert_eq!(gone, ["no-guid".to_string(), old.clone()]);
        assert!(oldest_ids(ids.clone(), size, size, never).0.is_empty());
        // An expired id goes before older ones that have not expired.
        let (gone, _) = oldest_ids(ids, size, size - 1, |id| id == new);
        assert_eq!(gone, [new]);
    }
}
