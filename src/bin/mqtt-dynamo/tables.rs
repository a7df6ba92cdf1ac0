//! `tables create|describe`: the seven tables (the seed's six and the shared topic index) and
//! their TTL.

use clap::Subcommand;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::storage::Backend;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};
use mqtt_dynamo::storage::tables::{self, Capacity, Created};

#[derive(Subcommand)]
pub enum TablesCommand {
    /// Create the seven tables (the seed's six and mqtt_topic_index; existing ones are left
    /// alone), wait until they are ACTIVE, and enable DynamoDB's TTL on `[storage]
    /// ttl_attribute` for mqtt_msg and mqtt_retain.
    Create {
        /// Provisioned read capacity units (with --write-units); on-demand when omitted.
        #[arg(long, requires = "write_units")]
        read_units: Option<i64>,
        /// Provisioned write capacity units (with --read-units).
        #[arg(long, requires = "read_units")]
        write_units: Option<i64>,
    },
    /// Show the seven tables: status, keys, billing mode, item count.
    Describe,
}

pub async fn tables_command(cfg: Config, command: TablesCommand) -> Result<(), String> {
    let backend = Backend::start(&cfg.dynamodb)
        .await
        .map_err(|e| e.to_string())?;
    if backend.is_embedded() {
        println!(
            "note: no endpoint configured, so this talks to a fresh embedded DynamoDB that ends with this command; \
             set AWS_ENDPOINT_URL or [dynamodb] endpoint_url to manage a real one"
        );
    }
    let client = dynamo::client(
        &cfg.dynamodb,
        backend.endpoint().as_deref(),
        SdkRetries::Standard,
    )
    .await;
    let result = match command {
        TablesCommand::Create {
            read_units,
            write_units,
        } => {
            let capacity = match (read_units, write_units) {
                (Some(read), Some(write)) => Capacity::Provisioned { read, write },
                _ => Capacity::OnDemand,
            };
            let created = tables::create_all(&client, &cfg.dynamodb, capacity)
                .await
                .map(|done| {
                    for (name, what) in done {
                        match what {
                            Created::Created => println!("created {name} ({capacity:?}), ACTIVE"),
                            Created::AlreadyExisted => println!("exists  {name}, ACTIVE"),
                        }
                    }
                });
            match created {
                Ok(()) => enable_ttl(&client, &cfg).await,
                Err(e) => Err(e),
            }
        }
        TablesCommand::Describe => match tables::describe_all(&client, &cfg.dynamodb).await {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                for line in tables::describe_ttl(&client, &cfg.dynamodb).await {
                    println!("{line}");
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    backend.stop().await;
    result.map_err(|e| e.to_string())
}

/// `tables create`'s second step: DynamoDB's TTL on `[storage] ttl_attribute` for the message
/// tables.
async fn enable_ttl(
    client: &aws_sdk_dynamodb::Client,
    cfg: &Config,
) -> Result<(), tables::TablesError> {
    let attribute = &cfg.storage.ttl_attribute;
    for (name, what) in tables::enable_ttl(client, &cfg.dynamodb, attribute).await? {
        match what {
            tables::TtlOutcome::Enabled => println!("ttl     {name}: enabled on {attribute}"),
            tables::TtlOutcome::AlreadyEnabled => {
                println!("ttl     {name}: already enabled on {attribute}")
            }
            tables::TtlOutcome::Unsupported(code) => println!(
                "ttl     {name}: this DynamoDB has no TTL ({code}); expired messages stay until deleted (lookups skip them)"
            ),
        }
    }
    Ok(())
}
