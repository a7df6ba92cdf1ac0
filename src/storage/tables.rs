//! The seven tables (the seed's six and the shared topic index): creating them idempotently,
//! waiting until they are ACTIVE, describing them and checking they exist before serving; and
//! filling the topic index from tables written without it ([`build_topic_index`]).

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ProvisionedThroughput,
    ScalarAttributeType, TableStatus,
};
use thiserror::Error;

use crate::config::DynamoConfig;
use crate::storage::item::Table;

#[derive(Debug, Error)]
pub enum TablesError {
    #[error("{op} {table}: {message}")]
    Request {
        op: &'static str,
        table: String,
        message: String,
    },
    #[error("table {table} did not become ACTIVE within {waited:?} (last status {status})")]
    NotActive {
        table: String,
        waited: Duration,
        status: String,
    },
    #[error("missing tables: {}; create them with `mqtt-dynamo tables create`", .0.join(", "))]
    Missing(Vec<String>),
}

/// Capacity mode for new tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    OnDemand,
    Provisioned { read: i64, write: i64 },
}

/// What `create` did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExisted,
}

fn request_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    op: &'static str,
    table: &str,
    err: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> TablesError {
    let message = match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(err).to_string(),
    };
    TablesError::Request {
        op,
        table: table.to_string(),
        message,
    }
}

/// Creates `table` unless it exists.
pub async fn create_one(
    client: &Client,
    cfg: &DynamoConfig,
    table: Table,
    capacity: Capacity,
) -> Result<Created, TablesError> {
    let name = cfg.table_name(table);
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| TablesError::Request {
        op: "CreateTable",
        table: name.clone(),
        message: e.to_string(),
    };
    let (hash, range) = table.key_names();
    let mut req = client.create_table().table_name(&name);
    // Every key attribute of the tables is a string.
    for (attr, kind) in
        std::iter::once((hash, KeyType::Hash)).chain(range.map(|r| (r, KeyType::Range)))
    {
        req = req
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr)
                    .key_type(kind)
                    .build()
                    .map_err(invalid)?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(invalid)?,
            );
    }
    req = match capacity {
        Capacity::OnDemand => req.billing_mode(BillingMode::PayPerRequest),
        Capacity::Provisioned { read, write } => req
            .billing_mode(BillingMode::Provisioned)
            .provisioned_throughput(
                ProvisionedThroughput::builder()
                    .read_capacity_units(read)
                    .write_capacity_units(write)
                    .build()
                    .map_err(invalid)?,
            ),
    };
    match req.send().await {
        Ok(_) => Ok(Created::Created),
        Err(e) if e.code() == Some("ResourceInUseException") => Ok(Created::AlreadyExisted),
        Err(e) => Err(request_error("CreateTable", &name, &e)),
    }
}

/// Waits until `table` is ACTIVE.
pub async fn wait_active(
    client: &Client,
    cfg: &DynamoConfig,
    table: Table,
    timeout: Duration,
) -> Result<(), TablesError> {
    let name = cfg.table_name(table);
    let start = Instant::now();
    loop {
        let out = client
            .describe_table()
            .table_name(&name)
            .send()
            .await
            .map_err(|e| request_error("DescribeTable", &name, &e))?;
        let status = out.table().and_then(|t| t.table_status().cloned());
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(TablesError::NotActive {
                table: name,
                waited: timeout,
                status: status
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "unknown".into()),
            });
        }
        // DynamoDB has no push notification for table status; poll like `aws dynamodb wait`.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates all seven tables (idempotently) and waits until each is ACTIVE.
pub async fn create_all(
    client: &Client,
    cfg: &DynamoConfig,
    capacity: Capacity,
) -> Result<Vec<(String, Created)>, TablesError> {
    let mut done = Vec::new();
    for table in Table::ALL {
        let what = create_one(client, cfg, table, capacity).await?;
        done.push((cfg.table_name(table), what));
    }
    for table in Table::ALL {
        wait_active(client, cfg, table, Duration::from_secs(60)).await?;
    }
    Ok(done)
}

/// The tables whose items can expire: messages and retained messages.
pub const TTL_TABLES: [Table; 2] = [Table::Msg, Table::Retain];

