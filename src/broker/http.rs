//! The HTTP ingest: EMQX 5 rule-engine event rows and EMQX 4 web-hook JSON.
//!
//! - `POST /v1/events/emqx-rule`: one row or an array of rows as EMQX's HTTP action posts them
//!   with `SELECT *` and an empty body template (`client.connected`, `client.disconnected`,
//!   `session.subscribed`, `session.unsubscribed`, message publish rows with `flags.retain`,
//!   `message.acked`).
//! - `POST /v1/events/emqx-webhook`: EMQX 4's `emqx_web_hook` JSON (`action` = `client_connected`,
//!   …, `message_acked`), one object or an array.
//!
//! A request is all or nothing as far as its content goes: every row is translated and checked
//! (fields, message ids, item sizes) before any is queued, and a bad row gets `400` with a JSON
//! body naming it (`{"error": "...", "field": "[2].clientid"}`). Rows are then queued in order;
//! if the queue stays full past the policy's deadline the answer is `503` with the number
//! already accepted. `?payload_encoding=base64` reads payloads as base64.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Admission, AdmitError, now_ms};
use crate::config::{HttpPublishActions, Secret};
use crate::event::{ClientInfo, HookEvent, Message};
use crate::rules::ActionScope;
use crate::telemetry::stats::RejectReason;

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub admission: Arc<Admission>,
    pub token: Option<Secret>,
    pub publish_actions: HttpPublishActions,
}

/// The router with both ingest endpoints, the lookup API (when the pipeline has a reader, see
/// [`crate::lookup::http`]) and the body limit.
pub fn router(state: HttpState, max_body_bytes: usize) -> Router {
    let lookups = state.admission.handle().reader().is_some();
    let router = Router::new()
        .route("/v1/events/emqx-rule", post(emqx_rule))
        .route("/v1/events/emqx-webhook", post(emqx_webhook));
    let router = if lookups {
        router.merge(crate::lookup::http::routes())
    } else {
        router
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// A bad field in a request, with its JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

/// A query string the handler could not read, as the one JSON error shape, naming the parameter
/// when serde says which (`duplicate field `filter``).
pub(crate) fn query_rejection(r: axum::extract::rejection::QueryRejection) -> Response {
    let text = r.body_text();
    let field = text.split('`').nth(1).map(str::to_string);
    error(StatusCode::BAD_REQUEST, text, field.as_deref())
}

/// A path the handler could not read (a segment that is not UTF-8 once decoded, …), naming the
/// path parameter.
pub(crate) fn path_rejection(r: axum::extract::rejection::PathRejection) -> Response {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    let field = match &r {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
            _ => None,
        },
        _ => None,
    };
    let status = match r.status() {
        s if s.is_client_error() => s,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, r.body_text(), field.as_deref())
}

/// Every route the listener does not have: 404 in the one JSON shape.
async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
        None,
    )
}

/// A route called with a method it does not take: 405 in the one JSON shape.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
        None,
    )
}

pub(crate) fn error(status: StatusCode, error: impl Into<String>, field: Option<&str>) -> Response {
    let mut body = json!({ "error": error.into() });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct IngestQuery {
    payload_encoding: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadEncoding {
    Plain,
    Base64,
}

/// Compares without an early exit, so the token cannot be guessed byte by byte from timing.
fn token_matches(expected: &str, got: &str) -> bool {
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// `None` when the request may go on, else the 401 to send.
pub(crate) fn unauthorized(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let token = state.token.as_ref()?;
    let got = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match got {
        Some(got) if token_matches(token.expose(), got) => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            Some("Authorization"),
        )),
    }
}

fn rows(body: &Bytes) -> Result<Vec<Map<String, Value>>, FieldError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| FieldError {
        field: String::new(),
        error: format!("body is not JSON: {e}"),
    })?;
    let list = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            _ => Err(FieldError {
                field: format!("[{i}]"),
                error: "each row must be a JSON object".into(),
            }),
        })
        .collect()
}

/// Typed access to one row's fields, producing [`FieldError`]s with the row's index.
struct Row<'a> {
    map: &'a Map<String, Value>,
    index: usize,
    encoding: PayloadEncoding,
}

