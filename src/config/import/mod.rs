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
//!   is validated with [`Rule::new`](crate::rules::Rule::new), so `session.created` +
//!   `on_subscribe_lookup` (the seed's sample) is accepted and written as
//!   `hook = "session.created"`; a wrong hook for an action, an unknown function or an invalid
//!   topic filter skips the line with a warning. Raw statements of other backends (`action.sql`,
//!   `action.commands`, …), hook points the 4.x DynamoDB backend never loaded, and unparsable
//!   JSON skip the line too. JSON keys other than `action`, `pool` and `topic` (`offline_opts`,
//!   `expired_time`, `payload_format`, …) are ignored with a warning. Text after the JSON object
//!   is accepted only if it is a `#` comment.
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

mod emit;
mod map;
mod parse;
#[cfg(test)]
mod tests;

use thiserror::Error;

use parse::{HookLine, Pool, Setting, parse_lines};

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
/// uses for `on_subscribe_lookup` (documented on `client.connected`).
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

/// The import in progress: what the lines set, and the warnings so far.
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
}
