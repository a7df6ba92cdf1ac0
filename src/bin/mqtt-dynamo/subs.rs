//! `subs add|rm|list`: a client's stored subscriptions (`mqtt_sub`), which the broker restores on
//! connect.

use clap::Subcommand;

use mqtt_dynamo::config::Config;
use mqtt_dynamo::storage::dynamo::{self, SdkRetries};

use crate::lookup::subs_list;
use crate::read_endpoint;

#[derive(Subcommand)]
pub enum SubsCommand {
    /// Store a subscription (PutItem).
    Add {
        clientid: String,
        topic: String,
        #[arg(long, default_value_t = 0)]
        qos: u8,
    },
    /// Remove a subscription (DeleteItem).
    Rm { clientid: String, topic: String },
    /// List a client's subscriptions.
    List { clientid: String },
}

pub async fn subs_command(cfg: Config, command: SubsCommand) -> Result<(), String> {
    use mqtt_dynamo::lookup::http::subscription_key;
    use mqtt_dynamo::storage::item::Value;
    let endpoint = read_endpoint(&cfg);
    let client = dynamo::client(&cfg.dynamodb, endpoint.as_deref(), SdkRetries::Standard).await;
    let table = cfg
        .dynamodb
        .table_name(mqtt_dynamo::storage::item::Table::Sub);
    match command {
        SubsCommand::Add {
            clientid,
            topic,
            qos,
        } => {
            if qos > 2 {
                return Err("--qos must be 0, 1 or 2".into());
            }
            let key = subscription_key(&clientid, &topic).map_err(|(e, _)| e)?;
            let mut item = key.to_item();
            item.insert("qos".into(), Value::N(i64::from(qos)));
            client
                .put_item()
                .table_name(&table)
                .set_item(Some(dynamo::to_attrs(&item)))
                .send()
                .await
                .map_err(|e| format!("PutItem on {table} failed: {}", dynamo::error_text(&e)))?;
            println!("stored {clientid} {topic} qos {qos}");
            Ok(())
        }
        SubsCommand::Rm { clientid, topic } => {
            let key = subscription_key(&clientid, &topic).map_err(|(e, _)| e)?;
            client
                .delete_item()
                .table_name(&table)
                .set_key(Some(dynamo::key_attrs(&key)))
                .send()
                .await
                .map_err(|e| format!("DeleteItem on {table} failed: {}", dynamo::error_text(&e)))?;
            println!("removed {clientid} {topic}");
            Ok(())
        }
        SubsCommand::List { clientid } => {
            let reader = mqtt_dynamo::lookup::Reader::new(
                client,
                &cfg.dynamodb,
                std::sync::Arc::new(mqtt_dynamo::lookup::ReadState::new(false)),
                cfg.lookup.clone(),
            );
            subs_list(&reader, &clientid).await
        }
    }
}
