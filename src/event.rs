//! The hook events the pipeline accepts: one type for the six hook points the seed's actions bind
//! to, carrying what EMQX's ExHook delivers (`proto/emqx/exhook/v3/exhook.proto`).

/// The client side of an event: ExHook's `ClientInfo` fields the actions use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInfo {
    /// The broker node the client is on (`emqx@10.0.0.1`).
    pub node: String,
    pub clientid: String,
    pub username: Option<String>,
    pub peerhost: Option<String>,
}

/// A published message: ExHook's `Message` plus the retain flag, which ExHook itself does not
/// carry (only EMQX rule events and EMQX 4 web hooks do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub node: String,
    /// The EMQX GUID in hex, 32 digits, as ExHook and rule events carry it.
    pub id: String,
    pub qos: u8,
    /// The publisher's client id (ExHook `from`).
    pub from: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When the broker received it, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub username: Option<String>,
    /// MQTT 5's Message-Expiry-Interval in seconds (ExHook v3 `props`, rule rows' `pub_props`);
    /// `None`: the publisher set none.
    pub expiry_interval_s: Option<u32>,
}

/// The hook points, named as EMQX names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    ClientConnected,
    ClientDisconnected,
    SessionSubscribed,
    SessionUnsubscribed,
    MessagePublish,
    MessageAcked,
}

impl HookPoint {
    pub const ALL: [HookPoint; 6] = [
        HookPoint::ClientConnected,
        HookPoint::ClientDisconnected,
        HookPoint::SessionSubscribed,
        HookPoint::SessionUnsubscribed,
        HookPoint::MessagePublish,
        HookPoint::MessageAcked,
    ];

    /// EMQX's name for the hook point (`client.connected`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::ClientConnected => "client.connected",
            HookPoint::ClientDisconnected => "client.disconnected",
            HookPoint::SessionSubscribed => "session.subscribed",
            HookPoint::SessionUnsubscribed => "session.unsubscribed",
            HookPoint::MessagePublish => "message.publish",
            HookPoint::MessageAcked => "message.acked",
        }
    }

    /// Parses EMQX's name.
    pub fn parse(name: &str) -> Option<Self> {
        HookPoint::ALL.into_iter().find(|h| h.as_str() == name)
    }
}

impl std::fmt::Display for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    ClientConnected {
        client: ClientInfo,
        /// Milliseconds since the Unix epoch.
        connected_at_ms: u64,
    },
    ClientDisconnected {
        client: ClientInfo,
        reason: String,
        disconnected_at_ms: u64,
    },
    SessionSubscribed {
        client: ClientInfo,
        /// The subscription's topic filter.
        topic: String,
        qos: u8,
    },
    SessionUnsubscribed {
        client: ClientInfo,
        topic: String,
    },
    MessagePublish {
        message: Message,
    },
    MessageAcked {
        /// The subscriber that acknowledged.
        client: ClientInfo,
        message: Message,
    },
}

impl HookEvent {
    pub fn hook(&self) -> HookPoint {
        match self {
            HookEvent::ClientConnected { .. } => HookPoint::ClientConnected,
            HookEvent::ClientDisconnected { .. } => HookPoint::ClientDisconnected,
            HookEvent::SessionSubscribed { .. } => HookPoint::SessionSubscribed,
            HookEvent::SessionUnsubscribed { .. } => HookPoint::SessionUnsubscribed,
            HookEvent::MessagePublish { .. } => HookPoint::MessagePublish,
            HookEvent::MessageAcked { .. } => HookPoint::MessageAcked,
        }
    }

    /// The topic rule filters are matched against: the message topic for message hooks, the
    /// subscription's filter (taken literally, as the 4.x backend did) for session hooks.
    pub fn filter_topic(&self) -> Option<&str> {
        match self {
            HookEvent::SessionSubscribed { topic, .. }
            | HookEvent::SessionUnsubscribed { topic, .. } => Some(topic),
            HookEvent::MessagePublish { message } | HookEvent::MessageAcked { message, .. } => {
                Some(&message.topic)
            }
            _ => None,
        }
    }

    /// The client id this event belongs to, for per-client ordering in adapters.
    pub fn clientid(&self) -> &str {
        match self {
            HookEvent::ClientConnected { client, .. }
            | HookEvent::ClientDisconnected { client, .. }
            | HookEvent::SessionSubscribed { client, .. }
            | HookEvent::SessionUnsubscribed { client, .. }
            | HookEvent::MessageAcked { client, .. } => &client.clientid,
            HookEvent::MessagePublish { message } => &message.from,
        }
    }
}
