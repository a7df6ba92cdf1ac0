//! The dead-letter file: every write the pipeline gives up (DynamoDB rejected it, or its retries ran
//! past `pipeline.retry.max_elapsed`) is appended as one JSON object per line, with the reason and
//! DynamoDB's message, in DynamoDB's own attribute-value JSON so it can be inspected or replayed
//! with the AWS CLI:
//!
//! ```json
//! {"time_ms":1700000000000,"table":"mqtt_msg","key":{"msgid":{"S":"…"}},
//!  "write":{"put":{"msgid":{"S":"…"},"qos":{"N":"1"},…}},"reason":"rejected","error":"…"}
//! ```
//!
//! Drops are rare, so each line is written and flushed under a mutex; a failure to write the file
//! is logged (the drop itself is already counted and logged by the flusher).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde_json::{Map, Value as Json, json};
use tracing::error;

use crate::storage::item::{Item, Key, Order, Value, Write};
use crate::telemetry::stats::DropReason;

/// Where given-up writes go; `None` when no file is configured.
#[derive(Debug, Default)]
pub struct DeadLetters {
    /// The open file (append mode) and its path, for error messages.
    file: Option<(Mutex<std::io::BufWriter<std::fs::File>>, PathBuf)>,
}

fn attr(v: &Value) -> Json {
    match v {
        Value::S(s) => json!({ "S": s }),
        Value::N(n) => json!({ "N": n.to_string() }),
        Value::B(b) => json!({ "B": base64::engine::general_purpose::STANDARD.encode(b) }),
        Value::Ss(set) => json!({ "SS": set.iter().collect::<Vec<_>>() }),
    }
}

fn attrs(item: &Item) -> Json {
    Json::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), attr(v)))
            .collect::<Map<_, _>>(),
    )
}

/// The JSON line for one given-up write.
pub fn line(
    table: &str,
    key: &Key,
    write: &Write,
    reason: DropReason,
    error: &str,
    time_ms: u64,
) -> Json {
    let write = match write {
        Write::Put { item, .. } => json!({ "put": attrs(item) }),
        Write::Delete => json!({ "delete": {} }),
        Write::Update { set, guard } => json!({
            "update": {
                "set": attrs(set),
                "only_if": guard.as_ref().map(|(a, v)| json!({ a.clone(): attr(v) })),
            }
        }),
        Write::SetDelta {
            attr: name,
            add,
            del,
            ..
        } => json!({
            "set_delta": { "attribute": name, "add": add, "delete": del }
        }),
        Write::Timed(t) => json!({
            "update": {
                "set": attrs(&t.set),
                "remove": t.remove,
                "only_if": {
                    "event_ms_at_most": t.at,
                    "order": match &t.order {
                        Order::Newest => "newest",
                        Order::Connect { .. } => "connect",
                        Order::Disconnect { .. } => "disconnect",
                    },
                    "node": t.node(),
                },
                "or_else": t.or_else.as_ref().map(|f| json!({
                    "set": attrs(&f.set),
                    "only_if": { "event_ms_at_most": f.at, "node": f.node() },
                })),
            }
        }),
    };
    json!({
        "time_ms": time_ms,
        "table": table,
        "key": attrs(&key.to_item()),
        "write": write,
        "reason": reason.as_str(),
        "error": error,
    })
}

impl DeadLetters {
    /// Opens (creating if needed) the file for appending.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let Some(path) = path else {
            return Ok(DeadLetters::default());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(DeadLetters {
            file: Some((
                Mutex::new(std::io::BufWriter::new(file)),
                path.to_path_buf(),
            )),
        })
    }

    /// Appends one given-up write.
    pub fn record(
        &self,
        table: &str,
        key: &Key,
        write: &Write,
        reason: DropReason,
        error_text: &str,
    ) {
        let Some((file, path)) = &self.file else {
            return;
        };
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let text = line(table, key, write, reason, error_text, time_ms).to_string();
        let written = file
            .lock()
            .map_err(|_| std::io::Error::other("poisoned lock"))
            .and_then(|mut f| {
                writeln!(f, "{text}")?;
                f.flush()
            });
        if let Err(e) = written {
            error!(path = %path.display(), error = %e, "cannot append to the dead-letter file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::item::Table;

    #[test]
    fn lines_are_dynamodb_json() {
        let key = Key::new(Table::Msg, "m1");
        let mut item = key.to_item();
        item.insert("payload".into(), Value::B(vec![0xff]));
        item.insert("qos".into(), Value::N(1));
        let l = line(
            "mqtt_msg",
            &key,
            &Write::Put { item, fresh: true },
            DropReason::Rejected,
            "bad",
            7,
        );
        assert_eq!(
            l,
            json!({"time_ms": 7, "table": "mqtt_msg", "key": {"msgid": {"S": "m1"}},
                   "write": {"put": {"msgid": {"S": "m1"}, "payload": {"B": "/w=="}, "qos": {"N": "1"}}},
                   "reason": "rejected", "error": "bad"})
        );
    }
}
