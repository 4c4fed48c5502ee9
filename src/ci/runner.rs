//! The run worker: takes queued runs (up to a concurrency limit), checks the exact commit
//! out into a workspace under the data directory, runs the pipeline with the executor,
//! and records every step's progress in the store and its output in a log file.
//!
//! On shutdown, running steps are killed but their runs are left `running`: the next
//! start finds them in the running set and re-queues them (once) or fails them.

use crate::ci::pipeline::Trigger;
use crate::ci::run::{Run, RunStatus, StepRecord};
use crate::core::error::{Error, Result};
use crate::core::git::{self, Mirrors, short};
use crate::delivery::Release;
use crate::exec::local::process::{PASSTHROUGH_ENV, Stream};
use crate::exec::{self, Observer, RunSpec, StepResult};
use crate::identity::audit::{Context, Record};
use crate::projects::Project;
use crate::projects::forge::webhook::PullRequest;
use crate::secrets::Secrets;
use crate::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What a run's live channel carries to log viewers.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    /// Line `number` (from 1, as in the log file) of step `step`.
    Line {
        step: usize,
        number: u64,
        stderr: bool,
        text: String,
    },
    /// Step `step` finished: its log is complete.
    StepDone { step: usize },
}

/// How many live events a slow viewer may fall behind before it reloads from the file.
const LIVE_BUFFER: usize = 4096;

/// How often the worker looks at the queue when nothing wakes it.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Runner {
    store: Store,
    data_dir: PathBuf,
    limit: usize,
    wake: Notify,
    /// Cancel tokens of the runs executing now, by run id.
    active: Mutex<HashMap<u64, CancellationToken>>,
    /// Live output of the runs executing now, by run id.
    live: Mutex<HashMap<u64, tokio::sync::broadcast::Sender<LiveEvent>>>,
    max_step_log: u64,
    workspace_retention: std::time::Duration,
    /// Below this much free space on the data disk, queued runs wait.
    min_free_disk: u64,
    /// The projects' repository mirrors (shared with the deployer).
    pub mirrors: Arc<Mirrors>,
    secrets: Secrets,
    /// Where the releases of green runs go (the deployer's auto-deploy).
    releases: mpsc::UnboundedSender<Release>,
    /// The pipeline and infrastructure gates.
    policies: crate::policy::Policies,
}

/// What to run and why: everything a trigger (webhook, poll, schedule, console, API)
/// knows about the change it reacts to.
#[derive(Clone, Debug, Default)]
pub struct TriggerSpec {
    /// `push`, `tag`, `pull_request`, `manual`, `api`, `cron`.
    pub event: String,
    /// A branch, tag, `refs/…` name or commit; the default branch when absent.
    pub git_ref: Option<String>,
    /// The exact commit when the trigger knows it (a webhook payload does).
    pub commit: Option<String>,
    /// The commit the ref pointed to before a push: changed paths are computed from it.
    pub before: Option<String>,
    /// Changed paths the trigger already knows (a push payload's commit lists); git's
    /// answer is preferred when it can give one.
    pub changed_paths: Option<Vec<String>>,
    /// Environment overrides (trigger parameters); they win over the pipeline's `env`.
    pub env: BTreeMap<String, String>,
    pub pull_request: Option<PullRequest>,
    /// The webhook delivery or schedule that caused the run.
    pub delivery: Option<u64>,
    pub schedule: Option<u64>,
    /// A note shown on the run (e.g. "catch-up after downtime").
    pub message: String,
}

