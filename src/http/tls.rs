//! HTTPS with rustls (ring provider): certificate and key from PEM files, re-read when
//! either file changes so a renewed certificate takes effect without a restart.

use crate::core::config::TlsConfig;
use crate::core::error::{Error, Result};
use axum_server::tls_rustls::RustlsConfig;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The TLS configuration for new connections: the current certificate (it may be
/// reloaded) with the ALPN protocols a listener speaks, adjusted once per loaded
/// certificate, not per connection.
#[derive(Clone)]
pub struct Alpn {
    config: RustlsConfig,
    protocols: Vec<Vec<u8>>,
    adjusted: Arc<Mutex<Option<Adjusted>>>,
}

/// (the loaded configuration, the same with the listener's protocols).
type Adjusted = (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>);

impl Alpn {
    pub fn new(config: RustlsConfig, protocols: &[&[u8]]) -> Alpn {
        Alpn {
            config,
            protocols: protocols.iter().map(|p| p.to_vec()).collect(),
            adjusted: Default::default(),
        }
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let loaded = self.config.get_inner();
        let mut adjusted = self.adjusted.lock().expect("tls lock");
        match adjusted.as_ref() {
            Some((from, to)) if Arc::ptr_eq(from, &loaded) => to.clone(),
            _ => {
                let mut config = (*loaded).clone();
                config.alpn_protocols = self.protocols.clone();
                let config = Arc::new(config);
                *adjusted = Some((loaded, config.clone()));
                config
            }
        }
    }
}

/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Makes ring the process's rustls crypto provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn load(tls: &TlsConfig) -> Result<RustlsConfig> {
    install_crypto_provider();
    RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(Error::io(format!(
            "cannot use TLS certificate {} and key {}",
            tls.cert.display(),
            tls.key.display()
        )))
}

fn modified(tls: &TlsConfig) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(&tls.cert), mtime(&tls.key))
}

/// Reloads `config` whenever the files' modification times change, until `stop`.
/// A failed reload keeps the certificate in use and logs why.
pub async fn reload_on_change(config: RustlsConfig, tls: TlsConfig, stop: CancellationToken) {
    let mut seen = modified(&tls);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RELOAD_CHECK) => {}
        }
        let now = modified(&tls);
        if now == seen {
            continue;
        }
        match config.reload_from_pem_file(&tls.cert, &tls.key).await {
            Ok(()) => {
                tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded");
                seen = now;
            }
            // Files may be mid-write; try again at the next check.
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the current one")
            }
        }
    }
}
