//! The running server: shared state, start-up and graceful shutdown.
//!
//! Start-up order matters: config is already validated; then the data directory, the
//! store (migrations), the start record, and only then the listener — so a server that
//! accepts connections always has a working store.

use crate::config::{Config, Source};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::{self, Store};
use jiff::Timestamp;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything a request handler or background worker may need. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
    pub started_at: Timestamp,
    pub started: Instant,
    /// Cancelled on SIGTERM/SIGINT; long-lived work (SSE streams, workers) stops on it.
    pub shutdown: CancellationToken,
}

impl App {
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// Runs `betcycle serve` until a shutdown signal, then stops gracefully.
pub async fn serve(mut config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(Error::io(format!(
        "cannot create data directory {}",
        config.data_dir.display()
    )))?;

    let events = EventBus::new();
    let path = config.data_dir.join(store::FILE_NAME);
    let cache = config.store_cache_size;
    let bus = events.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&path, cache, bus))
        .await
        .map_err(|e| Error::Store(format!("open task failed: {e}")))??;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(Error::io(format!("cannot listen on {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("cannot read the listening address"))?;
    if config
        .sources
        .iter()
        .any(|(k, _, s)| *k == "public_url" && *s == Source::Derived)
    {
        config.public_url = format!("http://{addr}");
    }

    let seq = store
        .record_start(crate::VERSION, std::process::id())
        .await?;
    let info = store.instance_info().await?;
    if info.previous_shutdown_unclean() {
        tracing::warn!(
            "the previous BetCycle process did not shut down gracefully (killed or crashed); \
             committed records are intact"
        );
    }

    let app = App {
        metrics: Arc::new(Metrics::new(store.clone())),
        config: Arc::new(config),
        store: store.clone(),
        events,
        started_at: Timestamp::now(),
        started: Instant::now(),
        shutdown: CancellationToken::new(),
    };
    tokio::spawn(stop_on_signal(app.shutdown.clone()));

    tracing::info!(
        url = %format!("http://{addr}"),
        public_url = %app.config.public_url,
        data_dir = %app.config.data_dir.display(),
        version = crate::VERSION,
        "listening"
    );
    crate::http::serve(app.clone(), listener).await?;

    store.record_stop(seq).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn stop_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(signal, "shutting down: finishing in-flight requests");
    token.cancel();
}