/// Changed-path lists longer than this are not kept: path filters then pass.
const MAX_CHANGED_PATHS: usize = 5000;

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
            data_dir: config.data_dir.clone(),
        })
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

    /// Fetches the project's repository, resolves what `spec` asks for to a commit, works
    /// out the changed paths and the pipeline's concurrency group, and queues a run. A run
    /// whose group cancels in-progress runs cancels the older ones of its group.
    pub async fn trigger(
        &self,
        project: &Project,
        spec: TriggerSpec,
        ctx: &Context,
    ) -> Result<Run> {
        // One trigger per project at a time: runs are numbered (and superseded) in the
        // order their triggers arrived.
        let lock = self.mirrors.lock(project.id);
        let _guard = lock.lock().await;
        let mirror = self.mirrors.fetch(project.id, &project.repository).await?;
        let git_ref = spec
            .git_ref
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .or_else(|| spec.commit.clone())
            .unwrap_or_else(|| project.default_branch.clone());
        let commit = git::resolve(&mirror, spec.commit.as_deref().unwrap_or(&git_ref)).await?;
        let branch = match (&spec.pull_request, git_ref.strip_prefix("refs/heads/")) {
            // As in Drone and Woodpecker: a pull request's branch is the one it targets.
            (Some(pr), _) => Some(pr.base_branch.clone()),
            (None, Some(b)) => Some(b.to_string()),
            _ if git_ref.starts_with("refs/") || git::is_commit(&git_ref) => None,
            _ => git::resolve(&mirror, &format!("refs/heads/{git_ref}"))
                .await
                .ok()
                .map(|_| git_ref.clone()),
        };
        let from_git = match (&spec.pull_request, &spec.before) {
            (Some(pr), _) => {
                let base = format!("refs/heads/{}", pr.base_branch);
                git::changed_paths(&mirror, &base, &commit, true).await.ok()
            }
            (None, Some(before)) => git::changed_paths(&mirror, before, &commit, false)
                .await
                .ok(),
            (None, None) => None,
        };
        let changed_paths = from_git
            .or(spec.changed_paths)
            .filter(|p| p.len() <= MAX_CHANGED_PATHS);

        let mut run = Run {
            id: 0,
            project: project.slug.clone(),
            number: 0,
            event: spec.event,
            git_ref,
            branch,
            commit,
            actor: ctx.actor.clone(),
            status: RunStatus::Queued,
            created_at: jiff::Timestamp::now(),
            started_at: None,
            finished_at: None,
            message: spec.message,
            restarts: 0,
            rerun_of: None,
            failed_only: false,
            steps: Vec::new(),
            env: spec.env,
            changed_paths,
            pull_request: spec.pull_request,
            concurrency_group: None,
            delivery: spec.delivery,
            schedule: spec.schedule,
            secrets: Vec::new(),
        };
        // The pipeline at that commit says which concurrency group the run is in. A file
        // with problems is reported when the run starts, not here.
        let mut cancel_in_progress = false;
        if let Some(text) = git::read_file(&mirror, &run.commit, &project.pipeline_path).await?
            && let Ok(pipeline) = crate::ci::pipeline::parse(&project.pipeline_path, &text)
            && let Some(concurrency) = pipeline.concurrency
        {
            run.concurrency_group = Some(concurrency.group_for(&run.variables()));
            cancel_in_progress = concurrency.cancel_in_progress;
        }
        let run = self.enqueue(run, ctx).await?;
        if cancel_in_progress {
            self.supersede(&run).await?;
        }
        Ok(run)
    }

    /// Cancels the unfinished runs of `run`'s concurrency group that came before it.
    async fn supersede(&self, run: &Run) -> Result<()> {
        let older: Vec<Run> = self
            .store
            .unfinished_runs()
            .await?
            .into_iter()
            .filter(|r| {
                r.project == run.project
                    && r.id < run.id
                    && r.concurrency_group.is_some()
                    && r.concurrency_group == run.concurrency_group
            })
            .collect();
        let ctx = Context::system("system");
        for old in older {
            let reason = format!(
                "superseded by #{} (concurrency group {})",
                run.number,
                run.concurrency_group.as_deref().unwrap_or_default()
            );
            self.cancel_because(&old, &ctx, reason).await?;
        }
        Ok(())
    }

    /// Queues a new run of the same commit as `previous`; with `failed_only`, steps that
    /// succeeded there keep their result and are not run again.
    pub async fn rerun(&self, previous: &Run, failed_only: bool, ctx: &Context) -> Result<Run> {
        if !previous.status.is_finished() {
            return Err(Error::Conflict(format!(
                "run #{} is still {}; re-run it when it has finished",
                previous.number,
                previous.status.as_str()
            )));
        }
        let run = Run {
            actor: ctx.actor.clone(),
            status: RunStatus::Queued,
            created_at: jiff::Timestamp::now(),
            started_at: None,
            finished_at: None,
            message: if failed_only {
                format!("re-runs the failed steps of #{}", previous.number)
            } else {
                format!("re-runs #{}", previous.number)
            },
            restarts: 0,
            rerun_of: Some(previous.id),
            failed_only,
            steps: Vec::new(),
            secrets: Vec::new(),
            ..previous.clone()
        };
        self.enqueue(run, ctx).await
    }

    async fn enqueue(&self, run: Run, ctx: &Context) -> Result<Run> {
        let target = format!("project:{}", run.project);
        let run = self
            .store
            .create_run(run, Record::new(ctx, "run.create", target))
            .await?;
        self.wake.notify_one();
        Ok(run)
    }

    /// Cancels a queued or running run (audited). Returns the run as it is now.
    pub async fn cancel(&self, run: &Run, ctx: &Context) -> Result<Run> {
        self.cancel_because(run, ctx, format!("cancelled by {}", ctx.actor))
            .await
    }

    /// Cancels a queued or running run, noting `reason` on it (audited).
    pub async fn cancel_because(&self, run: &Run, ctx: &Context, reason: String) -> Result<Run> {
        let record = Record::new(ctx, "run.cancel", format!("project:{}", run.project))
            .detail(format!("run #{}: {reason}", run.number));
        self.store.audit(record).await?;
        let id = run.id;
        let token = self.active.lock().expect("runner lock").get(&id).cloned();
        match token {
            // The executing task records the outcome once its steps are killed.
            Some(token) => {
                let run = self
                    .store
                    .update_run(id, move |run| {
                        if !run.status.is_finished() {
                            run.message = reason;
                        }
                    })
                    .await?;
                token.cancel();
                Ok(run)
            }
            None => {
                self.store
                    .update_run(id, move |run| {
                        if !run.status.is_finished() {
                            run.status = RunStatus::Cancelled;
                            run.message = format!("{reason} before it started");
                        }
                    })
                    .await
            }
        }
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

    /// For a failed-steps re-run: the results of the steps that succeeded in the run it
    /// repeats (their logs are copied over too).
    async fn reusable(&self, run: &Run, names: &[String]) -> Result<BTreeMap<String, StepResult>> {
        let (Some(previous_id), true) = (run.rerun_of, run.failed_only) else {
            return Ok(BTreeMap::new());
        };
        let Some(previous) = self.store.run(previous_id).await? else {
            return Ok(BTreeMap::new());
        };
        let mut reuse = BTreeMap::new();
        for (old_index, step) in previous.steps.iter().enumerate() {
            let done = matches!(
                step.status,
                Some(exec::StepStatus::Succeeded | exec::StepStatus::FailedAllowed)
            );
            let (true, Some(result), Some(new_index)) = (
                done,
                step.as_result(),
                names.iter().position(|n| *n == step.name),
            ) else {
                continue;
            };
            let _ = std::fs::copy(
                self.log_path(previous_id, old_index),
                self.log_path(run.id, new_index),
            );
            reuse.insert(step.name.clone(), result);
        }
        Ok(reuse)
    }

    /// Checks `commit` out into `workspace` from the project's mirror, fetching first when
    /// the mirror does not have it (a run queued before a restart, or an old re-run).
    async fn checkout(&self, project: &Project, commit: &str, workspace: &Path) -> Result<()> {
        let mirror = self.mirrors.path(project.id);
        if git::checkout(&mirror, &project.repository, commit, workspace)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let lock = self.mirrors.lock(project.id);
        let _guard = lock.lock().await;
        let mirror = self.mirrors.fetch(project.id, &project.repository).await?;
        git::checkout(&mirror, &project.repository, commit, workspace).await
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
        let outcome = self.execute_inner(run, &cancel).await;
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

    /// Runs the pipeline; a green run whose pipeline deploys somewhere (and that is not a
    /// pull request's) also yields its release, to be recorded.
    async fn execute_inner(
        &self,
        run: Run,
        cancel: &CancellationToken,
    ) -> Result<(RunStatus, Option<Release>)> {
        let project = self.store.project(&run.project).await?.ok_or_else(|| {
            Error::Invalid(format!("project \"{}\" no longer exists", run.project))
        })?;
        let workspace = self.data_dir.join("workspaces").join(run.id.to_string());
        self.checkout(&project, &run.commit, &workspace).await?;
        let file = workspace.join(&project.pipeline_path);
        let text = tokio::fs::read_to_string(&file).await.map_err(|e| {
            Error::Invalid(format!(
                "cannot read {} at {}: {e}",
                project.pipeline_path,
                short(&run.commit)
            ))
        })?;
        let mut pipeline =
            crate::ci::pipeline::parse(&project.pipeline_path, &text).map_err(|problems| {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                Error::Invalid(format!(
                    "the pipeline file has problems:\n{}",
                    lines.join("\n")
                ))
            })?;

        // Trigger parameters win over the file's environment.
        pipeline.env.extend(run.env.clone());
        for step in pipeline.steps.iter_mut() {
            step.env.extend(run.env.clone());
        }

        // The pipeline gate: the server's policies and the repository's own.
        let repository = crate::policy::Policies::repository_modules_of(
            &self.mirrors,
            &project,
            &run.commit,
            crate::policy::Gate::Pipeline,
        )
        .await?;
        let verdict = self
            .policies
            .gate(
                crate::policy::Subject {
                    project: &run.project,
                    gate: crate::policy::Gate::Pipeline,
                    subject: format!("run {}", run.number),
                    stage: "start",
                },
                pipeline_input(&run, &pipeline),
                repository.clone(),
                false,
            )
            .await?;
        if let Some(why) = verdict.refusal {
            return Err(Error::Invalid(why));
        }
        let plans: Vec<(String, String)> = pipeline
            .steps
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.reports.terraform_plan.clone()?)))
            .collect();

        let steps: Vec<StepRecord> = pipeline
            .steps
            .iter()
            .map(|s| StepRecord {
                name: s.name.clone(),
                needs: s
                    .needs
                    .iter()
                    .map(|i| pipeline.steps[*i].name.clone())
                    .collect(),
                ..StepRecord::pending()
            })
            .collect();
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        self.store
            .update_run(run.id, move |r| r.steps = steps)
            .await?;
        std::fs::create_dir_all(self.log_dir(run.id)).map_err(Error::io(format!(
            "cannot create {}",
            self.log_dir(run.id).display()
        )))?;

        let reuse = self.reusable(&run, &names).await?;

        let mut context = BTreeMap::from([
            ("BETCYCLE_RUN_ID".to_string(), run.id.to_string()),
            ("BETCYCLE_RUN_NUMBER".to_string(), run.number.to_string()),
            ("BETCYCLE_PROJECT".to_string(), run.project.clone()),
            ("BETCYCLE_COMMIT".to_string(), run.commit.clone()),
            (
                "BETCYCLE_BRANCH".to_string(),
                run.branch.clone().unwrap_or_default(),
            ),
            ("BETCYCLE_EVENT".to_string(), run.event.clone()),
            (
                "BETCYCLE_WORKSPACE".to_string(),
                workspace.display().to_string(),
            ),
            ("BETCYCLE_REF".to_string(), run.git_ref.clone()),
        ]);
        if let Some(tag) = run.git_ref.strip_prefix("refs/tags/") {
            context.insert("BETCYCLE_TAG".into(), tag.to_string());
        }
        if let Some(pr) = &run.pull_request {
            context.extend([
                ("BETCYCLE_PULL_REQUEST".to_string(), pr.number.to_string()),
                (
                    "BETCYCLE_PULL_REQUEST_FORK".to_string(),
                    pr.fork.to_string(),
                ),
                ("BETCYCLE_SOURCE_BRANCH".to_string(), pr.head_branch.clone()),
                ("BETCYCLE_TARGET_BRANCH".to_string(), pr.base_branch.clone()),
            ]);
        }
        let deploy = pipeline.deploy.clone();
        let spec = RunSpec {
            pipeline,
            workspace: workspace.clone(),
            trigger: Trigger {
                branch: run.branch.clone(),
                event: run.event.clone(),
                changed_paths: run.changed_paths.clone(),
            },
            context,
            passthrough: std::env::vars()
                .filter(|(k, _)| PASSTHROUGH_ENV.contains(&k.as_str()))
                .collect(),
            parallelism: self.limit,
            only: None,
            reuse: reuse.clone(),
            secrets: Arc::new(RunSecrets {
                secrets: self.secrets.clone(),
                project: project.id,
                withheld: run.pull_request.as_ref().is_some_and(|pr| pr.fork),
                run: run.clone(),
            }),
            executor: crate::exec::local::Local::on_server(
                &self.data_dir,
                project.isolation,
                &format!("run-{}", run.id),
            ),
        };

        // Store updates happen in order on one task; the observer only sends.
        let (updates, mut receive) = mpsc::unbounded_channel::<Update>();
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        self.live
            .lock()
            .expect("runner lock")
            .insert(run.id, live.clone());
        let observer = Arc::new(RunObserver::new(self, run.id, &names, updates, live));
        let store = self.store.clone();
        let id = run.id;
        let (data_dir, kept_from) = (self.data_dir.clone(), workspace.clone());
        let reused: std::collections::HashSet<String> = reuse.keys().cloned().collect();
        let rerun_of = run.rerun_of;
        let recorder = tokio::spawn(async move {
            while let Some(update) = receive.recv().await {
                let result = match update {
                    Update::Started(i) => {
                        store
                            .update_run(id, move |r| {
                                r.steps[i].running = true;
                                r.steps[i].started_at = Some(jiff::Timestamp::now());
                            })
                            .await
                    }
                    Update::Finished(i, mut result) => {
                        let (data_dir, workspace, copy) =
                            (data_dir.clone(), kept_from.clone(), result.clone());
                        let warnings = tokio::task::spawn_blocking(move || {
                            keep_artifacts(&data_dir, &workspace, &copy)
                        })
                        .await
                        .unwrap_or_default();
                        result.warnings.extend(warnings);
                        let reused_from =
                            reused.contains(&result.name).then_some(rerun_of).flatten();
                        store
                            .update_run(id, move |r| {
                                r.steps[i].finish(&result);
                                r.steps[i].reused_from = reused_from;
                            })
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::error!(run = id, error = %e, "cannot record step progress");
                }
            }
        });
        let results = exec::run(spec, observer.clone(), cancel.clone()).await;
        drop(observer);
        self.live.lock().expect("runner lock").remove(&run.id);
        let _ = recorder.await;

        let mut status = if cancel.is_cancelled() {
            RunStatus::Cancelled
        } else if results.iter().any(|r| r.status.fails_run()) {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        // The infrastructure gate, on each Terraform/OpenTofu plan a step reported.
        if status == RunStatus::Succeeded {
            let mut refusals = Vec::new();
            for (step, path) in &plans {
                let why = match std::fs::read_to_string(workspace.join(path))
                    .map_err(|e| format!("cannot read the plan {path}: {e}"))
                    .and_then(|text| {
                        serde_json::from_str::<serde_json::Value>(&text)
                            .map_err(|e| format!("the plan {path} is not JSON: {e}"))
                    }) {
                    Err(e) => Some(e),
                    Ok(plan) => {
                        self.policies
                            .gate(
                                crate::policy::Subject {
                                    project: &run.project,
                                    gate: crate::policy::Gate::Infrastructure,
                                    subject: format!("run {}", run.number),
                                    stage: step,
                                },
                                plan,
                                repository.clone(),
                                false,
                            )
                            .await?
                            .refusal
                    }
                };
                if let Some(why) = why {
                    refusals.push(format!("step {step}: {why}"));
                }
            }
            if !refusals.is_empty() {
                status = RunStatus::Failed;
                let message = format!("infrastructure policy: {}", refusals.join("\n"));
                self.store
                    .update_run(run.id, move |r| r.message = message)
                    .await?;
            }
        }
        // Failed workspaces stay for inspection; successful ones are not needed.
        if status == RunStatus::Succeeded {
            let _ = tokio::fs::remove_dir_all(&workspace).await;
        }
        let release = if status == RunStatus::Succeeded
            && !deploy.is_empty()
            && run.event != "pull_request"
        {
            Some(self.release_of(&run, &project, &results, deploy).await)
        } else {
            None
        };
        Ok((status, release))
    }

    /// The release a green run makes: its commit (with the commit's time and subject from
    /// the mirror), artifacts, test counts and coverage, and the deploy section.
    async fn release_of(
        &self,
        run: &Run,
        project: &Project,
        results: &[StepResult],
        deploy: BTreeMap<String, crate::ci::pipeline::deploy::DeployDef>,
    ) -> Release {
        let mirror = self.mirrors.path(project.id);
        let (commit_time, commit_message) = match git::git(
            &["log", "-1", "--format=%cI%n%s", &run.commit],
            Some(&mirror),
        )
        .await
        {
            Ok(out) => {
                let mut lines = out.lines();
                (
                    lines.next().and_then(|t| t.parse::<jiff::Timestamp>().ok()),
                    lines.next().unwrap_or_default().to_string(),
                )
            }
            Err(_) => (None, String::new()),
        };
        let mut tests: Option<crate::delivery::TestCounts> = None;
        for (step, t) in results
            .iter()
            .filter_map(|r| Some((&r.name, r.tests.as_ref()?)))
        {
            let sum = tests.get_or_insert_with(Default::default);
            sum.total += t.total;
            sum.passed += t.passed;
            sum.failed += t.failed;
            sum.skipped += t.skipped;
            for case in t
                .cases
                .iter()
                .filter(|c| c.outcome == crate::ci::reports::junit::TestOutcome::Failed)
            {
                if sum.failing.len() < crate::delivery::TestCounts::LISTED {
                    let message = case.message.lines().next().unwrap_or_default();
                    sum.failing.push(if message.is_empty() {
                        format!("{step}: {}", case.name)
                    } else {
                        format!("{step}: {} — {message}", case.name)
                    });
                }
            }
        }
        let coverage = crate::ci::reports::coverage::Coverage::sum(
            results.iter().filter_map(|r| r.coverage.clone()).collect(),
        )
        .map(|c| c.percent);
        Release {
            id: 0,
            project: run.project.clone(),
            number: 0,
            run: run.id,
            run_number: run.number,
            commit: run.commit.clone(),
            git_ref: run.git_ref.clone(),
            branch: run.branch.clone(),
            commit_time,
            commit_message,
            actor: run.actor.clone(),
            artifacts: results.iter().flat_map(|r| r.artifacts.clone()).collect(),
            tests,
            coverage,
            deploy,
            created_at: jiff::Timestamp::now(),
        }
    }
}

