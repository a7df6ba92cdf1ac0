//! Driving mqtt-dynamo the way EMQX does: ExHook v3 over a pool of HTTP/2 channels (EMQX's
//! default pool size is 8), unary calls, each awaited, and one client's calls always on the same
//! channel and in order; retained publishes also go to the HTTP ingest as the EMQX rule
//! (`SELECT * FROM "$events/message_publish" WHERE flags.retain`) would post them, since ExHook's
//! `Message` has no retain flag.
//!
//! Each channel carries `workers_per_channel` sequential workers; a client maps to one worker by
//! hash, so its calls never overtake each other. An ack is held until the publish it acknowledges
//! has been answered (in EMQX the subscriber cannot ack a message before the publish hook
//! returned), which keeps the final state a function of the stream.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use mqtt_dynamo::broker::exhook::v3;
use mqtt_dynamo::event::{ClientInfo, HookEvent, Message};

/// EMQX's default ExHook pool size.
pub const CHANNELS: usize = 8;

/// Where the service listens.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `http://127.0.0.1:9000`
    pub exhook: String,
    /// `http://127.0.0.1:8080/v1/events/emqx-rule?payload_encoding=base64`
    pub rule_url: String,
}

/// What the workers measured.
pub struct DriveResult {
    /// Hook call latency (µs), every call.
    pub rpc_latency: Histogram<u64>,
    /// Calls the service answered with an error (each also counted as refused).
    pub errors: u64,
    /// Indices (in stream order) of events whose hook call failed.
    pub refused: Vec<u64>,
    /// Retained publishes posted to the HTTP ingest, and how many failed.
    pub rule_posts: u64,
    pub rule_errors: u64,
}

/// Messages whose publish was answered, for the acks waiting on them.
#[derive(Default)]
struct Published {
    ids: Mutex<HashSet<String>>,
    changed: Notify,
}