impl Row<'_> {
    fn err(&self, field: &str, error: impl Into<String>) -> FieldError {
        FieldError {
            field: format!("[{}].{field}", self.index),
            error: error.into(),
        }
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(name, "must be a string")),
        }
    }

    fn str(&self, name: &str) -> Result<String, FieldError> {
        match self.opt_str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.err(name, "is required")),
        }
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, FieldError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(name, "must be a non-negative integer")),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| self.err(name, "must be a non-negative integer")),
            Some(_) => Err(self.err(name, "must be a non-negative integer")),
        }
    }

    fn qos(&self, name: &str) -> Result<u8, FieldError> {
        match self.opt_u64(name)? {
            None => Ok(0),
            Some(q) if q <= 2 => Ok(q as u8),
            Some(q) => Err(self.err(name, format!("{q} is not 0, 1 or 2"))),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, FieldError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Some(n.as_u64() == Some(1)))
            }
            Some(_) => Err(self.err(name, "must be a boolean")),
        }
    }

    fn payload(&self, name: &str) -> Result<Vec<u8>, FieldError> {
        let text = self.opt_str(name)?.unwrap_or_default();
        match self.encoding {
            PayloadEncoding::Plain => Ok(text.into_bytes()),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| self.err(name, format!("is not base64: {e}"))),
        }
    }

    /// A timestamp in milliseconds from the first present field, else now.
    fn time_ms(&self, names: &[&str]) -> Result<u64, FieldError> {
        for n in names {
            if let Some(v) = self.opt_u64(n)? {
                return Ok(v);
            }
        }
        Ok(now_ms())
    }
}

/// `"10.0.0.5:51000"` or `"[::1]:51000"` → the host part.
fn host_of(peername: &str) -> String {
    if let Some(rest) = peername.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match peername.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => peername.to_string(),
    }
}

/// One EMQX 5 rule-engine row as an event.
pub fn rule_row_event(
    map: &Map<String, Value>,
    index: usize,
    base64: bool,
) -> Result<HookEvent, FieldError> {
    let row = Row {
        map,
        index,
        encoding: if base64 {
            PayloadEncoding::Base64
        } else {
            PayloadEncoding::Plain
        },
    };
    let event = row.str("event")?;
    let client = |id_field: &str| -> Result<ClientInfo, FieldError> {
        Ok(ClientInfo {
            node: row.str("node")?,
            clientid: row.str(id_field)?,
            username: row.opt_str("username")?.filter(|u| !u.is_empty()),
            peerhost: match row.opt_str("peerhost")? {
                Some(h) => Some(h),
                None => row.opt_str("peername")?.map(|p| host_of(&p)),
            },
        })
    };
    let message = |from_field: &str| -> Result<Message, FieldError> {
        let flags = map.get("flags");
        let retain = match flags {
            None | Some(Value::Null) => false,
            Some(Value::Object(f)) => match f.get("retain") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(row.err("flags.retain", "must be a boolean")),
            },
            Some(_) => return Err(row.err("flags", "must be an object")),
        };
        Ok(Message {
            node: row.str("node")?,
            id: row.str("id")?,
            qos: row.qos("qos")?,
            from: row.str(from_field)?,
            topic: row.str("topic")?,
            payload: row.payload("payload")?,
            retain,
            timestamp_ms: row.time_ms(&["publish_received_at", "timestamp"])?,
            username: row.opt_str("username")?.filter(|u| !u.is_empty()),
        })
    };
    Ok(match event.as_str() {
        "client.connected" => HookEvent::ClientConnected {
            client: client("clientid")?,
            connected_at_ms: row.time_ms(&["connected_at", "timestamp"])?,
        },
        "client.disconnected" => HookEvent::ClientDisconnected {
            client: client("clientid")?,
            reason: row.opt_str("reason")?.unwrap_or_default(),
            disconnected_at_ms: row.time_ms(&["disconnected_at", "timestamp"])?,
        },
        "session.subscribed" => HookEvent::SessionSubscribed {
            client: client("clientid")?,
            topic: row.str("topic")?,
            qos: row.qos("qos")?,
        },
        "session.unsubscribed" => HookEvent::SessionUnsubscribed {
            client: client("clientid")?,
            topic: row.str("topic")?,
        },
        "message.publish" => HookEvent::MessagePublish {
            message: message("clientid")?,
        },
        "message.acked" => HookEvent::MessageAcked {
            client: client("clientid")?,
            message: message("from_clientid")?,
        },
        other => {
            return Err(row.err(
                "event",
                format!(
                    "unsupported event {other:?} (expected client.connected, client.disconnected, session.subscribed, session.unsubscribed, message.publish or message.acked)"
                ),
            ));
        }
    })
}

