//! Wildcard filters to topics through the shared topic index (`mqtt_topic_index`, key shape in
//! [`crate::storage::topic_index`]): every instance writes it, so a lookup on one instance finds
//! topics written through any other, and no lookup scans a table.
//!
//! For a filter whose first level is literal, a Query of the kind's directory for that level's
//! entries (its bucket count: the largest any writer recorded, see the storage module's "Spread
//! levels"), beside a Query of its bucket 0, the range limited to the filter's literal prefix
//! (`a/b/+/c` reads `begins_with(topic, "a/b/")` of `retain|a`), every page; a spread level's
//! other buckets are read the same way once the count is known. For a filter starting with `+`
//! or `#`, a Query of the kind's whole directory (its first levels and their counts), then the
//! same Queries of each level's buckets, at most [`PARALLEL_QUERIES`] in flight, the first level
//! standing in for the wildcard when the prefix is computed (`+/b/#` reads
//! `begins_with(topic, "x/b")` of `retain|x`). First levels starting with `$` are skipped there:
//! MQTT's leading wildcards do not match `$` topics. Each topic read is matched with
//! [`crate::topic::matches`], and a topic found in two buckets counts once. Reads are strongly
//! consistent.
//!
//! Read-your-writes: before each Query the entry puts this process accepted and has not settled
//! for that partition are taken from the [`super::ReadState`] overlay (the ingest records them
//! with the writes they index), and joined to what the Query returns. An entry settled before
//! the snapshot is in the table by then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{LookupError, Reader, dynamo_error};
use crate::storage::item::{Table, Write};
use crate::storage::topic_index::{self, IndexKind};
use crate::topic::TopicFilter;

/// Bucket Queries one lookup keeps in flight (a filter starting with a wildcard reads every
/// first level's buckets, and a spread level has several).
pub const PARALLEL_QUERIES: usize = 16;

/// The range-key prefix every topic matching `levels` (a filter's levels, the first literal)
/// starts with: the literal levels before the first wildcard, with the separator before a `+`
/// (`a/+` → `a/`) and without it before a `#` (`a/#` matches `a` itself). `None` when the prefix
/// is empty (`/#`), so the Query reads the whole bucket.
fn literal_prefix(levels: &[&str]) -> Option<String> {
    let wildcard = levels.iter().position(|l| *l == "+" || *l == "#");
    let prefix = match wildcard {
        None => levels.join("/"),
        Some(i) => {
            let mut p = levels[..i].join("/");
            if levels[i] == "+" {
                p.push('/');
            }
            p
        }
    };
    (!prefix.is_empty()).then_some(prefix)
}

/// One bucket to read: its hash key and the range prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BucketQuery {
    bucket: String,
    prefix: Option<String>,
}

/// The query of bucket `shard` for `filter`'s levels with `level` as the first level.
fn bucket_query(kind: IndexKind, level: &str, shard: u32, levels: &[&str]) -> BucketQuery {
    let mut with_level: Vec<&str> = Vec::with_capacity(levels.len());
    with_level.push(level);
    with_level.extend_from_slice(&levels[1..]);
    BucketQuery {
        bucket: topic_index::bucket(kind, level, shard),
        prefix: literal_prefix(&with_level),
    }
}