impl Published {
    fn add(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(id.to_string());
        }
        self.changed.notify_waiters();
    }

    /// Waits until `id` was published (or `deadline`, so a publish that failed cannot stall an
    /// ack forever); false on timeout.
    async fn wait(&self, id: &str, deadline: Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ids.lock().is_ok_and(|mut ids| ids.remove(id)) {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

/// The instance an event goes to: its topic's for every event that names one (an ack must
/// follow its publish, and an unsubscribe's delete of the ack record must follow the ack, which
/// only one instance orders), its client's for presence.
fn instance_of(e: &HookEvent, instances: usize) -> usize {
    if instances <= 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    match e {
        HookEvent::MessagePublish { message } | HookEvent::MessageAcked { message, .. } => {
            message.topic.hash(&mut h)
        }
        HookEvent::SessionSubscribed { topic, .. }
        | HookEvent::SessionUnsubscribed { topic, .. } => topic.hash(&mut h),
        other => other.clientid().hash(&mut h),
    }
    (h.finish() % instances as u64) as usize
}

fn worker_of(e: &HookEvent, workers: usize) -> usize {
    let mut h = DefaultHasher::new();
    e.clientid().hash(&mut h);
    (h.finish() % workers as u64) as usize
}

fn client_info(c: &ClientInfo) -> v3::ClientInfo {
    v3::ClientInfo {
        node: c.node.clone(),
        clientid: c.clientid.clone(),
        username: c.username.clone().unwrap_or_default(),
        peerhost: c.peerhost.clone().unwrap_or_default(),
        protocol: "mqtt".into(),
        ..Default::default()
    }
}

fn message(m: &Message) -> v3::Message {
    let mut headers = std::collections::HashMap::new();
    if let Some(u) = &m.username {
        headers.insert("username".to_string(), u.clone());
    }
    v3::Message {
        node: m.node.clone(),
        id: m.id.clone(),
        qos: u32::from(m.qos),
        r#from: m.from.clone(),
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        timestamp: m.timestamp_ms,
        headers,
    }
}

/// The EMQX rule-engine row for a retained publish.
fn rule_row(m: &Message) -> serde_json::Value {
    json!({
        "event": "message.publish", "node": m.node, "id": m.id, "clientid": m.from,
        "username": m.username, "topic": m.topic, "qos": m.qos,
        "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        "flags": {"retain": true, "dup": false}, "publish_received_at": m.timestamp_ms,
    })
}

/// One hook call; Err carries the status text.
async fn call(
    client: &mut v3::hook_provider_client::HookProviderClient<tonic::transport::Channel>,
    e: &HookEvent,
) -> Result<(), String> {
    let r = match e {
        HookEvent::ClientConnected { client: c, .. } => client
            .on_client_connected(v3::ClientConnectedRequest {
                clientinfo: Some(client_info(c)),
                meta: None,
            })
            .await
            .map(|_| ()),
        HookEvent::ClientDisconnected {
            client: c, reason, ..
        } => client
            .on_client_disconnected(v3::ClientDisconnectedRequest {
                clientinfo: Some(client_info(c)),
                reason: reason.clone(),
                meta: None,
            })
            .await
            .map(|_| ()),
        HookEvent::SessionSubscribed {
            client: c,
            topic,
            qos,
        } => client
            .on_session_subscribed(v3::SessionSubscribedRequest {
                clientinfo: Some(client_info(c)),
                topic: topic.clone(),
                subopts: Some(v3::SubOpts {
                    qos: u32::from(*qos),
                    ..Default::default()
                }),
                meta: None,
            })
            .await
            .map(|_| ()),
        HookEvent::SessionUnsubscribed { client: c, topic } => client
            .on_session_unsubscribed(v3::SessionUnsubscribedRequest {
                clientinfo: Some(client_info(c)),
                topic: topic.clone(),
                meta: None,
            })
            .await
            .map(|_| ()),
        HookEvent::MessagePublish { message: m } => client
            .on_message_publish(v3::MessagePublishRequest {
                message: Some(message(m)),
                meta: None,
                props: vec![],
                user_props: vec![],
            })
            .await
            .map(|_| ()),
        HookEvent::MessageAcked {
            client: c,
            message: m,
        } => client
            .on_message_acked(v3::MessageAckedRequest {
                clientinfo: Some(client_info(c)),
                message: Some(message(m)),
                meta: None,
            })
            .await
            .map(|_| ()),
    };
    r.map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// Live counters for the progress bar.
#[derive(Default)]
pub struct Live {
    pub done: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
}

/// One instance's workers: their queues, and their tasks.
type Senders = Vec<mpsc::Sender<(u64, HookEvent)>>;
type Workers = Vec<tokio::task::JoinHandle<DriveResult>>;

/// The workers of every instance (channels × workers each). Events go in as (stream index,
/// event); what blocks is a full worker queue (256 events), which paces the sender.
pub struct Pool {
    /// Each instance's workers' senders.
    senders: Vec<Senders>,
    tasks: Vec<tokio::task::JoinHandle<DriveResult>>,
    pub live: Arc<Live>,
}

impl Pool {
    /// Connects to every instance in `targets` (one per EMQX node, one DynamoDB).
    pub async fn connect(targets: &[Targets], workers_per_channel: usize) -> Result<Pool, String> {
        let published = Arc::new(Published::default());
        let live = Arc::new(Live::default());
        let http: HttpClient<HttpConnector, Full<Bytes>> =
            HttpClient::builder(TokioExecutor::new()).build_http();
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for targets in targets {
            let (own, workers) =
                Self::connect_one(targets, workers_per_channel, &published, &live, &http).await?;
            senders.push(own);
            tasks.extend(workers);
        }
        Ok(Pool {
            senders,
            tasks,
            live,
        })
    }

    /// One instance's channels and workers.
    async fn connect_one(
        targets: &Targets,
        workers_per_channel: usize,
        published: &Arc<Published>,
        live: &Arc<Live>,
        http: &HttpClient<HttpConnector, Full<Bytes>>,
    ) -> Result<(Senders, Workers), String> {
        let (mut senders, mut tasks) = (Vec::new(), Vec::new());
        for ch in 0..CHANNELS {
            // EMQX's gRPC client sets nodelay; without it Nagle adds ~40 ms a call.
            let channel = tonic::transport::Endpoint::from_shared(targets.exhook.clone())
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to ExHook at {}: {e}", targets.exhook))?;
            for _ in 0..workers_per_channel {
                let (tx, mut rx) = mpsc::channel::<(u64, HookEvent)>(256);
                senders.push(tx);
                let mut client = v3::hook_provider_client::HookProviderClient::new(channel.clone());
                let published = Arc::clone(published);
                let live = Arc::clone(live);
                let http = http.clone();
                let rule_url = targets.rule_url.clone();
                let _ = ch;
                tasks.push(tokio::spawn(async move {
                    let mut r = DriveResult {
                        rpc_latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                            .expect("valid bounds"),
                        errors: 0,
                        refused: Vec::new(),
                        rule_posts: 0,
                        rule_errors: 0,
                    };
                    while let Some((i, e)) = rx.recv().await {
                        if let HookEvent::MessageAcked { message, .. } = &e {
                            // The publish was generated earlier, so its worker is ahead of
                            // us or at it: the wait ends (see the module docs).
                            let deadline = Instant::now() + Duration::from_secs(30);
                            published.wait(&message.id, deadline).await;
                        }
                        let t0 = Instant::now();
                        let result = call(&mut client, &e).await;
                        r.rpc_latency
                            .saturating_record(t0.elapsed().as_micros() as u64);
                        match result {
                            Ok(()) => {
                                if let HookEvent::MessagePublish { message } = &e {
                                    if message.retain {
                                        r.rule_posts += 1;
                                        if !post_rule(&http, &rule_url, message).await {
                                            r.rule_errors += 1;
                                        }
                                    }
                                    if message.qos > 0 {
                                        published.add(&message.id);
                                    }
                                }
                            }
                            Err(err) => {
                                r.errors += 1;
                                r.refused.push(i);
                                live.errors
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if r.errors <= 3 {
                                    eprintln!("hook call failed: {err}");
                                }
                            }
                        }
                        live.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    r
                }));
            }
        }
        Ok((senders, tasks))
    }

    /// Queues an event on its instance (by topic for what names one, so a message's ack never
    /// overtakes its publish on another instance; by client for presence),
    /// there on its client's worker (waits while that worker's queue is full).
    pub async fn send(&self, index: u64, e: HookEvent) -> Result<(), String> {
        let instance = &self.senders[instance_of(&e, self.senders.len())];
        let w = worker_of(&e, instance.len());
        instance[w]
            .send((index, e))
            .await
            .map_err(|_| "a worker stopped".to_string())
    }

    /// Waits for every queued call and merges the workers' figures.
    pub async fn finish(self) -> DriveResult {
        drop(self.senders);
        let mut total = DriveResult {
            rpc_latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
            refused: Vec::new(),
            rule_posts: 0,
            rule_errors: 0,
        };
        for t in self.tasks {
            if let Ok(r) = t.await {
                let _ = total.rpc_latency.add(&r.rpc_latency);
                total.errors += r.errors;
                total.refused.extend(r.refused);
                total.rule_posts += r.rule_posts;
                total.rule_errors += r.rule_errors;
            }
        }
        total.refused.sort_unstable();
        total
    }
}

async fn post_rule(http: &HttpClient<HttpConnector, Full<Bytes>>, url: &str, m: &Message) -> bool {
    let Ok(req) = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(rule_row(m).to_string())))
    else {
        return false;
    };
    match http.request(req).await {
        Ok(resp) => resp.status().is_success(),
        Err(_) => false,
    }
}
