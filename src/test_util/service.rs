//! The service in process, as tests start it: [`crate::service::start`] with every listener (and
//! the embedded DynamoDB) on an ephemeral loopback port, the bound addresses read from
//! [`Service::addrs`], and an SDK client for the DynamoDB it writes into.

use std::net::SocketAddr;

use aws_sdk_dynamodb::Client;

use crate::config::{Config, Secret};
use crate::service::{self, Service};
use crate::storage::dynamo::{self, SdkRetries};

/// 127.0.0.1, port chosen by the kernel.
pub const EPHEMERAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// `cfg` with the ExHook, HTTP and metrics listeners and the embedded DynamoDB on ephemeral
/// loopback ports (whether each is enabled stays as `cfg` says).
pub fn ephemeral(mut cfg: Config) -> Config {
    cfg.dynamodb.embedded_listen = EPHEMERAL;
    cfg.exhook.listen = EPHEMERAL;
    cfg.http.listen = EPHEMERAL;
    cfg.metrics.listen = EPHEMERAL;
    cfg
}

/// A configuration from TOML text (panics on an invalid one: test configurations are fixed).
pub fn parse(toml: &str) -> Config {
    Config::parse(toml, "test configuration").expect("the test configuration parses")
}

/// Starts the service on `cfg` with [`ephemeral`] listeners; panics if it does not start.
pub async fn start(cfg: &Config) -> Service {
    service::start(&ephemeral(cfg.clone()))
        .await
        .expect("the service starts")
}

/// `host:port` of a listener that must be on.
pub fn addr(listener: Option<SocketAddr>) -> String {
    listener
        .expect("the listener is enabled in the configuration")
        .to_string()
}

/// A client (SDK retries on) for the DynamoDB the service writes into: its embedded one, or
/// the endpoint `cfg` names.
pub async fn dynamo_client(service: &Service, cfg: &Config) -> Client {
    let mut dynamodb = cfg.dynamodb.clone();
    if dynamodb.access_key_id.is_none() {
        dynamodb.access_key_id = Some("local".into());
        dynamodb.secret_access_key = Some(Secret::new("local"));
    }
    dynamo::client(
        &dynamodb,
        service.addrs().dynamodb.as_deref(),
        SdkRetries::Standard,
    )
    .await
}