/// 64-bit FNV-1a: a stable hash for derived message ids (the same on every build and run).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// EMQX 4 web hooks carry no message id. One is derived so that a publish and its ack agree: the
/// timestamp in the GUID's time bits, a hash of publisher, topic and payload below.
fn derived_id(ts_ms: u64, from: &str, topic: &str, payload: &[u8]) -> String {
    let micros = u128::from(ts_ms) * 1000;
    crate::guid::to_hex(
        micros << 64 | u128::from(fnv1a(&[from.as_bytes(), topic.as_bytes(), payload])),
    )
}

/// Web hook times: milliseconds, or seconds for values too small to be milliseconds.
fn web_hook_ms(v: u64) -> u64 {
    if v < 100_000_000_000 { v * 1000 } else { v }
}

/// One EMQX 4 web-hook object as an event.
pub fn webhook_event(
    map: &Map<String, Value>,
    index: usize,
    base64: bool,
) -> Result<HookEvent, FieldError> {
    let row = Row {
        map,
        index,
        encoding: if base64 {
            PayloadEncoding::Base64
        } else {
            PayloadEncoding::Plain
        },
    };
    let action = row.str("action")?;
    let node = row.opt_str("node")?.unwrap_or_default();
    let client = |id_field: &str| -> Result<ClientInfo, FieldError> {
        Ok(ClientInfo {
            node: node.clone(),
            clientid: row.str(id_field)?,
            username: row.opt_str("username")?.filter(|u| !u.is_empty()),
            peerhost: row.opt_str("ipaddress")?,
        })
    };
    let time = |names: &[&str]| -> Result<u64, FieldError> {
        for n in names {
            if let Some(v) = row.opt_u64(n)? {
                return Ok(web_hook_ms(v));
            }
        }
        Ok(now_ms())
    };
    let message = || -> Result<Message, FieldError> {
        let from = row.str("from_client_id")?;
        let topic = row.str("topic")?;
        let payload = row.payload("payload")?;
        let ts = time(&["ts"])?;
        let id = match row.opt_str("id")? {
            Some(id) => id,
            None => derived_id(ts, &from, &topic, &payload),
        };
        Ok(Message {
            node: node.clone(),
            id,
            qos: row.qos("qos")?,
            from,
            topic,
            payload,
            retain: row.opt_bool("retain")?.unwrap_or(false),
            timestamp_ms: ts,
            username: row.opt_str("from_username")?.filter(|u| !u.is_empty()),
        })
    };
    Ok(match action.as_str() {
        "client_connected" => HookEvent::ClientConnected {
            client: client("clientid")?,
            connected_at_ms: time(&["connected_at"])?,
        },
        "client_disconnected" => HookEvent::ClientDisconnected {
            client: client("clientid")?,
            reason: row.opt_str("reason")?.unwrap_or_default(),
            disconnected_at_ms: time(&["disconnected_at"])?,
        },
        "session_subscribed" => {
            let qos = match map.get("opts") {
                Some(Value::Object(o)) => Row {
                    map: o,
                    index,
                    encoding: PayloadEncoding::Plain,
                }
                .qos("qos")
                .map_err(|e| FieldError {
                    field: format!("[{index}].opts.qos"),
                    error: e.error,
                })?,
                _ => 0,
            };
            HookEvent::SessionSubscribed {
                client: client("clientid")?,
                topic: row.str("topic")?,
                qos,
            }
        }
        "session_unsubscribed" => HookEvent::SessionUnsubscribed {
            client: client("clientid")?,
            topic: row.str("topic")?,
        },
        "message_publish" => HookEvent::MessagePublish {
            message: message()?,
        },
        "message_acked" => HookEvent::MessageAcked {
            client: client("clientid")?,
            message: message()?,
        },
        other => {
            return Err(row.err(
                "action",
                format!(
                    "unsupported action {other:?} (expected client_connected, client_disconnected, session_subscribed, session_unsubscribed, message_publish or message_acked)"
                ),
            ));
        }
    })
}

type Translate = fn(&Map<String, Value>, usize, bool) -> Result<HookEvent, FieldError>;

