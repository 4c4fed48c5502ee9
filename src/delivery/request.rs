//! Deployment requests: protections (branches, windows, freezes, soak), the deploy gate
//! at the request, promotion, rollback and the automatic deployments of a new release.

use super::deployer::*;
use crate::core::error::{Error, Result};
use crate::core::git::{self};
use crate::delivery::model::*;
use crate::identity::audit::{Context, Record};
use jiff::Timestamp;

impl Deployer {
    /// Asks for `release` to be deployed to `environment`. Branch, time and soak
    /// protections are checked now (a rollback skips them: it restores what was there);
    /// with required approvals the deployment waits for them, otherwise it is queued.
    pub async fn request(
        &self,
        project: &crate::projects::Project,
        environment: &str,
        release: u64,
        reason: Reason,
        actor: &Context,
        rollback_of: Option<u64>,
    ) -> Result<Deployment> {
        let (env, previous, _) = self.environment(&project.slug, environment).await?;
        let release = self.release(&project.slug, release).await?;
        if !release.deploy.contains_key(environment) {
            return Err(Error::Invalid(format!(
                "release {} (commit {}) has no deploy target for {environment}: its .betcycle.yml has no deploy.{environment} section",
                release.number,
                git::short(&release.commit)
            )));
        }
        let now = Timestamp::now();
        if reason != Reason::Rollback {
            self.check_protections(&env, previous.as_ref(), &release, now)
                .await?;
        }
        let since = self
            .live(&project.slug, environment)
            .await?
            .map(|d| d.commit);
        let notes = release_notes(
            &self.mirrors.path(project.id),
            since.as_deref(),
            &release.commit,
        )
        .await;
        let needs_approval = env.protection.required_approvals > 0 && reason != Reason::Rollback;
        // A rollback restores what was there and is not gated.
        let (decisions, warnings) = if reason == Reason::Rollback {
            (Vec::new(), Vec::new())
        } else {
            self.gate_request(
                project,
                &env,
                previous.as_ref(),
                &release,
                actor,
                needs_approval,
            )
            .await?
        };
        let approvals = if needs_approval {
            env.protection.required_approvals
        } else {
            0
        };
        let mut deployment = Deployment {
            requested_at: now,
            rollback_of,
            notes,
            decisions,
            ..Deployment::of(&release, environment, reason, &actor.actor, approvals)
        };
        let why = requested_because(reason, &release, previous.as_ref(), rollback_of);
        deployment.note(&actor.actor, why);
        for warning in warnings {
            deployment.note("policy", format!("warning: {warning}"));
        }
        if needs_approval {
            deployment.note(
                "betcycle",
                format!("awaiting {} approval(s)", env.protection.required_approvals),
            );
        }
        let record = Record::new(
            actor,
            "deployment.request",
            format!("project:{}", project.slug),
        );
        let deployment = self.store.create_deployment(deployment, record).await?;
        if needs_approval && let Some(url) = &env.approval_webhook {
            self.announce_approval(url.clone(), &deployment, &release);
        }
        self.wake.notify_one();
        Ok(deployment)
    }

    /// The environment's branch, time-window, freeze and soak protections for `release`.
    async fn check_protections(
        &self,
        env: &Environment,
        previous: Option<&Environment>,
        release: &Release,
        now: Timestamp,
    ) -> Result<()> {
        let p = &env.protection;
        let soak = match previous {
            Some(prev) if p.soak.is_some() => {
                let live = self.live(&env.project, &prev.name).await?;
                let since = live
                    .filter(|d| d.release == release.id)
                    .and_then(|d| d.finished_at);
                p.check_soak(&prev.name, since, now)
            }
            _ => Ok(()),
        };
        p.check_branch(&env.name, release.branch.as_deref())
            .and_then(|()| p.check_time(&env.name, now))
            .and(soak)
            .map_err(Error::Forbidden)
    }

    /// The deploy gate at a request, and — when no approval is left to wait for — at the
    /// start too: the decisions made and their warnings, or the refusal.
    async fn gate_request(
        &self,
        project: &crate::projects::Project,
        env: &Environment,
        previous: Option<&Environment>,
        release: &Release,
        actor: &Context,
        needs_approval: bool,
    ) -> Result<(Vec<u64>, Vec<String>)> {
        let repository = crate::policy::Policies::repository_modules_of(
            &self.mirrors,
            project,
            &release.commit,
            crate::policy::Gate::Deploy,
        )
        .await?;
        let stages: &[&str] = if needs_approval {
            &["request"]
        } else {
            &["request", "start"]
        };
        // The same input for both stages but for `stage`.
        let mut input = self
            .gate_input("request", env, previous, release, &[], &actor.actor)
            .await?;
        let (mut decisions, mut warnings) = (Vec::new(), Vec::new());
        for stage in stages {
            input["stage"] = serde_json::Value::from(*stage);
            let subject = crate::policy::Subject {
                project: &project.slug,
                gate: crate::policy::Gate::Deploy,
                subject: format!("release {} to {}", release.number, env.name),
                stage,
            };
            let verdict = self
                .policies
                .gate(
                    subject,
                    input.clone(),
                    repository.clone(),
                    env.protection.policy_fail_open,
                )
                .await?;
            if let Some(why) = verdict.refusal {
                return Err(Error::Forbidden(why));
            }
            decisions.push(verdict.decision);
            warnings.extend(verdict.warnings);
        }
        Ok((decisions, warnings))
    }

