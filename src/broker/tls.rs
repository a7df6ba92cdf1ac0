//! TLS for the listeners: PEM certificate chain and key files from the configuration, optionally
//! a PEM file of client CA certificates (mutual TLS: every client must present a certificate one
//! of them signs), rustls with the ring provider for both the gRPC and the HTTP listener.
//!
//! The material is reloadable. A [`TlsReloader`] owns a listener's current
//! [`rustls::ServerConfig`]; a reload reads the files again, builds a new config and swaps it in
//! for the handshakes that follow, while established connections keep the session they have. A
//! reload happens on [`TlsReload::reload`] (what SIGHUP calls) and when
//! [`TlsReloader::reload_if_changed`] sees a file's modification time or size change (the
//! listener polls every [`POLL_PERIOD`]). A reload that fails keeps the old config, logs the
//! error (which names the file) and is counted, like a successful one, in
//! `mqtt_dynamo_tls_reloads_total`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;

use crate::telemetry::catalogue;

/// How often a listener looks at its TLS files' modification time and size. A change is
/// reloaded at the next look, so a renewed certificate is in use within this period.
pub const POLL_PERIOD: Duration = Duration::from_secs(5);

/// ALPN for the ExHook listener: gRPC is HTTP/2 only.
pub(crate) const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP listener: HTTP/2 or HTTP/1.1, as axum-server offers them.
pub(crate) const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why a listener's TLS material could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM certificate")]
    NoCertificates { path: String },
    #[error("{path} holds no PEM private key: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} is not a PEM certificate file: {source}")]
    Certificates {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the client CA certificates in {path} are unusable: {source}")]
    ClientCa {
        path: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the ring provider refused rustls' default protocol versions: {0}")]
    Provider(#[source] rustls::Error),
    #[error("the key in {key} does not go with the certificate in {cert}: {source}")]
    Pair {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
}

/// One listener's TLS files, as configured.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA certificates; set: clients must present a certificate one of them signs.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of a listener section: `None` unless both `tls_cert` and `tls_key` are set
    /// (validation refuses one without the other, and `tls_client_ca` without them).
    pub fn from_config(
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        client_ca: &Option<PathBuf>,
    ) -> Option<TlsFiles> {
        match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            _ => None,
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [self.cert.as_path(), self.key.as_path()]
            .into_iter()
            .chain(self.client_ca.as_deref())
    }

    /// What the files look like now, to notice a change.
    fn stamps(&self) -> Stamps {
        self.paths()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            })
            .collect()
    }
}

