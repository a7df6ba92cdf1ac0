//! The HTTP ingest listener's routes, bearer-token check, body limit and shared responses; the
//! rows themselves are translated by [`rule_rows`](super::rule_rows) (EMQX 5 rule-engine rows) and
//! [`webhooks`](super::webhooks) (EMQX 4 web-hook JSON).
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
use axum::routing::{MethodRouter, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use super::rule_rows::rule_row_event;
pub use super::webhooks::webhook_event;

use super::{Admission, AdmitError, now_ms};
use crate::config::{HttpPublishActions, Secret};
use crate::event::HookEvent;
use crate::rules::ActionScope;
use crate::telemetry::stats::RejectReason;

/// Shared state of the HTTP handlers, cloned into each request (the fields are cheap to clone).
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The door to the pipeline, shared by every request: a request whose rows find the queue
    /// full waits there under `when_full = "block"` (on the blocking pool), or is answered 503.
    pub admission: Arc<Admission>,
    /// The bearer token requests must carry, when set.
    pub token: Option<Secret>,
    /// Which publish actions posted rows feed.
    pub publish_actions: HttpPublishActions,
}

/// The router with both ingest endpoints, the lookup API (when the pipeline has a reader, see
/// [`crate::lookup::http`]) and the body limit.
pub fn router(state: HttpState, max_body_bytes: usize) -> Router {
    let lookups = state.admission.handle().reader().is_some();
    let router = Router::new()
        .route("/v1/events/emqx-rule", ingest_route(rule_row_event))
        .route("/v1/events/emqx-webhook", ingest_route(webhook_event));
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

/// Typed access to one row's fields, producing [`FieldError`]s with the row's index: what both
/// translators ([`rule_rows`](super::rule_rows), [`webhooks`](super::webhooks)) read rows with.
pub(super) struct Row<'a> {
    pub(super) map: &'a Map<String, Value>,
    index: usize,
    encoding: PayloadEncoding,
}

impl<'a> Row<'a> {
    /// Row `index` of a request, its payloads base64 when `base64` is set.
    pub(super) fn new(map: &'a Map<String, Value>, index: usize, base64: bool) -> Self {
        let encoding = if base64 {
            PayloadEncoding::Base64
        } else {
            PayloadEncoding::Plain
        };
        Row {
            map,
            index,
            encoding,
        }
    }

    pub(super) fn err(&self, field: &str, error: impl Into<String>) -> FieldError {
        FieldError {
            field: format!("[{}].{field}", self.index),
            error: error.into(),
        }
    }

    /// `field` names a kind of row the translator does not know; `expected` lists the known.
    pub(super) fn unsupported(&self, field: &str, got: &str, expected: &[&str]) -> FieldError {
        let listed = match expected.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.err(
            field,
            format!("unsupported {field} {got:?} (expected {listed})"),
        )
    }

    pub(super) fn opt_str(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(name, "must be a string")),
        }
    }

    /// A string that is absent when empty (`username: ""` means none).
    pub(super) fn opt_nonempty(&self, name: &str) -> Result<Option<String>, FieldError> {
        Ok(self.opt_str(name)?.filter(|s| !s.is_empty()))
    }

    pub(super) fn str(&self, name: &str) -> Result<String, FieldError> {
        match self.opt_str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.err(name, "is required")),
        }
    }

    pub(super) fn opt_u64(&self, name: &str) -> Result<Option<u64>, FieldError> {
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

    pub(super) fn qos(&self, name: &str) -> Result<u8, FieldError> {
        match self.opt_u64(name)? {
            None => Ok(0),
            Some(q) if q <= 2 => Ok(q as u8),
            Some(q) => Err(self.err(name, format!("{q} is not 0, 1 or 2"))),
        }
    }

    pub(super) fn opt_bool(&self, name: &str) -> Result<Option<bool>, FieldError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Some(n.as_u64() == Some(1)))
            }
            Some(_) => Err(self.err(name, "must be a boolean")),
        }
    }

    pub(super) fn payload(&self, name: &str) -> Result<Vec<u8>, FieldError> {
        let text = self.opt_str(name)?.unwrap_or_default();
        match self.encoding {
            PayloadEncoding::Plain => Ok(text.into_bytes()),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| self.err(name, format!("is not base64: {e}"))),
        }
    }

    /// A timestamp in milliseconds from the first present field, else now.
    pub(super) fn time_ms(&self, names: &[&str]) -> Result<u64, FieldError> {
        for n in names {
            if let Some(v) = self.opt_u64(n)? {
                return Ok(v);
            }
        }
        Ok(now_ms())
    }
}

/// A row translator: `(row, index, base64 payloads)` to an event.
type Translate = fn(&Map<String, Value>, usize, bool) -> Result<HookEvent, FieldError>;

/// What an ingest route extracted from a request, read by [`read_request`].
struct IngestRequest {
    headers: HeaderMap,
    query: Result<Query<IngestQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
}

/// An ingest endpoint translating its rows with `translate`.
fn ingest_route(translate: Translate) -> MethodRouter<HttpState> {
    post(
        move |State(state): State<HttpState>,
              headers: HeaderMap,
              query: Result<Query<IngestQuery>, QueryRejection>,
              body: Result<Bytes, BytesRejection>| {
            let request = IngestRequest {
                headers,
                query,
                body,
            };
            ingest(state, request, translate)
        },
    )
}

