//! TLS for the listeners: PEM certificate chain and key files from the configuration, rustls with
//! the ring provider for both the gRPC and the HTTP listener.

use std::path::Path;

use thiserror::Error;

/// Why a listener's TLS settings could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup for {listener} failed: {source}")]
    Setup {
        listener: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Makes ring the process's rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The gRPC listener's TLS settings.
pub fn grpc(cert: &Path, key: &Path) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
    install_crypto_provider();
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// The HTTP listener's TLS settings.
pub async fn http(
    cert: &Path,
    key: &Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, TlsError> {
    install_crypto_provider();
    axum_server::tls_rustls::RustlsConfig::from_pem(read(cert)?, read(key)?)
        .await
        .map_err(|source| TlsError::Setup {
            listener: "http",
            source,
        })
}
