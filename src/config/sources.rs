//! Where a configuration comes from, lowest precedence first: the defaults, the TOML file, the AWS
//! environment variables that name a region or an endpoint, the `MQTT_DYNAMO_<SECTION>_<KEY>`
//! environment variables, and last the `*_file` keys, whose files hold the values of secrets.
//!
//! - **Environment overrides.** `MQTT_DYNAMO_EXHOOK_LISTEN=0.0.0.0:9000` sets `[exhook] listen`;
//!   nested sections join with `_` (`MQTT_DYNAMO_PIPELINE_SPOOL_DIR`), and the longest section
//!   name that matches wins. A value is read as a TOML value when it is one that the key takes
//!   (`25`, `true`, `["a"]`), else as a string (`50ms`, `0.0.0.0:9000`), so nothing needs
//!   quoting. `MQTT_DYNAMO_RULES` takes the rule list as a TOML array of inline tables. A
//!   variable that names a section but no key of it, or a value the key does not take, is an
//!   error that names the variable; one that names no section (`MQTT_DYNAMO_CONFIG`, which names
//!   the file, or a test harness's own) is not a key: it is ignored, and `serve` and
//!   `config check` warn about each ([`ignored_variables`]).
//! - **Secrets from files.** Any string key `K` may be given as `K_file` (in the file or the
//!   environment, `MQTT_DYNAMO_HTTP_TOKEN_FILE`): the file's contents, less one trailing newline,
//!   are the value; Kubernetes mounts Secrets this way. Setting both `K` and `K_file` is an error.

use std::path::Path;

use toml::{Table, Value};

use super::{Config, ConfigError};

/// Every key with its default and a line of documentation (`mqtt-dynamo config default`); a unit
/// test holds it equal to [`Config::default`] and complete.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The configuration as TOML, secrets shown as [`super::Secret::REDACTED`] (`config check`).
pub fn to_toml(config: &Config) -> Result<String, toml::ser::Error> {
    toml::to_string(config)
}

/// The prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "MQTT_DYNAMO_";

/// The variable that names the file (not a key, never warned about).
const CONFIG_VARIABLE: &str = "MQTT_DYNAMO_CONFIG";

/// The suffix of a key whose file holds the value of the key without it.
const FILE_SUFFIX: &str = "_file";

/// Builds the configuration from `text` (named `origin` in errors; empty for no file) and the
/// process's environment `vars`, in the order the module doc gives, then validates it.
pub fn assemble(
    text: &str,
    origin: &str,
    vars: &[(String, String)],
) -> Result<Config, ConfigError> {
    let parse_error = |source| ConfigError::Parse {
        path: origin.to_string(),
        source,
    };
    let mut table: Table = toml::from_str(text).map_err(parse_error)?;
    // The file alone first, so its mistakes are reported with their line and column (a file
    // with `_file` keys is only whole once they are read: it is checked below, without lines).
    if let Err(e) = toml::from_str::<Config>(text)
        && !has_file_keys(&table)
    {
        return Err(parse_error(e));
    }
    let env = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    apply_aws_env(&mut table, &env);
    let sections = section_paths();
    for (name, raw) in vars {
        if let Some(target) = target_of(&sections, name) {
            apply_override(&mut table, target, name, raw)?;
        }
    }
    read_secret_files(&mut table, "")?;
    let config = Config::from_table(&table, origin)?;
    config.validate()?;
    Ok(config)
}

/// Reads `path` (when given) and assembles it with the process's environment.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let (text, origin) = match path {
        None => (String::new(), "the defaults".to_string()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            (text, path.display().to_string())
        }
    };
    assemble(&text, &origin, &process_vars())
}

/// The process's environment (variables that are not UTF-8 are none of ours).
fn process_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The process's `MQTT_DYNAMO_*` variables that name no section, so no key (a misspelt section
/// among them): what `serve` and `config check` warn about.
pub fn ignored_variables() -> Vec<String> {
    let sections = section_paths();
    let mut names: Vec<String> = process_vars()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            k.starts_with(ENV_PREFIX) && k != CONFIG_VARIABLE && target_of(&sections, k).is_none()
        })
        .collect();
    names.sort();
    names
}