/// What `enable_ttl` found or did on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlOutcome {
    Enabled,
    AlreadyEnabled,
    /// The DynamoDB implementation has no UpdateTimeToLive (dynalite, the simulator): expired
    /// items stay until deleted, lookups still skip them.
    Unsupported(String),
}

/// Enables DynamoDB's TTL on `attribute` for [`TTL_TABLES`] (idempotently: a table already
/// expiring on `attribute` is left alone; one expiring on another attribute is an error, since
/// DynamoDB allows one TTL attribute per table and changing it takes disabling first).
pub async fn enable_ttl(
    client: &Client,
    cfg: &DynamoConfig,
    attribute: &str,
) -> Result<Vec<(String, TtlOutcome)>, TablesError> {
    use aws_sdk_dynamodb::types::{TimeToLiveSpecification, TimeToLiveStatus};
    let mut done = Vec::new();
    for table in TTL_TABLES {
        let name = cfg.table_name(table);
        let current = match client
            .describe_time_to_live()
            .table_name(&name)
            .send()
            .await
        {
            Ok(out) => out.time_to_live_description().cloned(),
            Err(e) if unsupported(&e) => {
                done.push((name, TtlOutcome::Unsupported(error_code(&e))));
                continue;
            }
            Err(e) => return Err(request_error("DescribeTimeToLive", &name, &e)),
        };
        let status = current
            .as_ref()
            .and_then(|d| d.time_to_live_status().cloned());
        let on = current.as_ref().and_then(|d| d.attribute_name());
        if matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            if on == Some(attribute) {
                done.push((name, TtlOutcome::AlreadyEnabled));
                continue;
            }
            return Err(TablesError::Request {
                op: "UpdateTimeToLive",
                table: name,
                message: format!(
                    "TTL is already enabled on attribute {:?}, not {attribute:?}: set [storage] ttl_attribute = {:?}, or disable TTL on the table first",
                    on.unwrap_or_default(),
                    on.unwrap_or_default()
                ),
            });
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(attribute)
            .build()
            .map_err(|e| TablesError::Request {
                op: "UpdateTimeToLive",
                table: name.clone(),
                message: e.to_string(),
            })?;
        match client
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            Ok(_) => done.push((name, TtlOutcome::Enabled)),
            Err(e) if unsupported(&e) => done.push((name, TtlOutcome::Unsupported(error_code(&e)))),
            Err(e) => return Err(request_error("UpdateTimeToLive", &name, &e)),
        }
    }
    Ok(done)
}

/// An implementation without the operation answers UnknownOperationException (dynalite) or a
/// 400 naming it unknown.
fn unsupported<E: ProvideErrorMetadata, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
    matches!(
        err.code(),
        Some("UnknownOperationException" | "UnrecognizedClientException")
    ) || err
        .message()
        .is_some_and(|m| m.contains("not supported") || m.contains("Unknown operation"))
}

fn error_code<E: ProvideErrorMetadata, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String {
    err.code().unwrap_or("no error code").to_string()
}

/// Each [`TTL_TABLES`] table's TTL: `name: TTL ENABLED on expires_at` (or DISABLED, unknown).
pub async fn describe_ttl(client: &Client, cfg: &DynamoConfig) -> Vec<String> {
    let mut lines = Vec::new();
    for table in TTL_TABLES {
        let name = cfg.table_name(table);
        let line = match client
            .describe_time_to_live()
            .table_name(&name)
            .send()
            .await
        {
            Ok(out) => match out.time_to_live_description() {
                Some(d) => match (d.time_to_live_status(), d.attribute_name()) {
                    (Some(status), Some(attr)) => {
                        format!("{name}: TTL {} on {attr}", status.as_str())
                    }
                    (Some(status), None) => format!("{name}: TTL {}", status.as_str()),
                    _ => format!("{name}: TTL unknown"),
                },
                None => format!("{name}: TTL DISABLED"),
            },
            Err(e) => format!("{name}: TTL unknown ({})", error_code(&e)),
        };
        lines.push(line);
    }
    lines
}

