//! The binary as it is deployed: credentials and region from the places AWS puts them
//! (environment, profiles, `credential_process`, ECS, IMDS, web identity, SSO), observed from
//! what each DynamoDB request was signed with. One test binary, one module per concern.

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod stand_in;
