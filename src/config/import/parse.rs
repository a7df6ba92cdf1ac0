//! Reading the file: cuttlefish `key = value` lines into the region, the pools and the hook
//! lines, with a warning for every key that is not the DynamoDB backend's.

use std::collections::HashMap;

use super::{HOOK_PREFIX, ImportError, Importer, PREFIX, REGION_KEY, SUPPORTED_HOOKS};

/// One `key = value` line.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) line: usize,
    pub(super) key: String,
    pub(super) value: String,
}

pub(super) fn parse_lines(text: &str) -> Result<Vec<Entry>, ImportError> {
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
pub(super) fn valid_key(key: &str) -> bool {
    key.split('.').all(|word| {
        !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// A scalar value without a trailing `# comment`.
pub(super) fn scalar(value: &str) -> &str {
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
pub(super) enum Seq {
    Num(u64),
    Name(String),
}

/// A `backend.dynamo.hook.<hookpoint>.<n>` line.
#[derive(Debug)]
pub(super) struct HookLine {
    pub(super) line: usize,
    pub(super) key: String,
    pub(super) hook: String,
    pub(super) seq: Seq,
    pub(super) value: String,
}

/// A value with the line it came from.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    pub(super) line: usize,
    pub(super) value: String,
}

/// `backend.dynamo.<pool>.*`.
#[derive(Debug, Default)]
pub(super) struct Pool {
    pub(super) name: String,
    pub(super) server: Option<Setting>,
    pub(super) pool_size: Option<Setting>,
    pub(super) access_key_id: Option<Setting>,
    pub(super) secret_access_key: Option<Setting>,
}

impl Importer {
    /// Keeps the last value of a key set more than once, where its later line is.
    pub(super) fn dedupe(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
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

    pub(super) fn pool_mut(&mut self, name: &str) -> &mut Pool {
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

    pub(super) fn classify(&mut self, entry: Entry) {
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
}
