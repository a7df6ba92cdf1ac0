//! Imports an EMQX 4 `etc/plugins/emqx_backend_dynamo.conf` (the seed's format) as mqtt-dynamo's
//! TOML configuration, with a warning for everything that cannot be carried over.
//!
//! The input is cuttlefish's `key = value` format: one setting per line, `#` starts a comment line,
//! blank lines are ignored, whitespace around `=` is optional (the seed has
//! `session.unsubscribed.1= {...}`). A key set twice keeps its later value, as in EMQX.
//!
//! | EMQX 4 key                                        | mqtt-dynamo TOML                            |
//! |---------------------------------------------------|---------------------------------------------|
//! | `backend.dynamo.region`                           | `[dynamodb] region`                         |
//! | `backend.dynamo.<pool>.server`                    | `[dynamodb] endpoint_url` (URL as given)    |
//! | `backend.dynamo.<pool>.aws_access_key_id`         | `[dynamodb] access_key_id`                  |
//! | `backend.dynamo.<pool>.aws_secret_access_key`     | `[dynamodb] secret_access_key`              |
//! | `backend.dynamo.<pool>.pool_size`                 | none: warned (see `[pipeline] max_in_flight`) |
//! | `backend.dynamo.hook.<hookpoint>.<n> = {json}`    | one `[[rules]]`: `hook`, `action`, `topic`  |
//! | anything else                                     | none: warned                                |
//!
//! Decisions:
//!
//! - **One pool.** mqtt-dynamo talks to one DynamoDB endpoint. With several pools the one most
//!   mapped hook lines name is used (ties: the first defined) and the others are named in a
//!   warning; their rules are kept and write to the chosen endpoint. A hook line naming an
//!   undefined pool is kept the same way, with a warning.
//! - **`embedded = false`** is always written: an imported EMQX setup means a real DynamoDB, never
//!   the in-memory one mqtt-dynamo starts when no endpoint is configured.
//! - **Rules** keep EMQX's order: hook points in the order they first appear in the file, lines
//!   of one hook point by `<n>` (numerically; non-numeric suffixes after the numbers). Each line
//!   is validated with [`Rule::new`], so `session.created` + `on_subscribe_lookup` (the seed's
//!   sample) is accepted and written as `hook = "session.created"`; a wrong hook for an action,
//!   an unknown function or an invalid topic filter skips the line with a warning. Raw statements
//!   of other backends (`action.sql`, `action.commands`, …), hook points the 4.x DynamoDB backend
//!   never loaded, and unparsable JSON skip the line too. JSON keys other than `action`, `pool`
//!   and `topic` (`offline_opts`, `expired_time`, `payload_format`, …) are ignored with a warning.
//!   Text after the JSON object is accepted only if it is a `#` comment.
//! - **No rules.** If the file has hook lines but none maps, `rules = []` is written (no rules),
//!   because a missing `rules` key means the seed's default rules, which would silently persist
//!   more than the EMQX setup did. If the file has no hook lines at all, `rules` is left out and a
//!   warning says the seed's default rules apply.
//! - **Scalar values** are taken as written after trimming, except that a trailing comment
//!   (whitespace, then `#`) is cut off.
//! - **Unreadable lines** (no `=`, an empty key, a key that is not dot-separated words of
//!   letters, digits, `_` and `-`) are an [`ImportError`] naming the line number: cuttlefish
//!   rejects such a file, so there is no setup to import, and guessing might misplace a secret.
//!   Everything else is a warning.
//! - **Secrets.** The secret access key goes into the TOML (the source file has it too) but never
//!   into a warning or an error: neither ever quotes the value of a non-hook line.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value as Json;
use thiserror::Error;

use crate::event::HookPoint;
use crate::rules::{Action, Rule};

/// The result of an import: the TOML text and what could not be carried over.
#[derive(Clone, PartialEq, Eq)]
pub struct Imported {
    /// A complete mqtt-dynamo configuration file; it may contain the secret access key.
    pub toml: String,
    /// One line per setting that was ignored, changed meaning or was skipped; never secrets.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Imported {
    /// Leaves out the TOML text, which may hold the secret access key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imported")
            .field("toml", &format_args!("<{} bytes>", self.toml.len()))
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// A line that cannot be read at all. The line's text is never quoted (it may hold a secret).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("line {line}: expected `key = value` or a `#` comment, found no `=`")]
    MissingEquals { line: usize },
    #[error("line {line}: the key before `=` is empty")]
    EmptyKey { line: usize },
    #[error(
        "line {line}: the key is not a dot-separated name of letters, digits, `_` and `-` (like backend.dynamo.region)"
    )]
    InvalidKey { line: usize },
}

impl ImportError {
    /// The 1-based line number of the unreadable line.
    pub fn line(&self) -> usize {
        match self {
            ImportError::MissingEquals { line }
            | ImportError::EmptyKey { line }
            | ImportError::InvalidKey { line } => *line,
        }
    }
}

const PREFIX: &str = "backend.dynamo.";
const HOOK_PREFIX: &str = "backend.dynamo.hook.";
const REGION_KEY: &str = "backend.dynamo.region";

/// The hook points the 4.x DynamoDB backend loaded, and `session.created`, which the seed's sample
/// uses for `on_subscribe_lookup` (reference/emqx.md §1.6).
const SUPPORTED_HOOKS: [&str; 7] = [
    "client.connected",
    "client.disconnected",
    "session.created",
    "session.subscribed",
    "session.unsubscribed",
    "message.publish",
    "message.acked",
];

/// The keys of a hook line's JSON object that map to a rule.
const HOOK_JSON_KEYS: [&str; 3] = ["action", "pool", "topic"];

