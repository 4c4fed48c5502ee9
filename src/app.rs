//! The running server: shared state, start-up and graceful shutdown.
//!
//! Start-up order matters: config is already validated; then the data directory, the
//! store (migrations), the start record, and only then the listener — so a server that
//! accepts connections always has a working store.

use crate::auth::secret;
use crate::auth::throttle::LoginThrottle;
use crate::config::{Config, Source};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::{self, Store};
use jiff::Timestamp;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Failed sign-ins allowed per user name and per address within the window.
pub const LOGIN_MAX_FAILURES: usize = 10;
pub const LOGIN_WINDOW_SECS: u64 = 300;

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
    pub login_throttle: Arc<LoginThrottle>,
    pub runner: Arc<crate::runner::Runner>,
    pub deployer: Arc<crate::deploy::Deployer>,
    /// The secret store (sealed by the master key).
    pub secrets: crate::secrets::Secrets,
    /// Stored policies and the decision log.
    pub policies: crate::policy::Policies,
    /// Wakes the schedule worker when schedules change.
    pub schedules_changed: Arc<tokio::sync::Notify>,
    /// SHA-256 of the one-time set-up token while no user exists; `None` afterwards.
    pub setup_token_digest: Arc<Mutex<Option<String>>>,
}

impl App {
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Whether cookies must be `Secure`: BetCycle serves HTTPS itself or sits behind a
    /// proxy that does.
    pub fn https(&self) -> bool {
        self.config.tls.is_some() || self.config.public_url.starts_with("https://")
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
    // Holding the store, nothing else can be backing up or restoring here.
    crate::backup::sweep_leftovers(&config.data_dir);

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
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        config.public_url = format!("{scheme}://{addr}");
    }

    // The key is checked before anything is recorded: a wrong key changes nothing.
    let master_key = crate::secrets::open_master_key(
        &config.master_key_file,
        !config.master_key_file_named,
        &store,
    )
    .await?;
    let secrets = crate::secrets::Secrets::new(store.clone(), master_key);
    let adopted = secrets.adopt_project_credentials().await?;
    if adopted > 0 {
        tracing::info!(adopted, "moved project credentials into the secret store");
    }

    let policies = crate::policy::Policies::new(store.clone());
    if policies.seed().await? {
        tracing::info!("installed the starter policies (instance policies starter-*.rego)");
    }

    let seq = store
        .record_start(crate::VERSION, std::process::id())
        .await?;
    // Steps a killed server left running go first, so none runs beside its re-run.
    let killed = crate::executor::sandbox::kill_leftovers(&config.data_dir.join("processes"));
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed steps the previous BetCycle process left running"
        );
    }
    let (requeued, failed) = store
        .recover_interrupted_runs(config.run_max_restarts)
        .await?;
    if requeued + failed > 0 {
        tracing::warn!(
            requeued,
            failed,
            "runs interrupted by the last shutdown were re-queued or failed"
        );
    }
    let info = store.instance_info().await?;
    if info.previous_shutdown_unclean() {
        tracing::warn!(
            "the previous BetCycle process did not shut down gracefully (killed or crashed); \
             committed records are intact"
        );
    }

    let setup_token_digest = if store.user_count().await? == 0 {
        let token = secret::random_hex(16);
        tracing::warn!(
            setup_url = %format!("{}/setup?token={token}", config.public_url),
            "no users yet: open the set-up URL to create the first administrator \
             (or run `betcycle user add NAME --admin --password-stdin` while the server is stopped)"
        );
        Some(secret::digest(&token))
    } else {
        None
    };

    let (releases, mut new_releases) = tokio::sync::mpsc::unbounded_channel();
    let runner = crate::runner::Runner::new(
        store.clone(),
        &config,
        secrets.clone(),
        releases,
        policies.clone(),
    );
    let deployer = crate::deploy::Deployer::new(
        store.clone(),
        secrets.clone(),
        runner.mirrors.clone(),
        config.data_dir.clone(),
        config.public_url.clone(),
        policies.clone(),
    );
    let app = App {
        secrets: secrets.clone(),
        policies,
        schedules_changed: Arc::new(tokio::sync::Notify::new()),
        metrics: Arc::new(Metrics::new(store.clone())),
        config: Arc::new(config),
        store: store.clone(),
        events,
        started_at: Timestamp::now(),
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        login_throttle: Arc::new(LoginThrottle::new(
            LOGIN_MAX_FAILURES,
            std::time::Duration::from_secs(LOGIN_WINDOW_SECS),
        )),
        setup_token_digest: Arc::new(Mutex::new(setup_token_digest)),
        runner,
        deployer: deployer.clone(),
    };
    let worker = tokio::spawn(app.runner.clone().work(app.shutdown.clone()));
    let deploy_worker = tokio::spawn(deployer.clone().work(app.shutdown.clone()));
    {
        let (deployer, shutdown) = (deployer.clone(), app.shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    release = new_releases.recv() => match release {
                        Some(release) => deployer.on_release(release).await,
                        None => return,
                    },
                }
            }
        });
    }
    let reporter =
        crate::forge::status::Reporter::new(store.clone(), secrets, app.config.public_url.clone());
    tokio::spawn(reporter.work(app.events.clone(), app.shutdown.clone()));
    tokio::spawn(crate::schedule::work(
        store.clone(),
        app.runner.clone(),
        app.schedules_changed.clone(),
        app.shutdown.clone(),
    ));
    tokio::spawn(crate::poll::work(
        store.clone(),
        app.runner.clone(),
        app.shutdown.clone(),
    ));
    tokio::spawn(stop_on_signal(app.shutdown.clone()));
    crate::systemd::spawn_watchdog(store.clone(), app.shutdown.clone());
    crate::systemd::ready(&app.config.public_url);

    crate::http::serve(app.clone(), listener).await?;
    // Running steps are killed; their runs are re-queued at the next start.
    let _ = worker.await;
    let _ = deploy_worker.await;

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
    crate::systemd::stopping();
    token.cancel();
}
