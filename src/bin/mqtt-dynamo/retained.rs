//! `retained restore`: the stored retained messages (`mqtt_retain`) republished into EMQX's
//! retainer through its REST API (`POST /api/v5/publish/bulk`), e.g. after moving from EMQX 4's
//! DynamoDB backend to EMQX 5, whose retainer keeps its own store.
//!
//! Every message goes with `retain: true`, its stored QoS and its payload base64-encoded
//! (`payload_encoding: "base64"`, text and binary alike), and, when it expires, the time it has
//! left as `properties.message_expiry_interval`. Messages with an empty payload are skipped
//! (published with the retain flag they would clear the topic instead), and expired ones too.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use mqtt_dynamo::config::{Config, Secret};
use mqtt_dynamo::emqx_api::{
    Backoff, Call, CallError, CallOutcome, EmqxApi, PublishRequest, count,
};
use mqtt_dynamo::lookup::{Payload, StoredMessage};
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::item::Table;
use mqtt_dynamo::topic::TopicFilter;

use crate::{print_json, read_endpoint};

/// Messages per `/publish/bulk` call at most.
const MAX_BATCH: usize = 10_000;

#[derive(Subcommand)]
pub enum RetainedCommand {
    /// Republish the stored retained messages into EMQX 5's retainer (POST
    /// /api/v5/publish/bulk, retain=true, payloads base64). Prints a JSON report; exits 0 when
    /// every message was published, 1 otherwise.
    Restore {
        /// EMQX's dashboard listener (http://127.0.0.1:18083); default `[emqx_api] url`.
        #[arg(long = "emqx-api", value_name = "URL")]
        url: Option<String>,
        /// Only topics matching this MQTT filter (default: every topic, `$`-topics included).
        #[arg(long)]
        filter: Option<String>,
        /// Messages per call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// The EMQX API key; default `[emqx_api] api_key`.
        #[arg(long)]
        api_key: Option<String>,
        /// A file holding the API key's secret; default `[emqx_api] api_secret`.
        #[arg(long)]
        api_secret_file: Option<PathBuf>,
    },
}

pub async fn retained_command(cfg: Config, command: RetainedCommand) -> Result<(), String> {
    match command {
        RetainedCommand::Restore {
            url,
            filter,
            batch,
            api_key,
            api_secret_file,
        } => {
            if !(1..=MAX_BATCH).contains(&batch) {
                return Err(format!("--batch must be 1 to {MAX_BATCH}"));
            }
            let filter = filter
                .map(|f| TopicFilter::new(&f).map_err(|e| format!("--filter: {e}")))
                .transpose()?;
            let mut api_cfg = cfg.emqx_api.clone();
            if let Some(url) = url {
                api_cfg.url = Some(url);
            }
            if let Some(key) = api_key {
                api_cfg.api_key = Some(key);
            }
            if let Some(path) = api_secret_file {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--api-secret-file {}: {e}", path.display()))?;
                api_cfg.api_secret = Some(Secret::new(text.trim_end_matches(['\r', '\n'])));
            }
            if api_cfg.url.is_none() {
                return Err("no EMQX API: pass --emqx-api URL or set [emqx_api] url".into());
            }
            let api = EmqxApi::new(&api_cfg).map_err(|e| {
                format!("{e} (pass --api-key and --api-secret-file, or set them in [emqx_api])")
            })?;
            let messages = read_retained(&cfg, filter.as_ref()).await?;
            let report = restore(&api, messages, batch, api_cfg.retry_for).await;
            let ok = report.refused.is_empty() && report.failed == 0;
            print_json(&json!({
                "published": report.published,
                "refused": report.refused.len(),
                "failed": report.failed,
                "skipped_empty": report.skipped_empty,
                "skipped_expired": report.skipped_expired,
                "refused_messages": report.refused,
                "errors": report.errors,
            }))?;
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} retained messages not restored ({} refused by EMQX, {} failed)",
                    report.refused.len() + report.failed,
                    report.published + report.refused.len() + report.failed,
                    report.refused.len(),
                    report.failed
                ))
            }
        }
    }
}

/// What `read_retained` found: the messages to publish, and those skipped.
struct ToRestore {
    messages: Vec<PublishRequest>,
    skipped_empty: usize,
    skipped_expired: usize,
}

