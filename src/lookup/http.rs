//! The lookup API on the HTTP listener (JSON; the same bearer token as the ingest):
//!
//! - `GET /v1/retained?filter=F`: retained messages matching the subscription filter `F`.
//! - `GET /v1/offline?filter=F&limit=N&since=T&qos=Q`: offline messages for a subscription,
//!   oldest first. `since` is epoch milliseconds, an RFC 3339 time, or a duration (`2h`: that long
//!   ago); `qos` defaults to 1 (a QoS 0 subscription gets none, as in the seed).
//! - `GET /v1/clients/{clientid}/subscriptions`: a client's stored subscriptions.
//! - `PUT /v1/clients/{clientid}/subscriptions/{topic}?qos=Q` and `DELETE` the same path: store
//!   or remove one (through the pipeline, so a lookup right after sees it). `{topic}` is one
//!   URL-encoded path segment (`a%2F%2B` for `a/+`).
//!
//! Filters in query strings must be URL-encoded too: a bare `+` is a space in a query string.
//! Payloads come back as `payload` when they are UTF-8 text and `payload_base64` otherwise.
//! Errors, all as `{"error": ..., "field": ...}`: `400` names the bad parameter (a query string or
//! path the handler cannot read included; a client id or literal topic longer than DynamoDB's
//! key limits is refused here, not by DynamoDB), `401` a missing or wrong token, `502` carries
//! DynamoDB's error, `503` means the ingest queue stayed full. A refused subscription write is
//! counted under `events_rejected_total{adapter="http"}`; lookups are not events and are counted
//! in `lookups_total`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::broker::http::{HttpState, error, path_rejection, query_rejection, unauthorized};
use crate::lookup::{
    LookupError, Offline, OfflineQuery, Payload, Reader, Retained, StoredMessage, Subscription,
};
use crate::storage::item::{Item, Key, Op, Table, Value as ItemValue, Write};
use crate::telemetry::stats::RejectReason;
use axum::extract::rejection::{PathRejection, QueryRejection};

/// The lookup routes (added to the HTTP router when `lookup.enabled`).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/retained", get(retained))
        .route("/v1/offline", get(offline))
        .route("/v1/clients/{clientid}/subscriptions", get(subscriptions))
        .route(
            "/v1/clients/{clientid}/subscriptions/{topic}",
            axum::routing::put(subscribe).delete(unsubscribe),
        )
}

/// A message as JSON.
pub fn message_json(m: &StoredMessage) -> Value {
    let mut v = json!({ "topic": m.topic, "msgid": m.msgid });
    let obj = v.as_object_mut().expect("a JSON object literal");
    if let Some(s) = &m.sender {
        obj.insert("sender".into(), json!(s));
    }
    if let Some(q) = m.qos {
        obj.insert("qos".into(), json!(q));
    }
    if let Some(r) = m.retain {
        obj.insert("retain".into(), json!(r));
    }
    match &m.payload {
        Some(Payload::Text(t)) => {
            obj.insert("payload".into(), json!(t));
        }
        Some(Payload::Binary(b)) => {
            obj.insert(
                "payload_base64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(b)),
            );
        }
        None => {}
    }
    if let Some(at) = m.expires_at {
        obj.insert("expires_at".into(), json!(at));
    }
    if let Some(a) = m.arrived {
        obj.insert("arrived".into(), json!(a));
    }
    if let Some(t) = m.time_us {
        obj.insert("time_us".into(), json!(t));
    }
    v
}

fn lookup_error(e: LookupError) -> Response {
    match e {
        LookupError::Filter(f) => error(StatusCode::BAD_REQUEST, f.to_string(), Some("filter")),
        LookupError::Invalid { what, reason } => error(StatusCode::BAD_REQUEST, reason, Some(what)),
        other => error(StatusCode::BAD_GATEWAY, other.to_string(), None),
    }
}

/// The token check and the reader, or the response that refuses the request (a `Response` is
/// what every handler returns anyway; boxing it would buy nothing here).
#[allow(clippy::result_large_err)]
fn gate(state: &HttpState, headers: &HeaderMap) -> Result<Arc<Reader>, Response> {
    if let Some(resp) = unauthorized(state, headers) {
        return Err(resp);
    }
    state.admission.handle().reader().cloned().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "lookups are disabled (lookup.enabled = false)",
            None,
        )
    })
}

/// The common front of the filter lookups: the token and the lookup switch, the query string,
/// and a `filter` parameter that can be a key. The error is the answer to send (built once per
/// refused request, so its size does not matter).
#[allow(clippy::result_large_err)]
fn filter_query<P>(
    state: &HttpState,
    headers: &HeaderMap,
    p: Result<Query<P>, QueryRejection>,
    filter: impl FnOnce(&mut P) -> Option<String>,
) -> Result<(Arc<Reader>, P, String), Response> {
    let reader = gate(state, headers)?;
    let Query(mut p) = p.map_err(query_rejection)?;
    let filter = filter(&mut p).ok_or_else(missing_filter)?;
    check_filter(&filter)?;
    Ok((reader, p, filter))
}

