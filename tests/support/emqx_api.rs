//! A stand-in for EMQX 5's REST API, written from EMQX's published API documentation (the
//! `clients` and `publish` API references), not from a running EMQX:
//!
//! - every call needs HTTP basic auth with the configured API key and secret; otherwise `401`
//!   `{"code": "BAD_API_KEY_OR_SECRET", ...}`;
//! - `POST /api/v5/clients/{clientid}/subscribe/bulk` with a JSON list of `{"topic", "qos"}`:
//!   `200` and the subscriptions made for a connected client, `404`
//!   `{"code": "CLIENTID_NOT_FOUND", ...}` for one that is not;
//! - `POST /api/v5/publish/bulk` with a JSON list of `{"topic", "payload", "payload_encoding",
//!   "qos", "retain"}`: one answer per message, in order, `{"id": ...}` when published and
//!   `{"reason_code", "message"}` when not; `200` when every message has an id, `202`
//!   otherwise (the documented answer for messages without subscribers).
//!
//! Scripted statuses (a `500` twice, a `401`) are answered before the documented behaviour, to
//! test retries. Every request is recorded; tests wait on the record with bounded polling.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// As sent (percent-encoded).
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    key: String,
    secret: String,
    /// Client ids (decoded) that are connected: subscribe calls for others get 404.
    connected: HashSet<String>,
    /// Statuses answered, in order, before the documented behaviour, for paths containing the
    /// string.
    script: VecDeque<(String, u16)>,
    /// Topics whose publishes are refused (reason code 135, not authorized).
    refused_topics: HashSet<String>,
    calls: Vec<Recorded>,
    next_id: u64,
}

/// A running stand-in; stopped on drop.
pub struct EmqxStandIn {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmqxStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EmqxStandIn {
    /// Listens on an ephemeral loopback port, accepting `key`:`secret`.
    pub async fn start(key: &str, secret: &str) -> EmqxStandIn {
        let state = Arc::new(Mutex::new(State {
            key: key.into(),
            secret: secret.into(),
            ..State::default()
        }));
        let (addr, task) = super::faults::serve_loopback(Arc::clone(&state), handle).await;
        let url = format!("http://{addr}");
        EmqxStandIn { url, state, task }
    }

    pub fn connect(&self, clientid: &str) {
        self.state.lock().unwrap().connected.insert(clientid.into());
    }

    /// Answers `status` to the next call whose path contains `path_part` (before anything else
    /// scripted for it).
    pub fn script(&self, path_part: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .script
            .push_back((path_part.into(), status));
    }

    pub fn refuse_topic(&self, topic: &str) {
        self.state
            .lock()
            .unwrap()
            .refused_topics
            .insert(topic.into());
    }

    /// Every request so far whose path contains `path_part`.
    pub fn calls(&self, path_part: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.path.contains(path_part))
            .cloned()
            .collect()
    }

    /// Waits (bounded: 30 s) until at least `n` requests with `path_part` were answered.
    pub async fn wait_calls(&self, path_part: &str, n: usize) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let calls = self.calls(path_part);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} calls to {path_part} expected, got {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `Basic base64(key:secret)`.
pub fn basic(key: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let (b'%', Some(b)) = (bytes[i], hex) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = state.lock().unwrap();
    let (status, answer) = answer(&mut st, &method, &path, authorization.as_deref(), &body);
    st.calls.push(Recorded {
        method,
        path,
        authorization,
        content_type,
        body,
        status,
    });
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn answer(
    st: &mut State,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    if authorization != Some(basic(&st.key, &st.secret).as_str()) {
        return (
            401,
            json!({"code": "BAD_API_KEY_OR_SECRET", "message": "Check api_key/api_secret"}),
        );
    }
    if let Some(at) = st
        .script
        .iter()
        .position(|(p, _)| path.contains(p.as_str()))
    {
        let (_, status) = st.script.remove(at).unwrap_or_default();
        let code = if status == 401 {
            "BAD_API_KEY_OR_SECRET"
        } else {
            "INTERNAL_ERROR"
        };
        return (status, json!({"code": code, "message": "scripted"}));
    }
    if method != "POST" {
        return (405, json!({"code": "METHOD_NOT_ALLOWED"}));
    }
    if let Some(clientid) = path
        .strip_prefix("/api/v5/clients/")
        .and_then(|rest| rest.strip_suffix("/subscribe/bulk"))
    {
        let clientid = percent_decode(clientid);
        if !st.connected.contains(&clientid) {
            return (
                404,
                json!({"code": "CLIENTID_NOT_FOUND", "message": "Client ID not found"}),
            );
        }
        let made: Vec<Value> = body
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| json!({"clientid": clientid, "topic": s["topic"], "qos": s["qos"], "node": "emqx@127.0.0.1"}))
            .collect();
        return (200, Value::Array(made));
    }
    if path == "/api/v5/publish/bulk" {
        let mut all_ok = true;
        let mut answers = Vec::new();
        for m in body.as_array().cloned().unwrap_or_default() {
            let topic = m["topic"].as_str().unwrap_or_default();
            if st.refused_topics.contains(topic) {
                all_ok = false;
                answers.push(json!({"reason_code": 135, "message": "not_authorized"}));
            } else {
                st.next_id += 1;
                answers.push(json!({"id": format!("{:032X}", st.next_id)}));
            }
        }
        return (if all_ok { 200 } else { 202 }, Value::Array(answers));
    }
    (404, json!({"code": "NOT_FOUND"}))
}
