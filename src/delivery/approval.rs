//! Approvals: who may approve (never the requester or the pusher), the deploy gate again
//! at the last approval, rejection, the approval webhook and a webhook target's callback.

use super::deployer::*;
use crate::core::error::{Error, Result};
use crate::delivery::model::*;
use crate::identity::audit::{Context, Record};
use crate::identity::{Role, User};
use jiff::Timestamp;

impl Deployer {
    /// POSTs "approval requested" to the environment's webhook, in the background.
    pub(super) fn announce_approval(&self, url: String, d: &Deployment, release: &Release) {
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
        let d = self.deployment(project, number).await?;
        if d.status != DeploymentStatus::AwaitingApproval {
            return Err(Error::Conflict(format!(
                "deployment {number} is {}, not awaiting approval",
                d.status.as_str()
            )));
        }
        let me = format!("user:{}", user.name);
        let release = self.store.release(project, d.release_number).await?;
        let (env, previous) = self
            .check_decider(&d, release.as_ref(), user, &me, approve)
            .await?;
        let now = Timestamp::now();
        let approval = Approval {
            by: me,
            approved: approve,
            comment,
            at: now,
        };
        // A freeze may have begun while it waited.
        let blocked = if approve {
            env.protection.check_time(&d.environment, now).err()
        } else {
            None
        };
        // With this approval it may start: the deploy gate decides again, now with the
        // approvals in its input. A refusal cancels the deployment.
        let verdict = match &release {
            Some(release)
                if approve
                    && blocked.is_none()
                    && d.approvals_given() + 1 >= d.required_approvals =>
            {
                let gate = self.gate_last_approval(&d, &env, previous.as_ref(), release, &approval);
                Some(gate.await?)
            }
            _ => None,
        };
        let said = if approval.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", approval.comment)
        };
        let action = if approve {
            "deployment.approve"
        } else {
            "deployment.reject"
        };
        let record = Record::new(audit, action, format!("project:{project}"))
            .detail(format!("deployment #{number}{said}"));
        let updated = self
            .store
            .update_deployment(
                d.id,
                move |d| record_decision(d, approval, blocked, verdict),
                Some(record),
            )
            .await?;
        self.wake.notify_one();
        Ok(updated)
    }

    /// Whether `user` (`me`) may decide on `d`: not the requester nor the pusher when
    /// approving, an eligible approver, and only once. Returns the environment and the
    /// one before it.
    async fn check_decider(
        &self,
        d: &Deployment,
        release: Option<&Release>,
        user: &User,
        me: &str,
        approve: bool,
    ) -> Result<(Environment, Option<Environment>)> {
        if approve && same_person(&d.requested_by, me) {
            return Err(Error::Forbidden(
                "you requested this deployment; someone else must approve it".into(),
            ));
        }
        if approve && release.is_some_and(|r| same_person(&r.actor, me)) {
            return Err(Error::Forbidden(
                "you pushed this release's commit; someone else must approve it".into(),
            ));
        }
        let (env, previous, _) = self.environment(&d.project, &d.environment).await?;
        self.check_approver(&d.project, &env.protection.approvers, user)
            .await?;
        if d.approvals.iter().any(|a| a.by == me) {
            return Err(Error::Conflict(format!(
                "{me} already decided on deployment {}",
                d.number
            )));
        }
        Ok((env, previous))
    }

    /// The deploy gate at the start stage, with `approval` added to those given.
    async fn gate_last_approval(
        &self,
        d: &Deployment,
        env: &Environment,
        previous: Option<&Environment>,
        release: &Release,
        approval: &Approval,
    ) -> Result<crate::policy::Verdict> {
        let mut approvals = d.approvals.clone();
        approvals.push(approval.clone());
        let input = self
            .gate_input("start", env, previous, release, &approvals, &d.requested_by)
            .await?;
        let repository = match self.store.project(&d.project).await? {
            Some(p) => {
                crate::policy::Policies::repository_modules_of(
                    &self.mirrors,
                    &p,
                    &release.commit,
                    crate::policy::Gate::Deploy,
                )
                .await?
            }
            None => Vec::new(),
        };
        let subject = crate::policy::Subject {
            project: &d.project,
            gate: crate::policy::Gate::Deploy,
            subject: format!("deployment {}", d.number),
            stage: "start",
        };
        self.policies
            .gate(subject, input, repository, env.protection.policy_fail_open)
            .await
    }

    /// Whether `user` may approve in an environment with these `approvers`.
    pub(super) async fn check_approver(
        &self,
        project: &str,
        approvers: &[String],
        user: &User,
    ) -> Result<()> {
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

    /// A webhook target's callback: the deployment it was issued for, once.
    pub async fn callback(&self, token: &str, result: CallbackResult) -> Result<()> {
        let digest = crate::identity::secret::digest(token);
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
}

/// Whether two actor strings name the same person (`user:alice` and
/// `user:alice (token bct_…)` do).
/// Whether `actor` (as recorded: `user:alice`, `user:alice via token …`) is `user`.
pub fn same_person(actor: &str, user: &str) -> bool {
    actor == user
        || actor
            .strip_prefix(user)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// Applies a decision to the deployment record (inside its write transaction, so a
/// decision that raced another one is refused).
fn record_decision(
    d: &mut Deployment,
    approval: Approval,
    blocked: Option<String>,
    verdict: Option<crate::policy::Verdict>,
) -> Result<()> {
    if d.status != DeploymentStatus::AwaitingApproval {
        return Err(Error::Conflict(format!(
            "deployment {} is {}, not awaiting approval",
            d.number,
            d.status.as_str()
        )));
    }
    let me = approval.by.clone();
    let said = if approval.comment.is_empty() {
        String::new()
    } else {
        format!(": {}", approval.comment)
    };
    let approve = approval.approved;
    d.approvals.push(approval);
    if !approve {
        d.status = DeploymentStatus::Cancelled;
        d.message = format!("rejected by {me}{said}");
        d.note(&me, format!("rejected{said}"));
        return Ok(());
    }
    d.note(&me, format!("approved{said}"));
    if let Some(verdict) = &verdict {
        d.decisions.push(verdict.decision);
        for w in &verdict.warnings {
            d.note("policy", format!("warning: {w}"));
        }
    }
    if d.approvals_given() >= d.required_approvals {
        match (blocked, verdict.and_then(|v| v.refusal)) {
            (Some(why), _) => d.note("betcycle", format!("approved, but not queued: {why}")),
            (None, Some(why)) => {
                d.status = DeploymentStatus::Cancelled;
                d.message = why.clone();
                d.note("policy", why);
            }
            (None, None) => {
                d.status = DeploymentStatus::Queued;
                d.note("betcycle", "queued");
            }
        }
    }
    Ok(())
}
