//! The seed's actions bound to hook points with optional topic filters, and the rule sets they
//! form. The planner that turns one hook event into the writes its rules call for is in
//! `plan.rs` (its entry points are [`RuleSet::plan`] and [`RuleSet::plan_scoped`]); how
//! message ids and times are written is in `format.rs`.
//!
//! Each write-side action does exactly what the 4.x backend did (its documentation's action table),
//! producing the items of the storage contract (README, "What is stored"). The read-side actions
//! (`on_subscribe_lookup`, `on_message_fetch_for_queue`, `on_retain_lookup`) are accepted in rule
//! sets so seed configurations load unchanged, but produce no writes: they are served as queries.

mod format;
mod plan;

pub use format::{
    DEFAULT_TTL_ATTRIBUTE, Expiry, MsgIdFormat, StorageFormat, TOMBSTONE_TTL_S, TimeUnit,
};
pub use plan::EventError;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::event::HookPoint;
use crate::topic::{FilterError, TopicFilter};

/// The seed's action functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    OnClientConnected,
    OnClientDisconnected,
    OnSubscribeLookup,
    OnMessageFetchForQueue,
    OnRetainLookup,
    OnAckedDelete,
    OnMessagePublish,
    OnMessageStore,
    OnMessageRetain,
    OnRetainDelete,
    OnMessageAckedForQueue,
}

impl Action {
    /// The hook point the action belongs to. `on_subscribe_lookup` is documented on
    /// `client.connected` (the seed's config block also names `session.created`;
    /// both are accepted by [`Rule::new`]).
    pub fn hook(self) -> HookPoint {
        match self {
            Action::OnClientConnected | Action::OnSubscribeLookup => HookPoint::ClientConnected,
            Action::OnClientDisconnected => HookPoint::ClientDisconnected,
            Action::OnMessageFetchForQueue | Action::OnRetainLookup => HookPoint::SessionSubscribed,
            Action::OnAckedDelete => HookPoint::SessionUnsubscribed,
            Action::OnMessagePublish
            | Action::OnMessageStore
            | Action::OnMessageRetain
            | Action::OnRetainDelete => HookPoint::MessagePublish,
            Action::OnMessageAckedForQueue => HookPoint::MessageAcked,
        }
    }

    /// The seed's function name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::OnClientConnected => "on_client_connected",
            Action::OnClientDisconnected => "on_client_disconnected",
            Action::OnSubscribeLookup => "on_subscribe_lookup",
            Action::OnMessageFetchForQueue => "on_message_fetch_for_queue",
            Action::OnRetainLookup => "on_retain_lookup",
            Action::OnAckedDelete => "on_acked_delete",
            Action::OnMessagePublish => "on_message_publish",
            Action::OnMessageStore => "on_message_store",
            Action::OnMessageRetain => "on_message_retain",
            Action::OnRetainDelete => "on_retain_delete",
            Action::OnMessageAckedForQueue => "on_message_acked_for_queue",
        }
    }

    /// Whether the action writes (the others are read-side lookups).
    pub fn writes(self) -> bool {
        !matches!(
            self,
            Action::OnSubscribeLookup | Action::OnMessageFetchForQueue | Action::OnRetainLookup
        )
    }
}

/// Why a rule is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(
        "unknown hook point {0:?} (expected one of client.connected, client.disconnected, session.subscribed, session.unsubscribed, message.publish, message.acked)"
    )]
    UnknownHook(String),
    #[error("action {action} belongs to hook {expected}, not {got}")]
    WrongHook {
        action: &'static str,
        expected: HookPoint,
        got: String,
    },
    #[error("rule {action}: {source}")]
    Filter {
        action: &'static str,
        #[source]
        source: FilterError,
    },
}

/// One `backend.dynamo.hook.<hook>.<n>` line: an action on a hook point, optionally only for
/// topics matching a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub hook: HookPoint,
    pub action: Action,
    /// For message hooks the message topic must match; for session hooks the subscription's
    /// filter, taken literally. Client hooks have no topic, so a filter there is ignored.
    pub topic: Option<TopicFilter>,
}

