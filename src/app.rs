//! The running server: shared state, start-up and graceful shutdown.
//!
//! Start-up order matters: config is already validated; then the data directory, the
//! store (migrations), the start record, and only then the listener — so a server that
//! accepts connections always has a working store.

use crate::core::config::{Config, Source};
use crate::core::error::{Error, Result};
use crate::core::events::EventBus;
use crate::core::metrics::Metrics;
use crate::core::workers::{AtShutdown, Workers};
use crate::identity::secret;
use crate::identity::throttle::LoginThrottle;
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
    pub runner: Arc<crate::ci::runner::Runner>,
    pub deployer: Arc<crate::delivery::Deployer>,
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
    /// The webhook inbox over this server's store, runner and secrets.
    pub fn inbox(&self) -> crate::projects::inbox::Inbox<'_> {
        crate::projects::inbox::Inbox {
            store: &self.store,
            runner: &self.runner,
            secrets: &self.secrets,
            data_dir: &self.config.data_dir,
        }
    }

    /// The instance as `GET /api/v1/instance` and the dashboard show it.
    pub async fn instance_view(&self) -> Result<crate::core::instance::InstanceView> {
        let info = self.store.instance_info().await?;
        Ok(crate::core::instance::InstanceView {
            version: crate::VERSION,
            previous_shutdown_unclean: info.previous_shutdown_unclean(),
            instance: info.instance,
            started_at: self.started_at,
            uptime_seconds: self.uptime().as_secs(),
            public_url: self.config.public_url.clone(),
            store: crate::core::instance::StoreView {
                path: self.store.path().display().to_string(),
                size_bytes: self.store.file_size(),
                schema_version: crate::store::latest_schema_version(),
            },
            starts_total: info.starts_total,
            recent_starts: info.recent_starts,
        })
    }

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
    let store = open_store(&config, events.clone()).await?;
    // Holding the store, nothing else can be backing up or restoring here.
    crate::core::backup::sweep_leftovers(&config.data_dir);
    let listener = bind(&mut config).await?;
    let proxy_listener = match &config.proxy {
        Some(proxy) => Some(tokio::net::TcpListener::bind(proxy.listen).await.map_err(
            Error::io(format!("cannot listen on {} (proxy.listen)", proxy.listen)),
        )?),
        None => None,
    };

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
    recover(&config, &store).await?;
    let setup_token_digest = setup_token(&config, &store).await?;

    let (releases, new_releases) = tokio::sync::mpsc::unbounded_channel();
    let runner = crate::ci::runner::Runner::new(
        store.clone(),
        &config,
        secrets.clone(),
        releases,
        policies.clone(),
    );
    // Containers a crashed process left go before any run makes new ones.
    if tokio::time::timeout(
        std::time::Duration::from_secs(10),
        runner.containers.sweep(),
    )
    .await
    .is_err()
    {
        tracing::warn!("the container engine did not answer the sweep within 10 s");
    }
    // Services left running by the last process are adopted before anything deploys.
    let services = crate::service::Services::new(
        store.clone(),
        config.data_dir.clone(),
        config.prometheus_url.clone(),
    );
    services.recover(&secrets).await?;
    let deployer = crate::delivery::Deployer::new(
        store.clone(),
        secrets.clone(),
        runner.mirrors.clone(),
        config.data_dir.clone(),
        config.public_url.clone(),
        policies.clone(),
        services.clone(),
    );
    let app = App {
        secrets,
        policies,
        schedules_changed: Arc::new(tokio::sync::Notify::new()),
        metrics: Arc::new(Metrics::new(store.clone(), |r| {
            services.metrics.register(r);
            r.register_collector(Box::new(crate::exec::remote::Collector(
                runner.agents.clone(),
            )));
        })),
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
        deployer,
    };
    let mut workers = start_workers(&app, new_releases);
    if let Some(listener) = proxy_listener {
        start_proxy(&app, &mut workers, listener, services.clone()).await?;
    }
    crate::core::systemd::ready(&app.config.public_url);

    crate::http::serve(app.clone(), listener).await?;
    // Running steps are killed; their runs are re-queued at the next start.
    workers.stopped().await;
    // Services keep running; the next start adopts them.
    services.release_all();

    store.record_stop(seq).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The services' reverse proxy, as the worker `proxy`.
async fn start_proxy(
    app: &App,
    workers: &mut Workers,
    listener: tokio::net::TcpListener,
    services: Arc<crate::service::Services>,
) -> Result<()> {
    let config = app.config.proxy.expect("the proxy is configured");
    let tls = match &app.config.tls {
        Some(files) => {
            let rustls = crate::http::tls::load(files).await?;
            tokio::spawn(crate::http::tls::reload_on_change(
                rustls.clone(),
                files.clone(),
                app.shutdown.clone(),
            ));
            Some(rustls)
        }
        None => None,
    };
    let addr = listener
        .local_addr()
        .map_err(Error::io("cannot read the proxy's address"))?;
    tracing::info!(
        url = %format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
        "proxy listening"
    );
    let limits = crate::service::proxy::ProxyLimits {
        max_body: config.max_body,
        max_header: 64 * 1024,
        upstream_timeout: config.upstream_timeout,
        header_read_timeout: app.config.http.header_read_timeout,
        max_connections: app.config.http.max_connections,
    };
    workers.start(
        "proxy",
        AtShutdown::Detach,
        crate::service::proxy::serve(listener, services, tls, limits, app.shutdown.clone()),
    );
    Ok(())
}