fn missing_filter() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "filter is required",
        Some("filter"),
    )
}

/// A retained lookup's answer as JSON (HTTP and CLI).
pub fn retained_json(filter: &str, r: &Retained) -> Value {
    json!({
        "filter": filter,
        "messages": r.messages.iter().map(message_json).collect::<Vec<_>>(),
        "truncated": r.truncated,
    })
}

/// An offline lookup's answer as JSON (HTTP and CLI).
pub fn offline_json(filter: &str, o: &Offline) -> Value {
    json!({
        "filter": filter,
        "messages": o.messages.iter().map(message_json).collect::<Vec<_>>(),
        "topics": o.topics,
        "ids": o.ids,
        "undated_ids": o.undated_ids,
        "truncated": o.truncated,
    })
}

/// A client's subscriptions as JSON (HTTP and CLI).
pub fn subscriptions_json(clientid: &str, subs: &[Subscription]) -> Value {
    json!({
        "clientid": clientid,
        "subscriptions": subs
            .iter()
            .map(|s| json!({"topic": s.topic, "qos": s.qos}))
            .collect::<Vec<_>>(),
    })
}

#[derive(Debug, Deserialize)]
struct RetainedParams {
    filter: Option<String>,
}

async fn retained(
    State(state): State<HttpState>,
    headers: HeaderMap,
    p: Result<Query<RetainedParams>, QueryRejection>,
) -> Response {
    let (reader, _, filter) = match filter_query(&state, &headers, p, |p| p.filter.take()) {
        Ok(front) => front,
        Err(resp) => return resp,
    };
    match reader.retained(&filter).await {
        Ok(r) => axum::Json(retained_json(&filter, &r)).into_response(),
        Err(e) => lookup_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct OfflineParams {
    filter: Option<String>,
    limit: Option<String>,
    since: Option<String>,
    qos: Option<String>,
}

/// `since` as µs since the epoch: epoch milliseconds, RFC 3339, or a duration before now.
pub fn parse_since(text: &str, now: std::time::SystemTime) -> Result<u64, String> {
    let since_epoch = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .map_err(|_| format!("{text:?} is before 1970"))
    };
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms.saturating_mul(1000));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return since_epoch(t);
    }
    if let Ok(d) = humantime::parse_duration(text) {
        // Longer ago than the epoch: everything.
        let now_us = since_epoch(now)?;
        return Ok(now_us.saturating_sub(d.as_micros() as u64));
    }
    Err(format!(
        "{text:?} is not epoch milliseconds, an RFC 3339 time or a duration such as 2h"
    ))
}

async fn offline(
    State(state): State<HttpState>,
    headers: HeaderMap,
    p: Result<Query<OfflineParams>, QueryRejection>,
) -> Response {
    let (reader, p, filter) = match filter_query(&state, &headers, p, |p| p.filter.take()) {
        Ok(front) => front,
        Err(resp) => return resp,
    };
    let limit = match p.limit.as_deref().map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be a non-negative integer (0: no limit)",
                Some("limit"),
            );
        }
    };
    let qos = match p.qos.as_deref().map(str::parse::<u8>) {
        None => 1,
        Some(Ok(q)) if q <= 2 => q,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "qos must be 0, 1 or 2",
                Some("qos"),
            );
        }
    };
    let since_us = match p.since.as_deref() {
        None => None,
        Some(t) => match parse_since(t, std::time::SystemTime::now()) {
            Ok(us) => Some(us),
            Err(e) => return error(StatusCode::BAD_REQUEST, e, Some("since")),
        },
    };
    let query = OfflineQuery {
        filter: filter.clone(),
        qos,
        limit,
        since_us,
    };
    match reader.offline(&query).await {
        Ok(o) => axum::Json(offline_json(&filter, &o)).into_response(),
        Err(e) => lookup_error(e),
    }
}