/// Reads an EMQX 4 `emqx_backend_dynamo.conf` and writes the equivalent mqtt-dynamo TOML.
///
/// Fails only on a line that cannot be read at all (see [`ImportError`]); everything else that
/// cannot be mapped is skipped or ignored with a warning.
pub fn import_emqx4(text: &str) -> Result<Imported, ImportError> {
    let entries = parse_lines(text)?;
    let mut importer = Importer::default();
    let entries = importer.dedupe(entries);
    for entry in entries {
        importer.classify(entry);
    }
    Ok(importer.finish())
}

/// One `key = value` line.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    key: String,
    value: String,
}

fn parse_lines(text: &str) -> Result<Vec<Entry>, ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(ImportError::MissingEquals { line });
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ImportError::EmptyKey { line });
        }
        if !valid_key(key) {
            return Err(ImportError::InvalidKey { line });
        }
        entries.push(Entry {
            line,
            key: key.to_string(),
            value: value.trim().to_string(),
        });
    }
    Ok(entries)
}

/// Cuttlefish's key syntax: words of `[A-Za-z0-9_-]` joined by dots.
fn valid_key(key: &str) -> bool {
    key.split('.').all(|word| {
        !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// A scalar value without a trailing `# comment`.
fn scalar(value: &str) -> &str {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return value[..i].trim_end();
        }
    }
    value
}

/// The position of a hook line among the lines of its hook point: `<n>` numerically, then
/// non-numeric suffixes by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seq {
    Num(u64),
    Name(String),
}

/// A `backend.dynamo.hook.<hookpoint>.<n>` line.
#[derive(Debug)]
struct HookLine {
    line: usize,
    key: String,
    hook: String,
    seq: Seq,
    value: String,
}

/// A hook line that maps to a rule.
#[derive(Debug)]
struct Mapped {
    line: usize,
    key: String,
    hook: String,
    hook_index: usize,
    seq: Seq,
    action: Action,
    topic: Option<String>,
    pool: Option<String>,
    client_hook: bool,
}

/// A value with the line it came from.
#[derive(Debug, Clone)]
struct Setting {
    line: usize,
    value: String,
}

/// `backend.dynamo.<pool>.*`.
#[derive(Debug, Default)]
struct Pool {
    name: String,
    server: Option<Setting>,
    pool_size: Option<Setting>,
    access_key_id: Option<Setting>,
    secret_access_key: Option<Setting>,
}

#[derive(Default)]
struct Importer {
    warnings: Vec<String>,
    region: Option<Setting>,
    /// In the order of their first key.
    pools: Vec<Pool>,
    hook_lines: Vec<HookLine>,
}

impl Importer {
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// Keeps the last value of a key set more than once, where its later line is.
    fn dedupe(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut slots: Vec<Option<Entry>> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for entry in entries {
            if let Some(&old) = seen.get(&entry.key)
                && let Some(previous) = slots[old].take()
            {
                self.warn(format!(
                    "line {}: {} is also set on line {}; the later value is used, as in EMQX",
                    entry.line, entry.key, previous.line
                ));
            }
            seen.insert(entry.key.clone(), slots.len());
            slots.push(Some(entry));
        }
        slots.into_iter().flatten().collect()
    }

    fn pool_mut(&mut self, name: &str) -> &mut Pool {
        let index = match self.pools.iter().position(|p| p.name == name) {
            Some(index) => index,
            None => {
                self.pools.push(Pool {
                    name: name.to_string(),
                    ..Pool::default()
                });
                self.pools.len() - 1
            }
        };
        &mut self.pools[index]
    }

    fn classify(&mut self, entry: Entry) {
        let Entry { line, key, value } = entry;
        let Some(rest) = key.strip_prefix(PREFIX) else {
            self.warn(format!(
                "line {line}: {key} is not part of the DynamoDB backend (backend.dynamo.*); ignored"
            ));
            return;
        };
        if let Some(hook_rest) = key.strip_prefix(HOOK_PREFIX) {
            let (hook, seq) = if SUPPORTED_HOOKS.contains(&hook_rest) {
                self.warn(format!(
                    "line {line}: {key} has no `.<n>` suffix (backend.dynamo.hook.<hookpoint>.<n>); read as {key}.0"
                ));
                (hook_rest.to_string(), Seq::Num(0))
            } else {
                match hook_rest.rsplit_once('.') {
                    Some((hook, n)) => (
                        hook.to_string(),
                        n.parse::<u64>()
                            .map_or_else(|_| Seq::Name(n.to_string()), Seq::Num),
                    ),
                    None => (hook_rest.to_string(), Seq::Num(0)),
                }
            };
            self.hook_lines.push(HookLine {
                line,
                key,
                hook,
                seq,
                value,
            });
            return;
        }
        let value = scalar(&value).to_string();
        if key == REGION_KEY {
            if value.is_empty() {
                self.warn(format!(
                    "line {line}: {key} is empty; ignored (us-west-2 applies)"
                ));
            } else {
                self.region = Some(Setting { line, value });
            }
            return;
        }
        let parts: Vec<&str> = rest.split('.').collect();
        let [pool, field] = parts[..] else {
            self.warn(format!(
                "line {line}: {key} is not a setting of the DynamoDB backend; ignored"
            ));
            return;
        };
        if !matches!(
            field,
            "server" | "pool_size" | "aws_access_key_id" | "aws_secret_access_key"
        ) {
            self.warn(format!(
                "line {line}: {key} is not a setting of the DynamoDB backend (a pool has server, pool_size, aws_access_key_id and aws_secret_access_key); ignored"
            ));
            return;
        }
        if value.is_empty() {
            // Still defines the pool, so references to it are not reported as undefined.
            self.pool_mut(pool);
            self.warn(format!("line {line}: {key} is empty; ignored"));
            return;
        }
        let setting = Some(Setting { line, value });
        let pool = self.pool_mut(pool);
        match field {
            "server" => pool.server = setting,
            "pool_size" => pool.pool_size = setting,
            "aws_access_key_id" => pool.access_key_id = setting,
            _ => pool.secret_access_key = setting,
        }
    }

