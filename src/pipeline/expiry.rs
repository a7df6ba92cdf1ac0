//! When stored messages expire, as far as this process knows: what MsgId trimming needs to remove
//! expired ids first.
//!
//! A topic's `MsgId` set holds only ids; the expiry is on each `mqtt_msg` item, which the trimmer
//! cannot afford to read (a capped set holds thousands). So ingest records the expiry of every
//! message it plans with one (bounded, the oldest forgotten first), and an id it does not know
//! expires at its GUID time plus `[storage] default_message_ttl`, when set. An id stored with its
//! own Message-Expiry-Interval before a restart is not known after it: it is trimmed by age.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::storage::item::{Key, Table, Value, Write};

/// The expiry of recently stored messages, by stored message id.
///
/// `inner` is locked by ingest (one insert per message planned with an expiry) and by a flusher
/// trimming a set (one lookup per id); nothing blocks while holding it. When full, the oldest
/// entry is dropped to make room.
#[derive(Debug)]
pub struct ExpiryBook {
    inner: Mutex<Entries>,
    /// How many ids are remembered at most.
    cap: usize,
    /// `[storage] default_message_ttl` in seconds.
    default_ttl_s: Option<u64>,
    /// The TTL attribute of `mqtt_msg` items.
    attribute: std::sync::Arc<str>,
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl ExpiryBook {
    pub fn new(cap: usize, expiry: &crate::rules::Expiry) -> Self {
        ExpiryBook {
            inner: Mutex::new(Entries::default()),
            cap,
            default_ttl_s: expiry.default_ttl_s,
            attribute: expiry.attribute.clone(),
        }
    }

    /// Records the expiry of each `mqtt_msg` put among `ops` that has one.
    pub fn record_planned<'a>(&self, ops: impl IntoIterator<Item = (&'a Key, &'a Write)>) {
        if self.cap == 0 {
            return;
        }
        for (key, write) in ops {
            if key.table != Table::Msg {
                continue;
            }
            if let Write::Put { item, .. } = write
                && let Some(Value::N(at)) = item.get(&*self.attribute)
            {
                self.record(&key.hash, u64::try_from(*at).unwrap_or(0));
            }
        }
    }

    fn record(&self, id: &str, expires_at_s: u64) {
        let Ok(mut e) = self.inner.lock() else { return };
        if e.by_id.insert(id.to_string(), expires_at_s).is_none() {
            e.order.push_back(id.to_string());
        }
        while e.order.len() > self.cap {
            if let Some(old) = e.order.pop_front() {
                e.by_id.remove(&old);
            }
        }
    }

    /// Whether the message `id` has expired at `now_s` (epoch seconds), as far as is known.
    pub fn expired(&self, id: &str, now_s: u64) -> bool {
        let known = self
            .inner
            .lock()
            .ok()
            .and_then(|e| e.by_id.get(id).copied());
        let at = known.or_else(|| {
            let ttl = self.default_ttl_s?;
            let published_us = crate::lookup::guid_time_us(id)?;
            Some((published_us / 1_000_000).saturating_add(ttl))
        });
        at.is_some_and(|at| at <= now_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Expiry;

    fn put(id: &str, at: Option<i64>) -> (Key, Write) {
        let key = Key::new(Table::Msg, id);
        let mut item = key.to_item();
        if let Some(at) = at {
            item.insert("expires_at".into(), Value::N(at));
        }
        (key, Write::Put { item, fresh: true })
    }

    #[test]
    fn known_expiries_then_the_default_from_the_guid_time() {
        let book = ExpiryBook::new(2, &Expiry::default());
        let ops = [put("a", Some(100)), put("b", None), put("c", Some(300))];
        book.record_planned(ops.iter().map(|(k, w)| (k, w)));
        assert!(book.expired("a", 100));
        assert!(!book.expired("c", 299));
        assert!(!book.expired("b", u64::MAX), "no expiry, no default");
        // Bounded: a third id pushes the oldest out.
        book.record_planned([put("d", Some(50))].iter().map(|(k, w)| (k, w)));
        assert!(!book.expired("a", 1000), "forgotten");
        assert!(book.expired("d", 50));

        let with_default = ExpiryBook::new(
            10,
            &Expiry {
                default_ttl_s: Some(60),
                ..Expiry::default()
            },
        );
        // A GUID published at 1,000 s (µs in the top 64 bits).
        let id = crate::guid::to_hex(1_000_000_000u128 << 64);
        assert!(!with_default.expired(&id, 1059));
        assert!(with_default.expired(&id, 1060));
        assert!(!with_default.expired("not-a-guid", u64::MAX));
    }
}
