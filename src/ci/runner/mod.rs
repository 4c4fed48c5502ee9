//! The run worker: takes queued runs (up to a concurrency limit), checks the exact commit
//! out into a workspace under the data directory, runs the pipeline with the executor,
//! and records every step's progress in the store and its output in a log file.
//!
//! On shutdown, running steps are killed but their runs are left `running`: the next
//! start finds them in the running set and re-queues them (once) or fails them.

mod execute;
mod record;
mod release;
mod trigger;

pub use trigger::TriggerSpec;

use crate::ci::run::{Run, RunStatus};
use crate::core::git::Mirrors;
use crate::delivery::Release;
use crate::secrets::Secrets;
use crate::store::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What a run's live channel carries to log viewers.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    /// `count` lines of step `step` from one stream, the first of them line `first`
    /// (from 1, as in the log file): `text` holds them in order, each ending in `\n`.
    Lines {
        step: usize,
        first: u64,
        count: u64,
        stderr: bool,
        text: Arc<str>,
    },
    /// Step `step` finished: its log is complete.
    StepDone { step: usize },
}

/// How many live events (bursts of lines) a slow viewer may fall behind before it
/// catches up from the log file.
pub(super) const LIVE_BUFFER: usize = 4096;

/// How often the worker looks at the queue when nothing wakes it.
pub(super) const POLL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Runner {
    pub(super) store: Store,
    pub(super) data_dir: PathBuf,
    pub(super) limit: usize,
    pub(super) wake: Notify,
    /// Cancel tokens of the runs executing now, by run id.
    pub(super) active: Mutex<HashMap<u64, CancellationToken>>,
    /// Live output of the runs executing now, by run id.
    pub(super) live: Mutex<HashMap<u64, tokio::sync::broadcast::Sender<LiveEvent>>>,
    pub(super) max_step_log: u64,
    pub(super) workspace_retention: std::time::Duration,
    /// Below this much free space on the data disk, queued runs wait.
    pub(super) min_free_disk: u64,
    /// The projects' repository mirrors (shared with the deployer).
    pub mirrors: Arc<Mirrors>,
    pub(super) secrets: Secrets,
    /// Where the releases of green runs go (the deployer's auto-deploy).
    pub(super) releases: mpsc::UnboundedSender<Release>,
    /// The pipeline and infrastructure gates.
    pub(super) policies: crate::policy::Policies,
    /// Where steps and services with an `image` run.
    pub containers: Arc<crate::exec::container::Engine>,
    /// Steps' caches, one namespace per project.
    pub(super) caches: Arc<crate::exec::cache::Caches>,
    /// The queue of jobs for remote agents (`runs_on:`).
    pub agents: Arc<crate::exec::remote::Dispatcher>,
    /// Steps with an `image` run on the host when the engine cannot be reached.
    pub(super) container_fallback_local: bool,
}

/// How often a nearly full data disk is said again in the log while runs wait.
const DISK_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often kept workspaces are swept.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

impl Runner {
    /// A runner for the data directory, concurrency, step log limit and workspace
    /// retention `config` sets.
    pub fn new(
        store: Store,
        config: &crate::core::config::Config,
        secrets: Secrets,
        releases: mpsc::UnboundedSender<Release>,
        policies: crate::policy::Policies,
    ) -> Arc<Self> {
        Arc::new(Self {
            policies,
            secrets,
            releases,
            store,
            limit: config.run_concurrency.max(1),
            wake: Notify::new(),
            active: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            max_step_log: config.log.step_max_size,
            workspace_retention: config.workspace_retention,
            min_free_disk: config.health_min_free_disk,
            mirrors: Arc::new(Mirrors::new(&config.data_dir)),
            containers: crate::exec::container::Engine::new(
                config.container_socket.clone(),
                crate::exec::container::Engine::owner_of_data_dir(&config.data_dir),
            ),
            caches: crate::exec::cache::Caches::new(
                config.data_dir.join("cache"),
                config.cache_max_size,
            ),
            agents: crate::exec::remote::Dispatcher::new(config.agent_lease),
            container_fallback_local: config.container_fallback_local,
            data_dir: config.data_dir.clone(),
        })
    }

    /// Runs executing now, and how many may (`run_concurrency`).
    pub fn slots(&self) -> (usize, usize) {
        (self.active.lock().expect("runner lock").len(), self.limit)
    }

    /// Live output of run `id`, while it executes.
    pub fn subscribe(&self, id: u64) -> Option<tokio::sync::broadcast::Receiver<LiveEvent>> {
        self.live
            .lock()
            .expect("runner lock")
            .get(&id)
            .map(|s| s.subscribe())
    }

