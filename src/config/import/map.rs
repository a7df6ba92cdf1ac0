//! Mapping a hook line's JSON object to a rule, or to the warning why it cannot be.

use serde_json::Value as Json;

use super::parse::{HookLine, Seq};
use super::{HOOK_JSON_KEYS, Importer, SUPPORTED_HOOKS};
use crate::event::HookPoint;
use crate::rules::{Action, Rule};

/// A hook line that maps to a rule.
#[derive(Debug)]
pub(super) struct Mapped {
    pub(super) line: usize,
    pub(super) key: String,
    pub(super) hook: String,
    pub(super) hook_index: usize,
    pub(super) seq: Seq,
    pub(super) action: Action,
    pub(super) topic: Option<String>,
    pub(super) pool: Option<String>,
    pub(super) client_hook: bool,
}

impl Importer {
    /// Maps one hook line, or warns why it cannot be.
    pub(super) fn map_hook(&mut self, h: &HookLine, hook_index: usize) -> Option<Mapped> {
        let at = format!("line {}: {}", h.line, h.key);
        if !SUPPORTED_HOOKS.contains(&h.hook.as_str()) {
            self.warn(format!(
                "{at}: hook point {:?} was never supported by the EMQX 4 DynamoDB backend (it handles client.connected, client.disconnected, session.subscribed, session.unsubscribed, message.publish and message.acked); skipped",
                h.hook
            ));
            return None;
        }
        let object = match parse_json_object(&h.value) {
            Ok(object) => object,
            Err(reason) => {
                self.warn(format!("{at}: {reason}; skipped"));
                return None;
            }
        };
        // Notes about a line that maps; a skipped line gets only the reason it was skipped.
        let mut notes = Vec::new();
        let function = match object.get("action") {
            None => {
                self.warn(format!(
                    "{at}: has no \"action\" (expected {{\"action\": {{\"function\": \"...\"}}, ...}}); skipped"
                ));
                return None;
            }
            Some(Json::Object(action)) => match action.get("function") {
                Some(Json::String(function)) => {
                    let extra: Vec<String> = action
                        .keys()
                        .filter(|k| *k != "function")
                        .map(|k| format!("action.{k}"))
                        .collect();
                    if !extra.is_empty() {
                        notes.push(format!(
                            "{at}: {} not supported by mqtt-dynamo and ignored",
                            describe_keys(&extra)
                        ));
                    }
                    function.clone()
                }
                Some(_) => {
                    self.warn(format!("{at}: action.function is not a string; skipped"));
                    return None;
                }
                None if action.is_empty() => {
                    self.warn(format!("{at}: action has no \"function\"; skipped"));
                    return None;
                }
                None => {
                    let raw: Vec<String> = action.keys().map(|k| format!("action.{k}")).collect();
                    let quoted: Vec<String> = raw.iter().map(|k| format!("{k:?}")).collect();
                    self.warn(format!(
                        "{at}: {} (raw statements of the SQL, Redis, MongoDB and Cassandra backends) cannot be mapped: the DynamoDB backend only runs its built-in functions (action.function); skipped",
                        quoted.join(", ")
                    ));
                    return None;
                }
            },
            Some(_) => {
                self.warn(format!(
                    "{at}: \"action\" is not an object like {{\"function\": \"on_message_publish\"}}; skipped"
                ));
                return None;
            }
        };
        let action: Action = match serde_json::from_value(Json::String(function.clone())) {
            Ok(action) => action,
            Err(e) => {
                self.warn(format!(
                    "{at}: function {function:?} is not a function of the DynamoDB backend ({e}); skipped"
                ));
                return None;
            }
        };
        let topic = match object.get("topic") {
            None | Some(Json::Null) => None,
            Some(Json::String(topic)) => Some(topic.clone()),
            Some(_) => {
                self.warn(format!("{at}: \"topic\" is not a string; skipped"));
                return None;
            }
        };
        let pool = match object.get("pool") {
            Some(Json::String(pool)) => Some(pool.clone()),
            None | Some(Json::Null) => {
                notes.push(format!(
                    "{at}: has no \"pool\"; the rule is kept and writes to the one DynamoDB endpoint of the imported configuration"
                ));
                None
            }
            Some(_) => {
                notes.push(format!(
                    "{at}: \"pool\" is not a string; the rule is kept and writes to the one DynamoDB endpoint of the imported configuration"
                ));
                None
            }
        };
        let extra: Vec<String> = object
            .keys()
            .filter(|k| !HOOK_JSON_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        if !extra.is_empty() {
            notes.push(format!(
                "{at}: {} not supported by mqtt-dynamo and ignored",
                describe_keys(&extra)
            ));
        }
        let rule = match Rule::new(&h.hook, action, topic.as_deref()) {
            Ok(rule) => rule,
            Err(e) => {
                self.warn(format!("{at}: {e}; skipped"));
                return None;
            }
        };
        let client_hook = matches!(
            rule.hook,
            HookPoint::ClientConnected | HookPoint::ClientDisconnected
        );
        if client_hook && topic.is_some() {
            notes.push(format!(
                "{at}: a topic has no effect on a client hook (there is no topic to match); kept as written"
            ));
        }
        self.warnings.extend(notes);
        Some(Mapped {
            line: h.line,
            key: h.key.clone(),
            hook: h.hook.clone(),
            hook_index,
            seq: h.seq.clone(),
            action,
            topic,
            pool,
            client_hook,
        })
    }
}

/// A hook line's value: one JSON object, optionally followed by a `#` comment.
pub(super) fn parse_json_object(value: &str) -> Result<serde_json::Map<String, Json>, String> {
    let mut stream = serde_json::Deserializer::from_str(value).into_iter::<Json>();
    let parsed = match stream.next() {
        None => return Err("the value is empty (expected a JSON object)".to_string()),
        Some(Err(e)) => return Err(format!("the value is not valid JSON ({e})")),
        Some(Ok(parsed)) => parsed,
    };
    let rest = value.get(stream.byte_offset()..).unwrap_or("").trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("there is text after the JSON object".to_string());
    }
    match parsed {
        Json::Object(object) => Ok(object),
        _ => Err("the value is not a JSON object".to_string()),
    }
}

/// `x is` / `x, y are`.
pub(super) fn describe_keys(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    match quoted.len() {
        1 => format!("{} is", quoted[0]),
        _ => format!("{} are", quoted.join(", ")),
    }
}
