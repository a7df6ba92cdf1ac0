//! `serve`: the service ([`mqtt_dynamo::service`]) until SIGINT or SIGTERM, then a drain and the
//! run's report on stdout. SIGHUP reloads the listeners' TLS certificates, keys and client CAs.

use tracing::info;

use mqtt_dynamo::config::Config;

pub async fn serve(cfg: Config) -> Result<(), String> {
    // Installed before the "serving" line, so a signal sent as soon as it appears is not missed.
    let signal = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut hangup = hangup_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let service = mqtt_dynamo::service::start(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    info!(
        shards = cfg.pipeline.shards,
        "serving; SIGINT or SIGTERM drains and exits, SIGHUP reloads TLS certificates"
    );
    let reload = service.tls_reload();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            Some(()) = hangup.recv() => {
                info!("SIGHUP: reloading TLS certificates");
                let reload = reload.clone();
                // Each outcome is logged (a failure naming its file) and counted by the reload.
                let _ = tokio::task::spawn_blocking(move || reload.reload()).await;
            }
        }
    }
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

/// SIGHUP, the conventional "reload" signal (replacing the default action, which would end the
/// process).
#[cfg(unix)]
fn hangup_signal() -> std::io::Result<Hangup> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map(Hangup)
}

#[cfg(unix)]
struct Hangup(tokio::signal::unix::Signal);

#[cfg(unix)]
impl Hangup {
    async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// No SIGHUP here: reloads come from the file poll only.
#[cfg(not(unix))]
fn hangup_signal() -> std::io::Result<Hangup> {
    Ok(Hangup)
}

#[cfg(not(unix))]
struct Hangup;

#[cfg(not(unix))]
impl Hangup {
    async fn recv(&mut self) -> Option<()> {
        std::future::pending().await
    }
}
