//! The workload model: a seeded stream of hook events that behaves like an EMQX cluster's clients.
//!
//! - Clients connect to one of the nodes, disconnect, reconnect, and sometimes take over a session
//!   on another node (followed by a late disconnect from the old node, which must not mark them
//!   offline).
//! - Publishers pick topics by Zipf popularity; QoS 0/1/2 at 20/70/10 %; payloads mostly small,
//!   some up to 4 KB, a few not UTF-8.
//! - A share of publishes are retained, some of them empty (clearing the retained message); a
//!   topic's retained messages always come from the same client (its owner).
//! - Subscribers acknowledge QoS>0 messages after a delay (oldest first), and subscribe and
//!   unsubscribe now and then.
//!
//! The same seed always gives the same stream, message ids and timestamps included.

use std::collections::VecDeque;

use mqtt_dynamo::event::{ClientInfo, HookEvent, Message};

/// What the stream is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mix {
    /// The EMQX-like mix described in the module docs.
    #[default]
    Emqx,
    /// Only retained QoS 0 publishes, each to a topic of its own: one ~300-byte put per event
    /// and nothing to coalesce, to measure the pipeline's write ceiling.
    Puts,
}

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub mix: Mix,
    pub clients: usize,
    pub topics: usize,
    pub nodes: usize,
    /// Zipf exponent of topic popularity (1.0 is classic Zipf).
    pub zipf: f64,
    pub seed: u64,
    /// Share of publishes that are retained.
    pub retained_share: f64,
    /// Acks wait until this many QoS>0 messages are outstanding (the subscribers' delay).
    pub ack_lag: usize,
    /// The broker's clock at the first event (epoch milliseconds).
    pub start_ms: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            mix: Mix::Emqx,
            clients: 2_000,
            topics: 500,
            nodes: 3,
            zipf: 1.0,
            seed: 42,
            retained_share: 0.05,
            ack_lag: 200,
            start_ms: 1_700_000_000_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Client {
    id: String,
    node: Option<usize>,
    subs: Vec<usize>,
}

/// The generator. Call [`Workload::next_event`] for the next event.
pub struct Workload {
    cfg: WorkloadConfig,
    rng: fastrand::Rng,
    clients: Vec<Client>,
    topics: Vec<String>,
    /// Cumulative Zipf weights over `topics`.
    cdf: Vec<f64>,
    /// QoS>0 messages not yet acked: (hex id, topic).
    outstanding: VecDeque<(String, String)>,
    /// Late disconnects to deliver after a takeover: (client index, old node).
    late: VecDeque<(usize, usize)>,
    clock_ms: u64,
    seq: u16,
}

impl Workload {
    pub fn new(cfg: WorkloadConfig) -> Self {
        let start_ms = cfg.start_ms;
        let rng = fastrand::Rng::with_seed(cfg.seed);
        let clients = (0..cfg.clients)
            .map(|i| Client {
                id: format!("client-{i:05}"),
                node: None,
                subs: Vec::new(),
            })
            .collect();
        let topics = (0..cfg.topics)
            .map(|i| format!("site/{}/dev/{i}/data", i % 16))
            .collect();
        let mut cdf = Vec::with_capacity(cfg.topics);
        let mut acc = 0.0;
        for i in 0..cfg.topics {
            acc += 1.0 / ((i + 1) as f64).powf(cfg.zipf);
            cdf.push(acc);
        }
        Workload {
            cfg,
            rng,
            clients,
            topics,
            cdf,
            outstanding: VecDeque::new(),
            late: VecDeque::new(),
            clock_ms: start_ms,
            seq: 0,
        }
    }

    fn node(&self, n: usize) -> String {
        format!("emqx@10.0.0.{}", n + 1)
    }

    fn info(&self, c: usize, node: usize) -> ClientInfo {
        ClientInfo {
            node: self.node(node),
            clientid: self.clients[c].id.clone(),
            username: Some(format!("user{}", c % 100)),
            peerhost: Some(format!("192.0.2.{}", c % 250 + 1)),
        }
    }

    fn topic(&mut self) -> usize {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let x = self.rng.f64() * total;
        self.cdf
            .partition_point(|w| *w < x)
            .min(self.topics.len() - 1)
    }

    fn guid(&mut self, node: usize) -> String {
        self.seq = self.seq.wrapping_add(1);
        let micros = self.clock_ms * 1000 + u64::from(self.seq % 1000);
        let npid = (node as u64) << 32 | 0x1234;
        mqtt_dynamo::guid::to_hex(mqtt_dynamo::guid::compose(micros, npid, self.seq))
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = if self.rng.f64() < 0.05 {
            self.rng.usize(1024..4096)
        } else {
            self.rng.usize(16..256)
        };
        if self.rng.f64() < 0.03 {
            (0..len)
                .map(|_| self.rng.u8(..))
                .map(|b| b | 0x80)
                .collect()
        } else {
            (0..len).map(|_| self.rng.alphanumeric() as u8).collect()
        }
    }

