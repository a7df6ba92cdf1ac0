//! A client interceptor that counts the requests an SDK client puts on the wire, by operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::ConfigBag;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

/// Counts the requests a client puts on the wire, by operation (`x-amz-target`).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Mutex<HashMap<String, u64>>>);

impl RequestCounter {
    pub fn get(&self, op: &str) -> u64 {
        self.0.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown")
            .trim_start_matches("DynamoDB_20120810.")
            .to_string();
        *self.0.lock().unwrap().entry(target).or_default() += 1;
        Ok(())
    }
}