    /// Maps one hook line, or warns why it cannot be.
    fn map_hook(&mut self, h: &HookLine, hook_index: usize) -> Option<Mapped> {
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

    fn finish(mut self) -> Imported {
        // Rules: hook points in file order, then by <n>.
        let hook_lines = std::mem::take(&mut self.hook_lines);
        let mut hook_order: Vec<&str> = Vec::new();
        let mut mapped = Vec::new();
        for h in &hook_lines {
            let hook_index = match hook_order.iter().position(|name| *name == h.hook) {
                Some(index) => index,
                None => {
                    hook_order.push(&h.hook);
                    hook_order.len() - 1
                }
            };
            if let Some(m) = self.map_hook(h, hook_index) {
                mapped.push(m);
            }
        }
        mapped.sort_by(|a, b| (a.hook_index, &a.seq).cmp(&(b.hook_index, &b.seq)));

        let chosen = self.choose_pool(&mapped);
        self.check_pool_references(&mapped, chosen);

        let mut out = String::new();
        out.push_str(
            "# mqtt-dynamo configuration imported from an EMQX 4 emqx_backend_dynamo.conf\n\
             # (backend.dynamo.* keys). Review the importer's warnings before using it.\n",
        );
        if mapped.is_empty() && !hook_lines.is_empty() {
            self.warn(format!(
                "none of the {} could be mapped; the imported configuration has `rules = []` (no rules, nothing is persisted) instead of falling back to the seed's default rules",
                plural(hook_lines.len(), "hook line")
            ));
            out.push_str(
                "\n# None of the EMQX hook lines could be mapped (see the importer's warnings). An empty\n\
                 # list means no rules; leaving `rules` out would mean the seed's default rules.\n\
                 rules = []\n",
            );
        }
        if hook_lines.is_empty() {
            self.warn(
                "the file has no backend.dynamo.hook.* lines; `rules` is left out of the imported configuration, so the seed's default rules apply (write `rules = []` for none)"
                    .to_string(),
            );
        }

        self.write_dynamodb(&mut out, chosen);
        self.write_rules(&mut out, &mapped);

        // Warnings about a line in line order, then the general ones.
        let mut warnings = self.warnings;
        warnings.sort_by_key(|w| line_of(w).unwrap_or(usize::MAX));
        Imported {
            toml: out,
            warnings,
        }
    }

    /// The pool the mapped hook lines name most (ties: the first defined); warns about the others.
    fn choose_pool(&mut self, mapped: &[Mapped]) -> Option<usize> {
        let uses = |name: &str| {
            mapped
                .iter()
                .filter(|m| m.pool.as_deref() == Some(name))
                .count()
        };
        let counts: Vec<usize> = self.pools.iter().map(|p| uses(&p.name)).collect();
        let best = counts.iter().copied().max()?;
        let chosen = counts.iter().position(|&c| c == best)?;
        if self.pools.len() > 1 {
            let others: Vec<String> = self
                .pools
                .iter()
                .zip(&counts)
                .enumerate()
                .filter(|(i, _)| *i != chosen)
                .map(|(_, (p, c))| format!("{} ({})", p.name, plural(*c, "mapped hook line")))
                .collect();
            let chosen_name = &self.pools[chosen].name;
            let message = format!(
                "{} pools are defined, but mqtt-dynamo talks to one DynamoDB endpoint: used pool {} ({}); ignored {}, whose settings are dropped and whose rules now write through pool {}",
                self.pools.len(),
                chosen_name,
                plural(best, "mapped hook line"),
                others.join(", "),
                chosen_name,
            );
            self.warn(message);
        }
        Some(chosen)
    }

    /// Warns once per undefined pool that hook lines name.
    fn check_pool_references(&mut self, mapped: &[Mapped], chosen: Option<usize>) {
        let mut undefined: Vec<(&str, Vec<usize>)> = Vec::new();
        for m in mapped {
            let Some(name) = m.pool.as_deref() else {
                continue;
            };
            if self.pools.iter().any(|p| p.name == name) {
                continue;
            }
            match undefined.iter_mut().find(|(n, _)| *n == name) {
                Some((_, lines)) => lines.push(m.line),
                None => undefined.push((name, vec![m.line])),
            }
        }
        let target = match chosen {
            Some(i) => format!("the endpoint of pool {}", self.pools[i].name),
            None => "AWS's DynamoDB endpoint for the region (no pool is defined)".to_string(),
        };
        for (name, lines) in undefined {
            let lines: Vec<String> = lines.iter().map(usize::to_string).collect();
            let message = format!(
                "pool {name:?} (named on line{} {}) is not defined in this file; those rules were kept and write to {target}",
                if lines.len() == 1 { "" } else { "s" },
                lines.join(", "),
            );
            self.warn(message);
        }
    }

    fn write_dynamodb(&mut self, out: &mut String, chosen: Option<usize>) {
        out.push_str("\n[dynamodb]\n");
        out.push_str(
            "# An EMQX setup means a real DynamoDB: never start the embedded, in-memory one.\n\
             embedded = false\n",
        );
        match &self.region {
            Some(region) => {
                let _ = writeln!(out, "region = {}", quote(&region.value));
            }
            None => out.push_str(
                "# backend.dynamo.region is not set: us-west-2 applies (the default of both).\n",
            ),
        }
        let Some(chosen) = chosen else {
            self.warn(
                "no pool (backend.dynamo.<pool>.server) is defined; endpoint_url is left unset, so mqtt-dynamo uses AWS's DynamoDB endpoint for the region and the AWS default credentials"
                    .to_string(),
            );
            return;
        };
        let pool = &self.pools[chosen];
        let name = pool.name.clone();
        let mut warnings = Vec::new();
        let _ = writeln!(out, "# From pool {name} (backend.dynamo.{name}.*).");
        match &pool.server {
            Some(server) => {
                let url = &server.value;
                if let Some(aws_region) = aws_endpoint_region(url) {
                    let _ = writeln!(
                        out,
                        "# This is AWS's own DynamoDB endpoint; it is kept as written, though without\n\
                         # endpoint_url the AWS SDK picks the same endpoint from region."
                    );
                    let region = self.region.as_ref().map_or("us-west-2", |r| &r.value);
                    if aws_region != region {
                        warnings.push(format!(
                            "line {}: backend.dynamo.{name}.server is AWS's endpoint for {aws_region}, but the region is {region}; AWS rejects requests signed for another region, so check which one is meant",
                            server.line
                        ));
                    }
                } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                    warnings.push(format!(
                        "line {}: backend.dynamo.{name}.server has no http:// or https:// scheme; kept as written, but the AWS SDK needs a full URL such as http://localhost:8000",
                        server.line
                    ));
                }
                let _ = writeln!(out, "endpoint_url = {}", quote(url));
            }
            None => warnings.push(format!(
                "pool {name} has no server; endpoint_url is left unset, so mqtt-dynamo uses AWS's DynamoDB endpoint for the region"
            )),
        }
        match (&pool.access_key_id, &pool.secret_access_key) {
            (Some(id), Some(secret)) => {
                out.push_str(
                    "# Static keys, as in the EMQX file. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n\
                     # override them; consider keeping the secret in the environment instead.\n",
                );
                let _ = writeln!(out, "access_key_id = {}", quote(&id.value));
                let _ = writeln!(out, "secret_access_key = {}", quote(&secret.value));
            }
            (None, None) => {}
            (Some(set), None) | (None, Some(set)) => warnings.push(format!(
                "line {}: pool {name} sets only one of aws_access_key_id and aws_secret_access_key; both are left out (they go together), so the AWS default credential chain applies",
                set.line
            )),
        }
        if let Some(size) = &pool.pool_size {
            warnings.push(format!(
                "line {}: backend.dynamo.{name}.pool_size ignored: mqtt-dynamo has no connection pool; its pipeline batches writes and bounds the requests in flight with [pipeline] max_in_flight (default 32)",
                size.line
            ));
        }
        self.warnings.extend(warnings);
    }

