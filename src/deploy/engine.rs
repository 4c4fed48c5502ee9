//! The `Deployer`: turns requests into deployments after checking the environment's
//! protections, takes approvals, and runs queued deployments — one at a time per
//! environment — against their targets, recording every step on the deployment's
//! timeline and its output in `<data-dir>/deployments/ID.log`.

use super::model::*;
use crate::audit::{Context, Record};
use crate::auth::{Role, User};
use crate::error::{Error, Result};
use crate::executor::{self, Observer, RunSpec, StepResult, process::Stream};
use crate::git::{self, Mirrors};
use crate::pipeline::deploy::{ExecTarget, Target, WebhookTarget};
use crate::pipeline::{Pipeline, Step, Trigger, When};
use crate::secrets::Secrets;
use crate::store::Store;
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the worker looks at the queue when nothing wakes it.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// What a webhook target's callback says.
pub struct CallbackResult {
    pub succeeded: bool,
    pub message: String,
}

pub struct Deployer {
    store: Store,
    secrets: Secrets,
    mirrors: Arc<Mirrors>,
    data_dir: PathBuf,
    public_url: String,
    wake: Notify,
    http: reqwest::Client,
    /// Webhook deployments waiting for their callback, by deployment id.
    waiting: Mutex<HashMap<u64, oneshot::Sender<CallbackResult>>>,
    policies: crate::policy::Policies,
}

