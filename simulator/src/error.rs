//! Errors: [`ApiError`] is what a client sees (DynamoDB's error code, HTTP status and message);
//! [`SimError`] is what can go wrong starting the simulator.

use std::net::SocketAddr;

use thiserror::Error;

/// Fails [`crate::Simulator::start`].
#[derive(Debug, Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A knob is out of range (a rate outside 0..=1, a table definition DynamoDB would reject).
    #[error("invalid simulator configuration: {0}")]
    Config(String),
}

/// Which throttling rule rejected a write, reported in `ThrottlingReasons`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThrottleKind {
    /// The table's token bucket (`table_wcu`): `ProvisionedThroughputExceededException`.
    Table,
    /// The partition key's token bucket (`key_wcu`): `ThrottlingException`.
    Key,
}

impl ThrottleKind {
    pub fn reason(self) -> &'static str {
        match self {
            ThrottleKind::Table => "TableWriteProvisionedThroughputExceeded",
            ThrottleKind::Key => "TableWriteKeyRangeThroughputExceeded",
        }
    }
}

/// A DynamoDB error response: `{"__type": "<namespace>#<code>", "message": "..."}` with `status`.
///
/// Both the Rust SDK and botocore take the error code from `__type`, dropping everything up to
/// the last `#` (and anything after a `:`), and the message from `message`; the namespaces below
/// are the ones DynamoDB itself sends. No `x-amzn-ErrorType` header is sent: when present the
/// Rust SDK prefers it over the body, and DynamoDB does not send it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub status: u16,
    /// `(reason, table name)` for the throttling exceptions, empty otherwise.
    pub throttling: Vec<(ThrottleKind, String)>,
}

impl ApiError {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status,
            throttling: Vec::new(),
        }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new("ValidationException", 400, message)
    }

    /// `1 validation error detected: ...` for a missing required member.
    pub fn missing(member: &str) -> ApiError {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    }

    pub fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::new("SerializationException", 400, message)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(
            "ResourceNotFoundException",
            400,
            "Requested resource not found",
        )
    }

    pub fn table_not_found(table: &str) -> ApiError {
        ApiError::new(
            "ResourceNotFoundException",
            400,
            format!("Requested resource not found: Table: {table} not found"),
        )
    }

    pub fn in_use(message: impl Into<String>) -> ApiError {
        ApiError::new("ResourceInUseException", 400, message)
    }

    pub fn conditional_failed() -> ApiError {
        ApiError::new(
            "ConditionalCheckFailedException",
            400,
            "The conditional request failed",
        )
    }

    pub fn unknown_operation(message: impl Into<String>) -> ApiError {
        ApiError::new("UnknownOperationException", 400, message)
    }

    pub fn unrecognized_client() -> ApiError {
        ApiError::new(
            "UnrecognizedClientException",
            400,
            "The security token included in the request is invalid.",
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            "InternalServerError",
            500,
            "Internal server error (injected by dynamo-sim)",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new("ServiceUnavailable", 503, message)
    }

    /// The exception for a write that could not be charged at all: the table limit wins.
    pub fn throttled(mut reasons: Vec<(ThrottleKind, String)>) -> ApiError {
        reasons.sort();
        reasons.dedup();
        let table_limit = reasons.iter().any(|(k, _)| *k == ThrottleKind::Table);
        let mut e = if table_limit {
            ApiError::new(
                "ProvisionedThroughputExceededException",
                400,
                "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            )
        } else {
            ApiError::new(
                "ThrottlingException",
                400,
                "Throughput exceeds the current capacity for one or more partition keys of your table. Reduce the request rate to those keys.",
            )
        };
        e.throttling = reasons;
        e
    }

    /// The namespace DynamoDB puts in front of this code in `__type`.
    fn namespace(&self) -> &'static str {
        match self.code {
            "ValidationException" => "com.amazon.coral.validate",
            "SerializationException"
            | "UnknownOperationException"
            | "UnrecognizedClientException" => "com.amazon.coral.service",
            _ => "com.amazonaws.dynamodb.v20120810",
        }
    }

    /// The response body.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert(
            "__type".into(),
            format!("{}#{}", self.namespace(), self.code).into(),
        );
        body.insert("message".into(), self.message.clone().into());
        if !self.throttling.is_empty() {
            let reasons: Vec<serde_json::Value> = self
                .throttling
                .iter()
                .map(|(kind, table)| {
                    serde_json::json!({
                        "reason": kind.reason(),
                        "resource": crate::store::table_arn(table),
                    })
                })
                .collect();
            // The model spells this member differently per exception; the SDKs only read their own.
            let member = if self.code == "ThrottlingException" {
                "throttlingReasons"
            } else {
                "ThrottlingReasons"
            };
            body.insert(member.into(), reasons.into());
        }
        serde_json::Value::Object(body)
    }
}