    fn write_rules(&self, out: &mut String, mapped: &[Mapped]) {
        for m in mapped {
            let _ = writeln!(out, "\n# {} (line {})", m.key, m.line);
            if m.hook == "session.created" {
                out.push_str(
                    "# session.created runs as client.connected in mqtt-dynamo (reference/emqx.md §1.6).\n",
                );
            }
            if m.client_hook && m.topic.is_some() {
                out.push_str("# A topic has no effect on a client hook.\n");
            }
            out.push_str("[[rules]]\n");
            let _ = writeln!(out, "hook = {}", quote(&m.hook));
            let _ = writeln!(out, "action = {}", quote(m.action.as_str()));
            if let Some(topic) = &m.topic {
                let _ = writeln!(out, "topic = {}", quote(topic));
            }
        }
    }
}

/// A hook line's value: one JSON object, optionally followed by a `#` comment.
fn parse_json_object(value: &str) -> Result<serde_json::Map<String, Json>, String> {
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

/// The line a warning is about, from its `line N:` prefix.
fn line_of(warning: &str) -> Option<usize> {
    let rest = warning.strip_prefix("line ")?;
    let end = rest.find(':')?;
    rest[..end].parse().ok()
}

/// `x is` / `x, y are`.
fn describe_keys(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    match quoted.len() {
        1 => format!("{} is", quoted[0]),
        _ => format!("{} are", quoted.join(", ")),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The region of an AWS DynamoDB endpoint URL (`https://dynamodb.<region>.amazonaws.com`).
fn aws_endpoint_region(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split(['/', ':', '?', '#']).next()?;
    let inner = host.strip_prefix("dynamodb.")?;
    let region = inner
        .strip_suffix(".amazonaws.com")
        .or_else(|| inner.strip_suffix(".amazonaws.com.cn"))?;
    (!region.is_empty() && !region.contains('.')).then_some(region)
}

/// A TOML basic string literal, escaped.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::rules::RuleSet;

    /// The configuration block of seeds/emqx-dynamodb-backend.en.txt, verbatim.
    const SEED: &str = r##"## DynamoDB Region
backend.dynamo.region = us-west-2
## DynamoDB Server
backend.dynamo.pool1.server = http://localhost:8000
## DynamoDB Pool Size
backend.dynamo.pool1.pool_size = 8
backend.dynamo.pool1.aws_access_key_id = EXAMPLE_ACCESS_KEY_ID
backend.dynamo.pool1.aws_secret_access_key = EXAMPLE_SECRET_ACCESS_KEY
## DynamoDB Backend Hooks
backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}
backend.dynamo.hook.session.created.1 = {"action": {"function": "on_subscribe_lookup"}, "pool": "pool1"}
backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool1"}
backend.dynamo.hook.session.subscribed.1 = {"topic": "#", "action": {"function": "on_message_fetch_for_queue"}, "pool": "pool1"}
backend.dynamo.hook.session.subscribed.2 = {"topic": "#", "action": {"function": "on_retain_lookup"}, "pool": "pool1"}
backend.dynamo.hook.session.unsubscribed.1= {"topic": "#", "action": {"function": "on_acked_delete"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.2 = {"topic": "#", "action": {"function": "on_message_retain"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.3 = {"topic": "#", "action": {"function": "on_retain_delete"}, "pool": "pool1"}
backend.dynamo.hook.message.acked.1 = {"topic": "#", "action": {"function": "on_message_acked_for_queue"}, "pool": "pool1"}
# backend.dynamo.hook.message.publish.4 = {"topic": "#", "action": {"function": "on_message_store"}, "pool": "pool1"}
"##;

    const SECRET: &str = "EXAMPLE_SECRET_ACCESS_KEY";

    /// A pool header for the smaller test files.
    const POOL1: &str = "backend.dynamo.pool1.server = http://localhost:8000\n";

    fn import(text: &str) -> Imported {
        import_emqx4(text).unwrap()
    }

    fn parse(imported: &Imported) -> Config {
        match Config::parse(&imported.toml, "imported.toml") {
            Ok(config) => config,
            Err(e) => panic!("{e}\n---\n{}", imported.toml),
        }
    }

    /// (hook, action, topic) of the parsed rule set.
    fn rules(config: &Config) -> Vec<(String, &'static str, Option<String>)> {
        config
            .rule_set()
            .unwrap()
            .rules()
            .iter()
            .map(|r| {
                (
                    r.hook.to_string(),
                    r.action.as_str(),
                    r.topic.as_ref().map(|t| t.as_str().to_string()),
                )
            })
            .collect()
    }

    /// The single warning containing `needle`.
    fn warning<'a>(imported: &'a Imported, needle: &str) -> &'a str {
        let found: Vec<&String> = imported
            .warnings
            .iter()
            .filter(|w| w.contains(needle))
            .collect();
        assert_eq!(found.len(), 1, "{needle:?} in {:#?}", imported.warnings);
        found[0]
    }

    #[test]
    fn seed_config_imports_to_the_seed_rules() {
        let imported = import(SEED);
        let config = parse(&imported);
        let d = &config.dynamodb;
        assert_eq!(d.region.as_deref(), Some("us-west-2"));
        assert_eq!(d.endpoint_url.as_deref(), Some("http://localhost:8000"));
        assert_eq!(d.access_key_id.as_deref(), Some("EXAMPLE_ACCESS_KEY_ID"));
        assert_eq!(
            d.secret_access_key.as_ref().map(|s| s.expose()),
            Some(SECRET)
        );
        assert!(!d.embedded);

        let some = |t: &str| Some(t.to_string());
        assert_eq!(
            rules(&config),
            vec![
                ("client.connected".into(), "on_client_connected", None),
                // session.created, mapped to client.connected by Rule::new.
                ("client.connected".into(), "on_subscribe_lookup", None),
                ("client.disconnected".into(), "on_client_disconnected", None),
                (
                    "session.subscribed".into(),
                    "on_message_fetch_for_queue",
                    some("#")
                ),
                ("session.subscribed".into(), "on_retain_lookup", some("#")),
                ("session.unsubscribed".into(), "on_acked_delete", some("#")),
                ("message.publish".into(), "on_message_publish", some("#")),
                ("message.publish".into(), "on_message_retain", some("#")),
                ("message.publish".into(), "on_retain_delete", some("#")),
                (
                    "message.acked".into(),
                    "on_message_acked_for_queue",
                    some("#")
                ),
            ]
        );
        // Exactly the built-in seed rule set, and the seed's hook name is kept in the file.
        assert_eq!(
            config.rule_set().unwrap().rules(),
            RuleSet::default().rules()
        );
        assert!(imported.toml.contains("hook = \"session.created\""));
        // The commented-out on_message_store line stays out.
        assert!(!imported.toml.contains("on_message_store"));

        assert_eq!(imported.warnings.len(), 1, "{:#?}", imported.warnings);
        let w = &imported.warnings[0];
        assert!(w.contains("line 6") && w.contains("pool_size"), "{w}");
        assert!(w.contains("[pipeline] max_in_flight"), "{w}");
    }

    #[test]
    fn output_starts_with_a_header_comment() {
        let imported = import(SEED);
        assert!(
            imported.toml.starts_with(
                "# mqtt-dynamo configuration imported from an EMQX 4 emqx_backend_dynamo.conf"
            ),
            "{}",
            imported.toml
        );
    }

    #[test]
    fn multiple_pools_use_the_most_referenced_one() {
        let text = r##"
backend.dynamo.pool1.server = http://pool1:8000
backend.dynamo.pool2.server = http://pool2:8000
backend.dynamo.pool2.aws_access_key_id = ID2
backend.dynamo.pool2.aws_secret_access_key = SECRET2
backend.dynamo.pool3.server = http://pool3:8000
backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool2"}
backend.dynamo.hook.message.acked.1 = {"topic": "#", "action": {"function": "on_message_acked_for_queue"}, "pool": "pool2"}
"##;
        let imported = import(text);
        let config = parse(&imported);
        assert_eq!(
            config.dynamodb.endpoint_url.as_deref(),
            Some("http://pool2:8000")
        );
        assert_eq!(config.dynamodb.access_key_id.as_deref(), Some("ID2"));
        // All three rules are kept, pool1's included.
        assert_eq!(rules(&config).len(), 3);
        let w = warning(&imported, "pools are defined");
        assert!(w.contains("used pool pool2 (2 mapped hook lines)"), "{w}");
        assert!(w.contains("pool1 (1 mapped hook line)"), "{w}");
        assert!(w.contains("pool3 (0 mapped hook lines)"), "{w}");
        assert!(!w.contains("SECRET2"), "{w}");
        assert_eq!(imported.warnings.len(), 1, "{:#?}", imported.warnings);
    }

    #[test]
    fn pool_ties_go_to_the_first_defined() {
        let text = r##"
backend.dynamo.b.server = http://b:8000
backend.dynamo.a.server = http://a:8000
backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "a"}
backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "b"}
"##;
        let imported = import(text);
        let config = parse(&imported);
        assert_eq!(
            config.dynamodb.endpoint_url.as_deref(),
            Some("http://b:8000")
        );
        assert!(warning(&imported, "pools are defined").contains("used pool b"));
    }

    #[test]
    fn undefined_pool_reference_is_warned_and_the_rule_kept() {
        let text = format!(
            "{POOL1}{}\n{}\n",
            r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool9"}"##,
            r##"backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool9"}"##,
        );
        let imported = import(&text);
        let config = parse(&imported);
        assert_eq!(rules(&config).len(), 2);
        let w = warning(&imported, "not defined");
        assert!(w.contains("\"pool9\" (named on lines 2, 3)"), "{w}");
        assert!(w.contains("the endpoint of pool pool1"), "{w}");
        assert_eq!(imported.warnings.len(), 1, "{:#?}", imported.warnings);
    }

    #[test]
    fn unknown_function_is_skipped() {
        let text = format!(
            "{POOL1}{}\n",
            r##"backend.dynamo.hook.session.subscribed.1 = {"topic": "#", "action": {"function": "on_message_fetch_for_pubsub"}, "pool": "pool1"}"##
        );
        let imported = import(&text);
        let config = parse(&imported);
        assert!(rules(&config).is_empty());
        let w = warning(&imported, "on_message_fetch_for_pubsub");
        assert!(
            w.starts_with("line 2: backend.dynamo.hook.session.subscribed.1"),
            "{w}"
        );
        assert!(
            w.contains("on_message_fetch_for_queue"),
            "lists the valid ones: {w}"
        );
        assert!(w.ends_with("skipped"), "{w}");
    }

    #[test]
    fn wrong_hook_for_an_action_is_skipped() {
        let text = format!(
            "{POOL1}{}\n{}\n",
            r##"backend.dynamo.hook.message.acked.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}"##,
            // session.created is accepted only for on_subscribe_lookup.
            r##"backend.dynamo.hook.session.created.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}"##,
        );
        let imported = import(&text);
        let config = parse(&imported);
        assert!(rules(&config).is_empty());
        let w = warning(&imported, "message.acked.1");
        assert!(
            w.contains(
                "action on_message_publish belongs to hook message.publish, not message.acked"
            ),
            "{w}"
        );
        let w = warning(&imported, "session.created.1");
        assert!(w.contains("session.created"), "{w}");
        assert!(w.ends_with("skipped"), "{w}");
    }

    #[test]
    fn invalid_topic_filter_is_skipped() {
        let text = format!(
            "{POOL1}{}\n{}\n",
            r##"backend.dynamo.hook.message.publish.1 = {"topic": "a/#/b", "action": {"function": "on_message_publish"}, "pool": "pool1"}"##,
            r##"backend.dynamo.hook.message.publish.2 = {"topic": "a/+/b", "action": {"function": "on_message_retain"}, "pool": "pool1"}"##,
        );
        let imported = import(&text);
        let config = parse(&imported);
        assert_eq!(
            rules(&config),
            vec![(
                "message.publish".into(),
                "on_message_retain",
                Some("a/+/b".into())
            )]
        );
        let w = warning(&imported, "a/#/b");
        assert!(w.contains("'#' must be the last level"), "{w}");
        assert!(w.ends_with("skipped"), "{w}");
    }

    #[test]
    fn extra_json_keys_are_ignored_with_a_warning() {
        let text = format!(
            "{POOL1}{}\n",
            r##"backend.dynamo.hook.session.subscribed.1 = {"topic": "q/#", "action": {"function": "on_message_fetch_for_queue"}, "offline_opts": {"max_returned_count": 500, "time_range": "2h"}, "expired_time": 3600, "pool": "pool1"}"##
        );
        let imported = import(&text);
        let config = parse(&imported);
        assert_eq!(
            rules(&config),
            vec![(
                "session.subscribed".into(),
                "on_message_fetch_for_queue",
                Some("q/#".into())
            )]
        );
        let w = warning(&imported, "offline_opts");
        assert!(w.contains("\"expired_time\""), "{w}");
        assert!(w.contains("ignored"), "{w}");
        assert_eq!(imported.warnings.len(), 1, "{:#?}", imported.warnings);
    }

    #[test]
    fn raw_statement_action_is_skipped() {
        let text = format!(
            "{POOL1}{}\n{}\n",
            r##"backend.dynamo.hook.session.unsubscribed.1 = {"topic": "#", "action": {"sql": ["delete from mqtt_acked where clientid = ${clientid}"]}, "pool": "pool1"}"##,
            r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}"##,
        );
        let imported = import(&text);
        let config = parse(&imported);
        assert_eq!(rules(&config).len(), 1);
        let w = warning(&imported, "\"action.sql\"");
        assert!(w.starts_with("line 2:"), "{w}");
        assert!(w.contains("raw statements"), "{w}");
        assert!(w.ends_with("skipped"), "{w}");
    }

    #[test]
    fn unsupported_hook_point_is_skipped() {
        let text = format!(
            "{POOL1}{}\n",
            r##"backend.dynamo.hook.client.authenticate.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}"##
        );
        let imported = import(&text);
        let w = warning(&imported, "client.authenticate");
        assert!(w.contains("never supported"), "{w}");
        assert!(w.ends_with("skipped"), "{w}");
        // The only hook line did not map: no rules, not the seed's defaults.
        let config = parse(&imported);
        assert!(rules(&config).is_empty());
    }

    #[test]
    fn malformed_json_is_skipped() {
        let text = format!(
            "{POOL1}{}\n{}\n{}\n",
            r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1""##,
            r##"backend.dynamo.hook.client.connected.2 = on_client_connected"##,
            r##"backend.dynamo.hook.client.disconnected.1 = ["on_client_disconnected"]"##,
        );
        let imported = import(&text);
        assert!(rules(&parse(&imported)).is_empty());
        let w = warning(&imported, "client.connected.1");
        assert!(w.contains("not valid JSON"), "{w}");
        let w = warning(&imported, "client.connected.2");
        assert!(w.contains("not valid JSON"), "{w}");
        let w = warning(&imported, "disconnected.1");
        assert!(w.contains("not a JSON object"), "{w}");
    }

    #[test]
    fn trailing_comment_after_json_is_accepted() {
        let text = format!(
            "{POOL1}{}\n{}\n",
            r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}  # keep"##,
            r##"backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool1"} junk"##,
        );
        let imported = import(&text);
        assert_eq!(rules(&parse(&imported)).len(), 1);
        assert!(warning(&imported, "disconnected.1").contains("text after the JSON object"));
    }

    #[test]
    fn unreadable_lines_are_errors_with_their_line_number() {
        let err = import_emqx4("backend.dynamo.region = us-west-2\n\nbackend.dynamo.region\n")
            .unwrap_err();
        assert_eq!(err, ImportError::MissingEquals { line: 3 });
        assert_eq!(err.line(), 3);
        assert!(err.to_string().starts_with("line 3:"), "{err}");

        let err = import_emqx4("# comment\n = x\n").unwrap_err();
        assert_eq!(err, ImportError::EmptyKey { line: 2 });
        let err = import_emqx4("backend dynamo region = x\n").unwrap_err();
        assert_eq!(err, ImportError::InvalidKey { line: 1 });
        let err = import_emqx4("backend..dynamo = x\n").unwrap_err();
        assert_eq!(err, ImportError::InvalidKey { line: 1 });
    }

    #[test]
    fn secret_never_appears_in_warnings_or_errors() {
        let problems = format!(
            "backend.dynamo.pool1.aws_secret_access_key = {SECRET}\n\
             backend.dynamo.pool1.aws_secret_access_key = {SECRET}\n\
             backend.dynamo.pool2.aws_secret_access_key = {SECRET}\n\
             backend.dynamo.pool2.aws_secret_acess_key = {SECRET}\n\
             backend.dynamo.pool2.aws_secret_access_key.x = {SECRET}\n\
             emqx.aws_secret_access_key = {SECRET}\n"
        );
        let imported = import(&problems);
        assert!(!imported.warnings.is_empty());
        for w in &imported.warnings {
            assert!(!w.contains(SECRET), "{w}");
        }
        // Only one of the keys: both left out, and the file still parses.
        let config = parse(&imported);
        assert!(config.dynamodb.secret_access_key.is_none());
        warning(&imported, "sets only one of");
        // Debug output leaves the TOML out.
        assert!(!format!("{imported:?}").contains(SECRET));

        // The seed: the secret is in the TOML, nowhere else.
        let imported = import(SEED);
        assert!(imported.toml.contains(SECRET));
        assert!(imported.warnings.iter().all(|w| !w.contains(SECRET)));
        assert!(!format!("{imported:?}").contains(SECRET));

        // Unreadable lines holding the secret.
        for bad in [
            format!("backend.dynamo.pool1.aws_secret_access_key {SECRET}\n"),
            format!("{SECRET}\n"),
            format!("backend.dynamo.pool1.aws_secret_access_key {SECRET} = x\n"),
        ] {
            let err = import_emqx4(&bad).unwrap_err();
            assert!(!err.to_string().contains(SECRET), "{err}");
            assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        }
    }

    #[test]
    fn no_mappable_hook_line_writes_an_empty_rule_list() {
        let text = format!(
            "{POOL1}{}\n",
            r##"backend.dynamo.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_nothing"}, "pool": "pool1"}"##
        );
        let imported = import(&text);
        assert!(
            imported.toml.contains("\nrules = []\n"),
            "{}",
            imported.toml
        );
        // rules = [] comes before the first table header, so it is a top-level key.
        let rules_at = imported.toml.find("rules = []").unwrap();
        let table_at = imported.toml.find("\n[").unwrap();
        assert!(rules_at < table_at, "{}", imported.toml);
        let config = parse(&imported);
        assert_eq!(config.rules.as_ref().map(Vec::len), Some(0));
        assert!(config.rule_set().unwrap().rules().is_empty());
        warning(&imported, "none of the 1 hook line could be mapped");
    }

    #[test]
    fn no_hook_lines_leaves_the_seed_defaults_with_a_warning() {
        let imported = import(POOL1);
        let config = parse(&imported);
        assert!(config.rules.is_none());
        assert_eq!(config.rule_set().unwrap().rules().len(), 10);
        assert!(warning(&imported, "no backend.dynamo.hook").contains("default rules apply"));
        assert_eq!(imported.warnings.len(), 1, "{:#?}", imported.warnings);
    }

    #[test]
    fn empty_file_imports_with_warnings() {
        let imported = import("");
        let config = parse(&imported);
        assert!(!config.dynamodb.embedded);
        assert!(config.dynamodb.endpoint_url.is_none());
        warning(&imported, "no pool");
        warning(&imported, "no backend.dynamo.hook");
    }

    #[test]
    fn rules_follow_n_order_within_hook_points_in_file_order() {
        let text = r##"
backend.dynamo.pool1.server = http://localhost:8000
backend.dynamo.hook.message.publish.10 = {"topic": "#", "action": {"function": "on_retain_delete"}, "pool": "pool1"}
backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.2 = {"topic": "#", "action": {"function": "on_message_retain"}, "pool": "pool1"}
backend.dynamo.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}
"##;
        let imported = import(text);
        let actions: Vec<&str> = rules(&parse(&imported)).into_iter().map(|r| r.1).collect();
        assert_eq!(
            actions,
            [
                "on_message_publish",
                "on_message_retain",
                "on_retain_delete",
                "on_client_connected"
            ]
        );
        assert!(imported.warnings.is_empty(), "{:#?}", imported.warnings);
    }

    #[test]
    fn unknown_keys_are_warned() {
        let text = "backend.dynamo.pool1.server = http://localhost:8000\n\
                    backend.dynamo.pool1.auto_reconnect = 1\n\
                    backend.dynamo.max_returned_count = 500\n\
                    backend.redis.pool1.server = 127.0.0.1:6379\n";
        let imported = import(text);
        parse(&imported);
        assert!(warning(&imported, "auto_reconnect").starts_with("line 2:"));
        assert!(warning(&imported, "max_returned_count").contains("ignored"));
        assert!(
            warning(&imported, "backend.redis.pool1.server")
                .contains("not part of the DynamoDB backend")
        );
    }

    #[test]
    fn strings_are_escaped_in_the_toml() {
        let text = r##"
backend.dynamo.region = eu "west" \ 1
backend.dynamo.pool1.server = http://localhost:8000
backend.dynamo.hook.message.publish.1 = {"topic": "a\"b/\\c/\u00e9", "action": {"function": "on_message_publish"}, "pool": "pool1"}
"##;
        let imported = import(text);
        let config = parse(&imported);
        assert_eq!(
            config.dynamodb.region.as_deref(),
            Some(r##"eu "west" \ 1"##)
        );
        assert_eq!(rules(&config)[0].2.as_deref(), Some("a\"b/\\c/é"));
    }

    #[test]
    fn aws_endpoint_is_kept_with_a_comment() {
        let text = "backend.dynamo.region = eu-west-1\n\
                    backend.dynamo.pool1.server = https://dynamodb.us-east-1.amazonaws.com\n";
        let imported = import(text);
        let config = parse(&imported);
        assert_eq!(
            config.dynamodb.endpoint_url.as_deref(),
            Some("https://dynamodb.us-east-1.amazonaws.com")
        );
        assert!(
            imported
                .toml
                .contains("# This is AWS's own DynamoDB endpoint")
        );
        let w = warning(&imported, "us-east-1");
        assert!(w.contains("eu-west-1"), "{w}");
        assert_eq!(
            aws_endpoint_region("https://dynamodb.eu-west-1.amazonaws.com/"),
            Some("eu-west-1")
        );
        assert_eq!(aws_endpoint_region("http://localhost:8000"), None);
    }

    #[test]
    fn duplicate_keys_keep_the_later_value() {
        let text = "backend.dynamo.pool1.server = http://first:8000\n\
                    backend.dynamo.pool1.server = http://second:8000\n";
        let imported = import(text);
        assert_eq!(
            parse(&imported).dynamodb.endpoint_url.as_deref(),
            Some("http://second:8000")
        );
        assert!(warning(&imported, "also set on line 1").starts_with("line 2:"));
    }

    #[test]
    fn scalar_trailing_comments_are_cut() {
        let text = "backend.dynamo.region = eu-west-1   # Ireland\n\
                    backend.dynamo.pool1.server = http://localhost:8000/#frag\n";
        let config = parse(&import(text));
        assert_eq!(config.dynamodb.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            config.dynamodb.endpoint_url.as_deref(),
            Some("http://localhost:8000/#frag")
        );
    }

    #[test]
    fn a_skipped_line_gets_only_the_reason_it_was_skipped() {
        // No pool and an extra key, but the action is on the wrong hook: one warning.
        let text = format!(
            "{POOL1}{}\n",
            r##"backend.dynamo.hook.message.publish.1 = {"action": {"function": "on_client_connected"}, "expired_time": 10}"##
        );
        let imported = import(&text);
        let about_line: Vec<&String> = imported
            .warnings
            .iter()
            .filter(|w| w.starts_with("line 2:"))
            .collect();
        assert_eq!(about_line.len(), 1, "{:#?}", imported.warnings);
        assert!(about_line[0].contains("belongs to hook client.connected"));
    }

    #[test]
    fn warnings_are_in_line_order_then_general() {
        let text = format!(
            "backend.dynamo.pool1.server = http://localhost:8000\n\
             backend.dynamo.hook.client.connected.1 = {}\n\
             backend.dynamo.pool1.pool_size = 8\n\
             backend.dynamo.pool2.server = http://other:8000\n",
            r##"{"action": {"function": "on_client_connected"}, "pool": "pool1", "x": 1}"##
        );
        let imported = import(&text);
        let firsts: Vec<Option<usize>> = imported.warnings.iter().map(|w| line_of(w)).collect();
        assert_eq!(firsts, [Some(2), Some(3), None], "{:#?}", imported.warnings);
    }

    proptest::proptest! {
        /// Any mix of plausible and broken lines: no panic, and every import parses as a
        /// configuration.
        #[test]
        fn never_panics_and_output_always_parses(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(SEED.lines().map(str::to_string).collect::<Vec<_>>()),
                    proptest::sample::select(vec![
                        "backend.dynamo.pool2.server = http://x\n".to_string(),
                        "backend.dynamo.pool2.aws_access_key_id = K".to_string(),
                        r##"backend.dynamo.hook.message.acked.7 = {"topic": "a/#/b", "action": {"function": "on_message_acked_for_queue"}, "pool": "pool2"}"##.to_string(),
                        r##"backend.dynamo.hook.message.acked.x = {"topic": "\u0000", "action": {"function": "on_message_acked_for_queue"}}"##.to_string(),
                        r##"backend.dynamo.hook.session.created.1 = {"action": {"sql": "x"}, "pool": 3}"##.to_string(),
                        "backend.dynamo.hook.client.connected = {}".to_string(),
                        "backend.dynamo.hook.x = {".to_string(),
                        "backend.dynamo.region =".to_string(),
                        "backend.dynamo.pool1.server = \u{1}\"\\".to_string(),
                    ]),
                    "[a-z.]{1,20} = [ -~]{0,30}",
                ],
                0..20,
            )
        ) {
            let text = lines.join("\n");
            if let Ok(imported) = import_emqx4(&text) {
                let parsed = Config::parse(&imported.toml, "imported.toml");
                proptest::prop_assert!(parsed.is_ok(), "{:?}\n{}", parsed.err(), imported.toml);
            }
        }
    }
}