async fn ingest(
    state: HttpState,
    headers: HeaderMap,
    query: Result<Query<IngestQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
    translate: Translate,
) -> Response {
    let t0 = std::time::Instant::now();
    let handle = state.admission.handle().clone();
    let (response, refused) = handle_ingest(state, headers, query, body, translate).await;
    if let Some((reason, n)) = refused {
        handle.count_refusals(reason, n as u64);
    }
    metrics::histogram!(crate::telemetry::catalogue::HOOK_RPC_DURATION_SECONDS, "adapter" => "http")
        .record(t0.elapsed().as_secs_f64());
    response
}

/// What the request was refused for and how many events that is, for the refusal counter (the
/// ones ingest saw itself are counted there).
type Refused = Option<(RejectReason, usize)>;

async fn handle_ingest(
    state: HttpState,
    headers: HeaderMap,
    query: Result<Query<IngestQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
    translate: Translate,
) -> (Response, Refused) {
    // Refused before its rows are read: one count for the request.
    let once = |reason| Some((reason, 1));
    if let Some(resp) = unauthorized(&state, &headers) {
        return (resp, once(RejectReason::Unauthorized));
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let reason = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RejectReason::TooLarge
            } else {
                RejectReason::Invalid
            };
            let resp = error(rejection.status(), rejection.body_text(), None);
            return (resp, once(reason));
        }
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(r) => return (query_rejection(r), once(RejectReason::Invalid)),
    };
    let base64 = match query.payload_encoding.as_deref() {
        None | Some("plain") => false,
        Some("base64") => true,
        Some(other) => {
            let resp = error(
                StatusCode::BAD_REQUEST,
                format!("unknown payload_encoding {other:?} (plain or base64)"),
                Some("payload_encoding"),
            );
            return (resp, once(RejectReason::Invalid));
        }
    };
    let rows = match rows(&body) {
        Ok(r) => r,
        Err(e) => {
            let field = Some(&e.field).filter(|f| !f.is_empty()).map(|s| s.as_str());
            let resp = error(StatusCode::BAD_REQUEST, e.error.clone(), field);
            return (resp, once(RejectReason::Invalid));
        }
    };
    let total = rows.len();
    // One bad row refuses every row of the request (all or nothing): each is counted.
    let all = |reason| Some((reason, total.max(1)));
    let handle = state.admission.handle();
    let mut events = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let event = match translate(row, i, base64) {
            Ok(e) => e,
            Err(e) => {
                let resp = error(StatusCode::BAD_REQUEST, e.error, Some(&e.field));
                return (resp, all(RejectReason::Invalid));
            }
        };
        let scope = scope_of(&event, state.publish_actions);
        // Check that it can be stored before queueing anything of the request (all or nothing).
        // This plans each row once more than queueing alone would; HTTP is the low-rate path
        // (ExHook carries the per-message load), so the simpler door is kept.
        if let Err(e) = handle.rules().plan_scoped(&event, &handle.format(), scope) {
            let reason = if e.is_too_large() {
                RejectReason::TooLarge
            } else {
                RejectReason::Invalid
            };
            let resp = error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                Some(&format!("[{i}]")),
            );
            return (resp, all(reason));
        }
        events.push((event, scope));
    }
    for (accepted, (event, scope)) in events.into_iter().enumerate() {
        // Ingest counted the row that failed; the rows after it are refused too.
        let rest = |reason| Some((reason, total - accepted - 1)).filter(|(_, n)| *n > 0);
        match state.admission.admit(event, scope).await {
            Ok(()) => {}
            Err(AdmitError::Dropped) => {
                let resp = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"error": "ingest queue is full", "accepted": accepted, "rows": total})),
                )
                    .into_response();
                return (resp, rest(RejectReason::QueueFull));
            }
            Err(AdmitError::Closed) => {
                let resp = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the service is shutting down",
                    None,
                );
                return (resp, rest(RejectReason::Closed));
            }
            Err(AdmitError::Unavailable(reason)) => {
                let resp = error(StatusCode::SERVICE_UNAVAILABLE, reason, None);
                return (resp, rest(RejectReason::SpoolError));
            }
            Err(AdmitError::Invalid(e)) => {
                let resp = error(StatusCode::BAD_REQUEST, e, Some(&format!("[{accepted}]")));
                return (resp, rest(RejectReason::Invalid));
            }
        }
    }
    let resp = (StatusCode::OK, axum::Json(json!({ "accepted": total }))).into_response();
    (resp, None)
}

