//! dynamo-sim driven through the real aws-sdk-dynamodb (and raw HTTP where the SDK cannot send
//! what is needed). Every test starts its own simulator on an ephemeral loopback port; SDK
//! retries are disabled so each call is exactly one request; nothing sleeps to synchronise
//! (a write that lands late is awaited by a bounded polling loop).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::batch_execute_statement::{
    BatchExecuteStatementError, BatchExecuteStatementOutput,
};
use aws_sdk_dynamodb::operation::batch_get_item::{BatchGetItemError, BatchGetItemOutput};
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemError, BatchWriteItemOutput};
use aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder;
use aws_sdk_dynamodb::operation::get_item::{GetItemError, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BatchStatementRequest, BillingMode, DeleteRequest,
    KeySchemaElement, KeyType, KeysAndAttributes, PutRequest, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, Select, ThrottlingReason,
    WriteRequest,
};
use dynamo_sim::{
    FaultConfig, Limits, OutageWindow, SimConfig, SimHandle, Simulator, StallAction, TableDef,
};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Item = HashMap<String, AttributeValue>;

const ARN_PREFIX: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/";

async fn start(config: SimConfig) -> SimHandle {
    Simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// An SDK client as the root crate builds one (ring rustls, plain http to the loopback
/// endpoint), with retries disabled and a bound on every call.
async fn client_with_key(sim: &SimHandle, access_key: &str) -> Client {
    sdk_client(
        sim,
        access_key,
        TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(60))
            .build(),
    )
    .await
}

/// The same client with `timeouts` instead of the 60 s bound.
async fn sdk_client(sim: &SimHandle, access_key: &str, timeouts: TimeoutConfig) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .http_client(http)
        .endpoint_url(sim.endpoint())
        .credentials_provider(Credentials::new(access_key, "secret", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts)
        .load()
        .await;
    Client::new(&config)
}

async fn client(sim: &SimHandle) -> Client {
    client_with_key(sim, "test-key").await
}

/// A simulator with `config`, a client, and one table (string keys) created through it.
async fn start_with_table(
    config: SimConfig,
    table: &str,
    hash: &str,
    range: Option<&str>,
) -> (SimHandle, Client) {
    let sim = start(config).await;
    let c = client(&sim).await;
    create_table(&c, table, hash, range).await;
    (sim, c)
}

/// The ideal simulator with write-unit limits (`burst_seconds` of refill per bucket).
fn limited(table_wcu: Option<u32>, key_wcu: Option<u32>, burst_seconds: f64) -> SimConfig {
    SimConfig {
        limits: Limits {
            table_wcu,
            key_wcu,
            burst_seconds,
        },
        ..SimConfig::default()
    }
}

/// `{pk, sk}` with `sk` the decimal `i`.
fn keyed(pk: String, i: usize) -> Item {
    item(&[("pk", s(pk)), ("sk", s(format!("{i}")))])
}

/// The ideal simulator with a fixed PRNG seed.
fn seeded(seed: u64) -> SimConfig {
    SimConfig {
        seed: Some(seed),
        ..SimConfig::default()
    }
}

async fn create_table(c: &Client, name: &str, hash: &str, range: Option<&str>) {
    create_table_request(c, name, hash, range)
        .send()
        .await
        .expect("table created");
}

/// CreateTable of an on-demand table with string keys.
fn create_table_request(
    c: &Client,
    name: &str,
    hash: &str,
    range: Option<&str>,
) -> CreateTableFluentBuilder {
    let mut req = c
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for (attr, kind) in
        std::iter::once((hash, KeyType::Hash)).chain(range.map(|r| (r, KeyType::Range)))
    {
        req = req
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr)
                    .key_type(kind)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            );
    }
    req
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn ss(v: &[&str]) -> AttributeValue {
    AttributeValue::Ss(v.iter().map(|x| x.to_string()).collect())
}

fn item(pairs: &[(&str, AttributeValue)]) -> Item {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn put(i: Item) -> WriteRequest {
    WriteRequest::builder()
        .put_request(PutRequest::builder().set_item(Some(i)).build().unwrap())
        .build()
}

fn delete(k: Item) -> WriteRequest {
    WriteRequest::builder()
        .delete_request(DeleteRequest::builder().set_key(Some(k)).build().unwrap())
        .build()
}

/// The error code and message of a failed call.
fn err<T: Debug, E: ProvideErrorMetadata + Debug, R: Debug>(
    result: Result<T, SdkError<E, R>>,
) -> (String, String) {
    let e = result.expect_err("the call should fail");
    (
        e.code().unwrap_or("<no code>").to_owned(),
        e.message().unwrap_or("<no message>").to_owned(),
    )
}

/// An expected error: code and message.
fn error(code: &str, message: &str) -> (String, String) {
    (code.into(), message.into())
}

fn validation(message: &str) -> (String, String) {
    error("ValidationException", message)
}

/// The HTTP status and error code of a call answered with a service error.
fn service_failure<T: Debug, E: ProvideErrorMetadata + Debug>(
    result: Result<T, SdkError<E, HttpResponse>>,
) -> (u16, String) {
    match result {
        Err(SdkError::ServiceError(e)) => (
            e.raw().status().as_u16(),
            e.err().code().unwrap_or("<no code>").to_owned(),
        ),
        other => panic!("expected a service error, got {other:?}"),
    }
}

/// The modelled error of a call answered with a service error.
fn service_error<T: Debug, E: Debug>(result: Result<T, SdkError<E, HttpResponse>>) -> E {
    match result {
        Err(SdkError::ServiceError(e)) => e.into_err(),
        other => panic!("expected a service error, got {other:?}"),
    }
}

/// One throttling reason, `reason`, for the table `table`.
fn assert_one_reason(reasons: &[ThrottlingReason], reason: &str, table: &str) {
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0].reason(), Some(reason));
    assert_eq!(
        reasons[0].resource(),
        Some(format!("{ARN_PREFIX}{table}").as_str())
    );
}

async fn put_item(
    c: &Client,
    table: &str,
    item: Item,
) -> Result<PutItemOutput, SdkError<PutItemError, HttpResponse>> {
    c.put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
}

async fn get_item(
    c: &Client,
    table: &str,
    key: &[(&str, AttributeValue)],
) -> Result<GetItemOutput, SdkError<GetItemError, HttpResponse>> {
    c.get_item()
        .table_name(table)
        .set_key(Some(item(key)))
        .send()
        .await
}

async fn batch_write(
    c: &Client,
    table: &str,
    requests: Vec<WriteRequest>,
) -> Result<BatchWriteItemOutput, SdkError<BatchWriteItemError, HttpResponse>> {
    c.batch_write_item()
        .request_items(table, requests)
        .send()
        .await
}

async fn batch_get(
    c: &Client,
    table: &str,
    keys: KeysAndAttributes,
) -> Result<BatchGetItemOutput, SdkError<BatchGetItemError, HttpResponse>> {
    c.batch_get_item().request_items(table, keys).send().await
}

/// Writes `items` in batches of 25, asserting nothing comes back unprocessed.
async fn write_all(c: &Client, table: &str, items: Vec<Item>) {
    for chunk in items.chunks(25) {
        let out = batch_write(c, table, chunk.iter().cloned().map(put).collect())
            .await
            .expect("batch written");
        assert!(out.unprocessed_items().is_none_or(|u| u.is_empty()));
    }
}

/// One raw HTTP/1.1 exchange (`Connection: close`); returns status and body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    target: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = target {
        head.push_str(&format!(
            "X-Amz-Target: {t}\r\nContent-Type: application/x-amz-json-1.0\r\n"
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn raw_stats(sim: &SimHandle) -> Json {
    let (status, body) = raw(sim.addr(), "GET", "/_sim/stats", None, b"").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// The documented example: {"shirt-color":"R","shirt-size":"M"} is 23 bytes.
#[test]
fn item_size_matches_the_documented_example() {
    let example = json!({"shirt-color": {"S": "R"}, "shirt-size": {"S": "M"}});
    assert_eq!(dynamo_sim::item_size(&example), Some(23));
    assert_eq!(
        dynamo_sim::item_size(&json!({"n": {"N": "12345"}})),
        Some(1 + 4)
    );
    assert_eq!(dynamo_sim::item_size(&json!({"bad": {"SS": []}})), None);
    assert_eq!(dynamo_sim::write_units(500), 1);
    assert_eq!(dynamo_sim::write_units(3584), 4);
}

/// Tables: create (and duplicate), describe, list with pagination, delete; pre-created project tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_lifecycle() {
    let config = SimConfig {
        tables: TableDef::project_tables("p_"),
        ..SimConfig::default()
    };
    let (sim, c) = start_with_table(config, "events", "pk", Some("sk")).await;
    let dup = create_table_request(&c, "events", "pk", None).send().await;
    assert_eq!(
        err(dup),
        error("ResourceInUseException", "Table already exists: events")
    );

    let d = c
        .describe_table()
        .table_name("p_mqtt_acked")
        .send()
        .await
        .unwrap();
    let t = d.table().unwrap();
    assert_eq!(t.table_status().unwrap().as_str(), "ACTIVE");
    let keys: Vec<(&str, &str)> = t
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().as_str()))
        .collect();
    assert_eq!(keys, [("topic", "HASH"), ("clientid", "RANGE")]);
    assert_eq!(
        t.table_arn(),
        Some(format!("{ARN_PREFIX}p_mqtt_acked").as_str())
    );

    let mut names = Vec::new();
    let mut start = None;
    loop {
        let page = c
            .list_tables()
            .limit(3)
            .set_exclusive_start_table_name(start)
            .send()
            .await
            .unwrap();
        names.extend(page.table_names().iter().cloned());
        start = page.last_evaluated_table_name().map(str::to_owned);
        if start.is_none() {
            break;
        }
    }
    // The seven project tables and "events".
    assert_eq!(names.len(), 8);
    assert!(names.windows(2).all(|w| w[0] < w[1]));

    c.delete_table().table_name("events").send().await.unwrap();
    let (code, _) = err(c.describe_table().table_name("events").send().await);
    assert_eq!(code, "ResourceNotFoundException");
    sim.shutdown().await;
}