/// Fails with the names of the tables that do not exist.
pub async fn check_exist(client: &Client, cfg: &DynamoConfig) -> Result<(), TablesError> {
    let mut missing = Vec::new();
    for table in Table::ALL {
        let name = cfg.table_name(table);
        match client.describe_table().table_name(&name).send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceNotFoundException") => missing.push(name),
            Err(e) => return Err(request_error("DescribeTable", &name, &e)),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TablesError::Missing(missing))
    }
}

/// One line per table: name, status, keys, billing, item count.
pub async fn describe_all(client: &Client, cfg: &DynamoConfig) -> Result<Vec<String>, TablesError> {
    let mut lines = Vec::new();
    for table in Table::ALL {
        let name = cfg.table_name(table);
        match client.describe_table().table_name(&name).send().await {
            Ok(out) => {
                let Some(t) = out.table() else {
                    lines.push(format!("{name}: no description returned"));
                    continue;
                };
                let keys: Vec<String> = t
                    .key_schema()
                    .iter()
                    .map(|k| format!("{} {}", k.attribute_name(), k.key_type().as_str()))
                    .collect();
                let billing = t
                    .billing_mode_summary()
                    .and_then(|b| b.billing_mode())
                    .map(|b| b.as_str().to_string())
                    .unwrap_or_else(|| {
                        let p = t.provisioned_throughput();
                        format!(
                            "PROVISIONED {}/{}",
                            p.and_then(|p| p.read_capacity_units()).unwrap_or(0),
                            p.and_then(|p| p.write_capacity_units()).unwrap_or(0)
                        )
                    });
                lines.push(format!(
                    "{name}: {} keys [{}] billing {billing} items {}",
                    t.table_status().map(|s| s.as_str()).unwrap_or("?"),
                    keys.join(", "),
                    t.item_count().unwrap_or(0)
                ));
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                lines.push(format!("{name}: missing"))
            }
            Err(e) => return Err(request_error("DescribeTable", &name, &e)),
        }
    }
    Ok(lines)
}

/// What [`build_topic_index`] did for one kind of topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexBuild {
    /// The table whose topics were read (as configured, prefix included).
    pub source: String,
    /// Items read from it.
    pub topics: u64,
    /// Topics not indexed: not valid topic names (no wildcard subscription can match them) or
    /// longer than the index's 1,024-byte range key.
    pub skipped: u64,
    /// Entry puts written: one per topic, one per first level.
    pub entries: u64,
}

/// BatchWriteItem rounds for one batch's unprocessed items before the build gives up.
const MAX_INDEX_WRITE_ROUNDS: u32 = 16;

/// Fills `mqtt_topic_index` with the entries of every topic of `mqtt_retain` and
/// `mqtt_topic_msg_map`: a parallel Scan of each (`segments` segments, keys only, strongly
/// consistent), and BatchWriteItem puts of 25 entries, unprocessed items resent with backoff.
/// Idempotent (puts of the same items), so it can run again, and beside running services.
pub async fn build_topic_index(
    client: &Client,
    cfg: &DynamoConfig,
    segments: u32,
) -> Result<Vec<IndexBuild>, TablesError> {
    use crate::storage::topic_index::{self, IndexKind};
    let segments = segments.clamp(1, 1_000_000) as i32;
    let index = cfg.table_name(Table::TopicIndex);
    let mut done = Vec::new();
    for kind in IndexKind::ALL {
        let source = cfg.table_name(kind.table());
        let mut tasks = tokio::task::JoinSet::new();
        for segment in 0..segments {
            let (client, source, index) = (client.clone(), source.clone(), index.clone());
            tasks.spawn(async move {
                index_segment(&client, kind, &source, &index, segment, segments).await
            });
        }
        let mut build = IndexBuild {
            source: source.clone(),
            ..IndexBuild::default()
        };
        let mut levels = std::collections::BTreeSet::new();
        while let Some(joined) = tasks.join_next().await {
            let segment = joined.map_err(|e| TablesError::Request {
                op: "Scan",
                table: source.clone(),
                message: e.to_string(),
            })??;
            build.topics += segment.topics;
            build.skipped += segment.skipped;
            build.entries += segment.entries;
            levels.extend(segment.levels);
        }
        // The directory entries, once each over all segments.
        let directory: Vec<crate::storage::item::Key> = levels
            .iter()
            .map(|level| {
                crate::storage::item::Key::with_range(
                    Table::TopicIndex,
                    topic_index::directory(kind),
                    topic_index::directory_entry(level),
                )
            })
            .collect();
        for chunk in directory.chunks(crate::storage::limits::MAX_BATCH_REQUESTS) {
            put_index_entries(client, &index, chunk).await?;
            build.entries += chunk.len() as u64;
        }
        done.push(build);
    }
    Ok(done)
}

