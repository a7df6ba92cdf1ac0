//! `serve`: the service ([`mqtt_dynamo::service`]) until SIGINT or SIGTERM, then a drain and the
//! run's report on stdout.

use tracing::info;

use mqtt_dynamo::config::Config;

pub async fn serve(cfg: Config) -> Result<(), String> {
    // Installed before the "serving" line, so a signal sent as soon as it appears is not missed.
    let signal = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let service = mqtt_dynamo::service::start(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    info!(
        shards = cfg.pipeline.shards,
        "serving; SIGINT or SIGTERM drains and exits"
    );
    signal.await;
    let report = service.shutdown().await;
    println!("{report}");
    Ok(())
}

/// SIGINT or SIGTERM, with the handlers installed when this is created (before the "serving" log
/// line), so a signal sent as soon as the service says it is ready is never missed.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