impl Deployer {
    pub fn new(
        store: Store,
        secrets: Secrets,
        mirrors: Arc<Mirrors>,
        data_dir: PathBuf,
        public_url: String,
        policies: crate::policy::Policies,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            secrets,
            mirrors,
            data_dir,
            public_url,
            wake: Notify::new(),
            http: crate::outbound::client_builder()
                .build()
                .expect("the HTTP client builds"),
            waiting: Mutex::new(HashMap::new()),
            policies,
        })
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.data_dir.join("deployments").join(format!("{id}.log"))
    }

    async fn environment(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(Environment, Option<Environment>, Option<Environment>)> {
        let all = self.store.environments(project).await?;
        let i = all
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| Error::NotFound {
                what: format!("environment {name} of project \"{project}\""),
            })?;
        let previous = i.checked_sub(1).map(|p| all[p].clone());
        let next = all.get(i + 1).cloned();
        Ok((all[i].clone(), previous, next))
    }

    async fn release(&self, project: &str, number: u64) -> Result<Release> {
        self.store
            .release(project, number)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("release {number} of project \"{project}\""),
            })
    }

    /// Fetches the project's mirror under its lock (triggers fetch it too).
    async fn fetch(&self, project: &crate::project::Project) -> Result<PathBuf> {
        let lock = self.mirrors.lock(project.id);
        let _guard = lock.lock().await;
        self.mirrors.fetch(project.id, &project.repository).await
    }

    /// The repository's own policies at a release's commit. The commit was built, so it
    /// is in the mirror: read there, fetching only when it is missing (a mirror removed
    /// meanwhile). When they cannot be read the gate stays closed — a forge outage must
    /// not loosen it.
    async fn repository_policies(
        &self,
        project: &crate::project::Project,
        commit: &str,
    ) -> Result<Vec<crate::policy::Module>> {
        let mirror = self.mirrors.path(project.id);
        if let Ok(modules) = crate::policy::Policies::repository_modules(&mirror, commit).await {
            return Ok(modules);
        }
        let read = match self.fetch(project).await {
            Ok(mirror) => crate::policy::Policies::repository_modules(&mirror, commit).await,
            Err(e) => Err(e),
        };
        read.map_err(|e| {
            Error::Unavailable(format!(
                "the deploy gate cannot read the repository's policies at {}, so it stays closed: {e}",
                &commit[..commit.len().min(12)]
            ))
        })
    }

    /// The deployment whose release is live in `environment` now (the latest that
    /// succeeded), if any.
    pub async fn live(&self, project: &str, environment: &str) -> Result<Option<Deployment>> {
        Ok(self
            .store
            .deployments(project, usize::MAX)
            .await?
            .into_iter()
            .find(|d| d.environment == environment && d.status == DeploymentStatus::Succeeded))
    }

    /// Asks for `release` to be deployed to `environment`. Branch, time and soak
    /// protections are checked now (a rollback skips them: it restores what was there);
    /// with required approvals the deployment waits for them, otherwise it is queued.
    pub async fn request(
        &self,
        project: &crate::project::Project,
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
            let p = &env.protection;
            let soak = match &previous {
                Some(prev) if p.soak.is_some() => {
                    let live = self.live(&project.slug, &prev.name).await?;
                    let since = live
                        .filter(|d| d.release == release.id)
                        .and_then(|d| d.finished_at);
                    p.check_soak(&prev.name, since, now)
                }
                _ => Ok(()),
            };
            if let Err(why) = p
                .check_branch(environment, release.branch.as_deref())
                .and_then(|()| p.check_time(environment, now))
                .and(soak)
            {
                return Err(Error::Forbidden(why));
            }
        }
        let repository = self.repository_policies(project, &release.commit).await?;
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
        // The deploy gate: at the request, and — when nothing is left to wait for — at the
        // start too. A rollback restores what was there and is not gated.
        let mut decisions = Vec::new();
        let mut warnings = Vec::new();
        if reason != Reason::Rollback {
            let stages: &[&str] = if needs_approval {
                &["request"]
            } else {
                &["request", "start"]
            };
            // The same input for both stages but for `stage`.
            let mut input = self
                .gate_input(
                    "request",
                    &env,
                    previous.as_ref(),
                    &release,
                    &[],
                    &actor.actor,
                )
                .await?;
            for stage in stages {
                input["stage"] = serde_json::Value::from(*stage);
                let decision = self
                    .policies
                    .evaluate(
                        crate::policy::Subject {
                            project: &project.slug,
                            gate: crate::policy::Gate::Deploy,
                            subject: format!("release {} to {environment}", release.number),
                            stage,
                        },
                        input.clone(),
                        repository.clone(),
                    )
                    .await?;
                if let Some(why) = decision.refusal(env.protection.policy_fail_open) {
                    return Err(Error::Forbidden(why));
                }
                decisions.push(decision.id);
                warnings.extend(decision.warnings.into_iter().map(|w| w.msg));
            }
        }
        let mut deployment = Deployment {
            id: 0,
            project: project.slug.clone(),
            number: 0,
            environment: environment.to_string(),
            release: release.id,
            release_number: release.number,
            commit: release.commit.clone(),
            status: if needs_approval {
                DeploymentStatus::AwaitingApproval
            } else {
                DeploymentStatus::Queued
            },
            reason,
            requested_by: actor.actor.clone(),
            requested_at: now,
            required_approvals: if needs_approval {
                env.protection.required_approvals
            } else {
                0
            },
            approvals: Vec::new(),
            started_at: None,
            finished_at: None,
            message: String::new(),
            rollback_of,
            notes,
            timeline: Vec::new(),
            secrets: Vec::new(),
            decisions,
        };
        deployment.note(
            &actor.actor,
            match reason {
                Reason::Auto => format!(
                    "requested automatically: run #{} is green",
                    release.run_number
                ),
                Reason::Manual => "requested".to_string(),
                Reason::Promotion => format!(
                    "promoted from {}",
                    previous
                        .as_ref()
                        .map_or("the previous environment", |p| p.name.as_str())
                ),
                Reason::Rollback => format!(
                    "rollback to release {}{}",
                    release.number,
                    rollback_of
                        .map(|d| format!(" (undoes deployment {d})"))
                        .unwrap_or_default()
                ),
            },
        );
        for warning in warnings {
            deployment.note("policy", format!("warning: {warning}"));
        }
        if needs_approval {
            deployment.note(
                "betcycle",
                format!("awaiting {} approval(s)", env.protection.required_approvals),
            );
        }
        let deployment = self
            .store
            .create_deployment(
                deployment,
                Record::new(
                    actor,
                    "deployment.request",
                    format!("project:{}", project.slug),
                ),
            )
            .await?;
        if needs_approval && let Some(url) = &env.approval_webhook {
            self.announce_approval(url.clone(), &deployment, &release);
        }
        self.wake.notify_one();
        Ok(deployment)
    }

    /// The deploy gate's input (documented in docs/policies.md).
    async fn gate_input(
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

    /// POSTs "approval requested" to the environment's webhook, in the background.
    fn announce_approval(&self, url: String, d: &Deployment, release: &Release) {
        let body = serde_json::json!({
            "event": "approval_requested",
            "project": d.project,
            "environment": d.environment,
            "deployment": d.number,
            "release": release.number,
            "commit": release.commit,
            "requested_by": d.requested_by,
            "required_approvals": d.required_approvals,
            "url": format!("{}/projects/{}/deployments/{}", self.public_url.trim_end_matches('/'), d.project, d.number),
        });
        let http = self.http.clone();
        tokio::spawn(async move {
            let sent = http
                .post(&url)
                .json(&body)
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                tracing::warn!(url, error = %e, "cannot announce an approval request");
            }
        });
    }

    /// Records an approval or a rejection by `user`. Whoever requested the deployment or
    /// pushed its commit may not approve it; approvers must be eligible (by default
    /// project maintainers). Enough approvals queue the deployment; a rejection cancels
    /// it.
    pub async fn decide(
        &self,
        project: &str,
        number: u64,
        user: &User,
        approve: bool,
        comment: String,
        audit: &Context,
    ) -> Result<Deployment> {
        let d = self
            .store
            .deployment(project, number)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("deployment {number} of project \"{project}\""),
            })?;
        if d.status != DeploymentStatus::AwaitingApproval {
            return Err(Error::Conflict(format!(
                "deployment {number} is {}, not awaiting approval",
                d.status.as_str()
            )));
        }
        let me = format!("user:{}", user.name);
        let release = self.store.release(project, d.release_number).await?;
        if approve && same_person(&d.requested_by, &me) {
            return Err(Error::Forbidden(
                "you requested this deployment; someone else must approve it".into(),
            ));
        }
        if approve && release.as_ref().is_some_and(|r| same_person(&r.actor, &me)) {
            return Err(Error::Forbidden(
                "you pushed this release's commit; someone else must approve it".into(),
            ));
        }
        let (env, previous, _) = self.environment(project, &d.environment).await?;
        self.check_approver(project, &env.protection.approvers, user)
            .await?;
        if d.approvals.iter().any(|a| a.by == me) {
            return Err(Error::Conflict(format!(
                "{me} already decided on deployment {number}"
            )));
        }
        let now = Timestamp::now();
        // A freeze may have begun while it waited.
        let blocked = if approve {
            env.protection.check_time(&d.environment, now).err()
        } else {
            None
        };
        // With this approval it may start: the deploy gate decides again, now with the
        // approvals in its input. A refusal cancels the deployment.
        let mut verdict: Option<(u64, Option<String>, Vec<String>)> = None;
        if approve
            && blocked.is_none()
            && d.approvals_given() + 1 >= d.required_approvals
            && let Some(release) = &release
        {
            let mut approvals = d.approvals.clone();
            approvals.push(Approval {
                by: me.clone(),
                approved: true,
                comment: comment.clone(),
                at: now,
            });
            let input = self
                .gate_input(
                    "start",
                    &env,
                    previous.as_ref(),
                    release,
                    &approvals,
                    &d.requested_by,
                )
                .await?;
            let repository = match self.store.project(project).await? {
                Some(p) => self.repository_policies(&p, &release.commit).await?,
                None => Vec::new(),
            };
            let decision = self
                .policies
                .evaluate(
                    crate::policy::Subject {
                        project,
                        gate: crate::policy::Gate::Deploy,
                        subject: format!("deployment {number}"),
                        stage: "start",
                    },
                    input,
                    repository,
                )
                .await?;
            verdict = Some((
                decision.id,
                decision.refusal(env.protection.policy_fail_open),
                decision.warnings.iter().map(|w| w.msg.clone()).collect(),
            ));
        }
        let comment_for = comment.clone();
        let updated = self
            .store
            .update_deployment(
                d.id,
                move |d| {
                    if d.status != DeploymentStatus::AwaitingApproval {
                        return Err(Error::Conflict(format!(
                            "deployment {} is {}, not awaiting approval",
                            d.number,
                            d.status.as_str()
                        )));
                    }
                    d.approvals.push(Approval {
                        by: me.clone(),
                        approved: approve,
                        comment: comment_for.clone(),
                        at: now,
                    });
                    let said = if comment_for.is_empty() {
                        String::new()
                    } else {
                        format!(": {comment_for}")
                    };
                    if !approve {
                        d.status = DeploymentStatus::Cancelled;
                        d.message = format!("rejected by {me}{said}");
                        d.note(&me, format!("rejected{said}"));
                    } else {
                        d.note(&me, format!("approved{said}"));
                        if let Some((id, _, warnings)) = &verdict {
                            d.decisions.push(*id);
                            for w in warnings {
                                d.note("policy", format!("warning: {w}"));
                            }
                        }
                        if d.approvals_given() >= d.required_approvals {
                            match (&blocked, verdict.as_ref().and_then(|v| v.1.as_ref())) {
                                (Some(why), _) => {
                                    d.note("betcycle", format!("approved, but not queued: {why}"))
                                }
                                (None, Some(why)) => {
                                    d.status = DeploymentStatus::Cancelled;
                                    d.message = why.clone();
                                    d.note("policy", why.clone());
                                }
                                (None, None) => {
                                    d.status = DeploymentStatus::Queued;
                                    d.note("betcycle", "queued");
                                }
                            }
                        }
                    }
                    Ok(())
                },
                Some(
                    Record::new(
                        audit,
                        if approve {
                            "deployment.approve"
                        } else {
                            "deployment.reject"
                        },
                        format!("project:{project}"),
                    )
                    .detail(format!(
                        "deployment #{number}{}",
                        if comment.is_empty() {
                            String::new()
                        } else {
                            format!(": {comment}")
                        }
                    )),
                ),
            )
            .await?;
        self.wake.notify_one();
        Ok(updated)
    }

    /// Whether `user` may approve in an environment with these `approvers`.
    async fn check_approver(&self, project: &str, approvers: &[String], user: &User) -> Result<()> {
        let role = if user.admin {
            Some(Role::Maintainer)
        } else {
            self.store.project_role(project, user).await?
        };
        let default = ["role:maintainer".to_string()];
        let approvers = if approvers.is_empty() {
            &default[..]
        } else {
            approvers
        };
        let mut teams = None;
        for who in approvers {
            let eligible = match who.split_once(':') {
                Some(("role", "maintainer")) => role >= Some(Role::Maintainer),
                Some(("role", "developer")) => role >= Some(Role::Developer),
                Some(("role", "viewer")) => role >= Some(Role::Viewer),
                Some(("user", name)) => user.name == name,
                Some(("team", name)) => {
                    if teams.is_none() {
                        teams = Some(self.store.list_teams().await?);
                    }
                    teams.as_ref().is_some_and(|ts| {
                        ts.iter()
                            .any(|t| t.name == name && t.members.contains(&user.id))
                    })
                }
                _ => false,
            };
            if eligible {
                return Ok(());
            }
        }
        Err(Error::Forbidden(format!(
            "approvals here come from {}",
            approvers.join(", ")
        )))
    }

    /// Cancels a deployment that has not started.
    pub async fn cancel(&self, project: &str, number: u64, audit: &Context) -> Result<Deployment> {
        let d = self
            .store
            .deployment(project, number)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("deployment {number} of project \"{project}\""),
            })?;
        let actor = audit.actor.clone();
        self.store
            .update_deployment(
                d.id,
                move |d| {
                    if !matches!(
                        d.status,
                        DeploymentStatus::Pending
                            | DeploymentStatus::AwaitingApproval
                            | DeploymentStatus::Queued
                    ) {
                        return Err(Error::Conflict(format!(
                            "deployment {} is {}; only one that has not started can be cancelled",
                            d.number,
                            d.status.as_str()
                        )));
                    }
                    d.status = DeploymentStatus::Cancelled;
                    d.message = format!("cancelled by {actor}");
                    d.note(&actor, "cancelled");
                    Ok(())
                },
                Some(
                    Record::new(audit, "deployment.cancel", format!("project:{project}"))
                        .detail(format!("deployment #{number}")),
                ),
            )
            .await
    }

    /// Deploys the release live in `from` to the next environment.
    pub async fn promote(
        &self,
        project: &crate::project::Project,
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
        project: &crate::project::Project,
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

    /// A webhook target's callback: the deployment it was issued for, once.
    pub async fn callback(&self, token: &str, result: CallbackResult) -> Result<()> {
        let digest = crate::auth::secret::digest(token);
        let id = self
            .store
            .take_deploy_callback(digest)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "deployment callback (unknown or already used)".into(),
            })?;
        match self.waiting.lock().expect("deployer lock").remove(&id) {
            Some(waiter) => {
                let _ = waiter.send(result);
                Ok(())
            }
            None => Err(Error::Conflict(
                "the deployment is no longer waiting for its callback".into(),
            )),
        }
    }

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

    async fn execute(self: Arc<Self>, d: Deployment, shutdown: CancellationToken) {
        let id = d.id;
        let outcome = self.deploy(&d, &shutdown).await;
        if shutdown.is_cancelled() {
            // Left in progress on purpose: the next start marks it failed.
            return;
        }
        let (status, message) = match outcome {
            Ok(()) => (DeploymentStatus::Succeeded, String::new()),
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

    async fn deploy(&self, d: &Deployment, shutdown: &CancellationToken) -> Result<()> {
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
        match &def.target {
            Target::Exec(t) => self.exec(d, &release, &project, t, shutdown).await,
            Target::Webhook(t) => self.webhook(d, &release, &project, t, shutdown).await,
            Target::Service(_) | Target::Kubernetes(_) => Err(Error::Invalid(
                "the service and kubernetes targets are not built yet in this version of BetCycle"
                    .into(),
            )),
        }
    }

    async fn set_status(&self, id: u64, status: DeploymentStatus, what: &str) -> Result<()> {
        let what = what.to_string();
        self.store
            .update_deployment(
                id,
                move |d| {
                    d.status = status;
                    d.note("betcycle", what);
                    Ok(())
                },
                None,
            )
            .await
            .map(drop)
    }

    /// Resolves the target's secrets in the environment's scope and records the reads on
    /// the deployment before anything uses them.
    async fn reveal(
        &self,
        d: &Deployment,
        project: u64,
        wanted: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let (values, reads) = self
            .secrets
            .resolve(project, Some(&d.environment), "deploy", wanted)
            .await?;
        let detail = crate::secrets::describe_reads(&reads);
        let target = format!("deployment:{}#{}", d.project, d.number);
        self.store
            .update_deployment(
                d.id,
                move |d| {
                    d.secrets.extend(reads);
                    Ok(())
                },
                Some(
                    Record::new(&Context::system(target.clone()), "secret.read", target)
                        .detail(detail),
                ),
            )
            .await?;
        Ok(values)
    }

    /// The variables every target gets.
    fn variables(d: &Deployment, release: &Release) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("BETCYCLE_RELEASE".to_string(), release.label()),
            (
                "BETCYCLE_RELEASE_NUMBER".to_string(),
                release.number.to_string(),
            ),
            ("BETCYCLE_ENVIRONMENT".to_string(), d.environment.clone()),
            ("BETCYCLE_DEPLOYMENT".to_string(), d.number.to_string()),
            ("BETCYCLE_PROJECT".to_string(), d.project.clone()),
            ("BETCYCLE_COMMIT".to_string(), release.commit.clone()),
            (
                "BETCYCLE_BRANCH".to_string(),
                release.branch.clone().unwrap_or_default(),
            ),
        ])
    }

    /// `exec`: the command, in a checkout of the release's commit with its artifacts
    /// under `BETCYCLE_ARTIFACTS`, through the same executor as pipeline steps (clean
    /// environment, process group, timeout, masking).
    async fn exec(
        &self,
        d: &Deployment,
        release: &Release,
        project: &crate::project::Project,
        t: &ExecTarget,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let root = self.data_dir.join("deployments").join(d.id.to_string());
        let workspace = root.join("workspace");
        let mirror = self.fetch(project).await?;
        git::checkout(&mirror, &project.repository, &release.commit, &workspace).await?;
        let artifacts = root.join("artifacts");
        for a in &release.artifacts {
            let from = crate::runner::artifact_path_in(&self.data_dir, &a.sha256);
            let to = artifacts.join(&a.path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(Error::io(format!("cannot create {}", parent.display())))?;
            }
            std::fs::copy(&from, &to)
                .map_err(Error::io(format!("cannot copy artifact {}", a.path)))?;
        }
        let values = self.reveal(d, project.id, &t.secret_pairs()).await?;
        let mut context = Self::variables(d, release);
        context.insert("BETCYCLE_ARTIFACTS".into(), artifacts.display().to_string());
        context.insert("BETCYCLE_WORKSPACE".into(), workspace.display().to_string());
        let step = Step {
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
        };
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
                .filter(|(k, _)| executor::process::PASSTHROUGH_ENV.contains(&k.as_str()))
                .collect(),
            parallelism: 1,
            only: None,
            reuse: BTreeMap::new(),
            secrets: Arc::new(Given(values)),
            sandbox: executor::sandbox::Sandbox::on_server(
                &self.data_dir,
                project.isolation,
                &format!("deployment-{}", d.id),
            ),
        };
        let log = LogFile::create(&self.log_path(d.id))?;
        let results = executor::run(spec, Arc::new(log), shutdown.clone()).await;
        // The log stays; the checkout and the artifact copies are not needed any more.
        let _ = tokio::fs::remove_dir_all(&root).await;
        let result = results
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid("the deploy command did not run".into()))?;
        if !result.status.fails_run() {
            self.set_status(
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

    /// `webhook`: a signed POST; then, with `callback`, a wait for the one-time URL.
    async fn webhook(
        &self,
        d: &Deployment,
        release: &Release,
        project: &crate::project::Project,
        t: &WebhookTarget,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let log = LogFile::create(&self.log_path(d.id))?;
        let secret = match &t.secret {
            Some(name) => self
                .reveal(d, project.id, &[(name.clone(), name.clone())])
                .await?
                .pop()
                .map(|(_, v)| v),
            None => None,
        };
        let (callback_url, waiter) = if t.callback {
            let token = crate::auth::secret::random_hex(32);
            self.store
                .set_deploy_callback(crate::auth::secret::digest(&token), d.id)
                .await?;
            let (tx, rx) = oneshot::channel();
            self.waiting.lock().expect("deployer lock").insert(d.id, tx);
            (
                Some(format!(
                    "{}/api/v1/deployments/callback/{token}",
                    self.public_url.trim_end_matches('/')
                )),
                Some(rx),
            )
        } else {
            (None, None)
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "event": "deploy",
            "project": d.project,
            "environment": d.environment,
            "deployment": d.number,
            "release": release.label(),
            "release_number": release.number,
            "commit": release.commit,
            "branch": release.branch,
            "artifacts": release.artifacts,
            "callback_url": callback_url,
        }))
        .expect("JSON");
        let mut request = self
            .http
            .post(&t.url)
            .header("content-type", "application/json")
            .header("x-betcycle-event", "deploy")
            .header("x-betcycle-delivery", format!("{}-{}", d.project, d.number))
            .timeout(t.timeout());
        if let Some(secret) = &secret {
            request = request.header(
                "x-betcycle-signature-256",
                format!("sha256={}", sign(secret.as_bytes(), &body)),
            );
        }
        log.write_line(false, &format!("POST {}", t.url));
        let answer = tokio::select! {
            answer = request.body(body).send() => answer,
            () = shutdown.cancelled() => return Err(Error::Invalid("shut down".into())),
        };
        let answer =
            answer.map_err(|e| Error::Invalid(format!("the webhook could not be reached: {e}")));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.waiting.lock().expect("deployer lock").remove(&d.id);
                return Err(e);
            }
        };
        let status = answer.status();
        log.write_line(!status.is_success(), &format!("answered {status}"));
        if !status.is_success() {
            self.waiting.lock().expect("deployer lock").remove(&d.id);
            return Err(Error::Invalid(format!("the webhook answered {status}")));
        }
        let Some(waiter) = waiter else {
            self.set_status(
                d.id,
                DeploymentStatus::Verifying,
                "verifying: the webhook answered 2xx",
            )
            .await?;
            return Ok(());
        };
        self.set_status(
            d.id,
            DeploymentStatus::Verifying,
            "verifying: waiting for the callback",
        )
        .await?;
        let result = tokio::select! {
            r = tokio::time::timeout(t.timeout(), waiter) => r,
            () = shutdown.cancelled() => return Err(Error::Invalid("shut down".into())),
        };
        self.waiting.lock().expect("deployer lock").remove(&d.id);
        match result {
            Ok(Ok(r)) => {
                log.write_line(
                    !r.succeeded,
                    &format!(
                        "callback: {} {}",
                        if r.succeeded { "succeeded" } else { "failed" },
                        r.message
                    ),
                );
                if r.succeeded {
                    Ok(())
                } else {
                    Err(Error::Invalid(format!(
                        "the target reported failure: {}",
                        r.message
                    )))
                }
            }
            _ => Err(Error::Invalid(format!(
                "no callback within {} s",
                t.timeout().as_secs()
            ))),
        }
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