impl Rule {
    /// Builds a rule from the seed's names, checking that the action belongs to the hook.
    pub fn new(hook: &str, action: Action, topic: Option<&str>) -> Result<Self, RuleError> {
        // The seed's sample binds on_subscribe_lookup to session.created; it runs per client
        // session, which is client.connected here.
        let hook_point = if hook == "session.created" && action == Action::OnSubscribeLookup {
            HookPoint::ClientConnected
        } else {
            HookPoint::parse(hook).ok_or_else(|| RuleError::UnknownHook(hook.to_string()))?
        };
        if hook_point != action.hook() {
            return Err(RuleError::WrongHook {
                action: action.as_str(),
                expected: action.hook(),
                got: hook.to_string(),
            });
        }
        let topic = topic
            .map(|t| {
                TopicFilter::new(t).map_err(|source| RuleError::Filter {
                    action: action.as_str(),
                    source,
                })
            })
            .transpose()?;
        Ok(Rule {
            hook: hook_point,
            action,
            topic,
        })
    }
}

/// Which of the matching rules an event feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActionScope {
    /// Every rule bound to the event's hook.
    #[default]
    All,
    /// Only `on_message_retain` and `on_retain_delete`: for retained publishes posted by an EMQX
    /// rule while ExHook (which cannot see the retain flag) feeds every other action, so the
    /// message is not stored twice.
    RetainedOnly,
}

impl ActionScope {
    /// Whether a rule with `action` feeds events admitted under this scope.
    pub(crate) fn allows(self, action: Action) -> bool {
        match self {
            ActionScope::All => true,
            ActionScope::RetainedOnly => {
                matches!(action, Action::OnMessageRetain | Action::OnRetainDelete)
            }
        }
    }
}

/// The configured rules, grouped for lookup per hook point.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl Default for RuleSet {
    /// The seed's configuration (the EMQX 4 backend documentation's sample): every action but the
    /// optional `on_message_store`, with topic `#` on the session and message hooks.
    fn default() -> Self {
        let rule = |hook: &str, action, topic: Option<&str>| {
            Rule::new(hook, action, topic).expect("the built-in rules are valid")
        };
        RuleSet::new(vec![
            rule("client.connected", Action::OnClientConnected, None),
            rule("client.connected", Action::OnSubscribeLookup, None),
            rule("client.disconnected", Action::OnClientDisconnected, None),
            rule(
                "session.subscribed",
                Action::OnMessageFetchForQueue,
                Some("#"),
            ),
            rule("session.subscribed", Action::OnRetainLookup, Some("#")),
            rule("session.unsubscribed", Action::OnAckedDelete, Some("#")),
            rule("message.publish", Action::OnMessagePublish, Some("#")),
            rule("message.publish", Action::OnMessageRetain, Some("#")),
            rule("message.publish", Action::OnRetainDelete, Some("#")),
            rule("message.acked", Action::OnMessageAckedForQueue, Some("#")),
        ])
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        RuleSet { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The hook points some rule is bound to, so adapters register only those.
    pub fn hooks(&self) -> BTreeSet<HookPoint> {
        self.rules.iter().map(|r| r.hook).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_check_their_hook() {
        assert!(Rule::new("client.connected", Action::OnClientConnected, None).is_ok());
        assert!(Rule::new("session.created", Action::OnSubscribeLookup, None).is_ok());
        assert_eq!(
            Rule::new("message.publish", Action::OnClientConnected, None),
            Err(RuleError::WrongHook {
                action: "on_client_connected",
                expected: HookPoint::ClientConnected,
                got: "message.publish".into()
            })
        );
        assert!(matches!(
            Rule::new("client.foo", Action::OnClientConnected, None),
            Err(RuleError::UnknownHook(_))
        ));
        assert!(matches!(
            Rule::new("message.publish", Action::OnMessagePublish, Some("a/#/b")),
            Err(RuleError::Filter { .. })
        ));
    }

    #[test]
    fn default_rules_are_the_seed_configuration() {
        let rules = RuleSet::default();
        assert_eq!(rules.rules().len(), 10);
        assert!(
            !rules
                .rules()
                .iter()
                .any(|r| r.action == Action::OnMessageStore)
        );
        assert_eq!(rules.hooks().len(), 6);
    }
}
