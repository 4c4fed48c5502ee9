//! The queue worker: claims queued deployments (one per environment at a time), runs
//! each against its target and records how it ended (a rollback marks what it undid).

use super::deployer::*;
use super::targets::Outcome;
use crate::core::error::{Error, Result};
use crate::delivery::model::*;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Deployer {
    /// Runs queued deployments until shutdown; a deployment left in progress by the
    /// previous process is marked failed first.
    pub async fn work(self: Arc<Self>, shutdown: CancellationToken) {
        match self.store.fail_interrupted_deployments().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                deployments = n,
                "deployments interrupted by the last shutdown were marked failed"
            ),
            Err(e) => tracing::error!(error = %e, "cannot check for interrupted deployments"),
        }
        loop {
            match self.store.claim_next_deployment().await {
                Ok(Some(d)) => {
                    let me = self.clone();
                    let stop = shutdown.child_token();
                    tokio::spawn(async move { me.execute(d, stop).await });
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot claim a deployment"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    pub(super) async fn execute(self: Arc<Self>, d: Deployment, shutdown: CancellationToken) {
        let id = d.id;
        let outcome = self.deploy(&d, &shutdown).await;
        if shutdown.is_cancelled() {
            // Left in progress on purpose: the next start marks it failed.
            return;
        }
        let (status, message) = match outcome {
            Ok(Outcome::Live) => (DeploymentStatus::Succeeded, String::new()),
            Ok(Outcome::RolledBack(reason)) => (DeploymentStatus::RolledBack, reason),
            Err(e) => (DeploymentStatus::Failed, e.to_string()),
        };
        let finished = self
            .store
            .update_deployment(
                id,
                move |d| {
                    d.status = status;
                    d.note(
                        "betcycle",
                        if message.is_empty() {
                            status.as_str().to_string()
                        } else {
                            format!("{}: {message}", status.as_str())
                        },
                    );
                    d.message = message;
                    Ok(())
                },
                None,
            )
            .await;
        match finished {
            Ok(d) if d.status == DeploymentStatus::Succeeded => {
                if let Some(bad) = d.rollback_of {
                    let number = d.number;
                    let marked = async {
                        let bad =
                            self.store
                                .deployment(&d.project, bad)
                                .await?
                                .ok_or_else(|| Error::NotFound {
                                    what: format!("deployment {bad}"),
                                })?;
                        self.store
                            .update_deployment(
                                bad.id,
                                move |b| {
                                    b.status = DeploymentStatus::RolledBack;
                                    b.note(
                                        "betcycle",
                                        format!("rolled back by deployment {number}"),
                                    );
                                    Ok(())
                                },
                                None,
                            )
                            .await
                    }
                    .await;
                    if let Err(e) = marked {
                        tracing::error!(deployment = id, error = %e, "cannot mark the rolled-back deployment");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(deployment = id, error = %e, "cannot record the end of a deployment")
            }
        }
        self.wake.notify_one();
    }

    pub(super) async fn deploy(
        &self,
        d: &Deployment,
        shutdown: &CancellationToken,
    ) -> Result<Outcome> {
        let release = self.release(&d.project, d.release_number).await?;
        let project = self
            .store
            .project(&d.project)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("project \"{}\"", d.project),
            })?;
        let def = release.deploy.get(&d.environment).ok_or_else(|| {
            Error::Invalid(format!(
                "release {} has no deploy target for {}",
                release.number, d.environment
            ))
        })?;
        let dir = self.data_dir.join("deployments");
        std::fs::create_dir_all(&dir)
            .map_err(Error::io(format!("cannot create {}", dir.display())))?;
        super::targets::of(&def.target)?
            .deploy(super::targets::Job {
                deployer: self,
                deployment: d,
                release: &release,
                project: &project,
                shutdown,
            })
            .await
    }
}