/// 25 writes across two tables (13 + 12) are accepted; 26 (13 + 13) reject the whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_write_25_accepted_26_rejected() {
    let (sim, c) = start_with_table(SimConfig::default(), "t_one", "pk", None).await;
    create_table(&c, "t_two", "pk", None).await;
    let reqs = |n: usize, tag: &str| -> Vec<WriteRequest> {
        (0..n)
            .map(|i| put(item(&[("pk", s(format!("{tag}{i}")))])))
            .collect()
    };
    c.batch_write_item()
        .request_items("t_one", reqs(13, "a"))
        .request_items("t_two", reqs(12, "a"))
        .send()
        .await
        .expect("25 requests are fine");
    let rejected = c
        .batch_write_item()
        .request_items("t_one", reqs(13, "b"))
        .request_items("t_two", reqs(13, "b"))
        .send()
        .await;
    assert_eq!(
        err(rejected),
        validation("Too many items requested for the BatchWriteItem call")
    );
    let stats = sim.stats();
    assert_eq!(stats.item_counts["t_one"], 13);
    assert_eq!(stats.item_counts["t_two"], 12);
    assert_eq!(stats.items_written, 25);
    assert_eq!(stats.validation_errors, 1);
    assert_eq!(stats.requests_by_operation["BatchWriteItem"], 2);
}

/// Every BatchWriteItem/PutItem validation rule: exact code and message, and nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_write_validation_rules() {
    let (sim, c) = start_with_table(SimConfig::default(), "val", "pk", Some("sk")).await;
    let ok = || item(&[("pk", s("ok")), ("sk", s("1"))]);
    let key = |pk: &str, sk: &str| item(&[("pk", s(pk)), ("sk", s(sk))]);
    let with = |extra: &[(&str, AttributeValue)]| {
        let mut i = key("x", "1");
        i.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        i
    };
    let big = "x".repeat(409_600);
    let cases: Vec<(&str, Vec<WriteRequest>, (String, String))> = vec![
        (
            "duplicate puts",
            vec![put(ok()), put(key("d", "1")), put(key("d", "1"))],
            validation("Provided list of item keys contains duplicates"),
        ),
        (
            "put and delete of one key",
            vec![put(ok()), put(key("d", "1")), delete(key("d", "1"))],
            validation("Provided list of item keys contains duplicates"),
        ),
        (
            "missing key attribute",
            vec![put(ok()), put(item(&[("pk", s("a"))]))],
            validation("One or more parameter values were invalid: Missing the key sk in the item"),
        ),
        (
            "key of the wrong type",
            vec![
                put(ok()),
                put(item(&[
                    ("pk", AttributeValue::N("1".into())),
                    ("sk", s("1")),
                ])),
            ],
            validation(
                "One or more parameter values were invalid: Type mismatch for key pk expected: S actual: N",
            ),
        ),
        (
            "delete key with an extra attribute",
            vec![put(ok()), delete(with(&[("other", s("v"))]))],
            validation("The provided key element does not match the schema"),
        ),
        (
            "empty string key",
            vec![put(ok()), put(key("", "1"))],
            validation(
                "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty string value. Key: pk",
            ),
        ),
        (
            "partition key over 2048 bytes",
            vec![put(ok()), put(key(&"p".repeat(2049), "1"))],
            validation(
                "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of 2048 bytes",
            ),
        ),
        (
            "sort key over 1024 bytes",
            vec![put(ok()), put(key("a", &"s".repeat(1025)))],
            validation(
                "One or more parameter values were invalid: Aggregated size of all range keys has exceeded the size limit of 1024 bytes",
            ),
        ),
        (
            "item over 400 KB",
            vec![put(ok()), put(with(&[("data", s(big.clone()))]))],
            validation("Item size has exceeded the maximum allowed size"),
        ),
        (
            "empty string set",
            vec![
                put(ok()),
                put(with(&[("tags", AttributeValue::Ss(vec![]))])),
            ],
            validation(
                "One or more parameter values were invalid: An string set  may not be empty",
            ),
        ),
        (
            "empty number set",
            vec![
                put(ok()),
                put(with(&[("nums", AttributeValue::Ns(vec![]))])),
            ],
            validation(
                "One or more parameter values were invalid: An number set  may not be empty",
            ),
        ),
        (
            "empty binary set",
            vec![
                put(ok()),
                put(with(&[("bins", AttributeValue::Bs(vec![]))])),
            ],
            validation(
                "One or more parameter values were invalid: An binary set  may not be empty",
            ),
        ),
        (
            "string set with duplicates",
            vec![put(ok()), put(with(&[("tags", ss(&["a", "b", "a"]))]))],
            validation(
                "One or more parameter values were invalid: Input collection [a, b, a] contains duplicates.",
            ),
        ),
    ];
    for (what, requests, expected) in cases {
        let result = batch_write(&c, "val", requests).await;
        assert_eq!(err(result), expected, "{what}");
    }
    // Exactly at the limit is fine: 409,600 bytes including the names and keys.
    let at_limit = with(&[("data", s("x".repeat(409_600 - 2 - 1 - 2 - 1 - 4)))]);
    put_item(&c, "val", at_limit).await.expect("400 KB exactly");

    let unknown = batch_write(&c, "nope", vec![put(ok())]).await;
    assert_eq!(
        err(unknown),
        error("ResourceNotFoundException", "Requested resource not found")
    );
    let empty_list = batch_write(&c, "val", vec![]).await;
    assert_eq!(err(empty_list).0, "ValidationException");
    let no_tables = c
        .batch_write_item()
        .set_request_items(Some(HashMap::new()))
        .send()
        .await;
    assert_eq!(err(no_tables).0, "ValidationException");

    // The same item rules apply to PutItem.
    let put_cases = [
        (
            "set with duplicates",
            with(&[("tags", ss(&["z", "z"]))]),
            "One or more parameter values were invalid: Input collection [z, z] contains duplicates.",
        ),
        (
            "missing partition key",
            item(&[("sk", s("1"))]),
            "One or more parameter values were invalid: Missing the key pk in the item",
        ),
        (
            "item over 400 KB",
            with(&[("data", s(big))]),
            "Item size has exceeded the maximum allowed size",
        ),
    ];
    for (what, put, expected) in put_cases {
        assert_eq!(
            err(put_item(&c, "val", put).await),
            validation(expected),
            "PutItem: {what}"
        );
    }
    let g = get_item(&c, "val", &[("pk", s("x"))]).await;
    assert_eq!(
        err(g),
        validation("The provided key element does not match the schema")
    );

    let stats = sim.stats();
    assert_eq!(
        stats.item_counts["val"], 1,
        "only the 400 KB item was written"
    );
    assert_eq!(stats.items_written, 1);
    assert_eq!(stats.validation_errors, 13 + 2 + 4);
}

/// UpdateItem: ADD creates and unions a string set, DELETE removes members and the emptied
/// attribute, SET/REMOVE and ReturnValues, key and size rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_item_string_sets() {
    let (_sim, c) = start_with_table(SimConfig::default(), "msg", "topic", None).await;
    let key = item(&[("topic", s("t/1"))]);
    let update = |expr: &str, values: Vec<(&str, AttributeValue)>| {
        let mut req = c
            .update_item()
            .table_name("msg")
            .set_key(Some(key.clone()))
            .update_expression(expr)
            .expression_attribute_names("#s", "ids")
            .return_values(ReturnValue::AllNew);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        req.send()
    };
    // Upsert: the item does not exist yet.
    let out = update("ADD #s :v", vec![(":v", ss(&["a", "b"]))])
        .await
        .unwrap();
    assert_eq!(out.attributes().unwrap()["ids"], ss(&["a", "b"]));
    let out = update("ADD #s :v", vec![(":v", ss(&["b", "c"]))])
        .await
        .unwrap();
    assert_eq!(out.attributes().unwrap()["ids"], ss(&["a", "b", "c"]));
    let out = update(
        "DELETE #s :v SET n = :n",
        vec![
            (":v", ss(&["a", "c", "zz"])),
            (":n", AttributeValue::N("7".into())),
        ],
    )
    .await
    .unwrap();
    let attrs = out.attributes().unwrap();
    assert_eq!(attrs["ids"], ss(&["b"]));
    assert_eq!(attrs["n"], AttributeValue::N("7".into()));
    // Emptying the set removes the attribute: DynamoDB never stores an empty set.
    let out = update("DELETE #s :v", vec![(":v", ss(&["b"]))])
        .await
        .unwrap();
    assert!(!out.attributes().unwrap().contains_key("ids"));
    let got = get_item(&c, "msg", &[("topic", s("t/1"))]).await.unwrap();
    assert_eq!(
        got.item().unwrap(),
        &item(&[("topic", s("t/1")), ("n", AttributeValue::N("7".into()))])
    );

    // UPDATED_NEW returns only the touched attributes; numbers add exactly.
    let out = c
        .update_item()
        .table_name("msg")
        .set_key(Some(key.clone()))
        .update_expression("ADD n :one REMOVE gone")
        .expression_attribute_values(":one", AttributeValue::N("1.5".into()))
        .return_values(ReturnValue::UpdatedNew)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.attributes().unwrap(),
        &item(&[("n", AttributeValue::N("8.5".into()))])
    );

    let (code, message) = err(update("ADD #s :v", vec![(":v", AttributeValue::Ss(vec![]))]).await);
    assert_eq!(code, "ValidationException");
    assert_eq!(
        message,
        "ExpressionAttributeValues contains invalid value: One or more parameter values were invalid: An string set  may not be empty for key :v"
    );
    let key_update = c
        .update_item()
        .table_name("msg")
        .set_key(Some(key.clone()))
        .update_expression("SET topic = :t")
        .expression_attribute_values(":t", s("other"))
        .send()
        .await;
    assert_eq!(
        err(key_update),
        validation(
            "One or more parameter values were invalid: Cannot update attribute topic. This attribute is part of the key"
        )
    );
    let wrong_type = update("ADD #s :v", vec![(":v", s("x"))]).await;
    assert_eq!(
        err(wrong_type),
        validation(
            "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: ADD, operand type: STRING"
        )
    );
    // Growing past 400 KB fails with the update-specific message and changes nothing.
    let half = "h".repeat(210_000);
    update("SET a = :a REMOVE #s", vec![(":a", s(half.clone()))])
        .await
        .unwrap();
    let too_big = update("SET b = :b REMOVE #s", vec![(":b", s(half))]).await;
    assert_eq!(
        err(too_big),
        validation("Item size to update has exceeded the maximum allowed size")
    );
    let got = get_item(&c, "msg", &[("topic", s("t/1"))]).await.unwrap();
    assert!(!got.item().unwrap().contains_key("b"));
}

