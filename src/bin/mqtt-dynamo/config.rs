//! `config import`: an EMQX 4 `emqx_backend_dynamo.conf` translated into this service's TOML.

use std::path::PathBuf;

use clap::Subcommand;

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