/// Every item of `mqtt_retain` (a consistent Scan, every page) matching `filter`.
async fn read_retained(cfg: &Config, filter: Option<&TopicFilter>) -> Result<ToRestore, String> {
    let endpoint = read_endpoint(cfg);
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let table = cfg.dynamodb.table_name(Table::Retain);
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("reading {table}"));
    let mut found = ToRestore {
        messages: Vec::new(),
        skipped_empty: 0,
        skipped_expired: 0,
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
    loop {
        let page = client
            .scan()
            .table_name(&table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| format!("Scan on {table} failed: {}", dynamo::error_text(&e)))?;
        for attrs in page.items() {
            let (_, item) = dynamo::from_attrs(Table::Retain, attrs)
                .map_err(|e| format!("an item of {table} cannot be read: {e}"))?;
            let m = StoredMessage::from_item(&item, &cfg.storage.ttl_attribute);
            if filter.is_some_and(|f| !f.matches(&m.topic)) {
                continue;
            }
            if m.expired_at(now_s) {
                found.skipped_expired += 1;
                continue;
            }
            let expiry_s = m
                .expires_at
                .map(|at| u64::try_from(at).unwrap_or(0).saturating_sub(now_s).max(1));
            let payload: &[u8] = match &m.payload {
                Some(Payload::Text(s)) => s.as_bytes(),
                Some(Payload::Binary(b)) => b,
                None => &[],
            };
            if payload.is_empty() {
                found.skipped_empty += 1;
                continue;
            }
            let qos = m.qos.unwrap_or(0).clamp(0, 2) as u8;
            found.messages.push(PublishRequest::retained(
                m.topic.clone(),
                payload,
                qos,
                expiry_s,
            ));
            spinner.tick();
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    spinner.finish_and_clear();
    found.messages.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(found)
}

/// What a restore did.
#[derive(Default)]
struct Report {
    published: usize,
    /// EMQX's answer for each message it refused: topic, reason code, message.
    refused: Vec<serde_json::Value>,
    /// Messages of batches given up (no answer within `retry_for`, credentials refused, an
    /// unusable answer).
    failed: usize,
    skipped_empty: usize,
    skipped_expired: usize,
    /// Why batches failed (one line per batch).
    errors: Vec<String>,
}

/// Publishes `found` in batches of `batch`, each retried on 5xx or no answer for `retry_for`.
/// Credentials refused stop the restore (every later batch would be refused too).
async fn restore(api: &EmqxApi, found: ToRestore, batch: usize, retry_for: Duration) -> Report {
    let mut report = Report {
        skipped_empty: found.skipped_empty,
        skipped_expired: found.skipped_expired,
        ..Report::default()
    };
    let bar = ProgressBar::new(found.messages.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} retained messages  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut chunks = found.messages.chunks(batch);
    for chunk in chunks.by_ref() {
        match publish_retrying(api, chunk, retry_for).await {
            Ok(answers) => {
                count(Call::PublishBulk, CallOutcome::Ok);
                for (request, answer) in chunk.iter().zip(answers) {
                    if answer.published() {
                        report.published += 1;
                    } else {
                        report.refused.push(json!({
                            "topic": request.topic,
                            "reason_code": answer.reason_code,
                            "message": answer.message,
                        }));
                    }
                }
            }
            Err(e @ CallError::Refused { .. }) => {
                count(Call::PublishBulk, CallOutcome::Refused);
                report.failed += chunk.len();
                report.errors.push(e.to_string());
                break;
            }
            Err(e) => {
                count(Call::PublishBulk, CallOutcome::Failed);
                report.failed += chunk.len();
                report.errors.push(e.to_string());
            }
        }
        bar.inc(chunk.len() as u64);
    }
    // After a refusal: the batches never sent.
    let unsent: usize = chunks.map(<[PublishRequest]>::len).sum();
    report.failed += unsent;
    bar.finish_and_clear();
    report
}

async fn publish_retrying(
    api: &EmqxApi,
    chunk: &[PublishRequest],
    retry_for: Duration,
) -> Result<Vec<mqtt_dynamo::emqx_api::PublishAnswer>, CallError> {
    let mut backoff = Backoff::new(retry_for);
    loop {
        match api.publish_bulk(chunk).await {
            Err(e) if e.retryable() => match backoff.next_wait() {
                Some(wait) => {
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "publish/bulk failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}
