//! Triggers: a change (webhook, poll, schedule, console, API) becomes a queued run —
//! fetch, resolve, changed paths, concurrency group, supersede — and re-runs and cancels.

use super::*;
use crate::ci::run::{Run, RunStatus};
use crate::core::error::{Error, Result};
use crate::core::git::{self};
use crate::identity::audit::{Context, Record};
use crate::projects::Project;
use crate::projects::forge::webhook::PullRequest;
use std::collections::BTreeMap;

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

impl Runner {
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
        let git::Commit {
            sha: commit,
            author: commit_author,
            subject: commit_subject,
        } = git::resolve_commit(&mirror, spec.commit.as_deref().unwrap_or(&git_ref)).await?;
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
            commit_subject,
            commit_author,
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
    pub(super) async fn supersede(&self, run: &Run) -> Result<()> {
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

    pub(super) async fn enqueue(&self, run: Run, ctx: &Context) -> Result<Run> {
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
}