/// Conditions on PutItem, UpdateItem and DeleteItem; failures are ConditionalCheckFailedException.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes() {
    let (sim, c) = start_with_table(SimConfig::default(), "cond", "id", None).await;
    let key = item(&[("id", s("1"))]);
    let create = || {
        c.put_item()
            .table_name("cond")
            .set_item(Some(item(&[
                ("id", s("1")),
                ("g", AttributeValue::N("1".into())),
            ])))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "id")
            .send()
    };
    create().await.expect("first create");
    let again = create().await;
    match again {
        Err(SdkError::ServiceError(e)) => {
            assert!(matches!(
                e.err(),
                PutItemError::ConditionalCheckFailedException(_)
            ));
            assert_eq!(e.err().message(), Some("The conditional request failed"));
        }
        other => panic!("expected a condition failure, got {other:?}"),
    }
    let bump = |expected: &str| {
        c.update_item()
            .table_name("cond")
            .set_key(Some(key.clone()))
            .update_expression("SET #g = #g + :one")
            .condition_expression("#g = :g AND attribute_exists(#k)")
            .expression_attribute_names("#g", "g")
            .expression_attribute_names("#k", "id")
            .expression_attribute_values(":g", AttributeValue::N(expected.into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
    };
    bump("1").await.expect("generation matches");
    assert_eq!(
        err(bump("1").await),
        error(
            "ConditionalCheckFailedException",
            "The conditional request failed"
        )
    );
    let delete_if_g = |g: &str| {
        c.delete_item()
            .table_name("cond")
            .set_key(Some(key.clone()))
            .condition_expression("g = :g")
            .expression_attribute_values(":g", AttributeValue::N(g.into()))
    };
    let del = delete_if_g("5").send().await;
    assert_eq!(err(del).0, "ConditionalCheckFailedException");
    // An unused placeholder is a validation error, as in DynamoDB.
    let unused = delete_if_g("2")
        .expression_attribute_values(":x", AttributeValue::N("2".into()))
        .send()
        .await;
    assert_eq!(
        err(unused),
        validation("Value provided in ExpressionAttributeValues unused in expressions: keys: {:x}")
    );
    let old = delete_if_g("2")
        .return_values(ReturnValue::AllOld)
        .send()
        .await
        .unwrap();
    assert_eq!(
        old.attributes().unwrap()["g"],
        AttributeValue::N("2".into())
    );
    let stats = sim.stats();
    assert_eq!(stats.conditional_failures, 3);
    assert_eq!(stats.item_counts["cond"], 0);
}

/// Query over ~3 MB in one partition: 1 MB pages, every item exactly once and in order;
/// reverse order, Limit, begins_with, projection and COUNT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_paginates_past_1mb_pages() {
    let (_sim, c) = start_with_table(SimConfig::default(), "qry", "pk", Some("sk")).await;
    let payload = "p".repeat(10_000);
    let items: Vec<Item> = (0..300)
        .map(|i| {
            item(&[
                ("pk", s("hot")),
                ("sk", s(format!("{i:04}"))),
                ("data", s(payload.clone())),
            ])
        })
        .collect();
    write_all(&c, "qry", items).await;
    write_all(
        &c,
        "qry",
        vec![item(&[("pk", s("other")), ("sk", s("0000"))])],
    )
    .await;

    let query = || c.query().table_name("qry");
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<Item> = None;
    loop {
        let page = query()
            .key_condition_expression("#p = :p")
            .expression_attribute_names("#p", "pk")
            .expression_attribute_values(":p", s("hot"))
            .set_exclusive_start_key(cursor.take())
            .send()
            .await
            .unwrap();
        pages += 1;
        let items = page.items();
        // A page stops once it reaches 1 MB: at most 105 items of ~10 KB.
        assert!(items.len() <= 105, "page of {} items", items.len());
        seen.extend(items.iter().map(|i| i["sk"].as_s().unwrap().clone()));
        match page.last_evaluated_key() {
            Some(k) => cursor = Some(k.clone()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert!(pages >= 3, "{pages} pages");
    let expected: Vec<String> = (0..300).map(|i| format!("{i:04}")).collect();
    assert_eq!(seen, expected, "every item exactly once, in sort-key order");

    let reverse = query()
        .key_condition_expression("pk = :p AND begins_with(sk, :pre)")
        .expression_attribute_values(":p", s("hot"))
        .expression_attribute_values(":pre", s("01"))
        .scan_index_forward(false)
        .limit(3)
        .projection_expression("sk")
        .send()
        .await
        .unwrap();
    let sks: Vec<&str> = reverse
        .items()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().as_str())
        .collect();
    assert_eq!(sks, ["0199", "0198", "0197"]);
    assert!(
        reverse.items().iter().all(|i| i.len() == 1),
        "projection keeps only sk"
    );
    assert!(reverse.last_evaluated_key().is_some());

    let between = query()
        .key_condition_expression("pk = :p AND sk BETWEEN :a AND :b")
        .expression_attribute_values(":p", s("hot"))
        .expression_attribute_values(":a", s("0010"))
        .expression_attribute_values(":b", s("0019"))
        .select(Select::Count)
        .send()
        .await
        .unwrap();
    assert_eq!(between.count(), 10);
    assert!(between.items().is_empty());

    let missing_hash = query()
        .key_condition_expression("sk = :a")
        .expression_attribute_values(":a", s("0010"));
    assert_eq!(
        err(missing_hash.send().await),
        validation("Query condition missed key schema element: pk")
    );
}

/// A parallel scan with 4 segments covers every item exactly once, across small pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_segments_cover_every_item_once() {
    let (_sim, c) = start_with_table(SimConfig::default(), "seg", "pk", Some("sk")).await;
    let items: Vec<Item> = (0..1000)
        .map(|i| keyed(format!("client-{}", i % 250), i))
        .collect();
    write_all(&c, "seg", items).await;

    let mut all = Vec::new();
    for segment in 0..4 {
        let mut in_segment = 0;
        let mut start: Option<Item> = None;
        loop {
            let page = c
                .scan()
                .table_name("seg")
                .segment(segment)
                .total_segments(4)
                .limit(37)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .unwrap();
            in_segment += page.items().len();
            all.extend(page.items().iter().map(|i| i["sk"].as_s().unwrap().clone()));
            match page.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        assert!(in_segment > 100, "segment {segment} has {in_segment} items");
    }
    assert_eq!(all.len(), 1000, "no item twice");
    let distinct: BTreeSet<String> = all.into_iter().collect();
    assert_eq!(distinct.len(), 1000, "every item once");

    let bad = c
        .scan()
        .table_name("seg")
        .segment(4)
        .total_segments(4)
        .send()
        .await;
    assert_eq!(
        err(bad),
        validation(
            "The Segment parameter is zero-based and must be less than parameter TotalSegments: Segment: 4 is not less than TotalSegments: 4"
        )
    );
    let counted = c
        .scan()
        .table_name("seg")
        .filter_expression("begins_with(pk, :p)")
        .expression_attribute_values(":p", s("client-1"))
        .select(Select::Count)
        .send()
        .await
        .unwrap();
    // client-1, client-10..19, client-100..199: 111 partition keys of 4 items.
    assert_eq!((counted.count(), counted.scanned_count()), (444, 1000));
}

/// BatchGetItem: 100 keys fine, 101 rejected, duplicates rejected, UnprocessedKeys from the knob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_limits_and_unprocessed_keys() {
    let (sim, c) = start_with_table(SimConfig::default(), "get", "id", None).await;
    write_all(
        &c,
        "get",
        (0..101)
            .map(|i| item(&[("id", s(format!("{i}"))), ("v", s("x"))]))
            .collect(),
    )
    .await;
    let keys = |n: usize| -> KeysAndAttributes {
        KeysAndAttributes::builder()
            .set_keys(Some(
                (0..n).map(|i| item(&[("id", s(format!("{i}")))])).collect(),
            ))
            .projection_expression("id")
            .build()
            .unwrap()
    };
    let out = batch_get(&c, "get", keys(100)).await.unwrap();
    assert_eq!(out.responses().unwrap()["get"].len(), 100);
    assert!(out.responses().unwrap()["get"].iter().all(|i| i.len() == 1));
    let too_many = batch_get(&c, "get", keys(101)).await;
    assert_eq!(
        err(too_many),
        validation("Too many items requested for the BatchGetItem call")
    );
    let dup = KeysAndAttributes::builder()
        .keys(item(&[("id", s("1"))]))
        .keys(item(&[("id", s("1"))]))
        .build()
        .unwrap();
    let dup = batch_get(&c, "get", dup).await;
    assert_eq!(
        err(dup),
        validation("Provided list of item keys contains duplicates")
    );

    sim.set_faults(FaultConfig {
        unprocessed_keys_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    let out = batch_get(&c, "get", keys(10)).await.unwrap();
    assert!(out.responses().unwrap()["get"].is_empty());
    let left = &out.unprocessed_keys().unwrap()["get"];
    assert_eq!(left.keys().len(), 10);
    assert_eq!(
        left.projection_expression(),
        Some("id"),
        "UnprocessedKeys keep the request's shape"
    );

    // A retry loop converges with half the keys left over each time.
    sim.set_faults(FaultConfig {
        unprocessed_keys_rate: 0.5,
        ..FaultConfig::default()
    })
    .unwrap();
    let mut pending = Some(HashMap::from([("get".to_owned(), keys(100))]));
    let mut got = BTreeSet::new();
    let mut rounds = 0;
    while let Some(request) = pending.take().filter(|p| !p.is_empty()) {
        rounds += 1;
        assert!(rounds < 100);
        let out = c
            .batch_get_item()
            .set_request_items(Some(request))
            .send()
            .await
            .unwrap();
        for i in &out.responses().unwrap()["get"] {
            assert!(got.insert(i["id"].as_s().unwrap().clone()), "no key twice");
        }
        pending = out.unprocessed_keys().cloned();
    }
    assert_eq!(got.len(), 100);
    assert!(rounds > 1);
    assert!(sim.stats().unprocessed_keys > 10);
}

/// Write units: each item rounded up to 1 KB separately (500 B → 1, 3.5 KB → 4), puts and
/// updates charge the larger of old/new, deletes the deleted item (a missing one costs 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_unit_accounting() {
    let (sim, c) = start_with_table(SimConfig::default(), "wcu", "id", None).await;
    // "id" (2) + "a"/"b" (2 + 1) + the value: 500 and 3,584 bytes in total.
    let small = item(&[("id", s("a")), ("d", s("x".repeat(500 - 4)))]);
    let large = item(&[("id", s("b")), ("d", s("x".repeat(3584 - 4)))]);
    assert_eq!(
        dynamo_sim::item_size(&json!({"id": {"S": "a"}, "d": {"S": "x".repeat(496)}})),
        Some(500)
    );
    let out = c
        .batch_write_item()
        .request_items("wcu", vec![put(small.clone()), put(large)])
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    let cc = &out.consumed_capacity()[0];
    assert_eq!(cc.table_name(), Some("wcu"));
    assert_eq!(
        cc.capacity_units(),
        Some(5.0),
        "1 + 4, not ceil(4084 / 1024)"
    );
    assert_eq!(sim.stats().write_units, 5);

    // Overwriting the 3.5 KB item with a 500 B one costs the larger: 4.
    let shrink = item(&[("id", s("b")), ("d", s("x".repeat(496)))]);
    let out = c
        .put_item()
        .table_name("wcu")
        .set_item(Some(shrink))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    assert_eq!(out.consumed_capacity().unwrap().capacity_units(), Some(4.0));
    // An update growing the item to ~2.5 KB costs 3.
    let out = c
        .update_item()
        .table_name("wcu")
        .set_key(Some(item(&[("id", s("a"))])))
        .update_expression("SET e = :e")
        .expression_attribute_values(":e", s("y".repeat(2000)))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    assert_eq!(out.consumed_capacity().unwrap().capacity_units(), Some(3.0));
    // Deleting that item costs 3; deleting a missing one costs 1.
    for (id, units) in [("a", 3.0), ("missing", 1.0)] {
        let out = c
            .delete_item()
            .table_name("wcu")
            .set_key(Some(item(&[("id", s(id))])))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.consumed_capacity().unwrap().capacity_units(),
            Some(units),
            "{id}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.write_units, 5 + 4 + 3 + 3 + 1);
    assert_eq!(stats.items_written, 2 + 1 + 1 + 2);
    let raw = raw_stats(&sim).await;
    assert_eq!(raw["write_units"], 16);
    assert_eq!(raw["item_counts"]["wcu"], 1);
}

/// 10 KB items, so each write costs 10 units.
fn ten_kb(pk: &str, sk: usize) -> Item {
    item(&[
        ("pk", s(pk)),
        ("sk", s(format!("{sk}"))),
        ("d", s("d".repeat(10_000))),
    ])
}

/// key_wcu: what fits is written, the rest comes back as UnprocessedItems (same shape); when
/// nothing fits the SDK sees ThrottlingException with ThrottlingReasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_throttling() {
    // 1 unit/s per key with 30 s of burst: 3 writes of 10 units, then 10 s until the next.
    let (sim, c) = start_with_table(limited(None, Some(1), 30.0), "key", "pk", Some("sk")).await;
    let batch: Vec<WriteRequest> = (0..5).map(|i| put(ten_kb("hot", i))).collect();
    let out = batch_write(&c, "key", batch.clone()).await.unwrap();
    let left = &out.unprocessed_items().unwrap()["key"];
    assert_eq!(left.len(), 2);
    assert_eq!(left, &batch[3..], "UnprocessedItems echo the requests");

    match service_error(batch_write(&c, "key", left.clone()).await) {
        BatchWriteItemError::ThrottlingException(t) => assert_one_reason(
            t.throttling_reasons(),
            "TableWriteKeyRangeThroughputExceeded",
            "key",
        ),
        other => panic!("expected ThrottlingException, got {other:?}"),
    }
    match service_error(put_item(&c, "key", ten_kb("hot", 9)).await) {
        PutItemError::ThrottlingException(t) => assert!(!t.throttling_reasons().is_empty()),
        other => panic!("expected ThrottlingException, got {other:?}"),
    }
    // Other keys are not affected.
    put_item(&c, "key", ten_kb("cold", 0)).await.unwrap();
    let stats = sim.stats();
    assert_eq!(stats.throttled_items, 2);
    assert_eq!(stats.throttled_requests, 2);
    assert_eq!(stats.item_counts["key"], 4);
}

/// table_wcu: a table out of capacity answers ProvisionedThroughputExceededException.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_throttling() {
    let (sim, c) = start_with_table(limited(Some(1), None, 25.0), "tbl", "pk", Some("sk")).await;
    let batch: Vec<WriteRequest> = (0..3).map(|i| put(ten_kb(&format!("k{i}"), i))).collect();
    let out = batch_write(&c, "tbl", batch).await.unwrap();
    assert_eq!(
        out.unprocessed_items().unwrap()["tbl"].len(),
        1,
        "25 units: two 10-unit writes fit"
    );
    match service_error(put_item(&c, "tbl", ten_kb("other", 0)).await) {
        PutItemError::ProvisionedThroughputExceededException(p) => assert_one_reason(
            p.throttling_reasons(),
            "TableWriteProvisionedThroughputExceeded",
            "tbl",
        ),
        other => panic!("expected ProvisionedThroughputExceededException, got {other:?}"),
    }
    // Raising the limit at run time lets writes through again.
    // (A 1-unit write: the bucket still holds the ~5 units left over.)
    sim.set_limits(Limits {
        table_wcu: Some(1000),
        key_wcu: None,
        burst_seconds: 1.0,
    })
    .unwrap();
    let small = item(&[("pk", s("other")), ("sk", s("1"))]);
    put_item(&c, "tbl", small).await.unwrap();
}

/// throttle_rate 1.0: every write of a batch comes back unprocessed, nothing is written, no exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_throttle_rate() {
    let config = SimConfig {
        faults: FaultConfig {
            throttle_rate: 1.0,
            ..FaultConfig::default()
        },
        ..SimConfig::default()
    };
    let (sim, c) = start_with_table(config, "rnd", "pk", None).await;
    let batch: Vec<WriteRequest> = (0..10)
        .map(|i| put(item(&[("pk", s(format!("{i}")))])))
        .collect();
    let out = batch_write(&c, "rnd", batch).await.unwrap();
    assert_eq!(out.unprocessed_items().unwrap()["rnd"].len(), 10);
    assert_eq!(sim.stats().throttled_items, 10);
    assert_eq!(sim.stats().item_counts["rnd"], 0);
}