fn scope_of(event: &HookEvent, publish_actions: HttpPublishActions) -> ActionScope {
    match (event, publish_actions) {
        (HookEvent::MessagePublish { .. }, HttpPublishActions::RetainedOnly) => {
            ActionScope::RetainedOnly
        }
        _ => ActionScope::All,
    }
}

async fn emqx_rule(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<IngestQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    ingest(state, headers, query, body, rule_row_event).await
}

async fn emqx_webhook(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<IngestQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    ingest(state, headers, query, body, webhook_event).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rule_rows_translate() {
        let e = rule_row_event(
            &obj(json!({"event": "client.connected", "node": "emqx@n1", "clientid": "c1", "username": "u",
                        "peername": "10.0.0.5:51000", "connected_at": 1700000000123u64, "timestamp": 1})),
            0,
            false,
        )
        .unwrap();
        assert_eq!(
            e,
            HookEvent::ClientConnected {
                client: ClientInfo {
                    node: "emqx@n1".into(),
                    clientid: "c1".into(),
                    username: Some("u".into()),
                    peerhost: Some("10.0.0.5".into())
                },
                connected_at_ms: 1700000000123
            }
        );
        let e = rule_row_event(
            &obj(json!({"event": "message.publish", "node": "n", "id": "0005F65F239F03FEF44300000BB40002",
                        "clientid": "p", "topic": "t", "qos": 1, "payload": "aGk=", "flags": {"retain": true, "dup": false},
                        "publish_received_at": 5})),
            0,
            true,
        )
        .unwrap();
        let HookEvent::MessagePublish { message } = e else {
            panic!()
        };
        assert!(message.retain);
        assert_eq!(message.payload, b"hi");
        assert_eq!(message.timestamp_ms, 5);
        let err = rule_row_event(
            &obj(json!({"event": "session.subscribed", "node": "n", "topic": "t"})),
            3,
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            FieldError {
                field: "[3].clientid".into(),
                error: "is required".into()
            }
        );
        let err =
            rule_row_event(&obj(json!({"event": "message.delivered"})), 0, false).unwrap_err();
        assert_eq!(err.field, "[0].event");
        let err = rule_row_event(
            &obj(json!({"event": "session.subscribed", "node": "n", "clientid": "c", "topic": "t", "qos": 7})),
            0,
            false,
        )
        .unwrap_err();
        assert_eq!(err.error, "7 is not 0, 1 or 2");
    }

    #[test]
    fn webhook_publish_and_ack_agree_on_the_derived_id() {
        let publish = webhook_event(
            &obj(json!({"action": "message_publish", "node": "emqx@n1", "from_client_id": "p", "from_username": "u",
                        "topic": "t/1", "qos": 1, "retain": false, "payload": "x", "ts": 1700000000123u64})),
            0,
            false,
        )
        .unwrap();
        let ack = webhook_event(
            &obj(json!({"action": "message_acked", "node": "emqx@n1", "clientid": "s", "from_client_id": "p",
                        "topic": "t/1", "qos": 1, "retain": false, "payload": "x", "ts": 1700000000123u64})),
            0,
            false,
        )
        .unwrap();
        let (
            HookEvent::MessagePublish { message: m1 },
            HookEvent::MessageAcked { message: m2, .. },
        ) = (publish, ack)
        else {
            panic!()
        };
        assert_eq!(m1.id, m2.id);
        assert_eq!(
            crate::guid::timestamp_micros(crate::guid::from_hex(&m1.id).unwrap()),
            1700000000123000
        );
        // Seconds are read as seconds.
        let e = webhook_event(
            &obj(json!({"action": "client_connected", "clientid": "c", "connected_at": 1700000000u64})),
            0,
            false,
        )
        .unwrap();
        assert!(matches!(
            e,
            HookEvent::ClientConnected {
                connected_at_ms: 1700000000000,
                ..
            }
        ));
    }

    #[test]
    fn peer_hosts_and_tokens() {
        assert_eq!(host_of("10.0.0.5:51000"), "10.0.0.5");
        assert_eq!(host_of("[::1]:51000"), "::1");
        assert_eq!(host_of("host"), "host");
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("abc", ""));
    }
}
