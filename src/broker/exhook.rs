//! The EMQX ExHook server: `emqx.exhook.v2.HookProvider` (EMQX 5.0–5.8) and
//! `emqx.exhook.v3.HookProvider` (5.9+) on one port.
//!
//! - `OnProviderLoaded` answers with the hook points the configured rules use, with their topic
//!   filters on the message hooks, so EMQX only calls what is needed.
//! - Every hook RPC translates its request into a [`HookEvent`], queues it and answers at once;
//!   no DynamoDB I/O happens on the RPC path. `OnMessagePublish` answers CONTINUE with the
//!   message untouched.
//! - EMQX sends one client's calls over one channel and awaits each reply, and an event is queued
//!   before its reply is sent, so one client's events enter the pipeline in call order.
//! - A missing required field or an event that cannot be stored (an invalid message id, an item
//!   over 400 KB) gets `INVALID_ARGUMENT` with the reason; a full queue, after the configured
//!   policy, `RESOURCE_EXHAUSTED`. `OnMessagePublish` is the exception: it always answers
//!   CONTINUE with the message unchanged — also when the event is refused as invalid, dropped or
//!   not accepted while shutting down (counted under `events_rejected_total` and logged, rate
//!   limited) — because a persistence provider must not stop EMQX's hook chain (with
//!   `failed_action = deny` an error there becomes `{stop, Msg}`). Requests that do not decode
//!   get tonic's status.
//! - ExHook's `Message` has no retain flag: messages arriving here are stored with `retain = 0`
//!   and never feed the retained actions; see the README for the EMQX rule that feeds those.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{debug, info};

use super::{Admission, AdmitError, now_ms};
use crate::event::{ClientInfo, HookEvent, HookPoint, Message};
use crate::rules::{ActionScope, RuleSet};

#[allow(clippy::all, missing_docs)]
pub mod v2 {
    tonic::include_proto!("emqx.exhook.v2");
}

#[allow(clippy::all, missing_docs)]
pub mod v3 {
    tonic::include_proto!("emqx.exhook.v3");
}

/// MQTT 5's Message-Expiry-Interval of a publish: v3 carries the publish's properties in
/// `props`; v2 carries none.
trait PublishProperties {
    fn expiry_interval(&self) -> Result<Option<u32>, Status>;
}

/// The property's name as EMQX passes it.
const MESSAGE_EXPIRY_INTERVAL: &str = "Message-Expiry-Interval";

impl PublishProperties for v2::MessagePublishRequest {
    fn expiry_interval(&self) -> Result<Option<u32>, Status> {
        Ok(None)
    }
}

impl PublishProperties for v3::MessagePublishRequest {
    fn expiry_interval(&self) -> Result<Option<u32>, Status> {
        let Some(p) = self
            .props
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(MESSAGE_EXPIRY_INTERVAL))
        else {
            return Ok(None);
        };
        p.value.trim().parse::<u32>().map(Some).map_err(|_| {
            Status::invalid_argument(format!(
                "props {MESSAGE_EXPIRY_INTERVAL} {:?} is not an integer of 0 to 4294967295 (seconds)",
                p.value
            ))
        })
    }
}

/// The hook registrations `OnProviderLoaded` returns: each hook point a write-side rule uses (the
/// read-side lookups are served as queries, not hooks), with the union of their topic filters on
/// message hooks (an empty list means every topic, as EMQX reads it; it is also what a rule
/// without a filter needs).
pub fn hook_specs(rules: &RuleSet) -> Vec<(String, Vec<String>)> {
    let writing: Vec<_> = rules.rules().iter().filter(|r| r.action.writes()).collect();
    let mut hooks: Vec<HookPoint> = writing.iter().map(|r| r.hook).collect();
    hooks.sort();
    hooks.dedup();
    hooks
        .into_iter()
        .map(|hook| {
            let is_message = matches!(hook, HookPoint::MessagePublish | HookPoint::MessageAcked);
            let bound: Vec<_> = writing.iter().filter(|r| r.hook == hook).collect();
            let topics = if is_message && bound.iter().all(|r| r.topic.is_some()) {
                let mut t: Vec<String> = bound
                    .iter()
                    .filter_map(|r| r.topic.as_ref().map(|f| f.as_str().to_string()))
                    .collect();
                t.sort();
                t.dedup();
                if t.iter().any(|f| f == "#") {
                    Vec::new()
                } else {
                    t
                }
            } else {
                Vec::new()
            };
            (hook.as_str().to_string(), topics)
        })
        .collect()
}