    /// Where an artifact with this SHA-256 is kept.
    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        artifact_path_in(&self.data_dir, sha256)
    }

    /// Where run `id`'s step logs live.
    pub fn log_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join("runs").join(id.to_string())
    }

    /// The log file of step `index` of run `id`.
    pub fn log_path(&self, id: u64, index: usize) -> PathBuf {
        self.log_dir(id).join(format!("{index}.log"))
    }

    /// Deletes kept workspaces older than the retention (not those of runs executing).
    fn sweep_workspaces(&self) {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("workspaces")) else {
            return;
        };
        let active: Vec<String> = self
            .active
            .lock()
            .expect("runner lock")
            .keys()
            .map(u64::to_string)
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() >= self.workspace_retention);
            if old && !active.contains(&name) {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        tracing::info!(workspace = %entry.path().display(), "removed a kept workspace past its retention")
                    }
                    Err(e) => {
                        tracing::warn!(workspace = %entry.path().display(), error = %e, "cannot remove a kept workspace")
                    }
                }
            }
        }
    }

    /// Runs queued runs until `shutdown`, and sweeps kept workspaces now and then.
    pub async fn work(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_sweep: Option<Instant> = None;
        let mut disk_warned: Option<Instant> = None;
        loop {
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                let runner = self.clone();
                let _ = tokio::task::spawn_blocking(move || runner.sweep_workspaces()).await;
            }
            // A run on a full disk would lose its logs: queued runs wait for space.
            let free = crate::core::health::free_disk_bytes(&self.data_dir);
            let disk_low = free.is_some_and(|free| free < self.min_free_disk);
            if disk_low && disk_warned.is_none_or(|t| t.elapsed() >= DISK_WARN_EVERY) {
                disk_warned = Some(Instant::now());
                tracing::warn!(
                    free = free.unwrap_or(0),
                    required = self.min_free_disk,
                    "the data disk is nearly full: queued runs wait until there is space (health.min_free_disk)"
                );
            }
            while !disk_low && tasks.len() < self.limit {
                match self.store.claim_next_run().await {
                    Ok(Some(run)) => {
                        let (runner, shutdown) = (self.clone(), shutdown.clone());
                        tasks.spawn(async move { runner.execute(run, shutdown).await });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot take a run from the queue");
                        break;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                Some(_) = tasks.join_next() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        // Steps see the shutdown through their cancel tokens; wait for them to be killed.
        while tasks.join_next().await.is_some() {}
    }

    async fn execute(self: Arc<Self>, run: Run, shutdown: CancellationToken) {
        let id = run.id;
        let cancel = shutdown.child_token();
        self.active
            .lock()
            .expect("runner lock")
            .insert(id, cancel.clone());
        // A cancel between the claim and the line above found no token and marked the run
        // cancelled; it must not run after all.
        if let Ok(Some(current)) = self.store.run(id).await
            && current.status.is_finished()
        {
            self.active.lock().expect("runner lock").remove(&id);
            return;
        }
        // The run's span (its steps' are inside it): for the OTLP export and the log lines
        // written while it runs.
        let span = tracing::info_span!(
            "run",
            otel.name = %format!("run {} #{}", run.project, run.number),
            project = %run.project,
            run = run.number,
            commit = %run.commit,
            branch = run.branch.as_deref().unwrap_or(""),
            event = %run.event,
            status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let outcome = {
            use tracing::Instrument;
            self.execute_inner(run, &cancel)
                .instrument(span.clone())
                .await
        };
        match &outcome {
            Ok((status, _)) => {
                span.record("status", status.as_str());
                if *status != RunStatus::Succeeded {
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(_) => {
                span.record("status", "error");
                span.record("otel.status_code", "ERROR");
            }
        }
        drop(span);
        self.active.lock().expect("runner lock").remove(&id);
        if shutdown.is_cancelled() {
            // Left `running` on purpose: the next start re-queues it.
            return;
        }
        let mut release = None;
        let result = match outcome {
            Ok((status, made)) => {
                release = made;
                self.store.update_run(id, move |r| r.status = status).await
            }
            Err(e) => {
                let message = e.to_string();
                self.store
                    .update_run(id, move |r| {
                        r.status = RunStatus::Error;
                        r.message = message;
                    })
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(run = id, error = %e, "cannot record the end of a run");
        }
        if let Some(release) = release {
            match self.store.create_release(release).await {
                Ok(release) => {
                    let _ = self.releases.send(release);
                }
                Err(e) => tracing::error!(run = id, error = %e, "cannot record the run's release"),
            }
        }
    }
}

/// Splits a stored log line (`<ms> <o|e> <text>`) into (is stderr, text).
pub fn parse_log_line(line: &str) -> (bool, &str) {
    let (_, stderr, text) = parse_log_line_at(line);
    (stderr, text)
}

/// Splits a stored log line into (ms since the step started, is stderr, text).
pub fn parse_log_line_at(line: &str) -> (u64, bool, &str) {
    let mut parts = line.splitn(3, ' ');
    let (ms, tag, text) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
    (ms, tag == Some("e"), text)
}

/// Where an artifact with this SHA-256 is kept under `data_dir`.
pub fn artifact_path_in(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir
        .join("artifacts")
        .join("sha256")
        .join(&sha256[..2.min(sha256.len())])
        .join(sha256)
}