/// The pipeline gate's input (documented in docs/policies.md).
fn pipeline_input(run: &Run, pipeline: &crate::ci::pipeline::Pipeline) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = pipeline
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "run": s.run,
                "needs": s.needs.iter().map(|i| pipeline.steps[*i].name.clone()).collect::<Vec<_>>(),
                "env": s.env.keys().collect::<Vec<_>>(),
                "secrets": s.secrets.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                "timeout_seconds": s.timeout.map(|t| t.as_secs()),
                "retry": s.retry,
                "allow_failure": s.allow_failure,
                "artifacts": s.artifacts,
                "when": {"branch": s.when.branch, "event": s.when.event, "paths": s.when.paths},
                "matrix": s.matrix,
            })
        })
        .collect();
    serde_json::json!({
        "project": run.project,
        "pipeline": {
            "steps": steps,
            "services": pipeline.services.iter().map(|s| serde_json::json!({"name": s.name, "run": s.run})).collect::<Vec<_>>(),
            "env": pipeline.env.keys().collect::<Vec<_>>(),
            "concurrency_group": run.concurrency_group,
            "deploy": pipeline.deploy.iter().map(|(env, d)| (env.clone(), serde_json::to_value(&d.target).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
        },
        "trigger": {
            "event": run.event,
            "ref": run.git_ref,
            "branch": run.branch,
            "commit": run.commit,
            "pull_request": run.pull_request,
            "changed_paths": run.changed_paths,
        },
        "actor": run.actor,
    })
}

/// A server run's secrets: from the secret store, each read recorded on the run — and
/// none for a pull request from a fork, whose code nobody with access has reviewed.
struct RunSecrets {
    secrets: Secrets,
    project: u64,
    withheld: bool,
    run: Run,
}

impl exec::SecretSource for RunSecrets {
    fn reveal<'a>(
        &'a self,
        step: &'a crate::ci::pipeline::Step,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<exec::Revealed, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let names: Vec<&str> = step.secrets.iter().map(|(n, _)| n.as_str()).collect();
            if self.withheld {
                return Ok(exec::Revealed {
                    env: Vec::new(),
                    notice: Some(format!(
                        "secrets are withheld from pull requests from forks: {} not set",
                        names.join(", ")
                    )),
                });
            }
            self.secrets
                .reveal(&self.run, self.project, None, &step.name, &step.secrets)
                .await
                .map(|env| exec::Revealed { env, notice: None })
                .map_err(|e| e.to_string())
        })
    }
}