/// Faults at rate 1.0: 5xx is a service error, a reset is a dispatch/IO error, stalls answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_resets_and_stalls() {
    let (sim, c) = start_with_table(seeded(42), "flt", "pk", None).await;
    let write = || put_item(&c, "flt", item(&[("pk", s("1"))]));

    sim.set_faults(FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    for _ in 0..4 {
        let (status, code) = service_failure(write().await);
        assert!(status == 500 || status == 503, "status {status}");
        assert!(
            code == "InternalServerError" || code == "ServiceUnavailable",
            "{code}"
        );
    }
    assert_eq!(sim.stats().faults.errors, 4);
    assert_eq!(
        sim.stats().item_counts["flt"],
        0,
        "failed requests are not applied"
    );

    sim.set_faults(FaultConfig {
        reset_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    // The socket is aborted (RST): the SDK sees an I/O dispatch failure, "connection reset".
    match write().await {
        Err(SdkError::DispatchFailure(e)) => assert!(e.is_io(), "{e:?}"),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    assert_eq!(sim.stats().faults.resets, 1);
    assert_eq!(sim.stats().item_counts["flt"], 0);

    sim.set_faults(FaultConfig {
        stall_rate: 1.0,
        stall: Duration::from_millis(20),
        stall_action: StallAction::Answer,
        ..FaultConfig::default()
    })
    .unwrap();
    write().await.expect("a stall still answers");
    sim.set_faults(FaultConfig {
        stall_rate: 1.0,
        stall: Duration::from_millis(1),
        stall_action: StallAction::Drop,
        ..FaultConfig::default()
    })
    .unwrap();
    assert!(matches!(write().await, Err(SdkError::DispatchFailure(e)) if e.is_io()));
    sim.set_faults(FaultConfig::default()).unwrap();
    write().await.expect("healthy again");
    let stats = sim.stats();
    assert_eq!(stats.faults.stalls, 2);
    assert_eq!(stats.faults.resets, 2);
}

/// A strongly consistent GetItem of `{pk: <pk>}` from `table`.
async fn get_pk(c: &Client, table: &str, pk: &str) -> Option<Item> {
    c.get_item()
        .table_name(table)
        .key("pk", s(pk))
        .consistent_read(true)
        .send()
        .await
        .expect("read")
        .item()
        .cloned()
}

/// The status and error code of a call that must have been answered 500 InternalServerError.
fn assert_internal_error<T: Debug, E: ProvideErrorMetadata + Debug>(
    result: Result<T, SdkError<E, HttpResponse>>,
) {
    assert_eq!(
        service_failure(result),
        (500, "InternalServerError".to_owned())
    );
}

/// apply_then_error_rate: every kind of write is applied, then answered 500; reads are spared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_error_applies_writes_and_answers_500() {
    let (sim, c) = start_with_table(seeded(5), "ate", "pk", None).await;
    put_item(&c, "ate", item(&[("pk", s("gone"))]))
        .await
        .unwrap();
    sim.set_faults(FaultConfig {
        apply_then_error_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();

    assert_internal_error(put_item(&c, "ate", item(&[("pk", s("put")), ("v", s("1"))])).await);
    let pair = vec![put(item(&[("pk", s("b1"))])), put(item(&[("pk", s("b2"))]))];
    assert_internal_error(batch_write(&c, "ate", pair).await);
    for _ in 0..2 {
        assert_internal_error(
            c.update_item()
                .table_name("ate")
                .key("pk", s("ctr"))
                .update_expression("ADD n :five")
                .expression_attribute_values(":five", AttributeValue::N("5".into()))
                .send()
                .await,
        );
    }
    assert_internal_error(
        c.delete_item()
            .table_name("ate")
            .key("pk", s("gone"))
            .send()
            .await,
    );
    // The wire shape, as the error_rate fault sends it.
    let (status, body) = raw(
        sim.addr(),
        "POST",
        "/",
        Some("DynamoDB_20120810.PutItem"),
        br#"{"TableName":"ate","Item":{"pk":{"S":"raw"}}}"#,
    )
    .await;
    assert_eq!(status, 500);
    let body: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Internal server error")
    );
    // Reads are not affected, even with the fault on.
    assert!(get_pk(&c, "ate", "put").await.is_some());

    sim.set_faults(FaultConfig::default()).unwrap();
    assert_eq!(
        get_pk(&c, "ate", "put").await.unwrap(),
        item(&[("pk", s("put")), ("v", s("1"))])
    );
    for pk in ["b1", "b2", "raw"] {
        assert!(get_pk(&c, "ate", pk).await.is_some(), "{pk} was applied");
    }
    assert_eq!(
        get_pk(&c, "ate", "ctr").await.unwrap()["n"],
        AttributeValue::N("10".into()),
        "both ADDs were applied"
    );
    assert!(
        get_pk(&c, "ate", "gone").await.is_none(),
        "the delete was applied"
    );

    let stats = sim.stats();
    assert_eq!(stats.faults.applied_then_failed, 6);
    assert_eq!(stats.faults.errors, 0);
    assert_eq!(stats.items_written, 1 + 1 + 2 + 2 + 1 + 1);
    assert_eq!(stats.item_counts["ate"], 5);
    assert_eq!(raw_stats(&sim).await["faults"]["applied_then_failed"], 6);
}

/// apply_late_rate: the client (attempt timeout 100 ms < apply_late_delay 300 ms) times out,
/// and the write lands after the delay anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_late_lands_after_the_client_timed_out() {
    let delay = Duration::from_millis(300);
    let (sim, c) = start_with_table(seeded(6), "late", "pk", None).await;
    let impatient = sdk_client(
        &sim,
        "test-key",
        TimeoutConfig::builder()
            .operation_attempt_timeout(Duration::from_millis(100))
            .build(),
    )
    .await;
    sim.set_faults(FaultConfig {
        apply_late_rate: 1.0,
        apply_late_delay: delay,
        ..FaultConfig::default()
    })
    .unwrap();

    let sent = Instant::now();
    let result = put_item(
        &impatient,
        "late",
        item(&[("pk", s("k")), ("v", s("late"))]),
    )
    .await;
    assert!(
        matches!(result, Err(SdkError::TimeoutError(_))),
        "expected an attempt timeout, got {result:?}"
    );
    assert!(
        sent.elapsed() < delay,
        "the client gave up before the write"
    );
    // Reads are not affected, even with the fault on (the item may not be there yet).
    let _ = get_pk(&c, "late", "k").await;

    let deadline = sent + Duration::from_secs(3);
    let landed = loop {
        if let Some(found) = get_pk(&c, "late", "k").await {
            break found;
        }
        assert!(Instant::now() < deadline, "the late write never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(sent.elapsed() >= delay, "applied only after the delay");
    assert_eq!(landed, item(&[("pk", s("k")), ("v", s("late"))]));

    let stats = sim.stats();
    assert_eq!(stats.faults.applied_late, 1);
    assert_eq!(stats.items_written, 1);
    assert_eq!(stats.faults.resets, 0);
    assert_eq!(raw_stats(&sim).await["faults"]["applied_late"], 1);
}

/// Outages via the handle, via POST /_sim/outage and via a scheduled window; control
/// endpoints keep working during an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages() {
    let (sim, c) = start_with_table(SimConfig::default(), "out", "pk", None).await;
    let write = || put_item(&c, "out", item(&[("pk", s("1"))]));
    let unavailable = |r: Result<PutItemOutput, SdkError<PutItemError, HttpResponse>>| {
        assert_eq!(service_failure(r), (503, "ServiceUnavailable".to_owned()));
    };

    sim.set_outage(true);
    unavailable(write().await);
    assert_eq!(raw_stats(&sim).await["outage_active"], true);
    sim.set_outage(false);
    write().await.expect("outage over");

    let (status, body) = raw(sim.addr(), "POST", "/_sim/outage?on=true", None, b"").await;
    assert_eq!((status, body.as_str()), (200, r#"{"outage":true}"#));
    unavailable(write().await);
    let (status, _) = raw(sim.addr(), "POST", "/_sim/outage?on=false", None, b"").await;
    assert_eq!(status, 200);
    write().await.expect("outage over");
    let (status, _) = raw(sim.addr(), "POST", "/_sim/outage?on=maybe", None, b"").await;
    assert_eq!(status, 400);

    sim.set_faults(FaultConfig {
        outages: vec![OutageWindow {
            start: Duration::ZERO,
            duration: Duration::from_secs(3600),
        }],
        ..FaultConfig::default()
    })
    .unwrap();
    unavailable(write().await);
    sim.set_faults(FaultConfig::default()).unwrap();
    write().await.expect("window removed");
    assert_eq!(sim.stats().faults.outage_rejections, 3);
}

/// With --access-key set, a request signed with another key id is UnrecognizedClientException.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_access_key_is_rejected() {
    let sim = start(SimConfig {
        access_key: Some("RIGHTKEY".into()),
        ..SimConfig::default()
    })
    .await;
    let wrong = client_with_key(&sim, "WRONGKEY").await;
    assert_eq!(
        err(wrong.list_tables().send().await),
        error(
            "UnrecognizedClientException",
            "The security token included in the request is invalid."
        )
    );
    let right = client_with_key(&sim, "RIGHTKEY").await;
    right
        .list_tables()
        .send()
        .await
        .expect("the right key works");
    assert_eq!(sim.stats().auth_failures, 1);
}

/// A deterministic pseudo-random JSON value (nested, of every JSON type).
fn random_json(rng: &mut fastrand::Rng, depth: u32) -> Json {
    let names = [
        "TableName",
        "Item",
        "Key",
        "S",
        "N",
        "SS",
        "L",
        "M",
        "RequestItems",
        "PutRequest",
        "Keys",
        "x",
    ];
    match rng.u8(0..if depth > 3 { 4 } else { 6 }) {
        0 => Json::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(-5..100)),
        3 => json!(["t", "", "1", "abc", "#a", ":v", "DynamoDB"][rng.usize(0..7)]),
        4 => Json::Array(
            (0..rng.usize(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => Json::Object(
            (0..rng.usize(0..4))
                .map(|_| {
                    (
                        names[rng.usize(0..names.len())].to_owned(),
                        random_json(rng, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Garbage never panics the simulator: malformed JSON is SerializationException, an unknown
/// target UnknownOperationException, random structures a 4xx; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bodies_are_rejected_without_panics() {
    let sim = start(SimConfig {
        tables: TableDef::project_tables(""),
        ..SimConfig::default()
    })
    .await;
    let addr = sim.addr();
    let put_target = Some("DynamoDB_20120810.PutItem");
    for body in [
        &b""[..],
        b"{",
        b"nul",
        b"\xff\xfe\x00",
        b"{\"TableName\": }",
        b"[1,2",
    ] {
        let (status, text) = raw(addr, "POST", "/", put_target, body).await;
        assert_eq!(status, 400, "{body:?}");
        let v: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["__type"],
            "com.amazon.coral.service#SerializationException"
        );
    }
    let (status, text) = raw(
        addr,
        "POST",
        "/",
        Some("DynamoDB_20120810.Frobnicate"),
        b"{}",
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("UnknownOperationException"));
    let (status, text) = raw(addr, "POST", "/", None, b"{}").await;
    assert_eq!(status, 400);
    assert!(text.contains("UnknownOperationException"));

    let ops = [
        "PutItem",
        "GetItem",
        "DeleteItem",
        "UpdateItem",
        "BatchWriteItem",
        "BatchGetItem",
        "Query",
        "Scan",
        "CreateTable",
        "DescribeTable",
        "ListTables",
        "DeleteTable",
        "BatchExecuteStatement",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..400 {
        let op = ops[i % ops.len()];
        let mut body = random_json(&mut rng, 0);
        if let Json::Object(m) = &mut body
            && rng.bool()
        {
            m.insert("TableName".into(), json!("mqtt_acked"));
        }
        let bytes = if i % 7 == 0 {
            // Truncated or byte-mangled JSON.
            let mut b = serde_json::to_vec(&body).unwrap();
            b.truncate(b.len() / 2);
            b
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let target = format!("DynamoDB_20120810.{op}");
        let (status, text) = raw(addr, "POST", "/", Some(&target), &bytes).await;
        assert!(
            status == 200 || status == 400,
            "{op} {body} -> {status} {text}"
        );
    }
    // PartiQL token soup: every statement is answered, none panics the parser.
    let words = [
        "UPDATE",
        "\"mqtt_acked\"",
        "SET",
        "\"a\"",
        "=",
        "?",
        "SET_ADD(\"a\",",
        "SET_DELETE(",
        ")",
        "WHERE",
        "\"topic\"",
        "AND",
        "OR",
        "NOT",
        "(",
        "IS",
        "MISSING",
        "<",
        ">=",
        "<>",
        "'x",
        "'y'",
        "1e5",
        "-",
        ",",
        ";",
        "SELECT",
        "\"",
        "[",
        ".",
        "REMOVE",
        "<<",
    ];
    for _ in 0..300 {
        let text: Vec<&str> = (0..rng.usize(0..14))
            .map(|_| words[rng.usize(0..words.len())])
            .collect();
        let params: Vec<Json> = (0..rng.usize(0..4))
            .map(|_| match rng.u8(0..4) {
                0 => json!({"S": "k"}),
                1 => json!({"SS": ["x"]}),
                2 => json!({"N": "1"}),
                _ => json!({"SS": []}),
            })
            .collect();
        let body = json!({"Statements": [{"Statement": text.join(" "), "Parameters": params}]});
        let (status, text) = raw(
            addr,
            "POST",
            "/",
            Some("DynamoDB_20120810.BatchExecuteStatement"),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert!(status == 200 || status == 400, "{body} -> {status} {text}");
    }
    let stats = raw_stats(&sim).await;
    assert!(stats["requests_total"].as_u64().unwrap() >= 708);
    assert_eq!(stats["faults"]["errors"], 0);
    // Still healthy.
    client(&sim).await.list_tables().send().await.unwrap();
}

/// The control endpoints: stats JSON, reset, unknown paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints() {
    let (sim, c) = start_with_table(SimConfig::default(), "ctl", "pk", None).await;
    put_item(&c, "ctl", item(&[("pk", s("1"))])).await.unwrap();
    let stats = raw_stats(&sim).await;
    assert_eq!(stats["requests_by_operation"]["PutItem"], 1);
    assert_eq!(stats["requests_by_operation"]["CreateTable"], 1);
    assert_eq!(stats["requests_total"], 2);
    assert_eq!(stats["items_written"], 1);
    assert_eq!(stats["item_counts"]["ctl"], 1);
    let (status, _) = raw(sim.addr(), "POST", "/_sim/reset", None, b"").await;
    assert_eq!(status, 200);
    let stats = raw_stats(&sim).await;
    assert_eq!(stats["requests_total"], 0);
    assert_eq!(stats["item_counts"]["ctl"], 1, "reset keeps the data");
    assert_eq!(raw(sim.addr(), "GET", "/_sim/nope", None, b"").await.0, 404);
    assert_eq!(
        raw(sim.addr(), "GET", "/_sim/reset", None, b"").await.0,
        405
    );
    assert_eq!(raw(sim.addr(), "GET", "/", None, b"").await.0, 200);
    sim.reset_stats();
    assert_eq!(sim.stats().requests_total, 0);
}

/// Concurrent writers on several connections: every item lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers() {
    let (sim, c) = start_with_table(SimConfig::default(), "cwr", "pk", Some("sk")).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let items = (0..100)
                .map(|i| keyed(format!("w{w}-{}", i % 10), i))
                .collect();
            write_all(&c, "cwr", items).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sim.stats().item_counts["cwr"], 800);
    let blob = item(&[
        ("pk", s("b")),
        ("sk", s("1")),
        ("bin", AttributeValue::B(Blob::new(vec![0, 1, 2]))),
    ]);
    put_item(&c, "cwr", blob).await.unwrap();
    let got = get_item(&c, "cwr", &[("pk", s("b")), ("sk", s("1"))])
        .await
        .unwrap();
    assert_eq!(
        got.item().unwrap()["bin"],
        AttributeValue::B(Blob::new(vec![0, 1, 2]))
    );
}

// ---- BatchExecuteStatement (PartiQL UPDATE) ----

/// One BatchExecuteStatement member.
fn statement(text: &str, params: Vec<AttributeValue>) -> BatchStatementRequest {
    BatchStatementRequest::builder()
        .statement(text)
        .set_parameters(Some(params))
        .build()
        .unwrap()
}

/// `UPDATE "<table>" SET "<attr>" = <function>("<attr>", ?) WHERE "pk" = ?`.
fn set_call(function: &str, table: &str, attr: &str) -> String {
    format!(r#"UPDATE "{table}" SET "{attr}" = {function}("{attr}", ?) WHERE "pk" = ?"#)
}

/// A SET_ADD of `members` to `attr` of the item `pk`.
fn set_add(table: &str, attr: &str, pk: &str, members: &[&str]) -> BatchStatementRequest {
    statement(&set_call("SET_ADD", table, attr), vec![ss(members), s(pk)])
}

/// A SET_DELETE of `members` from `attr` of the item `pk`.
fn set_delete(table: &str, attr: &str, pk: &str, members: &[&str]) -> BatchStatementRequest {
    statement(
        &set_call("SET_DELETE", table, attr),
        vec![ss(members), s(pk)],
    )
}

/// BatchExecuteStatement with `ReturnConsumedCapacity: TOTAL`, as mqtt-dynamo sends it.
async fn execute_batch(
    c: &Client,
    statements: Vec<BatchStatementRequest>,
) -> Result<BatchExecuteStatementOutput, SdkError<BatchExecuteStatementError, HttpResponse>> {
    c.batch_execute_statement()
        .set_statements(Some(statements))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
}

/// Per statement: `("OK", "", table)` for a success, `(code, message, table)` for an error,
/// `table` being the echoed `TableName`.
fn outcomes(out: &BatchExecuteStatementOutput) -> Vec<(String, String, Option<String>)> {
    out.responses()
        .iter()
        .map(|r| {
            let table = r.table_name().map(str::to_owned);
            match r.error() {
                None => ("OK".to_owned(), String::new(), table),
                Some(e) => (
                    e.code().map_or("<no code>", |c| c.as_str()).to_owned(),
                    e.message().unwrap_or("<no message>").to_owned(),
                    table,
                ),
            }
        })
        .collect()
}

fn ok(table: &str) -> (String, String, Option<String>) {
    ("OK".into(), String::new(), Some(table.into()))
}

fn failed(code: &str, message: &str, table: Option<&str>) -> (String, String, Option<String>) {
    (code.into(), message.into(), table.map(str::to_owned))
}

/// `ConsumedCapacity` as `(table, units)`.
fn capacity(out: &BatchExecuteStatementOutput) -> Vec<(String, f64)> {
    out.consumed_capacity()
        .iter()
        .map(|c| {
            (
                c.table_name().unwrap_or_default().to_owned(),
                c.capacity_units().unwrap_or(-1.0),
            )
        })
        .collect()
}

/// SET_ADD creates the attribute on a key-only item and adds to it; SET_DELETE takes members
/// out, leaves a missing attribute missing, and removes the attribute it empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_set_add_and_set_delete() {
    let (sim, c) = start_with_table(SimConfig::default(), "bes", "pk", None).await;
    for pk in ["a", "b"] {
        put_item(&c, "bes", item(&[("pk", s(pk))])).await.unwrap();
    }
    let out = execute_batch(
        &c,
        vec![
            set_add("bes", "m", "a", &["x", "y"]),
            set_delete("bes", "m", "b", &["x"]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&out), vec![ok("bes"), ok("bes")]);
    assert_eq!(
        get_pk(&c, "bes", "a").await.unwrap(),
        item(&[("pk", s("a")), ("m", ss(&["x", "y"]))])
    );
    assert_eq!(
        get_pk(&c, "bes", "b").await.unwrap(),
        item(&[("pk", s("b"))]),
        "SET_DELETE on a missing attribute leaves it missing"
    );

    let out = execute_batch(&c, vec![set_add("bes", "m", "a", &["y", "z"])])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ok("bes")]);
    assert_eq!(
        get_pk(&c, "bes", "a").await.unwrap()["m"],
        ss(&["x", "y", "z"])
    );

    let out = execute_batch(&c, vec![set_delete("bes", "m", "a", &["x", "z"])])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ok("bes")]);
    assert_eq!(get_pk(&c, "bes", "a").await.unwrap()["m"], ss(&["y"]));
    // Removing every member removes the attribute; the item stays, key only.
    let out = execute_batch(&c, vec![set_delete("bes", "m", "a", &["y", "w"])])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ok("bes")]);
    assert_eq!(
        get_pk(&c, "bes", "a").await.unwrap(),
        item(&[("pk", s("a"))])
    );

    // Wrong types: a stored string, a number set against a string set, members that are not
    // a set, an empty set.
    put_item(
        &c,
        "bes",
        item(&[("pk", s("t")), ("str", s("v")), ("m", ss(&["x"]))]),
    )
    .await
    .unwrap();
    let out = execute_batch(
        &c,
        vec![
            set_add("bes", "str", "t", &["x"]),
            statement(
                &set_call("SET_ADD", "bes", "m"),
                vec![AttributeValue::Ns(vec!["1".into()]), s("a")],
            ),
            statement(&set_call("SET_DELETE", "bes", "m"), vec![s("x"), s("b")]),
            statement(&set_call("SET_ADD", "bes", "m"), vec![ss(&[]), s("zz")]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes(&out),
        vec![
            failed(
                "ValidationError",
                "An operand in the update expression has an incorrect data type",
                None
            ),
            ok("bes"),
            failed(
                "ValidationError",
                "The second argument to SET_DELETE must be a value with type SET at 1:35:3",
                None
            ),
            failed(
                "ValidationError",
                "One or more parameter values were invalid: An string set  may not be empty",
                None
            ),
        ],
        "a's m was removed above, so the number set is added to nothing"
    );
    assert_eq!(
        get_pk(&c, "bes", "t").await.unwrap(),
        item(&[("pk", s("t")), ("str", s("v")), ("m", ss(&["x"]))])
    );
    assert_eq!(
        get_pk(&c, "bes", "a").await.unwrap()["m"],
        AttributeValue::Ns(vec!["1".into()])
    );

    let stats = sim.stats();
    assert_eq!(stats.requests_by_operation["BatchExecuteStatement"], 5);
    assert_eq!(stats.items_written, 2 + 2 + 1 + 1 + 1 + 1 + 1);
    assert_eq!(stats.validation_errors, 3);
    assert_eq!(
        raw_stats(&sim).await["requests_by_operation"]["BatchExecuteStatement"],
        5
    );
}

/// A PartiQL UPDATE is not an upsert: a missing item fails ConditionalCheckFailed (table
/// echoed) and nothing is created. Non-key WHERE conditions guard the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_conditions() {
    let (sim, c) = start_with_table(SimConfig::default(), "cnd", "pk", Some("sk")).await;
    put_item(
        &c,
        "cnd",
        item(&[
            ("pk", s("g")),
            ("sk", s("1")),
            ("guard", s("ok")),
            ("v", s("old")),
        ]),
    )
    .await
    .unwrap();
    let guarded =
        r#"UPDATE "cnd" SET "v" = ?, "w" = ? WHERE "pk" = ? AND "sk" = ? AND "guard" = ?"#;
    let guarded_set = |pk: &str, guard: &str, v: &str| {
        statement(guarded, vec![s(v), s("w"), s(pk), s("1"), s(guard)])
    };
    let ccf = failed(
        "ConditionalCheckFailed",
        "The conditional request failed",
        Some("cnd"),
    );

    let out = execute_batch(&c, vec![guarded_set("missing", "ok", "new")])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ccf.clone()]);
    let missing = get_item(&c, "cnd", &[("pk", s("missing")), ("sk", s("1"))])
        .await
        .unwrap();
    assert!(missing.item().is_none(), "nothing was created");

    let out = execute_batch(&c, vec![guarded_set("g", "wrong", "new")])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ccf.clone()]);
    let key = [("pk", s("g")), ("sk", s("1"))];
    let unchanged = item(&[
        ("pk", s("g")),
        ("sk", s("1")),
        ("guard", s("ok")),
        ("v", s("old")),
    ]);
    assert_eq!(
        get_item(&c, "cnd", &key).await.unwrap().item(),
        Some(&unchanged)
    );

    let out = execute_batch(&c, vec![guarded_set("g", "ok", "new")])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ok("cnd")]);
    let updated = item(&[
        ("pk", s("g")),
        ("sk", s("1")),
        ("guard", s("ok")),
        ("v", s("new")),
        ("w", s("w")),
    ]);
    assert_eq!(
        get_item(&c, "cnd", &key).await.unwrap().item(),
        Some(&updated)
    );

    // `<` with IS MISSING, and the failed item handed back on request.
    let newer =
        r#"UPDATE "cnd" SET "n" = ? WHERE "pk" = ? AND "sk" = ? AND ("n" < ? OR "n" IS MISSING)"#;
    let set_n = |n: &str| {
        let num = AttributeValue::N(n.into());
        statement(newer, vec![num.clone(), s("g"), s("1"), num])
    };
    for (n, expected) in [("5", ok("cnd")), ("3", ccf.clone()), ("7", ok("cnd"))] {
        let out = execute_batch(&c, vec![set_n(n)]).await.unwrap();
        assert_eq!(outcomes(&out), vec![expected], "n = {n}");
    }
    let with_old = BatchStatementRequest::builder()
        .statement(newer)
        .set_parameters(Some(vec![
            AttributeValue::N("1".into()),
            s("g"),
            s("1"),
            AttributeValue::N("1".into()),
        ]))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .unwrap();
    let out = execute_batch(&c, vec![with_old]).await.unwrap();
    let error = out.responses()[0].error().unwrap();
    assert_eq!(error.message(), Some("The conditional request failed"));
    assert_eq!(error.item().unwrap()["n"], AttributeValue::N("7".into()));

    let stats = sim.stats();
    assert_eq!(stats.conditional_failures, 4);
    assert_eq!(stats.items_written, 1 + 1 + 2);
    assert_eq!(stats.item_counts["cnd"], 1);
}

/// Request-level refusals answer 400 ValidationException and run nothing: 0 or 26 statements,
/// reads with writes, one item twice, a bad ReturnConsumedCapacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_request_level_refusals() {
    let (sim, c) = start_with_table(SimConfig::default(), "req", "pk", None).await;
    for i in 0..26 {
        put_item(&c, "req", item(&[("pk", s(format!("k{i}")))]))
            .await
            .unwrap();
    }
    let twenty_six: Vec<BatchStatementRequest> = (0..26)
        .map(|i| set_add("req", "m", &format!("k{i}"), &["x"]))
        .collect();
    let echo: Vec<String> = (0..26)
        .map(|i| {
            format!(
                "BatchStatementRequest(statement={}, parameters=[\
                 AttributeValue(s=null, n=null, b=null, iNT=null, dECIMAL=null, dOUBLE=null, sS=[x], nS=null, bS=null, iNTSET=null, dECIMALSET=null, dOUBLESET=null, m=null, l=null, nULL=null, bOOL=null), \
                 AttributeValue(s=k{i}, n=null, b=null, iNT=null, dECIMAL=null, dOUBLE=null, sS=null, nS=null, bS=null, iNTSET=null, dECIMALSET=null, dOUBLESET=null, m=null, l=null, nULL=null, bOOL=null)], \
                 consistentRead=null, returnValuesOnConditionCheckFailure=null)",
                set_call("SET_ADD", "req", "m")
            )
        })
        .collect();
    assert_eq!(
        err(execute_batch(&c, twenty_six.clone()).await),
        validation(&format!(
            "1 validation error detected: Value '[{}]' at 'statements' failed to satisfy constraint: Member must have length less than or equal to 25",
            echo.join(", ")
        ))
    );
    let out = execute_batch(&c, twenty_six[..25].to_vec()).await.unwrap();
    assert_eq!(outcomes(&out), vec![ok("req"); 25], "25 are accepted");
    assert_eq!(capacity(&out), vec![("req".to_owned(), 25.0)]);
    assert!(
        !get_pk(&c, "req", "k25").await.unwrap().contains_key("m"),
        "the 26th was never run"
    );

    assert_eq!(
        err(execute_batch(&c, vec![]).await),
        validation(
            "1 validation error detected: Value '[]' at 'statements' failed to satisfy constraint: Member must have length greater than or equal to 1"
        )
    );
    let twice = vec![
        set_add("req", "m", "k0", &["y"]),
        set_add("req", "n", "k1", &["y"]),
        set_delete("req", "m", "k0", &["x"]),
    ];
    assert_eq!(
        err(execute_batch(&c, twice).await),
        validation("Provided list of item keys contains duplicates")
    );
    let mixed = vec![
        set_add("req", "m", "k0", &["y"]),
        statement(r#"SELECT * FROM "req" WHERE "pk" = ?"#, vec![s("k1")]),
    ];
    assert_eq!(
        err(execute_batch(&c, mixed).await),
        validation("Read and write requests together in the same batch is not supported.")
    );
    assert_eq!(
        err(c
            .batch_execute_statement()
            .statements(set_add("req", "m", "k0", &["y"]))
            .return_consumed_capacity(ReturnConsumedCapacity::from("SOMETIMES"))
            .send()
            .await),
        validation(
            "1 validation error detected: Value 'SOMETIMES' at 'returnConsumedCapacity' failed to satisfy constraint: Member must satisfy enum value set: [INDEXES, TOTAL, NONE]"
        )
    );
    // Every member violation in one message, in DynamoDB's order.
    assert_eq!(
        err(c
            .batch_execute_statement()
            .statements(statement("", vec![]))
            .statements(set_add("req", "m", "k0", &["y"]))
            .return_consumed_capacity(ReturnConsumedCapacity::from("SOMETIMES"))
            .send()
            .await),
        validation(
            "3 validation errors detected: \
             Value 'SOMETIMES' at 'returnConsumedCapacity' failed to satisfy constraint: Member must satisfy enum value set: [INDEXES, TOTAL, NONE]; \
             Value '' at 'statements.1.member.statement' failed to satisfy constraint: Member must have length greater than or equal to 1; \
             Value '[]' at 'statements.1.member.parameters' failed to satisfy constraint: Member must have length greater than or equal to 1"
        )
    );
    assert_eq!(
        get_pk(&c, "req", "k0").await.unwrap()["m"],
        ss(&["x"]),
        "no refused request ran"
    );
    let stats = sim.stats();
    assert_eq!(stats.validation_errors, 6);
    assert_eq!(stats.items_written, 26 + 25);
}

/// Per-statement errors answer 200: the failing statement has `Error`, the others run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_per_statement_errors() {
    let (sim, c) = start_with_table(SimConfig::default(), "pse", "pk", None).await;
    for pk in ["a", "b", "big", "c"] {
        put_item(&c, "pse", item(&[("pk", s(pk))])).await.unwrap();
    }
    let huge = s("x".repeat(400 * 1024));
    let out = execute_batch(
        &c,
        vec![
            set_add("nosuchtable", "m", "a", &["x"]),
            set_add("pse", "m", "a", &["x"]),
            statement(
                r#"UPDATE "pse" SET "d" = ? WHERE "pk" = ?"#,
                vec![huge, s("big")],
            ),
            statement(
                r#"UPDATE "pse" SET "m" = ? WHERE "pk" = ? RETURNING ALL NEW *"#,
                vec![s("x"), s("b")],
            ),
            statement(r#"UPDATE "pse" SET "m" = ? WHERE "pk" = ?"#, vec![s("x")]),
            statement(
                r#"UPDATE "pse" SET "pk" = ? WHERE "pk" = ?"#,
                vec![s("z"), s("b")],
            ),
            statement(
                r#"UPDATE "pse" SET "v" = ? WHERE "v" = ?"#,
                vec![s("z"), s("b")],
            ),
            statement(
                r#"UPDATE "pse" SET "v" = ? WHERE "pk" = 'c'"#,
                vec![s("lit")],
            ),
            statement(
                r#"UPDATE "pse" SET "v" = 'unterminated WHERE "pk" = ?"#,
                vec![s("c")],
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes(&out),
        vec![
            failed(
                "ResourceNotFound",
                "Requested resource not found",
                Some("nosuchtable")
            ),
            ok("pse"),
            failed(
                "ValidationError",
                "Item size to update has exceeded the maximum allowed size",
                None
            ),
            failed(
                "ValidationError",
                "dynamo-sim implements only UPDATE ... SET ... WHERE <key> = ? and INSERT INTO ... VALUE {...} statements in BatchExecuteStatement; RETURNING is not implemented",
                None
            ),
            failed(
                "ValidationError",
                "Number of parameters in request and statement don't match.",
                None
            ),
            failed(
                "ValidationError",
                "One or more parameter values were invalid: Cannot update attribute pk. This attribute is part of the key",
                Some("pse")
            ),
            failed(
                "ValidationError",
                "Where clause does not contain a mandatory equality on all key attributes",
                None
            ),
            ok("pse"),
            failed(
                "ValidationError",
                "Statement wasn't well formed, can't be processed: Unterminated quoted string at 1:24",
                None
            ),
        ]
    );
    assert_eq!(get_pk(&c, "pse", "a").await.unwrap()["m"], ss(&["x"]));
    assert_eq!(get_pk(&c, "pse", "c").await.unwrap()["v"], s("lit"));
    assert_eq!(
        get_pk(&c, "pse", "big").await.unwrap(),
        item(&[("pk", s("big"))])
    );
    // A SELECT alone is not mixed, but not implemented either.
    let out = execute_batch(
        &c,
        vec![statement(
            r#"SELECT * FROM "pse" WHERE "pk" = ?"#,
            vec![s("a")],
        )],
    )
    .await
    .unwrap();
    let (code, message, table) = outcomes(&out).remove(0);
    assert_eq!((code.as_str(), table), ("ValidationError", None));
    assert!(message.contains("dynamo-sim"), "{message}");
    assert!(
        message.contains("SELECT statements are not implemented"),
        "{message}"
    );

    let stats = sim.stats();
    assert_eq!(stats.validation_errors, 6 + 1);
    assert_eq!(stats.other_errors, 1, "ResourceNotFound");
    assert_eq!(stats.items_written, 4 + 2);
}

/// Write units: each statement is charged like UpdateItem (the larger of the old and new
/// item); a failed condition costs what it would have written against the old item (1 for a
/// missing one); ConsumedCapacity is per table and absent when every statement failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_consumed_capacity() {
    let (sim, c) = start_with_table(SimConfig::default(), "cap", "pk", None).await;
    create_table(&c, "cap2", "pk", None).await;
    // "pk" + "3k" (4) + "d" + 3,000 bytes = 3,005 bytes: 3 units, and 3 after the SET_ADD.
    put_item(
        &c,
        "cap",
        item(&[("pk", s("3k")), ("d", s("x".repeat(3000)))]),
    )
    .await
    .unwrap();
    put_item(&c, "cap2", item(&[("pk", s("small"))]))
        .await
        .unwrap();
    sim.reset_stats();

    let out = execute_batch(
        &c,
        vec![
            set_add("cap", "m", "3k", &["x"]),
            set_add("cap", "m", "missing", &["x"]),
            set_add("cap2", "m", "small", &["x"]),
        ],
    )
    .await
    .unwrap();
    let ccf = failed(
        "ConditionalCheckFailed",
        "The conditional request failed",
        Some("cap"),
    );
    assert_eq!(outcomes(&out), vec![ok("cap"), ccf.clone(), ok("cap2")]);
    assert_eq!(
        capacity(&out),
        vec![("cap".to_owned(), 3.0 + 1.0), ("cap2".to_owned(), 1.0)]
    );
    assert_eq!(sim.stats().write_units, 5);

    // Every statement failed: no ConsumedCapacity at all (the failures are still charged).
    let out = execute_batch(&c, vec![set_add("cap", "m", "missing", &["x"])])
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ccf]);
    assert!(capacity(&out).is_empty());
    assert_eq!(sim.stats().write_units, 6);
    let (status, body) = raw(
        sim.addr(),
        "POST",
        "/",
        Some("DynamoDB_20120810.BatchExecuteStatement"),
        br#"{"Statements":[{"Statement":"UPDATE \"cap\" SET \"m\" = SET_ADD(\"m\", ?) WHERE \"pk\" = ?","Parameters":[{"SS":["y"]},{"S":"missing"}]}],"ReturnConsumedCapacity":"TOTAL"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let body: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"Responses": [{
            "Error": {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
            "TableName": "cap"
        }]})
    );

    // NONE: no ConsumedCapacity either.
    let out = c
        .batch_execute_statement()
        .statements(set_add("cap", "m", "3k", &["y"]))
        .send()
        .await
        .unwrap();
    assert_eq!(outcomes(&out), vec![ok("cap")]);
    assert!(capacity(&out).is_empty());
}

