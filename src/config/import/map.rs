//! Mapping a hook line's JSON object to a rule, or to the reason it is skipped.

use serde_json::{Map, Value as Json};
use thiserror::Error;

use super::parse::HookLine;
use super::{HOOK_JSON_KEYS, Importer, SUPPORTED_HOOKS};
use crate::event::HookPoint;
use crate::rules::{Action, Rule, RuleError};

/// A hook line that maps to a rule.
#[derive(Debug)]
pub(super) struct Mapped<'a> {
    /// The line as read (its line number, key, hook point and `<n>`).
    pub(super) source: &'a HookLine,
    /// The position of its hook point among the file's hook points.
    pub(super) hook_index: usize,
    pub(super) action: Action,
    pub(super) topic: Option<String>,
    pub(super) pool: Option<String>,
    pub(super) client_hook: bool,
}

/// Why a hook line's value is not one JSON object.
#[derive(Debug, Error)]
pub(super) enum JsonValueError {
    #[error("the value is empty (expected a JSON object)")]
    Empty,
    #[error("the value is not valid JSON ({0})")]
    Invalid(#[source] serde_json::Error),
    #[error("there is text after the JSON object")]
    TrailingText,
    #[error("the value is not a JSON object")]
    NotObject,
}

/// Why a hook line is skipped (the warning reads `line N: <key>: <reason>; skipped`).
#[derive(Debug, Error)]
enum Skip {
    #[error(
        "hook point {0:?} was never supported by the EMQX 4 DynamoDB backend (it handles client.connected, client.disconnected, session.subscribed, session.unsubscribed, message.publish and message.acked)"
    )]
    UnsupportedHook(String),
    #[error(transparent)]
    Json(#[from] JsonValueError),
    #[error("has no \"action\" (expected {{\"action\": {{\"function\": \"...\"}}, ...}})")]
    NoAction,
    #[error("\"action\" is not an object like {{\"function\": \"on_message_publish\"}}")]
    ActionNotObject,
    #[error("action.function is not a string")]
    FunctionNotString,
    #[error("action has no \"function\"")]
    NoFunction,
    /// Quoted `action.<key>` names.
    #[error(
        "{} (raw statements of the SQL, Redis, MongoDB and Cassandra backends) cannot be mapped: the DynamoDB backend only runs its built-in functions (action.function)",
        .0.join(", ")
    )]
    RawStatements(Vec<String>),
    #[error("function {function:?} is not a function of the DynamoDB backend ({source})")]
    UnknownFunction {
        function: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("\"topic\" is not a string")]
    TopicNotString,
    #[error(transparent)]
    Rule(#[from] RuleError),
}

impl Importer {
    /// Maps one hook line, or warns why it cannot be. Notes about a line that maps are kept; a
    /// skipped line gets only the reason it was skipped.
    pub(super) fn map_hook<'a>(
        &mut self,
        h: &'a HookLine,
        hook_index: usize,
    ) -> Option<Mapped<'a>> {
        let at = format!("line {}: {}", h.line, h.key);
        let mut notes = Vec::new();
        match map_line(h, hook_index, &at, &mut notes) {
            Ok(mapped) => {
                self.warnings.extend(notes);
                Some(mapped)
            }
            Err(skip) => {
                self.warn(format!("{at}: {skip}; skipped"));
                None
            }
        }
    }
}

/// Maps one hook line (`at` names it in notes), adding notes about what it leaves out.
fn map_line<'a>(
    h: &'a HookLine,
    hook_index: usize,
    at: &str,
    notes: &mut Vec<String>,
) -> Result<Mapped<'a>, Skip> {
    if !SUPPORTED_HOOKS.contains(&h.hook.as_str()) {
        return Err(Skip::UnsupportedHook(h.hook.clone()));
    }
    let object = parse_json_object(&h.value)?;
    let function = action_function(&object, at, notes)?;
    let action: Action = serde_json::from_value(Json::String(function.clone()))
        .map_err(|source| Skip::UnknownFunction { function, source })?;
    let topic = match object.get("topic") {
        None | Some(Json::Null) => None,
        Some(Json::String(topic)) => Some(topic.clone()),
        Some(_) => return Err(Skip::TopicNotString),
    };
    let pool = pool_of(&object, at, notes);
    let extra: Vec<String> = object
        .keys()
        .filter(|k| !HOOK_JSON_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    notes.extend(ignored_keys(at, &extra));
    let rule = Rule::new(&h.hook, action, topic.as_deref())?;
    let client_hook = matches!(
        rule.hook,
        HookPoint::ClientConnected | HookPoint::ClientDisconnected
    );
    if client_hook && topic.is_some() {
        notes.push(format!(
            "{at}: a topic has no effect on a client hook (there is no topic to match); kept as written"
        ));
    }
    Ok(Mapped {
        source: h,
        hook_index,
        action,
        topic,
        pool,
        client_hook,
    })
}

/// The built-in function `"action": {"function": ...}` names.
fn action_function(
    object: &Map<String, Json>,
    at: &str,
    notes: &mut Vec<String>,
) -> Result<String, Skip> {
    let action = match object.get("action") {
        None => return Err(Skip::NoAction),
        Some(Json::Object(action)) => action,
        Some(_) => return Err(Skip::ActionNotObject),
    };
    match action.get("function") {
        Some(Json::String(function)) => {
            let extra: Vec<String> = action
                .keys()
                .filter(|k| *k != "function")
                .map(|k| format!("action.{k}"))
                .collect();
            notes.extend(ignored_keys(at, &extra));
            Ok(function.clone())
        }
        Some(_) => Err(Skip::FunctionNotString),
        None if action.is_empty() => Err(Skip::NoFunction),
        None => Err(Skip::RawStatements(
            action
                .keys()
                .map(|k| format!("{:?}", format!("action.{k}")))
                .collect(),
        )),
    }
}

/// The pool a hook line names; without one the rule is kept, with a note.
fn pool_of(object: &Map<String, Json>, at: &str, notes: &mut Vec<String>) -> Option<String> {
    let problem = match object.get("pool") {
        Some(Json::String(pool)) => return Some(pool.clone()),
        None | Some(Json::Null) => "has no \"pool\"",
        Some(_) => "\"pool\" is not a string",
    };
    notes.push(format!(
        "{at}: {problem}; the rule is kept and writes to the one DynamoDB endpoint of the imported configuration"
    ));
    None
}

/// The note about JSON keys mqtt-dynamo ignores, if there are any.
fn ignored_keys(at: &str, keys: &[String]) -> Option<String> {
    (!keys.is_empty()).then(|| {
        format!(
            "{at}: {} not supported by mqtt-dynamo and ignored",
            describe_keys(keys)
        )
    })
}

/// A hook line's value: one JSON object, optionally followed by a `#` comment.
pub(super) fn parse_json_object(value: &str) -> Result<Map<String, Json>, JsonValueError> {
    let mut stream = serde_json::Deserializer::from_str(value).into_iter::<Json>();
    let parsed = match stream.next() {
        None => return Err(JsonValueError::Empty),
        Some(Err(e)) => return Err(JsonValueError::Invalid(e)),
        Some(Ok(parsed)) => parsed,
    };
    let rest = value.get(stream.byte_offset()..).unwrap_or("").trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(JsonValueError::TrailingText);
    }
    match parsed {
        Json::Object(object) => Ok(object),
        _ => Err(JsonValueError::NotObject),
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