/// Per file (cert, key, client CA): its modification time and size, `None` if unreadable.
type Stamps = Vec<Option<(Option<SystemTime>, u64)>>;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificates {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Makes ring the process's rustls provider (once; later calls are no-ops), for the clients
/// (tonic, hyper) that use the process default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads `files` and builds a server config offering `alpn`: the certificate chain and its key,
/// and with a client CA file a verifier that requires a client certificate it signs.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|source| TlsError::Key {
            path: files.key.display().to_string(),
            source,
        })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (valid, _invalid) = roots.add_parsable_certificates(certificates(ca)?);
            if valid == 0 {
                return Err(TlsError::NoCertificates {
                    path: ca.display().to_string(),
                });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: ca.display().to_string(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Pair {
            cert: files.cert.display().to_string(),
            key: files.key.display().to_string(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Where a listener's handshakes take their config from, so that a swap there is what the next
/// handshake uses.
enum Target {
    /// The ExHook listener's own accept loop reads this before each handshake. A read lock is
    /// held only to clone the `Arc`, a write lock only to replace it.
    Grpc(RwLock<Arc<ServerConfig>>),
    /// axum-server's config, an `ArcSwap` inside that its acceptor loads for each handshake.
    Http(axum_server::tls_rustls::RustlsConfig),
}

/// A listener's TLS material and its reloading.
///
/// Shared (`Arc`) by the listener's accept path (which only reads the current config), its file
/// poll and every [`TlsReload`] handle (which reload). Reloads are serialised by `last_seen`'s
/// mutex, held while the files are read and the config is built (file reads and one signature
/// check: well under a millisecond for ordinary PEM files); handshakes never wait on it.
pub struct TlsReloader {
    /// `"exhook"` or `"http"`: the `listener` label of the reload counter, and in the logs.
    listener: &'static str,
    files: TlsFiles,
    alpn: &'static [&'static [u8]],
    target: Target,
    /// The files' stamps when last loaded (successfully or not): the poll reloads when they
    /// differ, and a failed reload is not retried until a file changes again.
    last_seen: Mutex<Stamps>,
    /// Reloads that swapped in new material, and reloads that failed (counted in the metric
    /// too; these are for [`TlsReload::counts`]).
    reloaded: AtomicU64,
    failed: AtomicU64,
}

/// How many reloads a listener has done, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    pub reloaded: u64,
    pub failed: u64,
}

impl TlsReloader {
    /// Loads the ExHook listener's material (a start error if it cannot).
    pub(crate) fn grpc(files: TlsFiles) -> Result<Arc<TlsReloader>, TlsError> {
        let stamps = files.stamps();
        let config = server_config(&files, ALPN_GRPC)?;
        Ok(Arc::new(TlsReloader::new(
            "exhook",
            files,
            ALPN_GRPC,
            Target::Grpc(RwLock::new(Arc::new(config))),
            stamps,
        )))
    }

    /// Loads the HTTP listener's material (a start error if it cannot).
    pub(crate) fn http(files: TlsFiles) -> Result<Arc<TlsReloader>, TlsError> {
        let stamps = files.stamps();
        let config = server_config(&files, ALPN_HTTP)?;
        let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        Ok(Arc::new(TlsReloader::new(
            "http",
            files,
            ALPN_HTTP,
            Target::Http(rustls_config),
            stamps,
        )))
    }

    fn new(
        listener: &'static str,
        files: TlsFiles,
        alpn: &'static [&'static [u8]],
        target: Target,
        stamps: Stamps,
    ) -> TlsReloader {
        TlsReloader {
            listener,
            files,
            alpn,
            target,
            last_seen: Mutex::new(stamps),
            reloaded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The config for the next ExHook handshake.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        match &self.target {
            Target::Grpc(lock) => Arc::clone(&lock.read().unwrap_or_else(|e| e.into_inner())),
            Target::Http(config) => config.get_inner(),
        }
    }

    /// axum-server's config for the HTTP listener (`None` for the ExHook one).
    pub(crate) fn rustls_config(&self) -> Option<axum_server::tls_rustls::RustlsConfig> {
        match &self.target {
            Target::Grpc(_) => None,
            Target::Http(config) => Some(config.clone()),
        }
    }

    /// Reads the files again and swaps the new material in; on failure keeps the old one.
    /// Blocks on file reads.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_locked(&mut last_seen)
    }

    /// Reloads if a file's modification time or size changed since the last load. Blocks on
    /// file reads. `None`: nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        if self.files.stamps() == *last_seen {
            return None;
        }
        Some(self.reload_locked(&mut last_seen))
    }

    fn reload_locked(&self, last_seen: &mut Stamps) -> Result<(), TlsError> {
        // Stamped before reading: a write racing the read shows as a change at the next poll.
        *last_seen = self.files.stamps();
        match server_config(&self.files, self.alpn) {
            Ok(config) => {
                let config = Arc::new(config);
                match &self.target {
                    Target::Grpc(lock) => {
                        *lock.write().unwrap_or_else(|e| e.into_inner()) = config;
                    }
                    Target::Http(rustls_config) => rustls_config.reload_from_config(config),
                }
                self.reloaded.fetch_add(1, Ordering::Relaxed);
                self.count("reloaded");
                tracing::info!(
                    listener = self.listener,
                    cert = %self.files.cert.display(),
                    "TLS material reloaded; new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.count("failed");
                tracing::error!(
                    listener = self.listener,
                    error = %e,
                    "TLS reload failed; still serving with the previous certificate"
                );
                Err(e)
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!(
            catalogue::TLS_RELOADS_TOTAL,
            "listener" => self.listener,
            "outcome" => outcome,
        )
        .increment(1);
    }

    /// Polls the files every [`POLL_PERIOD`] and reloads on a change; never returns (the
    /// listener drops it when it stops). The reads run on the blocking pool.
    pub(crate) async fn watch(self: Arc<Self>) -> std::convert::Infallible {
        let mut tick = tokio::time::interval(POLL_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = Arc::clone(&self);
            // The outcome is logged and counted inside.
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }

    fn counts(&self) -> ReloadCounts {
        ReloadCounts {
            reloaded: self.reloaded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A handle on the running listeners' TLS reloads (cheap to clone): what SIGHUP calls, and what
/// tests call instead of sending a signal. Holds no listener alive beyond its TLS material.
#[derive(Clone, Default)]
pub struct TlsReload {
    reloaders: Vec<Arc<TlsReloader>>,
}

impl TlsReload {
    pub(crate) fn push(&mut self, reloader: Arc<TlsReloader>) {
        self.reloaders.push(reloader);
    }

    /// Reloads every TLS listener's material now, and says how each went (by `listener`,
    /// `"exhook"` or `"http"`). Blocks on file reads; from async code, call it through
    /// `spawn_blocking`. Empty when no listener uses TLS.
    pub fn reload(&self) -> Vec<(&'static str, Result<(), TlsError>)> {
        self.reloaders
            .iter()
            .map(|r| (r.listener, r.reload()))
            .collect()
    }

    /// The reloads of `listener` so far (`None`: it does not use TLS).
    pub fn counts(&self, listener: &str) -> Option<ReloadCounts> {
        self.reloaders
            .iter()
            .find(|r| r.listener == listener)
            .map(|r| r.counts())
    }
}