async fn subscriptions(
    State(state): State<HttpState>,
    headers: HeaderMap,
    clientid: Result<Path<String>, PathRejection>,
) -> Response {
    let reader = match gate(&state, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let clientid = match clientid {
        Ok(Path(c)) => c,
        Err(r) => return path_rejection(r),
    };
    if let Err(e) = crate::storage::item::check_key_part("clientid", &clientid, MAX_HASH_KEY_BYTES)
    {
        return error(StatusCode::BAD_REQUEST, e.to_string(), Some(e.field()));
    }
    match reader.subscriptions(&clientid).await {
        Ok(subs) => axum::Json(subscriptions_json(&clientid, &subs)).into_response(),
        Err(e) => lookup_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct SubscribeParams {
    qos: Option<String>,
}

use crate::storage::item::{MAX_HASH_KEY_BYTES, MAX_RANGE_KEY_BYTES, check_key_part};

/// A lookup filter: a valid MQTT filter, and no longer than a topic key can be (a literal
/// lookup reads it as a key; a longer filter would come back from DynamoDB as a 502).
#[allow(clippy::result_large_err)]
fn check_filter(filter: &str) -> Result<(), Response> {
    check_key_part("filter", filter, MAX_HASH_KEY_BYTES)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string(), Some("filter")))
}

/// The `mqtt_sub` key of (clientid, topic), checked like DynamoDB would (and the topic as an
/// MQTT filter).
pub fn subscription_key(clientid: &str, topic: &str) -> Result<Key, (String, &'static str)> {
    check_key_part("clientid", clientid, MAX_HASH_KEY_BYTES)
        .and_then(|()| check_key_part("topic", topic, MAX_RANGE_KEY_BYTES))
        .map_err(|e| (e.to_string(), e.field()))?;
    crate::topic::TopicFilter::new(topic).map_err(|e| (e.to_string(), "topic"))?;
    Ok(Key::with_range(Table::Sub, clientid, topic))
}

async fn write_subscription(state: &HttpState, op: Op) -> Response {
    let handle = state.admission.handle().clone();
    let admit = state.admission.admit_writes();
    // Waiting for room blocks a thread: off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        handle
            .submit(vec![op], admit)
            .and_then(crate::pipeline::Receipt::wait)
    })
    .await
    .unwrap_or(Err(crate::pipeline::ingest::SubmitError::Closed));
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(crate::pipeline::ingest::SubmitError::Full) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest queue is full",
            None,
        ),
        Err(crate::pipeline::ingest::SubmitError::Closed) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down",
            None,
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string(), None),
    }
}

/// Counts a refused subscription write (it is an event for the refusal counter).
fn refused(state: &HttpState, reason: RejectReason, resp: Response) -> Response {
    state.admission.handle().count_refusals(reason, 1);
    resp
}

/// The token, the path and the `mqtt_sub` key of a subscription write, or the counted refusal.
#[allow(clippy::result_large_err)]
fn subscription_target(
    state: &HttpState,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Key, Response> {
    if let Err(resp) = gate(state, headers) {
        let reason = if resp.status() == StatusCode::UNAUTHORIZED {
            RejectReason::Unauthorized
        } else {
            RejectReason::Invalid
        };
        return Err(refused(state, reason, resp));
    }
    let (clientid, topic) = match path {
        Ok(Path(p)) => p,
        Err(r) => return Err(refused(state, RejectReason::Invalid, path_rejection(r))),
    };
    subscription_key(&clientid, &topic).map_err(|(e, field)| {
        let resp = error(StatusCode::BAD_REQUEST, e, Some(field));
        refused(state, RejectReason::Invalid, resp)
    })
}

async fn subscribe(
    State(state): State<HttpState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    p: Result<Query<SubscribeParams>, QueryRejection>,
) -> Response {
    let key = match subscription_target(&state, &headers, path) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let p = match p {
        Ok(Query(p)) => p,
        Err(r) => return refused(&state, RejectReason::Invalid, query_rejection(r)),
    };
    let qos = match p.qos.as_deref().map(str::parse::<u8>) {
        None => 0,
        Some(Ok(q)) if q <= 2 => q,
        _ => {
            let resp = error(
                StatusCode::BAD_REQUEST,
                "qos must be 0, 1 or 2",
                Some("qos"),
            );
            return refused(&state, RejectReason::Invalid, resp);
        }
    };
    let mut item: Item = key.to_item();
    item.insert("qos".into(), ItemValue::N(i64::from(qos)));
    let op = Op {
        key,
        write: Write::Put { item, fresh: false },
    };
    write_subscription(&state, op).await
}

async fn unsubscribe(
    State(state): State<HttpState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let key = match subscription_target(&state, &headers, path) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    write_subscription(
        &state,
        Op {
            key,
            write: Write::Delete,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn since_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("1500", now), Ok(1_500_000));
        assert_eq!(parse_since("1h", now), Ok(6_400_000_000));
        assert_eq!(parse_since("1970-01-01T00:00:02Z", now), Ok(2_000_000));
        assert!(
            parse_since("yesterday", now)
                .unwrap_err()
                .contains("yesterday")
        );
        assert_eq!(parse_since("1000h", SystemTime::UNIX_EPOCH), Ok(0));
    }

    #[test]
    fn subscription_keys_are_checked() {
        assert!(subscription_key("c", "a/+").is_ok());
        assert_eq!(subscription_key("", "a").unwrap_err().1, "clientid");
        assert_eq!(subscription_key("c", "a/#/b").unwrap_err().1, "topic");
        assert_eq!(
            subscription_key("c", &"x".repeat(1025)).unwrap_err().1,
            "topic"
        );
    }

    #[test]
    fn binary_payloads_are_base64() {
        let m = StoredMessage {
            topic: "t".into(),
            msgid: "m".into(),
            sender: None,
            qos: Some(1),
            retain: Some(true),
            payload: Some(Payload::Binary(vec![0xff, 0])),
            arrived: None,
            time_us: None,
            expires_at: None,
        };
        assert_eq!(
            message_json(&m),
            json!({"topic": "t", "msgid": "m", "qos": 1, "retain": true, "payload_base64": "/wA="})
        );
    }
}