/// Where a variable points: the section path and the key, or `None` for a variable that is not
/// ours or names no section.
fn target_of<'s>(sections: &'s [Vec<String>], name: &str) -> Option<(&'s [String], String)> {
    let lower = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    if lower == "rules" {
        return Some((&[], lower));
    }
    let section = sections
        .iter()
        .find(|p| lower.starts_with(&format!("{}_", p.join("_"))))?;
    let key = lower[section.join("_").len() + 1..].to_string();
    Some((section.as_slice(), key))
}

impl Config {
    fn from_table(table: &Table, origin: &str) -> Result<Config, ConfigError> {
        Config::deserialize_table(table).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source,
        })
    }

    fn deserialize_table(table: &Table) -> Result<Config, toml::de::Error> {
        Value::Table(table.clone()).try_into()
    }
}

/// `table` with each `K_file` replaced by an empty `K`: what deserializes when the names are
/// right, before any file is read.
fn without_file_keys(table: &Table) -> Table {
    table
        .iter()
        .map(|(k, v)| match v {
            Value::Table(inner) => (k.clone(), Value::Table(without_file_keys(inner))),
            Value::String(_) if k.ends_with(FILE_SUFFIX) => (
                k[..k.len() - FILE_SUFFIX.len()].to_string(),
                Value::String(String::new()),
            ),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

fn has_file_keys(table: &Table) -> bool {
    table.iter().any(|(k, v)| match v {
        Value::Table(inner) => has_file_keys(inner),
        _ => k.ends_with(FILE_SUFFIX),
    })
}

/// `AWS_REGION` (or `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL_DYNAMODB` (or
/// `AWS_ENDPOINT_URL`) over the file's `[dynamodb]` values.
fn apply_aws_env(table: &mut Table, env: &impl Fn(&str) -> Option<String>) {
    let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
    let endpoint = env("AWS_ENDPOINT_URL_DYNAMODB").or_else(|| env("AWS_ENDPOINT_URL"));
    for (key, value) in [("region", region), ("endpoint_url", endpoint)] {
        if let Some(value) = value {
            section_mut(table, &["dynamodb"]).insert(key.into(), Value::String(value));
        }
    }
}

/// The sections a variable can name, as paths (`["pipeline", "spool"]`), longest first: every
/// table in the defaults.
fn section_paths() -> Vec<Vec<String>> {
    fn walk(table: &Table, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (key, value) in table {
            if let Value::Table(inner) = value {
                path.push(key.clone());
                out.push(path.clone());
                walk(inner, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(Value::Table(defaults)) = Value::try_from(Config::default()) {
        walk(&defaults, &mut Vec::new(), &mut out);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.join("_").len()));
    out
}

/// The table at `path`, created empty where missing (a non-table in the way is replaced: the
/// deserializer then names the key's expected type).
fn section_mut<'t>(table: &'t mut Table, path: &[&str]) -> &'t mut Table {
    let mut current = table;
    for part in path {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        current = match entry {
            Value::Table(t) => t,
            _ => unreachable!("replaced by a table above"),
        };
    }
    current
}

/// Sets the key variable `name` names to `raw`: as the TOML value it spells when the configuration takes
/// that, else as a string.
fn apply_override(
    table: &mut Table,
    (section, key): (&[String], String),
    name: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Environment {
        variable: name.to_string(),
        reason,
    };
    let path: Vec<&str> = section.iter().map(String::as_str).collect();
    let typed = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let mut candidates = typed.into_iter().collect::<Vec<_>>();
    candidates.push(Value::String(raw.to_string()));
    let mut first_error = None;
    for value in candidates {
        let mut attempt = table.clone();
        section_mut(&mut attempt, &path).insert(key.clone(), value);
        match Config::deserialize_table(&without_file_keys(&attempt)) {
            Ok(_) => {
                *table = attempt;
                return Ok(());
            }
            Err(e) => {
                first_error.get_or_insert(e.message().to_string());
            }
        }
    }
    Err(invalid(first_error.unwrap_or_default()))
}

/// Replaces every `K_file = "PATH"` (at any depth) with `K = "<contents of PATH>"`.
fn read_secret_files(table: &mut Table, prefix: &str) -> Result<(), ConfigError> {
    let file_keys: Vec<String> = table
        .iter()
        .filter(|(k, v)| k.ends_with(FILE_SUFFIX) && v.is_str())
        .map(|(k, _)| k.clone())
        .collect();
    for file_key in file_keys {
        let key = file_key[..file_key.len() - FILE_SUFFIX.len()].to_string();
        let full = format!("{prefix}{key}");
        if table.contains_key(&key) {
            return Err(ConfigError::Secret {
                key: full,
                reason: format!("{key} and {file_key} are both set; set one of them"),
            });
        }
        let Some(Value::String(path)) = table.remove(&file_key) else {
            continue;
        };
        let mut value = std::fs::read_to_string(&path).map_err(|e| ConfigError::Secret {
            key: full.clone(),
            reason: format!("cannot read {file_key} {path}: {e}"),
        })?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        table.insert(key, Value::String(value));
    }
    for (key, value) in table.iter_mut() {
        if let Value::Table(inner) = value {
            read_secret_files(inner, &format!("{prefix}{key}."))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_keys_of_every_type() {
        let c = assemble(
            "[exhook]\nlisten = \"127.0.0.1:9000\"\n[pipeline]\nshards = 2\n",
            "t.toml",
            &vars(&[
                ("MQTT_DYNAMO_EXHOOK_LISTEN", "0.0.0.0:9001"),
                ("MQTT_DYNAMO_PIPELINE_SHARDS", "4"),
                ("MQTT_DYNAMO_PIPELINE_MAX_BATCH_AGE", "20ms"),
                ("MQTT_DYNAMO_PIPELINE_SPOOL_ENABLED", "true"),
                ("MQTT_DYNAMO_PIPELINE_SPOOL_DIR", "/var/lib/spool"),
                ("MQTT_DYNAMO_PIPELINE_RETRY_MAX_ELAPSED", "30s"),
                ("MQTT_DYNAMO_DYNAMODB_EMBEDDED", "false"),
                // A token that looks like a number stays the string it is.
                ("MQTT_DYNAMO_HTTP_TOKEN", "12345"),
                ("MQTT_DYNAMO_LOG_FORMAT", "json"),
                ("MQTT_DYNAMO_CONFIG", "ignored.toml"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.exhook.listen.to_string(), "0.0.0.0:9001");
        assert_eq!(c.pipeline.shards, 4);
        assert_eq!(c.pipeline.max_batch_age, Duration::from_millis(20));
        assert!(c.pipeline.spool.enabled);
        assert_eq!(c.pipeline.spool.dir, Path::new("/var/lib/spool"));
        assert_eq!(c.pipeline.retry.max_elapsed, Duration::from_secs(30));
        assert_eq!(c.dynamodb.embedded, Some(false));
        assert_eq!(c.http.token.as_ref().map(|t| t.expose()), Some("12345"));
        assert_eq!(c.log.format, super::super::LogFormat::Json);
    }

    #[test]
    fn rules_come_from_the_environment_as_a_toml_array() {
        let c = assemble(
            "",
            "t",
            &vars(&[(
                "MQTT_DYNAMO_RULES",
                r#"[{ hook = "message.publish", action = "on_message_retain", topic = "a/#" }]"#,
            )]),
        )
        .unwrap();
        assert_eq!(c.rule_set().unwrap().rules().len(), 1);
    }

    #[test]
    fn precedence_is_file_then_aws_then_mqtt_dynamo_variables() {
        let file = "[dynamodb]\nregion = \"eu-west-1\"\n";
        let c = assemble(file, "t", &[]).unwrap();
        assert_eq!(c.dynamodb.region.as_deref(), Some("eu-west-1"));
        let c = assemble(file, "t", &vars(&[("AWS_REGION", "ap-south-1")])).unwrap();
        assert_eq!(c.dynamodb.region.as_deref(), Some("ap-south-1"));
        let c = assemble(
            file,
            "t",
            &vars(&[
                ("AWS_REGION", "ap-south-1"),
                ("MQTT_DYNAMO_DYNAMODB_REGION", "sa-east-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9999"),
            ]),
        )
        .unwrap();
        assert_eq!(c.dynamodb.region.as_deref(), Some("sa-east-1"));
        assert_eq!(
            c.dynamodb.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9999")
        );
    }

    #[test]
    fn bad_variables_are_named() {
        // No section: not a key (warned about by serve and config check).
        let sections = section_paths();
        assert!(target_of(&sections, "MQTT_DYNAMO_NOPE_X").is_none());
        assert!(target_of(&sections, "MQTT_DYNAMO_CONFIG").is_none());
        assert_eq!(
            target_of(&sections, "MQTT_DYNAMO_PIPELINE_SPOOL_MAX_MB"),
            Some((
                &["pipeline".to_string(), "spool".to_string()][..],
                "max_mb".into()
            ))
        );
        assert!(assemble("", "t", &vars(&[("MQTT_DYNAMO_NOPE_X", "1")])).is_ok());
        let err = assemble("", "t", &vars(&[("MQTT_DYNAMO_HTTP_TOKN", "x")])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("environment variable MQTT_DYNAMO_HTTP_TOKN: unknown field `tokn`"),
            "{msg}"
        );
        let err = assemble("", "t", &vars(&[("MQTT_DYNAMO_PIPELINE_SHARDS", "many")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable MQTT_DYNAMO_PIPELINE_SHARDS: invalid type"),
            "{err}"
        );
        // Values pass the same validation as the file's.
        let err = assemble(
            "",
            "t",
            &vars(&[("MQTT_DYNAMO_PIPELINE_MAX_BATCH_REQUESTS", "100")]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pipeline.max_batch_requests: must be 1 to 25 (DynamoDB's BatchWriteItem limit)"
        );
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "wJalr").unwrap();
        let file = format!(
            "[http]\ntoken_file = {:?}\n[dynamodb]\naccess_key_id = \"AKID\"\n",
            token.display().to_string()
        );
        let c = assemble(
            &file,
            "t",
            &vars(&[(
                "MQTT_DYNAMO_DYNAMODB_SECRET_ACCESS_KEY_FILE",
                key.to_str().unwrap(),
            )]),
        )
        .unwrap();
        assert_eq!(c.http.token.as_ref().map(|t| t.expose()), Some("s3cret"));
        assert_eq!(
            c.dynamodb.secret_access_key.as_ref().map(|t| t.expose()),
            Some("wJalr")
        );

        let err = assemble(
            &format!(
                "[http]\ntoken = \"a\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
            "t",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "http.token: token and token_file are both set; set one of them"
        );
        let err = assemble("[http]\ntoken_file = \"/nonexistent/token\"\n", "t", &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("http.token: cannot read token_file /nonexistent/token:"),
            "{err}"
        );
        let err = assemble("[http]\ntokn_file = \"/x\"\n", "t.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("tokn_file"), "{err}");
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let parsed = assemble(DEFAULT_TOML, "default.toml", &[]).unwrap();
        assert_eq!(
            to_toml(&parsed).unwrap(),
            to_toml(&Config::default()).unwrap()
        );
    }

    /// The keys a section takes, from the deserializer's own "expected one of" list.
    fn keys_of(path: &[String]) -> Vec<String> {
        let mut table = Table::new();
        section_mut(
            &mut table,
            &path.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .insert("no_such_key".into(), Value::Integer(0));
        let message = Config::deserialize_table(&table)
            .unwrap_err()
            .message()
            .to_string();
        let list = message.split("expected one of").nth(1).unwrap_or_default();
        list.split(',')
            .map(|k| k.trim().trim_matches('`').to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    #[test]
    fn the_documented_defaults_name_every_key() {
        let mut sections = section_paths();
        sections.push(Vec::new());
        let mut missing = Vec::new();
        for path in &sections {
            let header = format!("[{}]", path.join("."));
            let body = if path.is_empty() {
                DEFAULT_TOML.to_string()
            } else {
                let start = DEFAULT_TOML
                    .find(&format!("\n{header}\n"))
                    .unwrap_or_else(|| {
                        panic!("default.toml has no {header}");
                    });
                let rest = &DEFAULT_TOML[start + header.len() + 2..];
                rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
            };
            for key in keys_of(path) {
                let sub = path.iter().chain([&key]).cloned().collect::<Vec<_>>();
                if sections.contains(&sub) {
                    continue;
                }
                let named = body.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{key} =")) || (path.is_empty() && l == "[[rules]]")
                });
                if !named {
                    missing.push(format!("{header} {key}"));
                }
            }
        }
        assert!(missing.is_empty(), "default.toml lacks {missing:?}");
        assert!(keys_of(&["http".into()]).contains(&"tls_client_ca".to_string()));
    }

    #[test]
    fn the_readme_shows_the_documented_defaults() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("<!-- default.toml: begin -->\n```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```\n<!-- default.toml: end -->").next());
        assert_eq!(
            block,
            Some(DEFAULT_TOML),
            "README.md's configuration block differs from src/config/default.toml: copy it over"
        );
    }
}