/// The token buckets apply per statement: a statement whose key has no capacity fails alone
/// with ThrottlingError and is not applied; another key's statement runs. throttle_rate fails
/// statements the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_throttling() {
    let (sim, c) = start_with_table(SimConfig::default(), "thr", "pk", Some("sk")).await;
    put_item(&c, "thr", item(&[("pk", s("cold")), ("sk", s("0"))]))
        .await
        .unwrap();
    // 1 unit/s per key, 1 s of burst: the 10 KB put takes the full bucket into debt.
    sim.set_limits(Limits {
        key_wcu: Some(1),
        ..Limits::default()
    })
    .unwrap();
    put_item(&c, "thr", ten_kb("hot", 0)).await.unwrap();
    let update = r#"UPDATE "thr" SET "m" = SET_ADD("m", ?) WHERE "pk" = ? AND "sk" = ?"#;
    let out = execute_batch(
        &c,
        vec![
            statement(update, vec![ss(&["x"]), s("hot"), s("0")]),
            statement(update, vec![ss(&["x"]), s("cold"), s("0")]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes(&out),
        vec![
            failed(
                "ThrottlingError",
                "Throughput exceeds the current capacity for one or more partition keys of your table. Reduce the request rate to those keys.",
                Some("thr")
            ),
            ok("thr"),
        ]
    );
    assert_eq!(capacity(&out), vec![("thr".to_owned(), 1.0)]);
    assert!(
        !get_item(&c, "thr", &[("pk", s("hot")), ("sk", s("0"))])
            .await
            .unwrap()
            .item()
            .unwrap()
            .contains_key("m"),
        "the throttled statement was not applied"
    );
    assert_eq!(
        get_item(&c, "thr", &[("pk", s("cold")), ("sk", s("0"))])
            .await
            .unwrap()
            .item()
            .unwrap()["m"],
        ss(&["x"])
    );
    let stats = sim.stats();
    assert_eq!(stats.throttled_items, 1);
    assert_eq!(stats.throttled_requests, 0);

    sim.set_limits(Limits::default()).unwrap();
    sim.set_faults(FaultConfig {
        throttle_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    let out = execute_batch(
        &c,
        vec![statement(update, vec![ss(&["y"]), s("cold"), s("0")])],
    )
    .await
    .unwrap();
    assert_eq!(outcomes(&out)[0].0, "ThrottlingError");
    assert!(capacity(&out).is_empty());
    assert_eq!(sim.stats().throttled_items, 2);
}

/// apply_then_error_rate applies to BatchExecuteStatement: the batch lands, the client gets 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_apply_then_error() {
    let (sim, c) = start_with_table(seeded(7), "abe", "pk", None).await;
    for pk in ["a", "b"] {
        put_item(&c, "abe", item(&[("pk", s(pk))])).await.unwrap();
    }
    sim.set_faults(FaultConfig {
        apply_then_error_rate: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    assert_internal_error(
        execute_batch(
            &c,
            vec![
                set_add("abe", "m", "a", &["x"]),
                set_add("abe", "m", "b", &["y"]),
                set_add("abe", "m", "missing", &["z"]),
            ],
        )
        .await,
    );
    sim.set_faults(FaultConfig::default()).unwrap();
    assert_eq!(get_pk(&c, "abe", "a").await.unwrap()["m"], ss(&["x"]));
    assert_eq!(get_pk(&c, "abe", "b").await.unwrap()["m"], ss(&["y"]));
    assert!(get_pk(&c, "abe", "missing").await.is_none());
    let stats = sim.stats();
    assert_eq!(stats.faults.applied_then_failed, 1);
    assert_eq!(stats.items_written, 2 + 2);
    assert_eq!(
        stats.conditional_failures, 0,
        "the discarded answer is not counted"
    );
}

/// PartiQL INSERT: creates the item (parameters and literals), charged its size; an item already
/// under the key fails the statement alone with `DuplicateItem` (the others of the request still
/// run); a missing or mistyped key, an oversized item and an unknown table are refused in
/// DynamoDB's words; an INSERT and an UPDATE of one item in one request are duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statement_insert() {
    let (_sim, c) = start_with_table(SimConfig::default(), "ins", "pk", None).await;
    put_item(&c, "ins", item(&[("pk", s("old")), ("v", s("kept"))]))
        .await
        .unwrap();
    let huge = s("x".repeat(400 * 1024));
    let out = execute_batch(
        &c,
        vec![
            statement(
                r#"INSERT INTO "ins" VALUE {'pk': ?, 'm': ?, 'v': 'lit'}"#,
                vec![s("new"), ss(&["a", "b"])],
            ),
            statement(
                r#"INSERT INTO "ins" VALUE {'pk': ?, 'v': ?}"#,
                vec![s("old"), s("overwritten?")],
            ),
            statement(r#"INSERT INTO "ins" VALUE {'v': ?}"#, vec![s("x")]),
            statement(
                r#"INSERT INTO "ins" VALUE {'pk': ?}"#,
                vec![AttributeValue::N("1".into())],
            ),
            statement(
                r#"INSERT INTO "ins" VALUE {'pk': ?, 'd': ?}"#,
                vec![s("big"), huge],
            ),
            statement(r#"INSERT INTO "nosuch" VALUE {'pk': ?}"#, vec![s("z")]),
            statement(r#"INSERT INTO "ins" VALUES {'pk': ?}"#, vec![s("w")]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes(&out),
        vec![
            ok("ins"),
            failed(
                "DuplicateItem",
                "Duplicate primary key exists in table",
                Some("ins")
            ),
            failed(
                "ValidationError",
                "One or more parameter values were invalid: Missing the key pk in the item",
                None
            ),
            failed(
                "ValidationError",
                "Key attribute's data type should match its data type in table's schema: Key pk",
                None
            ),
            failed(
                "ValidationError",
                "Item size has exceeded the maximum allowed size",
                None
            ),
            failed(
                "ResourceNotFound",
                "Requested resource not found",
                Some("nosuch")
            ),
            failed(
                "ValidationError",
                "dynamo-sim implements only UPDATE ... SET ... WHERE <key> = ? and INSERT INTO ... VALUE {...} statements in BatchExecuteStatement; VALUES lists are not implemented (one item: VALUE {...})",
                None
            ),
        ]
    );
    // One unit for the new item, one for the duplicate's attempt (charged like a failed
    // condition).
    assert_eq!(capacity(&out), vec![("ins".to_string(), 2.0)]);
    assert_eq!(
        get_pk(&c, "ins", "new").await,
        Some(item(&[
            ("pk", s("new")),
            ("m", ss(&["a", "b"])),
            ("v", s("lit"))
        ]))
    );
    assert_eq!(
        get_pk(&c, "ins", "old").await,
        Some(item(&[("pk", s("old")), ("v", s("kept"))])),
        "a duplicate changes nothing"
    );
    assert_eq!(get_pk(&c, "ins", "big").await, None);
    let err = execute_batch(
        &c,
        vec![
            statement(r#"INSERT INTO "ins" VALUE {'pk': ?}"#, vec![s("twice")]),
            statement(
                r#"UPDATE "ins" SET "v" = ? WHERE "pk" = ?"#,
                vec![s("x"), s("twice")],
            ),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        format!("{:?}", err).contains("Provided list of item keys contains duplicates"),
        "{err:?}"
    );
}