impl Reader {
    /// The topics of `kind` matching `filter` (a filter with a wildcard), sorted: from the
    /// shared index and this process's unsettled entry puts.
    pub(super) async fn indexed_topics(
        &self,
        filter: &TopicFilter,
        kind: IndexKind,
    ) -> Result<Vec<String>, LookupError> {
        let levels: Vec<&str> = filter.as_str().split('/').collect();
        let first = levels[0];
        let mut topics = BTreeSet::new();
        let mut keep = |got: Vec<String>| {
            topics.extend(got.into_iter().filter(|t| {
                filter.matches(t)
                    // A stored topic that is not a valid topic name (a wildcard or NUL in it,
                    // written by some other tool) was never published to, so no wildcard
                    // subscription matches it; a literal lookup still finds it.
                    && crate::topic::validate_name(t).is_ok()
            }))
        };
        let queries: Vec<BucketQuery> = if first == "+" || first == "#" {
            self.first_levels(kind, None)
                .await?
                .into_iter()
                .filter(|(level, _)| !level.starts_with('$'))
                .flat_map(|(level, buckets)| {
                    (0..buckets)
                        .map(|s| bucket_query(kind, &level, s, &levels))
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            // Bucket 0 is read while the directory says whether there are more.
            let (counts, got) = tokio::try_join!(
                self.first_levels(kind, Some(first)),
                self.read_bucket(bucket_query(kind, first, 0, &levels))
            )?;
            keep(got);
            let buckets = counts.get(first).copied().unwrap_or(1);
            (1..buckets)
                .map(|s| bucket_query(kind, first, s, &levels))
                .collect()
        };
        let mut queries = queries.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < PARALLEL_QUERIES {
                let Some(q) = queries.next() else { break };
                tasks.spawn(self.read_bucket(q));
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let got = joined.map_err(|e| LookupError::Dynamo {
                operation: "Query",
                table: self.tables.name(Table::TopicIndex).to_string(),
                message: e.to_string(),
            })??;
            keep(got);
        }
        Ok(topics.into_iter().collect())
    }

    /// The topics a bucket query reads: the table's and the unsettled puts this process made to
    /// the bucket, snapshotted before the read (see the module docs), so the future owns what it
    /// needs.
    fn read_bucket(
        &self,
        q: BucketQuery,
    ) -> impl Future<Output = Result<Vec<String>, LookupError>> + Send + 'static {
        let pending = self.pending_entries(&q.bucket);
        let client = self.client.clone();
        let name = self.tables.name(Table::TopicIndex).to_string();
        async move {
            let mut got = query_partition(&client, &name, &q.bucket, q.prefix.as_deref()).await?;
            got.extend(
                pending
                    .into_iter()
                    .filter(|t| q.prefix.as_deref().is_none_or(|p| t.starts_with(p))),
            );
            Ok(got)
        }
    }

    /// The first levels of `kind`'s topics (only `level`, if given) and the bucket count of
    /// each: the directory partition and its unsettled puts.
    async fn first_levels(
        &self,
        kind: IndexKind,
        level: Option<&str>,
    ) -> Result<BTreeMap<String, u32>, LookupError> {
        let directory = topic_index::directory(kind);
        let pending = self.pending_entries(directory);
        let name = self.tables.name(Table::TopicIndex);
        let prefix = level.map(topic_index::directory_entry);
        let entries = query_partition(&self.client, name, directory, prefix.as_deref()).await?;
        let mut counts = BTreeMap::new();
        for entry in entries.iter().chain(&pending) {
            let (level, buckets) = topic_index::parse_entry(entry);
            let count = counts.entry(level.to_string()).or_insert(1);
            *count = buckets.max(*count);
        }
        if let Some(level) = level {
            counts.retain(|l, _| l == level);
        }
        Ok(counts)
    }

    /// Range keys of the entry puts of partition `bucket` accepted and not settled.
    fn pending_entries(&self, bucket: &str) -> Vec<String> {
        self.state
            .pending_under(Table::TopicIndex, bucket)
            .into_iter()
            .filter(|(_, writes)| writes.iter().any(|w| matches!(w, Write::Put { .. })))
            .filter_map(|(key, _)| key.range)
            .collect()
    }
}

/// The range keys of partition `bucket` of the index table `table` (those starting with
/// `prefix`, if given), every page, strongly consistent like every lookup.
async fn query_partition(
    client: &Client,
    table: &str,
    bucket: &str,
    prefix: Option<&str>,
) -> Result<Vec<String>, LookupError> {
    let mut out = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let mut q = client
            .query()
            .table_name(table)
            .expression_attribute_names("#b", "bucket")
            .expression_attribute_names("#t", "topic")
            .expression_attribute_values(":b", AttributeValue::S(bucket.to_string()))
            .projection_expression("#t")
            .consistent_read(true)
            .set_exclusive_start_key(start.take());
        q = match prefix {
            Some(p) => q
                .key_condition_expression("#b = :b AND begins_with(#t, :p)")
                .expression_attribute_values(":p", AttributeValue::S(p.to_string())),
            None => q.key_condition_expression("#b = :b"),
        };
        let page = q
            .send()
            .await
            .map_err(|e| dynamo_error("Query", table, e))?;
        for item in page.items() {
            if let Some(AttributeValue::S(t)) = item.get("topic") {
                out.push(t.clone());
            }
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(filter: &str) -> Option<String> {
        literal_prefix(&filter.split('/').collect::<Vec<_>>())
    }

    #[test]
    fn literal_prefixes_bound_what_a_bucket_query_reads() {
        assert_eq!(prefix("a/+").as_deref(), Some("a/"));
        assert_eq!(prefix("a/#").as_deref(), Some("a"));
        assert_eq!(prefix("a/b/+/c").as_deref(), Some("a/b/"));
        assert_eq!(prefix("a/b/#").as_deref(), Some("a/b"));
        assert_eq!(prefix("/+").as_deref(), Some("/"));
        assert_eq!(prefix("/#"), None);
        assert_eq!(prefix("a/b").as_deref(), Some("a/b"));
    }

    #[test]
    fn a_leading_wildcard_reads_each_first_level_with_its_prefix() {
        let levels: Vec<&str> = "+/b/#".split('/').collect();
        assert_eq!(
            bucket_query(IndexKind::Retained, "x", 0, &levels),
            BucketQuery {
                bucket: "retain|x".into(),
                prefix: Some("x/b".into())
            }
        );
        assert_eq!(
            bucket_query(IndexKind::Retained, "x", 4, &levels).bucket,
            "retain|x/4"
        );
        let levels: Vec<&str> = "#".split('/').collect();
        assert_eq!(
            bucket_query(IndexKind::Offline, "", 0, &levels),
            BucketQuery {
                bucket: "msg|".into(),
                prefix: None
            }
        );
        let levels: Vec<&str> = "+".split('/').collect();
        assert_eq!(
            bucket_query(IndexKind::Offline, "a", 0, &levels)
                .prefix
                .as_deref(),
            Some("a")
        );
    }
}
