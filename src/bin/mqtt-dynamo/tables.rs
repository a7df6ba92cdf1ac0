//! `tables create|describe|build-index`: the seven tables (the seed's six and the shared topic
//! index), their TTL, and filling the topic index from tables written without it.

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
    /// Fill mqtt_topic_index from the topics already in mqtt_retain and mqtt_topic_msg_map (a
    /// parallel Scan of each, BatchWriteItem puts): once after upgrading from a version without
    /// the index, after `tables create` made it and the new version runs. Idempotent; safe beside
    /// running services.
    BuildIndex {
        /// Parallel Scan segments per table (default `[lookup] scan_segments`).
        #[arg(long)]
        segments: Option<u32>,
    },
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
        TablesCommand::BuildIndex { segments } => {
            let segments = segments.unwrap_or(cfg.lookup.scan_segments);
            let t0 = std::time::Instant::now();
            tables::build_topic_index(&client, &cfg.dynamodb, segments)
                .await
                .map(|builds| {
                    for b in builds {
                        println!(
                            "indexed {}: {} topics read, {} skipped (not valid topic names or over 1,024 bytes), {} entries put",
                            b.source, b.topics, b.skipped, b.entries
                        );
                    }
                    println!(
                        "{} built in {:.1} s",
                        cfg.dynamodb
                            .table_name(mqtt_dynamo::storage::item::Table::TopicIndex),
                        t0.elapsed().as_secs_f64()
                    );
                })
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
