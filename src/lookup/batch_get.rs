//! Reading items by key: BatchGetItem, ≤ 100 keys a request and several requests in flight,
//! unprocessed keys retried with backoff; then the overlay's unsettled writes replayed over them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::{LookupError, MAX_BATCH_GET_KEYS, Reader, dynamo_error};
use crate::storage::item::{Item, Key, Table, Write};

/// BatchGetItem requests a lookup keeps in flight.
pub(super) const PARALLEL_GETS: usize = 8;
/// Rounds of unprocessed-key retries before a lookup gives up.
const MAX_GET_ROUNDS: u32 = 12;

impl Reader {
    /// Reads `keys` of `table` (strongly consistent), ≤ 100 keys a request, several requests in
    /// flight, unprocessed keys retried with backoff. Missing items are absent from the map.
    pub async fn batch_get(
        &self,
        table: Table,
        keys: &[Key],
    ) -> Result<BTreeMap<Key, Item>, LookupError> {
        let name = self.tables.name(table).to_string();
        let mut out = BTreeMap::new();
        let mut chunks = keys.chunks(MAX_BATCH_GET_KEYS);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < PARALLEL_GETS {
                let Some(chunk) = chunks.next() else { break };
                let attrs: Vec<HashMap<String, AttributeValue>> = chunk
                    .iter()
                    .map(crate::storage::dynamo::key_attrs)
                    .collect();
                let client = self.client.clone();
                let name = name.clone();
                tasks.spawn(async move { get_chunk(client, name, attrs).await });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let items = joined.map_err(|e| LookupError::Dynamo {
                operation: "BatchGetItem",
                table: name.clone(),
                message: e.to_string(),
            })??;
            for attrs in items {
                let (key, item) =
                    crate::storage::dynamo::from_attrs(table, &attrs).map_err(|e| {
                        LookupError::BadItem {
                            table: name.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                out.insert(key, item);
            }
        }
        Ok(out)
    }

    /// Reads `keys` and replays the unsettled writes over them. The overlay is read first (see
    /// [`super::overlay`]).
    pub(super) async fn read_through(
        &self,
        table: Table,
        keys: &[Key],
    ) -> Result<BTreeMap<Key, Item>, LookupError> {
        let pending: Vec<Vec<Write>> = keys.iter().map(|k| self.state.pending(k)).collect();
        let mut items = self.batch_get(table, keys).await?;
        for (key, writes) in keys.iter().zip(&pending) {
            replay(&mut items, key, writes);
        }
        Ok(items)
    }
}

/// `items[key]` after replaying `pending` over it.
pub(super) fn replay(items: &mut BTreeMap<Key, Item>, key: &Key, pending: &[Write]) {
    for w in pending {
        crate::storage::model::apply_write(items, key, w);
    }
}

/// One BatchGetItem of ≤ 100 keys, retried until no key is unprocessed.
async fn get_chunk(
    client: Client,
    table: String,
    mut keys: Vec<HashMap<String, AttributeValue>>,
) -> Result<Vec<HashMap<String, AttributeValue>>, LookupError> {
    let mut out = Vec::with_capacity(keys.len());
    for round in 0..MAX_GET_ROUNDS {
        if round > 0 {
            tokio::time::sleep(crate::storage::dynamo::backoff(
                round,
                Duration::from_millis(25),
                Duration::from_secs(2),
            ))
            .await;
        }
        let request = KeysAndAttributes::builder()
            .set_keys(Some(std::mem::take(&mut keys)))
            .consistent_read(true)
            .build()
            .map_err(|e| LookupError::Dynamo {
                operation: "BatchGetItem",
                table: table.clone(),
                message: e.to_string(),
            })?;
        let response = client
            .batch_get_item()
            .request_items(&table, request)
            .send()
            .await
            .map_err(|e| dynamo_error("BatchGetItem", &table, e))?;
        if let Some(items) = response.responses().and_then(|r| r.get(&table)) {
            out.extend(items.iter().cloned());
        }
        match response.unprocessed_keys().and_then(|u| u.get(&table)) {
            Some(rest) if !rest.keys().is_empty() => keys = rest.keys().to_vec(),
            _ => return Ok(out),
        }
    }
    Err(LookupError::Unprocessed {
        table,
        rounds: MAX_GET_ROUNDS,
    })
}