enum Update {
    Started(usize),
    Finished(usize, Box<StepResult>),
}

/// An open step log: the file, when the step started, bytes and lines written.
type StepLog = (std::io::BufWriter<std::fs::File>, Instant, u64, u64);

/// Writes each step's output to its log file (`<ms since step start> <o|e> <text>` per
/// line) and forwards progress to the recorder.
struct RunObserver {
    index: HashMap<String, usize>,
    logs: Vec<Mutex<Option<StepLog>>>,
    /// Per step, the first error writing its log (a full disk): said on the step.
    log_errors: Vec<Mutex<Option<String>>>,
    paths: Vec<PathBuf>,
    max_log: u64,
    updates: mpsc::UnboundedSender<Update>,
    live: tokio::sync::broadcast::Sender<LiveEvent>,
}

impl RunObserver {
    fn new(
        runner: &Runner,
        id: u64,
        names: &[String],
        updates: mpsc::UnboundedSender<Update>,
        live: tokio::sync::broadcast::Sender<LiveEvent>,
    ) -> Self {
        Self {
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            logs: names.iter().map(|_| Mutex::new(None)).collect(),
            log_errors: names.iter().map(|_| Mutex::new(None)).collect(),
            paths: (0..names.len()).map(|i| runner.log_path(id, i)).collect(),
            max_log: runner.max_step_log,
            updates,
            live,
        }
    }
}

