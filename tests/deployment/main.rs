//! What an operator deploys and configures, through the real binary: where the configuration comes
//! from (environment overrides, `*_file` secrets, `config check` / `config default`), the embedded
//! DynamoDB kept in a file, the refusal of the in-memory default on an AWS runtime, the backend
//! named in the log, `/readyz` and `mqtt_dynamo_build_info`, `health`; and credentials and region
//! from the places AWS puts them (environment, profiles, `credential_process`, ECS, IMDS, web
//! identity, SSO), observed from what each DynamoDB request was signed with. One test binary, one
//! module per concern.

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod config;
mod stand_in;
