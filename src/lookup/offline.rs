//! Offline messages in publish order: the message ids of every matching topic, ordered by the
//! time inside their GUIDs (base62 strings do not sort by time), limited to the newest `limit`
//! since `since`, read from `mqtt_msg` and returned oldest first.

use std::time::Duration;

use super::batch_get::PARALLEL_GETS;
use super::{
    LookupError, MAX_BATCH_GET_KEYS, Offline, OfflineQuery, Reader, StoredMessage, shared_filter,
};
use super::{LookupKind, measured};
use crate::storage::item::{Key, Table, Value};
use crate::topic::TopicFilter;

/// An EMQX message id, hex or base62, as its 128-bit GUID: ordering GUIDs orders by publish
/// time, then node and process, then the per-process sequence.
pub fn guid_of(msgid: &str) -> Option<u128> {
    crate::guid::from_hex(msgid)
        .or_else(|_| crate::guid::from_base62(msgid))
        .ok()
}

/// The publish time inside an EMQX message id, hex or base62.
pub fn guid_time_us(msgid: &str) -> Option<u64> {
    guid_of(msgid).map(crate::guid::timestamp_micros)
}

impl Reader {
    /// The offline messages for a subscription (see [`OfflineQuery`]), oldest first.
    pub async fn offline(&self, q: &OfflineQuery) -> Result<Offline, LookupError> {
        measured(LookupKind::Offline, self.offline_inner(q)).await
    }

    async fn offline_inner(&self, q: &OfflineQuery) -> Result<Offline, LookupError> {
        TopicFilter::new(&q.filter)?;
        if q.qos > 2 {
            return Err(LookupError::Invalid {
                what: "qos",
                reason: format!("{} is not 0, 1 or 2", q.qos),
            });
        }
        let filter = TopicFilter::new(shared_filter(&q.filter).unwrap_or(&q.filter))?;
        let mut answer = Offline {
            messages: Vec::new(),
            topics: 0,
            ids: 0,
            undated_ids: 0,
            truncated: false,
        };
        if q.qos == 0 {
            return Ok(answer);
        }
        let topics = self
            .topics(&filter, self.cfg.offline, Table::TopicMsgMap)
            .await?;
        let keys: Vec<Key> = topics
            .into_iter()
            .map(|t| Key::new(Table::TopicMsgMap, t))
            .collect();
        let sets = self.read_through(Table::TopicMsgMap, &keys).await?;
        answer.topics = sets.len();
        let since = q.since_us.or_else(|| {
            self.cfg.time_range.map(|range| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO);
                now.saturating_sub(range).as_micros() as u64
            })
        });
        // (GUID, id): sorting by the GUID orders by time, with the sequence breaking ties.
        let mut ids: Vec<(u128, String)> = Vec::new();
        for item in sets.values() {
            let Some(Value::Ss(set)) = item.get("MsgId") else {
                continue;
            };
            for id in set {
                answer.ids += 1;
                let guid = guid_of(id);
                if guid.is_none() {
                    answer.undated_ids += 1;
                }
                match (guid.map(crate::guid::timestamp_micros), since) {
                    (Some(t), Some(s)) if t < s => {}
                    (None, Some(_)) => {}
                    _ => ids.push((guid.unwrap_or(0), id.clone())),
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let limit = match q.limit.unwrap_or(self.cfg.max_returned_count) {
            0 => usize::MAX,
            n => n,
        };
        // Newest first, in chunks, until `limit` messages exist (an id whose message is gone
        // is skipped).
        let mut found: Vec<StoredMessage> = Vec::new();
        let mut remaining = ids.len();
        while found.len() < limit && remaining > 0 {
            let want = (limit - found.len()).min(MAX_BATCH_GET_KEYS * PARALLEL_GETS);
            let from = remaining.saturating_sub(want);
            let chunk: Vec<Key> = ids[from..remaining]
                .iter()
                .map(|(_, id)| Key::new(Table::Msg, id.clone()))
                .collect();
            remaining = from;
            let items = self.read_through(Table::Msg, &chunk).await?;
            // Newest of the chunk first, to keep the newest `limit` overall.
            for key in chunk.iter().rev() {
                if found.len() == limit {
                    break;
                }
                if let Some(message) = items.get(key).and_then(|i| self.unexpired(i)) {
                    found.push(message);
                }
            }
        }
        answer.truncated = remaining > 0 && found.len() == limit && limit != usize::MAX;
        found.reverse();
        answer.messages = found;
        Ok(answer)
    }
}
