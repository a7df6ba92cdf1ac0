//! `config import` (an EMQX 4 `emqx_backend_dynamo.conf` translated into this service's TOML),
//! `config check` (a file with the environment over it, validated and printed) and
//! `config default` (the documented defaults).

use std::path::PathBuf;

use clap::Subcommand;

use mqtt_dynamo::config::{BackendChoice, Config};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Translate an EMQX 4 `emqx_backend_dynamo.conf` into mqtt-dynamo's TOML; warnings about what
    /// cannot be mapped go to stderr.
    Import {
        /// The EMQX 4 file.
        file: PathBuf,
        /// Write the TOML here (created readable by the owner only: it may hold AWS keys);
        /// stdout when omitted.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Validate a configuration file with the environment's MQTT_DYNAMO_* and AWS_* variables
    /// and `*_file` secrets applied, as `serve` would, and print the effective configuration as
    /// TOML (secrets redacted). Exit status 0 when valid, 1 with the error on stderr otherwise.
    Check {
        /// The file; defaults to --config / MQTT_DYNAMO_CONFIG, or none (the defaults).
        file: Option<PathBuf>,
    },
    /// Print every setting with its default value and a line of documentation, as TOML.
    Default,
}

/// `config check`: what `serve` would run with, or why it would not start.
pub fn config_check(file: Option<&std::path::Path>) -> Result<(), String> {
    let config = match file {
        Some(path) => Config::load(path),
        None => Config::from_env(),
    }
    .map_err(|e| e.to_string())?;
    for name in mqtt_dynamo::config::sources::ignored_variables() {
        eprintln!("warning: {name} names no configuration section; ignored");
    }
    let backend = config
        .dynamodb
        .backend(|k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    let text = mqtt_dynamo::config::sources::to_toml(&config)
        .map_err(|e| format!("cannot print the configuration: {e}"))?;
    let origin = file.map_or("the defaults".to_string(), |p| p.display().to_string());
    println!("# the effective configuration of {origin} with the environment; secrets redacted");
    println!("# DynamoDB: {}", describe(&backend, &config));
    print!("{text}");
    eprintln!("configuration OK");
    Ok(())
}

fn describe(backend: &BackendChoice, config: &Config) -> String {
    match backend {
        BackendChoice::Embedded { path: None } => format!(
            "embedded, in memory, on {}",
            config.dynamodb.embedded_listen
        ),
        BackendChoice::Embedded { path: Some(p) } => format!(
            "embedded, in {}, on {}",
            p.display(),
            config.dynamodb.embedded_listen
        ),
        BackendChoice::Endpoint(url) => format!("endpoint {url}"),
        BackendChoice::Aws => match &config.dynamodb.region {
            Some(region) => format!("AWS region {region}"),
            None => "AWS, region from the AWS region chain".to_string(),
        },
    }
}

/// `config default`.
pub fn config_default() -> Result<(), String> {
    print!("{}", mqtt_dynamo::config::sources::DEFAULT_TOML);
    Ok(())
}

pub fn config_import(
    file: &std::path::Path,
    output: Option<&std::path::Path>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let imported = mqtt_dynamo::config::import::import_emqx4(&text)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    match output {
        None => {
            print!("{}", imported.toml);
            if !imported.toml.ends_with('\n') {
                println!();
            }
        }
        Some(path) => {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            f.write_all(imported.toml.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {} ({} warnings)",
                path.display(),
                imported.warnings.len()
            );
        }
    }
    Ok(())
}