/// Opens (and migrates) the store in the data directory.
async fn open_store(config: &Config, events: EventBus) -> Result<Store> {
    let path = config.data_dir.join(store::FILE_NAME);
    let cache = config.store_cache_size;
    tokio::task::spawn_blocking(move || Store::open(&path, cache, events))
        .await
        .map_err(|e| Error::Store(format!("open task failed: {e}")))?
}

/// Binds the listener; a derived `public_url` becomes the address actually bound.
async fn bind(config: &mut Config) -> Result<tokio::net::TcpListener> {
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
    Ok(listener)
}

/// What a previous process left: its surviving steps are killed first (so none runs
/// beside its re-run), then its interrupted runs are re-queued or failed.
async fn recover(config: &Config, store: &Store) -> Result<()> {
    let killed = crate::exec::local::sandbox::kill_leftovers(&config.data_dir.join("processes"));
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
    Ok(())
}

/// While no user exists: a one-time set-up token, logged as a URL; its digest is kept.
async fn setup_token(config: &Config, store: &Store) -> Result<Option<String>> {
    if store.user_count().await? > 0 {
        return Ok(None);
    }
    let token = secret::random_hex(16);
    tracing::warn!(
        setup_url = %format!("{}/setup?token={token}", config.public_url),
        "no users yet: open the set-up URL to create the first administrator \
         (or run `betcycle user add NAME --admin --password-stdin` while the server is stopped)"
    );
    Ok(Some(secret::digest(&token)))
}

/// Every background worker of the server. New capabilities add theirs here.
fn start_workers(
    app: &App,
    mut new_releases: tokio::sync::mpsc::UnboundedReceiver<crate::delivery::Release>,
) -> Workers {
    let shutdown = &app.shutdown;
    let mut workers = Workers::new();
    workers.start(
        "runs",
        AtShutdown::Wait,
        app.runner.clone().work(shutdown.clone()),
    );
    workers.start(
        "deployments",
        AtShutdown::Wait,
        app.deployer.clone().work(shutdown.clone()),
    );
    let (deployer, stop) = (app.deployer.clone(), shutdown.clone());
    workers.start("auto-deploy", AtShutdown::Detach, async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                release = new_releases.recv() => match release {
                    Some(release) => deployer.on_release(release).await,
                    None => return,
                },
            }
        }
    });
    let reporter = crate::projects::forge::status::Reporter::new(
        app.store.clone(),
        app.secrets.clone(),
        app.config.public_url.clone(),
    );
    workers.start(
        "commit-status",
        AtShutdown::Detach,
        reporter.work(app.events.clone(), shutdown.clone()),
    );
    workers.start(
        "schedules",
        AtShutdown::Detach,
        crate::projects::schedule::work(
            app.store.clone(),
            app.runner.clone(),
            app.schedules_changed.clone(),
            shutdown.clone(),
        ),
    );
    workers.start(
        "polling",
        AtShutdown::Detach,
        crate::projects::poll::work(app.store.clone(), app.runner.clone(), shutdown.clone()),
    );
    let probes_changed = Arc::new(tokio::sync::Notify::new());
    workers.start(
        "alerts",
        AtShutdown::Detach,
        crate::monitoring::work(
            crate::monitoring::Sources {
                store: app.store.clone(),
                metrics: app.metrics.clone(),
                runner: app.runner.clone(),
                data_dir: app.config.data_dir.clone(),
                public_url: app.config.public_url.clone(),
            },
            app.events.clone(),
            probes_changed.clone(),
            shutdown.clone(),
        ),
    );
    workers.start(
        "probes",
        AtShutdown::Detach,
        crate::monitoring::probes::work(
            app.store.clone(),
            app.deployer.services().clone(),
            probes_changed,
            shutdown.clone(),
        ),
    );
    workers.start(
        "notifications",
        AtShutdown::Detach,
        crate::monitoring::notify::work(app.store.clone(), app.secrets.clone(), shutdown.clone()),
    );
    workers.start(
        "agent-leases",
        AtShutdown::Detach,
        crate::exec::remote::expire_leases(app.runner.agents.clone(), shutdown.clone()),
    );
    workers.start(
        "signals",
        AtShutdown::Detach,
        stop_on_signal(shutdown.clone()),
    );
    if let Some(watchdog) = crate::core::systemd::watchdog(app.store.clone(), shutdown.clone()) {
        workers.start("systemd-watchdog", AtShutdown::Detach, watchdog);
    }
    tracing::debug!(workers = ?workers.names(), "workers started");
    workers
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
    crate::core::systemd::stopping();
    token.cancel();
}