impl RunObserver {
    /// Notes the first error writing step `i`'s log, and logs it once.
    fn log_failed(&self, i: usize, problem: String) {
        let mut first = self.log_errors[i].lock().expect("log lock");
        if first.is_none() {
            tracing::error!(problem, "a step log cannot be written; the step goes on");
            *first = Some(problem);
        }
    }
}

impl Observer for RunObserver {
    fn step_started(&self, step: &str) {
        let Some(&i) = self.index.get(step) else {
            return;
        };
        match std::fs::File::create(&self.paths[i]) {
            Ok(file) => {
                *self.logs[i].lock().expect("log lock") =
                    Some((std::io::BufWriter::new(file), Instant::now(), 0, 0))
            }
            Err(e) => self.log_failed(i, format!("cannot create {}: {e}", self.paths[i].display())),
        }
        let _ = self.updates.send(Update::Started(i));
    }

    fn line(&self, step: &str, stream: Stream, text: &str) {
        let Some(&i) = self.index.get(step) else {
            return;
        };
        let mut guard = self.logs[i].lock().expect("log lock");
        let Some((file, started, written, lines)) = guard.as_mut() else {
            return;
        };
        if *written >= self.max_log {
            return;
        }
        let ms = started.elapsed().as_millis();
        *written += text.len() as u64 + 1;
        let (stderr, text) = if *written >= self.max_log {
            let notice = format!(
                "betcycle: output truncated: this step wrote more than {} bytes",
                self.max_log
            );
            (true, notice)
        } else {
            (stream == Stream::Stderr, text.to_string())
        };
        // Flushed per line so the file never lags the live channel (see below). Batching
        // writes is the lever if log throughput ever needs it.
        let written = writeln!(file, "{ms} {} {text}", if stderr { 'e' } else { 'o' })
            .and_then(|()| file.flush());
        if let Err(e) = written {
            self.log_failed(i, format!("cannot write {}: {e}", self.paths[i].display()));
        }
        *lines += 1;
        // The line is in the file first, so a viewer that reads the file and then
        // follows the live channel misses nothing.
        let _ = self.live.send(LiveEvent::Line {
            step: i,
            number: *lines,
            stderr,
            text,
        });
    }