/// The gRPC service (both versions share it). tonic clones it per connection; every clone shares
/// the same admission, so a hook call that finds the queue full waits (or drops) there.
#[derive(Debug, Clone)]
pub struct ExhookService {
    /// The door to the pipeline: every hook call queues its event through it and answers once
    /// it is queued, never after DynamoDB.
    admission: Arc<Admission>,
    /// What `OnProviderLoaded` answers, computed once from the rules.
    specs: Arc<Vec<(String, Vec<String>)>>,
}

impl ExhookService {
    pub fn new(admission: Arc<Admission>) -> Self {
        let specs = Arc::new(hook_specs(admission.handle().rules()));
        ExhookService { admission, specs }
    }

    async fn notify(&self, event: HookEvent) -> Result<(), Status> {
        let t0 = std::time::Instant::now();
        let result = self.admit(event).await;
        metrics::histogram!(crate::telemetry::catalogue::HOOK_RPC_DURATION_SECONDS, "adapter" => "exhook")
            .record(t0.elapsed().as_secs_f64());
        result
    }

    async fn admit(&self, event: HookEvent) -> Result<(), Status> {
        match self.admission.admit(event, ActionScope::All).await {
            Ok(()) => Ok(()),
            Err(AdmitError::Invalid(e)) => Err(Status::invalid_argument(e.to_string())),
            Err(AdmitError::Dropped) => Err(Status::resource_exhausted(
                "mqtt-dynamo's ingest queue is full; event dropped",
            )),
            Err(AdmitError::Closed) => Err(Status::unavailable("mqtt-dynamo is shutting down")),
            Err(e @ AdmitError::Unavailable(_)) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// A request field as read: a refusal (a missing field, a bad QoS) is counted as `invalid`
    /// here, since the event never reaches ingest.
    fn read<T>(&self, field: Result<T, Status>) -> Result<T, Status> {
        if field.is_err() {
            self.admission
                .handle()
                .count_refusals(crate::telemetry::stats::RejectReason::Invalid, 1);
        }
        field
    }

    /// Queues a publish; whatever happens, the message flows on (see the module docs).
    async fn publish(&self, event: Result<HookEvent, Status>) {
        let refused = match event {
            Ok(event) => match self.notify(event).await {
                Ok(()) => return,
                // Counted and logged by the admission already.
                Err(s) if s.code() == tonic::Code::ResourceExhausted => return,
                Err(s) => s,
            },
            // Refused while reading the request (counted by `read`).
            Err(s) => s,
        };
        if let Some(held) = PUBLISH_REFUSED_LOG.allow() {
            tracing::warn!(held_back = held, code = ?refused.code(), reason = refused.message(),
                "a publish was not stored; the message goes on unchanged (CONTINUE)");
        }
    }
}

/// Rate limit for the refused-publish log line.
static PUBLISH_REFUSED_LOG: crate::telemetry::stats::LogGate =
    crate::telemetry::stats::LogGate::new();

fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is missing"))
}

/// A request's client info, which every client and session hook carries.
fn client_info<C: Into<ClientInfo>>(info: Option<C>) -> Result<ClientInfo, Status> {
    info.map(Into::into).ok_or_else(|| missing("clientinfo"))
}

fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn qos(q: u32) -> Result<u8, Status> {
    u8::try_from(q)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or_else(|| Status::invalid_argument(format!("qos {q} is not 0, 1 or 2")))
}

/// Generates the conversions and the `HookProvider` impl for one protocol version. The whole
/// impl is generated (not methods inside it), which `async_trait` handles. The hooks that only
/// queue an event are listed once as request → event (a missing field or a bad QoS is refused,
/// counted as `invalid`); the hook points no action uses are listed once and each answered
/// without effect.
macro_rules! hook_provider {
    ($v:ident) => {
        hook_provider!(@impl $v;
            events: {
                on_client_connected(ClientConnectedRequest, req) =>
                    HookEvent::ClientConnected {
                        client: client_info(req.clientinfo)?,
                        connected_at_ms: now_ms(),
                    },
                on_client_disconnected(ClientDisconnectedRequest, req) =>
                    HookEvent::ClientDisconnected {
                        client: client_info(req.clientinfo)?,
                        reason: req.reason,
                        disconnected_at_ms: now_ms(),
                    },
                on_session_subscribed(SessionSubscribedRequest, req) =>
                    HookEvent::SessionSubscribed {
                        client: client_info(req.clientinfo)?,
                        qos: qos(req.subopts.map(|o| o.qos).unwrap_or(0))?,
                        topic: req.topic,
                    },
                on_session_unsubscribed(SessionUnsubscribedRequest, req) =>
                    HookEvent::SessionUnsubscribed {
                        client: client_info(req.clientinfo)?,
                        topic: req.topic,
                    },
                on_message_acked(MessageAckedRequest, req) =>
                    HookEvent::MessageAcked {
                        client: client_info(req.clientinfo)?,
                        message: req
                            .message
                            .ok_or_else(|| missing("message"))
                            .and_then(Message::try_from)?,
                    },
            }
            ignored: {
                on_client_authenticate(ClientAuthenticateRequest),
                on_client_authorize(ClientAuthorizeRequest),
            }
            noops: {
                on_client_connack(ClientConnackRequest),
                on_client_subscribe(ClientSubscribeRequest),
                on_client_unsubscribe(ClientUnsubscribeRequest),
                on_session_created(SessionCreatedRequest),
                on_session_resumed(SessionResumedRequest),
                on_session_discarded(SessionDiscardedRequest),
                on_session_takenover(SessionTakenoverRequest),
                on_session_terminated(SessionTerminatedRequest),
                on_message_delivered(MessageDeliveredRequest),
                on_message_dropped(MessageDroppedRequest),
            }
        );
    };
    (@impl $v:ident;
        events: { $($hook:ident($hook_request:ident, $req:ident) => $event:expr),* $(,)? }
        ignored: { $($ignore:ident($ignore_request:ident)),* $(,)? }
        noops: { $($noop:ident($request:ident)),* $(,)? }
    ) => {
        impl From<$v::ClientInfo> for ClientInfo {
            fn from(c: $v::ClientInfo) -> Self {
                ClientInfo {
                    node: c.node,
                    clientid: c.clientid,
                    username: opt(c.username),
                    peerhost: opt(c.peerhost),
                }
            }
        }

        impl TryFrom<$v::Message> for Message {
            type Error = Status;
            fn try_from(m: $v::Message) -> Result<Self, Status> {
                let username = m.headers.get("username").cloned().filter(|u| !u.is_empty());
                Ok(Message {
                    node: m.node,
                    id: m.id,
                    qos: qos(m.qos)?,
                    from: m.r#from,
                    topic: m.topic,
                    payload: m.payload,
                    retain: false,
                    timestamp_ms: m.timestamp,
                    username,
                    expiry_interval_s: None,
                })
            }
        }

        #[tonic::async_trait]
        impl $v::hook_provider_server::HookProvider for ExhookService {
            async fn on_provider_loaded(
                &self,
                request: Request<$v::ProviderLoadedRequest>,
            ) -> Result<Response<$v::LoadedResponse>, Status> {
                let req = request.into_inner();
                let broker = req.broker.unwrap_or_default();
                let node = req.meta.map(|m| m.node).unwrap_or_default();
                info!(api = stringify!($v), %node, version = %broker.version, "EMQX loaded the provider");
                let hooks = self
                    .specs
                    .iter()
                    .map(|(name, topics)| $v::HookSpec {
                        name: name.clone(),
                        topics: topics.clone(),
                    })
                    .collect();
                Ok(Response::new($v::LoadedResponse { hooks }))
            }

            async fn on_provider_unloaded(
                &self,
                request: Request<$v::ProviderUnloadedRequest>,
            ) -> Result<Response<$v::EmptySuccess>, Status> {
                let node = request.into_inner().meta.map(|m| m.node).unwrap_or_default();
                info!(api = stringify!($v), %node, "EMQX unloaded the provider");
                Ok(Response::new($v::EmptySuccess {}))
            }

            $(
                async fn $hook(
                    &self,
                    request: Request<$v::$hook_request>,
                ) -> Result<Response<$v::EmptySuccess>, Status> {
                    let $req = request.into_inner();
                    let event = (|| -> Result<HookEvent, Status> { Ok($event) })();
                    self.notify(self.read(event)?).await?;
                    Ok(Response::new($v::EmptySuccess {}))
                }
            )*

            async fn on_message_publish(
                &self,
                request: Request<$v::MessagePublishRequest>,
            ) -> Result<Response<$v::ValuedResponse>, Status> {
                let req = request.into_inner();
                let expiry = req.expiry_interval();
                // Always CONTINUE, with the message exactly as it came (or none if none came).
                let event = self.read(
                    req.message
                        .clone()
                        .ok_or_else(|| missing("message"))
                        .and_then(Message::try_from)
                        .and_then(|mut message| {
                            message.expiry_interval_s = expiry?;
                            Ok(HookEvent::MessagePublish { message })
                        }),
                );
                self.publish(event).await;
                Ok(Response::new($v::ValuedResponse {
                    r#type: $v::valued_response::ResponsedType::Continue as i32,
                    value: req.message.map($v::valued_response::Value::Message),
                }))
            }

            async fn on_client_connect(
                &self,
                _: Request<$v::ClientConnectRequest>,
            ) -> Result<Response<$v::EmptySuccess>, Status> {
                debug!("unregistered hook client.connect called");
                Ok(Response::new($v::EmptySuccess {}))
            }

            // IGNORE: this provider has no opinion on authentication or authorization.
            $(
                async fn $ignore(
                    &self,
                    _: Request<$v::$ignore_request>,
                ) -> Result<Response<$v::ValuedResponse>, Status> {
                    Ok(Response::new($v::ValuedResponse {
                        r#type: $v::valued_response::ResponsedType::Ignore as i32,
                        value: None,
                    }))
                }
            )*

            $(
                async fn $noop(
                    &self,
                    _: Request<$v::$request>,
                ) -> Result<Response<$v::EmptySuccess>, Status> {
                    Ok(Response::new($v::EmptySuccess {}))
                }
            )*
        }
    };
}

hook_provider!(v2);
hook_provider!(v3);

/// How long a client has to finish its TLS handshake before its connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves both protocol versions on `listener` until `shutdown` resolves. With `tls`, every
/// connection is accepted through [`tls_incoming`], whose handshakes take the reloader's config
/// current at the time (so a reload reaches new connections, not established ones).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    service: ExhookService,
    max_message_bytes: usize,
    tls: Option<std::sync::Arc<super::tls::TlsReloader>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        .add_service(
            v2::hook_provider_server::HookProviderServer::new(service.clone())
                .max_decoding_message_size(max_message_bytes),
        )
        .add_service(
            v3::hook_provider_server::HookProviderServer::new(service)
                .max_decoding_message_size(max_message_bytes),
        );
    match tls {
        // tonic drops the incoming stream as soon as shutdown begins, which ends the accept loop
        // and closes the listening socket; connections in progress are drained as without TLS.
        Some(reloader) => {
            router
                .serve_with_incoming_shutdown(tls_incoming(listener, reloader), shutdown)
                .await
        }
        // TCP_NODELAY: unary calls are small writes; without it Nagle and delayed ACKs add
        // ~40 ms to every call (EMQX sets nodelay on its side too).
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
}

type TlsConnection = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The TLS connections of `listener`, for tonic: a task accepts TCP connections (with
/// TCP_NODELAY), runs each handshake in a task of its own (a slow client holds up no other,
/// and gives up after [`TLS_HANDSHAKE_TIMEOUT`]) with the config `reloader` holds at that
/// moment, and hands completed connections over a channel. A refused handshake (no client
/// certificate, one from another CA) is logged at debug and dropped.
///
/// The accept task owns the listener and the handshakes in progress; it ends, closing the
/// socket and aborting those handshakes, when tonic drops the stream (at shutdown).
fn tls_incoming(
    listener: tokio::net::TcpListener,
    reloader: std::sync::Arc<super::tls::TlsReloader>,
) -> impl tokio_stream::Stream<Item = Result<TlsConnection, std::convert::Infallible>> {
    use tokio_stream::StreamExt;
    // Small: a handshaken connection waits here only until tonic's accept loop takes it.
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConnection>(16);
    tokio::spawn(async move {
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Per-connection errors (ECONNABORTED, EMFILE): back off briefly.
                            tracing::warn!(error = %e, "ExHook accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = tokio_rustls::TlsAcceptor::from(reloader.current());
                    let tx = tx.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(tls).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "ExHook TLS handshake refused");
                            }
                            Err(_) => tracing::debug!(%peer, "ExHook TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Rule};

    #[test]
    fn hook_specs_follow_the_rules() {
        let specs = hook_specs(&RuleSet::default());
        let names: Vec<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "client.connected",
                "client.disconnected",
                "session.unsubscribed",
                "message.publish",
                "message.acked"
            ]
        );
        assert!(
            specs.iter().all(|(_, t)| t.is_empty()),
            "'#' everywhere means all topics"
        );
        let rules = RuleSet::new(vec![
            Rule::new("message.publish", Action::OnMessagePublish, Some("a/+")).unwrap(),
            Rule::new("message.publish", Action::OnMessageRetain, Some("b/#")).unwrap(),
        ]);
        assert_eq!(
            hook_specs(&rules),
            [(
                "message.publish".to_string(),
                vec!["a/+".to_string(), "b/#".to_string()]
            )]
        );
    }
}
