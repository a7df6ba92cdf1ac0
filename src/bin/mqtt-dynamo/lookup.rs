//! `lookup retained|offline|subs`: the tables read as the broker's lookups read them, as JSON.

use clap::Subcommand;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};

use crate::{print_json, read_endpoint};

#[derive(Subcommand)]
pub enum LookupCommand {
    /// Retained messages matching a subscription filter (MQTT wildcards, through the shared
    /// topic index mqtt_topic_index).
    Retained {
        filter: String,
        /// Look the filter up as a literal key, as the seed did.
        #[arg(long)]
        literal: bool,
    },
    /// Offline messages for a subscription, oldest first.
    Offline {
        filter: String,
        /// At most this many, the newest (0: no limit); default `lookup.max_returned_count`.
        #[arg(long)]
        limit: Option<usize>,
        /// Only messages since: epoch milliseconds, an RFC 3339 time, or a duration (`2h`).
        #[arg(long)]
        since: Option<String>,
        /// The subscription's QoS (QoS 0 subscriptions get nothing, as in the seed).
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Look the filter up as a literal key, as the seed did.
        #[arg(long)]
        literal: bool,
    },
    /// A client's subscriptions.
    Subs { clientid: String },
}

pub async fn lookup_command(cfg: Config, command: LookupCommand) -> Result<(), String> {
    use mqtt_dynamo::config::MatchMode;
    use mqtt_dynamo::lookup::http::{offline_json, parse_since, retained_json};
    use mqtt_dynamo::lookup::{OfflineQuery, ReadState, Reader};
    let endpoint = read_endpoint(&cfg);
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let mut lookup = cfg.lookup.clone();
    let literal = matches!(
        command,
        LookupCommand::Retained { literal: true, .. }
            | LookupCommand::Offline { literal: true, .. }
    );
    if literal {
        lookup.retained = MatchMode::Literal;
        lookup.offline = MatchMode::Literal;
    }
    let reader = Reader::new(
        client,
        &cfg.dynamodb,
        std::sync::Arc::new(ReadState::new(false)),
        lookup,
    )
    .with_expiry_attribute(&cfg.storage.ttl_attribute);
    let e = |e: mqtt_dynamo::lookup::LookupError| e.to_string();
    match command {
        LookupCommand::Retained { filter, .. } => {
            let r = reader.retained(&filter).await.map_err(e)?;
            print_json(&retained_json(&filter, &r))
        }
        LookupCommand::Offline {
            filter,
            limit,
            since,
            qos,
            ..
        } => {
            let since_us = since
                .map(|t| parse_since(&t, std::time::SystemTime::now()))
                .transpose()?;
            let o = reader
                .offline(&OfflineQuery {
                    filter: filter.clone(),
                    qos,
                    limit,
                    since_us,
                })
                .await
                .map_err(e)?;
            print_json(&offline_json(&filter, &o))
        }
        LookupCommand::Subs { clientid } => subs_list(&reader, &clientid).await,
    }
}

pub async fn subs_list(reader: &mqtt_dynamo::lookup::Reader, clientid: &str) -> Result<(), String> {
    let subs = reader
        .subscriptions(clientid)
        .await
        .map_err(|e| e.to_string())?;
    print_json(&mqtt_dynamo::lookup::http::subscriptions_json(
        clientid, &subs,
    ))
}