    fn publish(&mut self, c: usize, node: usize, retained: bool) -> HookEvent {
        let t = self.topic();
        // A topic's retained messages come from one client, its owner (as a device publishes
        // its own status), so their order is one client's order; if the owner is offline the
        // publish is not retained.
        let owner = t % self.clients.len();
        let (c, node, retained) = match (retained, self.clients[owner].node) {
            (true, Some(owner_node)) => (owner, owner_node, true),
            _ => (c, node, false),
        };
        let qos = match self.rng.u8(0..10) {
            0 | 1 => 0,
            9 => 2,
            _ => 1,
        };
        let payload = if retained && self.rng.f64() < 0.1 {
            Vec::new()
        } else {
            self.payload()
        };
        let id = self.guid(node);
        let topic = self.topics[t].clone();
        if qos > 0 && !(retained && payload.is_empty()) {
            self.outstanding.push_back((id.clone(), topic.clone()));
        }
        HookEvent::MessagePublish {
            message: Message {
                node: self.node(node),
                id,
                qos,
                from: self.clients[c].id.clone(),
                topic,
                payload,
                retain: retained,
                timestamp_ms: self.clock_ms,
                username: Some(format!("user{}", c % 100)),
                expiry_interval_s: None,
            },
        }
    }

    /// One `Mix::Puts` event: a retained QoS 0 publish to a fresh topic.
    fn put_event(&mut self) -> HookEvent {
        let n = self.clock_ms;
        let c = (n as usize) % self.clients.len();
        let node = c % self.cfg.nodes;
        let id = self.guid(node);
        let payload = (0..250).map(|_| self.rng.alphanumeric() as u8).collect();
        HookEvent::MessagePublish {
            message: Message {
                node: self.node(node),
                id,
                qos: 0,
                from: self.clients[c].id.clone(),
                topic: format!("bulk/{n}"),
                payload,
                retain: true,
                timestamp_ms: self.clock_ms,
                username: None,
                expiry_interval_s: None,
            },
        }
    }

    /// The next event.
    pub fn next_event(&mut self) -> HookEvent {
        self.clock_ms += 1;
        if self.cfg.mix == Mix::Puts {
            return self.put_event();
        }
        if let Some((c, old)) = self.late.pop_front() {
            return HookEvent::ClientDisconnected {
                client: self.info(c, old),
                reason: "takenover".into(),
                disconnected_at_ms: self.clock_ms,
            };
        }
        let c = self.rng.usize(0..self.clients.len());
        let Some(node) = self.clients[c].node else {
            let node = self.rng.usize(0..self.cfg.nodes);
            self.clients[c].node = Some(node);
            return HookEvent::ClientConnected {
                client: self.info(c, node),
                connected_at_ms: self.clock_ms,
            };
        };
        let roll = self.rng.f64();
        // Subscribers keep up: once `ack_lag` messages are outstanding most events are acks,
        // so the backlog (and each topic's MsgId set) stays bounded.
        if roll < 0.6 && self.outstanding.len() > self.cfg.ack_lag {
            let (id, topic) = self.outstanding.pop_front().expect("checked non-empty");
            return HookEvent::MessageAcked {
                client: self.info(c, node),
                message: Message {
                    node: self.node(node),
                    id,
                    qos: 1,
                    from: String::new(),
                    topic,
                    payload: Vec::new(),
                    retain: false,
                    timestamp_ms: self.clock_ms,
                    username: None,
                    expiry_interval_s: None,
                },
            };
        }
        if roll < 0.29 {
            let t = self.topic();
            self.clients[c].subs.push(t);
            return HookEvent::SessionSubscribed {
                client: self.info(c, node),
                topic: self.topics[t].clone(),
                qos: self.rng.u8(0..3),
            };
        }
        if roll < 0.32
            && let Some(t) = self.clients[c].subs.pop()
        {
            return HookEvent::SessionUnsubscribed {
                client: self.info(c, node),
                topic: self.topics[t].clone(),
            };
        }
        if roll < 0.37 {
            self.clients[c].node = None;
            return HookEvent::ClientDisconnected {
                client: self.info(c, node),
                reason: "normal".into(),
                disconnected_at_ms: self.clock_ms,
            };
        }
        if roll < 0.38 && self.cfg.nodes > 1 {
            // Takeover: the session moves to another node; the old node's disconnect comes late.
            let new = (node + 1 + self.rng.usize(0..self.cfg.nodes - 1)) % self.cfg.nodes;
            self.clients[c].node = Some(new);
            self.late.push_back((c, node));
            return HookEvent::ClientConnected {
                client: self.info(c, new),
                connected_at_ms: self.clock_ms,
            };
        }
        let retained = self.rng.f64() < self.cfg.retained_share;
        self.publish(c, node, retained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Workload::new(WorkloadConfig::default());
        let mut b = Workload::new(WorkloadConfig::default());
        for _ in 0..5_000 {
            assert_eq!(a.next_event(), b.next_event());
        }
    }

    #[test]
    fn every_event_kind_occurs_and_ids_are_unique() {
        let mut w = Workload::new(WorkloadConfig {
            clients: 50,
            ..Default::default()
        });
        let mut kinds = std::collections::BTreeSet::new();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let e = w.next_event();
            kinds.insert(e.hook());
            if let HookEvent::MessagePublish { message } = &e {
                assert!(
                    ids.insert(message.id.clone()),
                    "duplicate id {}",
                    message.id
                );
            }
        }
        assert_eq!(kinds.len(), 6, "{kinds:?}");
    }
}