    /// The deploy gate's input (documented in docs/policies.md).
    pub(super) async fn gate_input(
        &self,
        stage: &str,
        env: &Environment,
        previous: Option<&Environment>,
        release: &Release,
        approvals: &[Approval],
        requester: &str,
    ) -> Result<serde_json::Value> {
        let previous = match previous {
            Some(p) => {
                let live = self.live(&env.project, &p.name).await?;
                Some(serde_json::json!({
                    "environment": p.name,
                    "release": live.as_ref().map(|d| d.release_number),
                    "since": live.as_ref().and_then(|d| d.finished_at),
                }))
            }
            None => None,
        };
        let run = self
            .store
            .run_by_number(&release.project, release.run_number)
            .await?;
        let now = Timestamp::now();
        Ok(serde_json::json!({
            "stage": stage,
            "project": env.project,
            "environment": {
                "name": env.name,
                "position": env.position,
                "production": env.production_like(),
                "required_approvals": env.protection.required_approvals,
            },
            "release": {
                "number": release.number,
                "commit": release.commit,
                "branch": release.branch.clone().unwrap_or_default(),
                "ref": release.git_ref,
                "commit_time": release.commit_time,
                "created_at": release.created_at,
                "artifacts": release.artifacts,
                "actor": release.actor,
            },
            "run": {
                "number": release.run_number,
                "status": run.as_ref().map_or("unknown", |r| r.status.as_str()),
                "event": run.as_ref().map(|r| r.event.clone()),
            },
            "tests": release.tests,
            "coverage": release.coverage,
            "findings": {"critical": 0, "high": 0, "medium": 0, "low": 0},
            "approvals": approvals.iter().filter(|a| a.approved).map(|a| serde_json::json!({"by": a.by, "at": a.at, "comment": a.comment})).collect::<Vec<_>>(),
            "requester": requester,
            "time": now,
            "weekday": now.to_zoned(jiff::tz::TimeZone::UTC).strftime("%a").to_string().to_lowercase(),
            "previous": previous,
        }))
    }

    /// Deploys the release live in `from` to the next environment.
    pub async fn promote(
        &self,
        project: &crate::projects::Project,
        from: &str,
        actor: &Context,
    ) -> Result<Deployment> {
        let (_, _, next) = self.environment(&project.slug, from).await?;
        let next = next.ok_or_else(|| {
            Error::Invalid(format!(
                "{from} is the last environment; there is nothing to promote to"
            ))
        })?;
        let live = self
            .live(&project.slug, from)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no release is live in {from} yet")))?;
        self.request(
            project,
            &next.name,
            live.release_number,
            Reason::Promotion,
            actor,
            None,
        )
        .await
    }

    /// Redeploys the release that was live in `environment` before the latest deployment,
    /// which is marked rolled back once the rollback succeeds.
    pub async fn rollback(
        &self,
        project: &crate::projects::Project,
        environment: &str,
        actor: &Context,
    ) -> Result<Deployment> {
        self.environment(&project.slug, environment).await?;
        let history: Vec<Deployment> = self
            .store
            .deployments(&project.slug, usize::MAX)
            .await?
            .into_iter()
            .filter(|d| {
                d.environment == environment
                    && matches!(
                        d.status,
                        DeploymentStatus::Succeeded | DeploymentStatus::Failed
                    )
            })
            .collect();
        let bad = history.first().ok_or_else(|| {
            Error::Invalid(format!(
                "nothing has been deployed to {environment}; there is nothing to roll back"
            ))
        })?;
        let good = history
            .iter()
            .skip(1)
            .find(|d| d.status == DeploymentStatus::Succeeded && d.release != bad.release)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no earlier successful release in {environment} to roll back to"
                ))
            })?;
        self.request(
            project,
            environment,
            good.release_number,
            Reason::Rollback,
            actor,
            Some(bad.number),
        )
        .await
    }

    /// Records a green run's release (when its pipeline deploys anywhere) and requests
    /// the automatic deployments it qualifies for.
    pub async fn on_release(&self, release: Release) {
        let project = match self.store.project(&release.project).await {
            Ok(Some(p)) => p,
            _ => return,
        };
        let environments = match self.store.environments(&release.project).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read environments for auto-deploy");
                return;
            }
        };
        for env in environments.into_iter().filter(|e| e.auto_deploy) {
            if !release.deploy.contains_key(&env.name)
                || env
                    .protection
                    .check_branch(&env.name, release.branch.as_deref())
                    .is_err()
            {
                continue;
            }
            let ctx = Context::system("auto-deploy");
            if let Err(e) = self
                .request(
                    &project,
                    &env.name,
                    release.number,
                    Reason::Auto,
                    &ctx,
                    None,
                )
                .await
            {
                tracing::warn!(project = %release.project, environment = %env.name, release = release.number, error = %e, "automatic deployment not requested");
            }
        }
    }
}

/// `short subject` of each commit after `since` up to `commit`, newest first (at most 50).
async fn release_notes(mirror: &std::path::Path, since: Option<&str>, commit: &str) -> Vec<String> {
    let range = match since {
        Some(since) if since != commit => format!("{since}..{commit}"),
        Some(_) => return Vec::new(),
        None => commit.to_string(),
    };
    git::git(&["log", "--format=%h %s", "-n", "50", &range], Some(mirror))
        .await
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The first note on a new deployment: why it was requested.
fn requested_because(
    reason: Reason,
    release: &Release,
    previous: Option<&Environment>,
    rollback_of: Option<u64>,
) -> String {
    match reason {
        Reason::Auto => format!(
            "requested automatically: run #{} is green",
            release.run_number
        ),
        Reason::Manual => "requested".to_string(),
        Reason::Promotion => format!(
            "promoted from {}",
            previous.map_or("the previous environment", |p| p.name.as_str())
        ),
        Reason::Rollback => format!(
            "rollback to release {}{}",
            release.number,
            rollback_of
                .map(|d| format!(" (undoes deployment {d})"))
                .unwrap_or_default()
        ),
    }
}
