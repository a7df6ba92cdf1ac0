//! The importer's tests: the seed file, pools, hook lines, warnings and secrets.

use super::emit::{aws_endpoint_region, line_of};
use super::*;
use crate::config::Config;
use crate::rules::RuleSet;

/// The configuration block of the EMQX 4 DynamoDB backend's documentation, verbatim.
const SEED: &str = include_str!("seed.conf");

const SECRET: &str = "EXAMPLE_SECRET_ACCESS_KEY";

/// A pool header for the smaller test files.
const POOL1: &str = "backend.dynamo.pool1.server = http://localhost:8000\n";

fn import(text: &str) -> Imported {
    import_emqx4(text).unwrap()
}

/// Imports [`POOL1`] followed by `lines`, each ending in a newline.
fn import_with_pool1(lines: &[&str]) -> Imported {
    let mut text = POOL1.to_string();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    import(&text)
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

/// The import warned about exactly one thing.
fn assert_one_warning(imported: &Imported) {
    assert_eq!(imported.warnings.len(), 1, "{:#?}", imported.warnings);
}

/// One rule as [`rules`] lists it.
fn rule(
    hook: &str,
    action: &'static str,
    topic: Option<&str>,
) -> (String, &'static str, Option<String>) {
    (hook.to_string(), action, topic.map(str::to_string))
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
    assert_eq!(d.embedded, Some(false));

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

    assert_one_warning(&imported);
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
    assert_one_warning(&imported);
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
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool9"}"##,
        r##"backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool9"}"##,
    ]);
    let config = parse(&imported);
    assert_eq!(rules(&config).len(), 2);
    let w = warning(&imported, "not defined");
    assert!(w.contains("\"pool9\" (named on lines 2, 3)"), "{w}");
    assert!(w.contains("the endpoint of pool pool1"), "{w}");
    assert_one_warning(&imported);
}

#[test]
fn unknown_function_is_skipped() {
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.session.subscribed.1 = {"topic": "#", "action": {"function": "on_message_fetch_for_pubsub"}, "pool": "pool1"}"##,
    ]);
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
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.message.acked.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}"##,
        // session.created is accepted only for on_subscribe_lookup.
        r##"backend.dynamo.hook.session.created.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}"##,
    ]);
    let config = parse(&imported);
    assert!(rules(&config).is_empty());
    let w = warning(&imported, "message.acked.1");
    assert!(
        w.contains("action on_message_publish belongs to hook message.publish, not message.acked"),
        "{w}"
    );
    let w = warning(&imported, "session.created.1");
    assert!(w.contains("session.created"), "{w}");
    assert!(w.ends_with("skipped"), "{w}");
}

#[test]
fn invalid_topic_filter_is_skipped() {
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.message.publish.1 = {"topic": "a/#/b", "action": {"function": "on_message_publish"}, "pool": "pool1"}"##,
        r##"backend.dynamo.hook.message.publish.2 = {"topic": "a/+/b", "action": {"function": "on_message_retain"}, "pool": "pool1"}"##,
    ]);
    let config = parse(&imported);
    assert_eq!(
        rules(&config),
        vec![rule("message.publish", "on_message_retain", Some("a/+/b"))]
    );
    let w = warning(&imported, "a/#/b");
    assert!(w.contains("'#' must be the last level"), "{w}");
    assert!(w.ends_with("skipped"), "{w}");
}

#[test]
fn extra_json_keys_are_ignored_with_a_warning() {
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.session.subscribed.1 = {"topic": "q/#", "action": {"function": "on_message_fetch_for_queue"}, "offline_opts": {"max_returned_count": 500, "time_range": "2h"}, "expired_time": 3600, "pool": "pool1"}"##,
    ]);
    let config = parse(&imported);
    assert_eq!(
        rules(&config),
        vec![rule(
            "session.subscribed",
            "on_message_fetch_for_queue",
            Some("q/#")
        )]
    );
    let w = warning(&imported, "offline_opts");
    assert!(w.contains("\"expired_time\""), "{w}");
    assert!(w.contains("ignored"), "{w}");
    assert_one_warning(&imported);
}

#[test]
fn raw_statement_action_is_skipped() {
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.session.unsubscribed.1 = {"topic": "#", "action": {"sql": ["delete from mqtt_acked where clientid = ${clientid}"]}, "pool": "pool1"}"##,
        r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}"##,
    ]);
    let config = parse(&imported);
    assert_eq!(rules(&config).len(), 1);
    let w = warning(&imported, "\"action.sql\"");
    assert!(w.starts_with("line 2:"), "{w}");
    assert!(w.contains("raw statements"), "{w}");
    assert!(w.ends_with("skipped"), "{w}");
}

#[test]
fn unsupported_hook_point_is_skipped() {
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.client.authenticate.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}"##,
    ]);
    let w = warning(&imported, "client.authenticate");
    assert!(w.contains("never supported"), "{w}");
    assert!(w.ends_with("skipped"), "{w}");
    // The only hook line did not map: no rules, not the seed's defaults.
    let config = parse(&imported);
    assert!(rules(&config).is_empty());
}

#[test]
fn malformed_json_is_skipped() {
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1""##,
        r##"backend.dynamo.hook.client.connected.2 = on_client_connected"##,
        r##"backend.dynamo.hook.client.disconnected.1 = ["on_client_disconnected"]"##,
    ]);
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
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.client.connected.1 = {"action": {"function": "on_client_connected"}, "pool": "pool1"}  # keep"##,
        r##"backend.dynamo.hook.client.disconnected.1 = {"action": {"function": "on_client_disconnected"}, "pool": "pool1"} junk"##,
    ]);
    assert_eq!(rules(&parse(&imported)).len(), 1);
    assert!(warning(&imported, "disconnected.1").contains("text after the JSON object"));
}

#[test]
fn unreadable_lines_are_errors_with_their_line_number() {
    let err =
        import_emqx4("backend.dynamo.region = us-west-2\n\nbackend.dynamo.region\n").unwrap_err();
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
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_nothing"}, "pool": "pool1"}"##,
    ]);
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
    assert_one_warning(&imported);
}

#[test]
fn empty_file_imports_with_warnings() {
    let imported = import("");
    let config = parse(&imported);
    assert_eq!(config.dynamodb.embedded, Some(false));
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
    let imported = import_with_pool1(&[
        r##"backend.dynamo.hook.message.publish.1 = {"action": {"function": "on_client_connected"}, "expired_time": 10}"##,
    ]);
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
