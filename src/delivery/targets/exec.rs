//! The `exec` target: a command in a checkout of the release's commit with its
//! artifacts, through the same executor as pipeline steps.

use super::{Job, Target};
use crate::ci::pipeline::deploy::ExecTarget;
use crate::ci::pipeline::{Pipeline, Step, Trigger, When};
use crate::core::error::{Error, Result};
use crate::core::git::{self};
use crate::delivery::deployer::{Deployer, LogFile};
use crate::delivery::model::*;
use crate::exec::{self, RunSpec};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

impl Target for ExecTarget {
    fn deploy<'a>(
        &'a self,
        job: Job<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<super::Outcome>> + Send + 'a>> {
        Box::pin(async move { deploy(self, job).await.map(|()| super::Outcome::Live) })
    }
}

/// `exec`: the command, in a checkout of the release's commit with its artifacts
/// under `BETCYCLE_ARTIFACTS`, through the same executor as pipeline steps (clean
/// environment, process group, timeout, masking).
async fn deploy(t: &ExecTarget, job: Job<'_>) -> Result<()> {
    let (deployer, d, project) = (job.deployer, job.deployment, job.project);
    let (release, shutdown) = (job.release, job.shutdown);
    let root = deployer.data_dir.join("deployments").join(d.id.to_string());
    let (workspace, artifacts) = (root.join("workspace"), root.join("artifacts"));
    prepare(deployer, project, release, &workspace, &artifacts).await?;
    let values = deployer.reveal(d, project.id, &t.secret_pairs()).await?;
    let mut context = crate::delivery::variables(d, release);
    context.insert("BETCYCLE_ARTIFACTS".into(), artifacts.display().to_string());
    context.insert("BETCYCLE_WORKSPACE".into(), workspace.display().to_string());
    let step = step_of(t, &values);
    let spec = RunSpec {
        pipeline: Pipeline {
            env: BTreeMap::new(),
            steps: vec![step],
            services: Vec::new(),
            concurrency: None,
            deploy: BTreeMap::new(),
        },
        workspace: workspace.clone(),
        trigger: Trigger {
            branch: release.branch.clone(),
            event: "deploy".into(),
            changed_paths: None,
        },
        context,
        passthrough: std::env::vars()
            .filter(|(k, _)| exec::local::process::PASSTHROUGH_ENV.contains(&k.as_str()))
            .collect(),
        parallelism: 1,
        only: None,
        reuse: BTreeMap::new(),
        secrets: Arc::new(Given(values)),
        executor: exec::local::Local::on_server(
            &deployer.data_dir,
            project.isolation,
            &format!("deployment-{}", d.id),
        ),
        containers: None,
        cache: None,
        agents: None,
    };
    let log = LogFile::create(&deployer.log_path(d.id))?;
    let results = exec::run(spec, Arc::new(log), shutdown.clone()).await;
    // The log stays; the checkout and the artifact copies are not needed any more.
    let _ = tokio::fs::remove_dir_all(&root).await;
    let result = results
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("the deploy command did not run".into()))?;
    if !result.status.fails_run() {
        deployer
            .set_status(
                d.id,
                DeploymentStatus::Verifying,
                "verifying: the command succeeded",
            )
            .await?;
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the deploy command failed: {}",
            result.reason
        )))
    }
}

/// Checks the release's commit out into `workspace` and copies its artifacts under
/// `artifacts`.
pub(super) async fn prepare(
    deployer: &Deployer,
    project: &crate::projects::Project,
    release: &Release,
    workspace: &std::path::Path,
    artifacts: &std::path::Path,
) -> Result<()> {
    let mirror = deployer
        .mirrors
        .fetch_locked(project.id, &project.repository)
        .await?;
    git::checkout(&mirror, &project.repository, &release.commit, workspace).await?;
    for a in &release.artifacts {
        let from = crate::ci::runner::artifact_path_in(&deployer.data_dir, &a.sha256);
        let to = artifacts.join(&a.path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("cannot create {}", parent.display())))?;
        }
        std::fs::copy(&from, &to).map_err(Error::io(format!("cannot copy artifact {}", a.path)))?;
    }
    Ok(())
}

/// The deploy command as the one step of a pipeline.
fn step_of(t: &ExecTarget, values: &[(String, String)]) -> Step {
    Step {
        name: "deploy".into(),
        run: t.run.clone(),
        env: t.env.clone(),
        needs: Vec::new(),
        when: When::default(),
        timeout: Some(t.timeout()),
        retry: 0,
        allow_failure: false,
        workdir: None,
        artifacts: Vec::new(),
        reports: Default::default(),
        secrets: values
            .iter()
            .map(|(env, _)| (env.clone(), env.clone()))
            .collect(),
        matrix: BTreeMap::new(),
        container: None,
        cache: None,
        runs_on: Vec::new(),
    }
}

/// The values resolved for a deploy command, handed to the executor as its step's secrets.
struct Given(Vec<(String, String)>);

impl exec::SecretSource for Given {
    fn reveal<'a>(
        &'a self,
        _step: &'a Step,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<exec::Revealed, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            Ok(exec::Revealed {
                env: self.0.clone(),
                notice: None,
            })
        })
    }
}