    fn step_finished(&self, result: &StepResult) {
        let Some(&i) = self.index.get(&result.name) else {
            return;
        };
        let mut lines = 0;
        if let Some((mut file, _, _, written)) = self.logs[i].lock().expect("log lock").take() {
            lines = written;
            if let Err(e) = file.flush() {
                self.log_failed(i, format!("cannot write {}: {e}", self.paths[i].display()));
            }
        }
        let mut result = result.clone();
        if let Some(problem) = self.log_errors[i].lock().expect("log lock").clone() {
            let notice = format!("betcycle: the step log is incomplete: {problem}");
            let _ = self.live.send(LiveEvent::Line {
                step: i,
                number: lines + 1,
                stderr: true,
                text: notice,
            });
            result
                .warnings
                .push(format!("the step log is incomplete: {problem}"));
        }
        let _ = self.live.send(LiveEvent::StepDone { step: i });
        let _ = self.updates.send(Update::Finished(i, Box::new(result)));
    }
}

/// Splits a stored log line (`<ms> <o|e> <text>`) into (is stderr, text).
pub fn parse_log_line(line: &str) -> (bool, &str) {
    let mut parts = line.splitn(3, ' ');
    let (_, tag, text) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    (tag == Some("e"), text)
}

/// Where an artifact with this SHA-256 is kept under `data_dir`.
pub fn artifact_path_in(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir
        .join("artifacts")
        .join("sha256")
        .join(&sha256[..2.min(sha256.len())])
        .join(sha256)
}

/// Copies a step's artifacts from the workspace into the content-addressed store (a file
/// already there, by digest, is not copied again). Returns warnings for those it could not.
fn keep_artifacts(data_dir: &Path, workspace: &Path, result: &StepResult) -> Vec<String> {
    let mut warnings = Vec::new();
    for artifact in &result.artifacts {
        let target = artifact_path_in(data_dir, &artifact.sha256);
        if target.exists() {
            continue;
        }
        let copy = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let partial = target.with_extension("partial");
                std::fs::copy(workspace.join(&artifact.path), &partial)?;
                std::fs::rename(&partial, &target)
            });
        if let Err(e) = copy {
            warnings.push(format!("artifact {}: cannot keep it: {e}", artifact.path));
        }
    }
    warnings
}