/// Whether two actor strings name the same person (`user:alice` and
/// `user:alice (token bct_…)` do).
fn same_person(actor: &str, user: &str) -> bool {
    actor == user
        || actor
            .strip_prefix(user)
            .is_some_and(|rest| rest.starts_with(' '))
}

fn sign(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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

/// The values resolved for a deploy command, handed to the executor as its step's secrets.
struct Given(Vec<(String, String)>);

impl executor::SecretSource for Given {
    fn reveal<'a>(
        &'a self,
        _step: &'a Step,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<executor::Revealed, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            Ok(executor::Revealed {
                env: self.0.clone(),
                notice: None,
            })
        })
    }
}

/// A deployment's log: `<ms> <o|e> <text>` per line, like a step log.
struct LogFile {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    started: std::time::Instant,
}

impl LogFile {
    fn create(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io(format!("cannot create {}", path.display())))?;
        Ok(Self {
            file: Mutex::new(std::io::BufWriter::new(file)),
            started: std::time::Instant::now(),
        })
    }

    fn write_line(&self, stderr: bool, text: &str) {
        self.line(
            "deploy",
            if stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            text,
        );
    }
}

impl Observer for LogFile {
    fn step_started(&self, _step: &str) {}
    fn line(&self, _step: &str, stream: Stream, text: &str) {
        let mut file = self.file.lock().expect("log lock");
        let tag = if stream == Stream::Stderr { 'e' } else { 'o' };
        let _ = writeln!(file, "{} {tag} {text}", self.started.elapsed().as_millis());
        let _ = file.flush();
    }
    fn step_finished(&self, _result: &StepResult) {}
}