/// One Scan segment's share of [`build_topic_index`].
#[derive(Debug, Default)]
struct SegmentBuild {
    topics: u64,
    skipped: u64,
    entries: u64,
    /// First levels seen (their directory entries are written once, after every segment).
    levels: std::collections::BTreeSet<String>,
}

/// Scans one segment of `source` (keys only) and puts the topic entries of each page.
async fn index_segment(
    client: &Client,
    kind: crate::storage::topic_index::IndexKind,
    source: &str,
    index: &str,
    segment: i32,
    segments: i32,
) -> Result<SegmentBuild, TablesError> {
    use crate::storage::topic_index;
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut out = SegmentBuild::default();
    let mut start = None;
    // A retained item without a message id is a clear's tombstone: no retained message.
    let tombstones = kind == topic_index::IndexKind::Retained;
    loop {
        let mut scan = client
            .scan()
            .table_name(source)
            .segment(segment)
            .total_segments(segments)
            .projection_expression("#k")
            .expression_attribute_names("#k", "topic");
        if tombstones {
            scan = scan
                .projection_expression("#k, #m")
                .expression_attribute_names("#m", "msgid");
        }
        let page = scan
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| request_error("Scan", source, &e))?;
        let mut keys = Vec::new();
        for item in page.items() {
            let Some(AttributeValue::S(topic)) = item.get("topic") else {
                continue;
            };
            if tombstones && !item.contains_key("msgid") {
                continue;
            }
            out.topics += 1;
            if crate::topic::validate_name(topic).is_err() || !topic_index::indexable(topic) {
                out.skipped += 1;
                continue;
            }
            out.levels
                .insert(topic_index::first_level(topic).to_string());
            keys.push(topic_index::topic_key(kind, topic));
        }
        for chunk in keys.chunks(crate::storage::limits::MAX_BATCH_REQUESTS) {
            put_index_entries(client, index, chunk).await?;
            out.entries += chunk.len() as u64;
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    Ok(out)
}

/// Puts index entries (at most 25, distinct keys) with BatchWriteItem, resending unprocessed
/// items with full-jitter backoff.
async fn put_index_entries(
    client: &Client,
    index: &str,
    keys: &[crate::storage::item::Key],
) -> Result<(), TablesError> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| TablesError::Request {
        op: "BatchWriteItem",
        table: index.to_string(),
        message: e.to_string(),
    };
    let mut requests = keys
        .iter()
        .map(|key| {
            PutRequest::builder()
                .set_item(Some(crate::storage::dynamo::key_attrs(key)))
                .build()
                .map(|put| WriteRequest::builder().put_request(put).build())
                .map_err(invalid)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for round in 0..MAX_INDEX_WRITE_ROUNDS {
        if requests.is_empty() {
            return Ok(());
        }
        if round > 0 {
            tokio::time::sleep(crate::storage::dynamo::backoff(
                round,
                Duration::from_millis(50),
                Duration::from_secs(5),
            ))
            .await;
        }
        let out = client
            .batch_write_item()
            .request_items(index, std::mem::take(&mut requests))
            .send()
            .await
            .map_err(|e| request_error("BatchWriteItem", index, &e))?;
        requests = out
            .unprocessed_items()
            .and_then(|u| u.get(index))
            .cloned()
            .unwrap_or_default();
    }
    if requests.is_empty() {
        Ok(())
    } else {
        Err(TablesError::Request {
            op: "BatchWriteItem",
            table: index.to_string(),
            message: format!(
                "{} items still unprocessed after {MAX_INDEX_WRITE_ROUNDS} rounds",
                requests.len()
            ),
        })
    }
}