/// One ingest request, timed and with its refusals counted.
async fn ingest(state: HttpState, request: IngestRequest, translate: Translate) -> Response {
    let t0 = std::time::Instant::now();
    let handle = state.admission.handle().clone();
    let (response, refused) = handle_ingest(state, request, translate).await;
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

/// A request's answer, and the refusals to count (none when every row was queued).
type Answer = (Response, Refused);

/// Refused before its rows are read: one count for the request (boxed: it is the rare path).
fn refused_once(response: Response, reason: RejectReason) -> Box<Answer> {
    Box::new((response, Some((reason, 1))))
}

/// A 400 naming the bad field.
fn bad_request(error_text: impl Into<String>, field: Option<&str>) -> Response {
    error(StatusCode::BAD_REQUEST, error_text, field)
}

/// Reads, translates and checks every row, then queues them: all or nothing as far as content
/// goes (see the module docs).
async fn handle_ingest(state: HttpState, request: IngestRequest, translate: Translate) -> Answer {
    let (rows, base64) = match read_request(&state, request) {
        Ok(read) => read,
        Err(refusal) => return *refusal,
    };
    let events = match translate_rows(&state, &rows, base64, translate) {
        Ok(events) => events,
        Err(refusal) => return *refusal,
    };
    admit_rows(&state, events).await
}

/// A request's rows, and whether their payloads are base64.
type ReadRequest = (Vec<Map<String, Value>>, bool);

/// Checks the token, the body and the query, and reads the body's rows and the payload
/// encoding (`true`: base64).
fn read_request(state: &HttpState, request: IngestRequest) -> Result<ReadRequest, Box<Answer>> {
    let IngestRequest {
        headers,
        query,
        body,
    } = request;
    if let Some(resp) = unauthorized(state, &headers) {
        return Err(refused_once(resp, RejectReason::Unauthorized));
    }
    let body = body.map_err(|rejection| {
        let reason = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RejectReason::TooLarge
        } else {
            RejectReason::Invalid
        };
        let resp = error(rejection.status(), rejection.body_text(), None);
        refused_once(resp, reason)
    })?;
    let Query(query) =
        query.map_err(|r| refused_once(query_rejection(r), RejectReason::Invalid))?;
    let base64 = match query.payload_encoding.as_deref() {
        None | Some("plain") => false,
        Some("base64") => true,
        Some(other) => {
            let resp = bad_request(
                format!("unknown payload_encoding {other:?} (plain or base64)"),
                Some("payload_encoding"),
            );
            return Err(refused_once(resp, RejectReason::Invalid));
        }
    };
    let rows = rows(&body).map_err(|e| {
        let field = Some(&e.field).filter(|f| !f.is_empty()).map(|s| s.as_str());
        refused_once(bad_request(e.error.clone(), field), RejectReason::Invalid)
    })?;
    Ok((rows, base64))
}

/// Translates every row and checks that it can be stored, before anything of the request is
/// queued (all or nothing): one bad row refuses every row, and each is counted.
fn translate_rows(
    state: &HttpState,
    rows: &[Map<String, Value>],
    base64: bool,
    translate: Translate,
) -> Result<Vec<(HookEvent, ActionScope)>, Box<Answer>> {
    let all = |resp, reason| Box::new((resp, Some((reason, rows.len().max(1)))));
    let handle = state.admission.handle();
    let mut events = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let event = translate(row, i, base64)
            .map_err(|e| all(bad_request(e.error, Some(&e.field)), RejectReason::Invalid))?;
        let scope = scope_of(&event, state.publish_actions);
        // This plans each row once more than queueing alone would; HTTP is the low-rate path
        // (ExHook carries the per-message load), so the simpler door is kept.
        if let Err(e) = handle.rules().plan_scoped(&event, &handle.format(), scope) {
            let reason = if e.is_too_large() {
                RejectReason::TooLarge
            } else {
                RejectReason::Invalid
            };
            return Err(all(
                bad_request(e.to_string(), Some(&format!("[{i}]"))),
                reason,
            ));
        }
        events.push((event, scope));
    }
    Ok(events)
}

/// Queues the checked rows in order; the first one refused ends the request.
async fn admit_rows(state: &HttpState, events: Vec<(HookEvent, ActionScope)>) -> Answer {
    let total = events.len();
    for (accepted, (event, scope)) in events.into_iter().enumerate() {
        // Ingest counted the row that failed; the rows after it are refused too.
        let rest = |resp, reason| {
            let n = total - accepted - 1;
            (resp, Some((reason, n)).filter(|(_, n)| *n > 0))
        };
        match state.admission.admit(event, scope).await {
            Ok(()) => {}
            Err(AdmitError::Dropped) => {
                let resp = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"error": "ingest queue is full", "accepted": accepted, "rows": total})),
                )
                    .into_response();
                return rest(resp, RejectReason::QueueFull);
            }
            Err(AdmitError::Closed) => {
                let resp = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the service is shutting down",
                    None,
                );
                return rest(resp, RejectReason::Closed);
            }
            Err(e @ AdmitError::Unavailable(_)) => {
                let resp = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None);
                return rest(resp, RejectReason::SpoolError);
            }
            Err(AdmitError::Invalid(e)) => {
                let resp = bad_request(e.to_string(), Some(&format!("[{accepted}]")));
                return rest(resp, RejectReason::Invalid);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A JSON object as a row.
    pub(crate) fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Row 0 of a request with plain payloads, through `translate`.
    pub(crate) fn row0(translate: Translate, v: Value) -> Result<HookEvent, FieldError> {
        translate(&obj(v), 0, false)
    }

    #[test]
    fn tokens() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("abc", ""));
    }
}
