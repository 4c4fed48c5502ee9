//! One run: checkout, the pipeline file, the pipeline gate, the steps through the
//! executor with their progress recorded, the infrastructure gate, the release.

use super::record::*;
use super::*;
use crate::ci::pipeline::Trigger;
use crate::ci::run::{Run, RunStatus, StepRecord};
use crate::core::error::{Error, Result};
use crate::core::git::{self, short};
use crate::delivery::Release;
use crate::exec::local::process::PASSTHROUGH_ENV;
use crate::exec::{self, RunSpec, StepResult};
use crate::projects::Project;
use crate::secrets::Secrets;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

impl Runner {
    /// For a failed-steps re-run: the results of the steps that succeeded in the run it
    /// repeats (their logs are copied over too).
    pub(super) async fn reusable(
        &self,
        run: &Run,
        names: &[String],
    ) -> Result<BTreeMap<String, StepResult>> {
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
    pub(super) async fn checkout(
        &self,
        project: &Project,
        commit: &str,
        workspace: &Path,
    ) -> Result<()> {
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

    /// Runs the pipeline; a green run whose pipeline deploys somewhere (and that is not a
    /// pull request's) also yields its release, to be recorded.
    pub(super) async fn execute_inner(
        &self,
        run: Run,
        cancel: &CancellationToken,
    ) -> Result<(RunStatus, Option<Release>)> {
        let project = self.store.project(&run.project).await?.ok_or_else(|| {
            Error::Invalid(format!("project \"{}\" no longer exists", run.project))
        })?;
        let workspace = self.data_dir.join("workspaces").join(run.id.to_string());
        self.checkout(&project, &run.commit, &workspace).await?;
        let pipeline = pipeline_at(&project, &run, &workspace).await?;
        let repository = self.gate_pipeline(&project, &run, &pipeline).await?;
        let plans: Vec<(String, String)> = pipeline
            .steps
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.reports.terraform_plan.clone()?)))
            .collect();
        let names = self.record_steps(&run, &pipeline).await?;
        let reuse = self.reusable(&run, &names).await?;
        let deploy = pipeline.deploy.clone();
        let spec = RunSpec {
            pipeline,
            workspace: workspace.clone(),
            trigger: Trigger {
                branch: run.branch.clone(),
                event: run.event.clone(),
                changed_paths: run.changed_paths.clone(),
            },
            context: context_of(&run, &workspace),
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
            containers: Some(Arc::new(
                crate::exec::container::RunContainers::new(
                    self.containers.clone(),
                    &format!("run-{}", run.id),
                    project.container_host_access,
                )
                .falling_back(self.container_fallback_local),
            )),
            cache: Some(self.caches.space(&format!("project-{}", project.id))),
            agents: Some(self.agents.clone()),
        };
        let results = self.run_recorded(&run, spec, &names, &reuse, cancel).await;

        let mut status = if cancel.is_cancelled() {
            RunStatus::Cancelled
        } else if results.iter().any(|r| r.status.fails_run()) {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        if status == RunStatus::Succeeded
            && let Some(message) = self
                .gate_plans(&run, &plans, &workspace, &repository)
                .await?
        {
            status = RunStatus::Failed;
            self.store
                .update_run(run.id, move |r| r.message = message)
                .await?;
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

    /// The pipeline gate: the server's policies and the repository's own. Returns the
    /// repository's modules (the infrastructure gate uses them too).
    async fn gate_pipeline(
        &self,
        project: &Project,
        run: &Run,
        pipeline: &crate::ci::pipeline::Pipeline,
    ) -> Result<Vec<crate::policy::Module>> {
        let repository = crate::policy::Policies::repository_modules_of(
            &self.mirrors,
            project,
            &run.commit,
            crate::policy::Gate::Pipeline,
        )
        .await?;
        let subject = crate::policy::Subject {
            project: &run.project,
            gate: crate::policy::Gate::Pipeline,
            subject: format!("run {}", run.number),
            stage: "start",
        };
        let verdict = self
            .policies
            .gate(
                subject,
                pipeline_input(run, pipeline),
                repository.clone(),
                false,
            )
            .await?;
        match verdict.refusal {
            Some(why) => Err(Error::Invalid(why)),
            None => Ok(repository),
        }
    }

    /// Records the run's steps (all pending) and makes its log directory; the names in
    /// pipeline order.
    async fn record_steps(
        &self,
        run: &Run,
        pipeline: &crate::ci::pipeline::Pipeline,
    ) -> Result<Vec<String>> {
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
        Ok(names)
    }

    /// Runs `spec` with its progress recorded and its output followed live.
    async fn run_recorded(
        &self,
        run: &Run,
        spec: RunSpec,
        names: &[String],
        reuse: &BTreeMap<String, StepResult>,
        cancel: &CancellationToken,
    ) -> Vec<StepResult> {
        // Store updates happen in order on one task; the observer only sends.
        let (updates, receive) = mpsc::unbounded_channel::<Update>();
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        self.live
            .lock()
            .expect("runner lock")
            .insert(run.id, live.clone());
        let observer = Arc::new(RunObserver::new(self, run.id, names, updates, live));
        let recorder = tokio::spawn(record_progress(
            self.store.clone(),
            (run.id, run.rerun_of),
            self.data_dir.clone(),
            spec.workspace.clone(),
            reuse.keys().cloned().collect(),
            receive,
        ));
        let results = exec::run(spec, observer.clone(), cancel.clone()).await;
        drop(observer);
        self.live.lock().expect("runner lock").remove(&run.id);
        let _ = recorder.await;
        results
    }

    /// The infrastructure gate, on each Terraform/OpenTofu plan a step reported: why the
    /// run fails, if it does.
    async fn gate_plans(
        &self,
        run: &Run,
        plans: &[(String, String)],
        workspace: &Path,
        repository: &[crate::policy::Module],
    ) -> Result<Option<String>> {
        let mut refusals = Vec::new();
        for (step, path) in plans {
            let plan = std::fs::read_to_string(workspace.join(path))
                .map_err(|e| format!("cannot read the plan {path}: {e}"))
                .and_then(|text| {
                    serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| format!("the plan {path} is not JSON: {e}"))
                });
            let why = match plan {
                Err(e) => Some(e),
                Ok(plan) => {
                    let subject = crate::policy::Subject {
                        project: &run.project,
                        gate: crate::policy::Gate::Infrastructure,
                        subject: format!("run {}", run.number),
                        stage: step,
                    };
                    self.policies
                        .gate(subject, plan, repository.to_vec(), false)
                        .await?
                        .refusal
                }
            };
            if let Some(why) = why {
                refusals.push(format!("step {step}: {why}"));
            }
        }
        Ok((!refusals.is_empty())
            .then(|| format!("infrastructure policy: {}", refusals.join("\n"))))
    }
}

/// The pipeline file at the run's commit, parsed, with the trigger's parameters winning
/// over the file's environment.
async fn pipeline_at(
    project: &Project,
    run: &Run,
    workspace: &Path,
) -> Result<crate::ci::pipeline::Pipeline> {
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
    pipeline.env.extend(run.env.clone());
    for step in pipeline.steps.iter_mut() {
        step.env.extend(run.env.clone());
    }
    Ok(pipeline)
}

/// The `BETCYCLE_*` variables every step of `run` gets.
fn context_of(run: &Run, workspace: &Path) -> BTreeMap<String, String> {
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
    context
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
