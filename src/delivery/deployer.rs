//! The `Deployer`: the delivery capability's shared state (store, secrets, mirrors,
//! policies, the webhook waiters) and the helpers its parts share. Requests and promotion
//! are in `request.rs`, approvals in `approval.rs`, the queue worker in `worker.rs`, the
//! targets behind the `Target` trait in `targets/`.

use crate::core::error::{Error, Result};
use crate::core::git::Mirrors;
use crate::delivery::model::*;
use crate::exec::{Observer, StepResult, local::process::Stream};
use crate::identity::audit::{Context, Record};
use crate::secrets::Secrets;
use crate::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, oneshot};

/// How often the worker looks at the queue when nothing wakes it.
pub(super) const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// What a webhook target's callback says.
pub struct CallbackResult {
    pub succeeded: bool,
    pub message: String,
}

pub struct Deployer {
    pub(super) store: Store,
    pub(super) secrets: Secrets,
    pub(super) mirrors: Arc<Mirrors>,
    pub(super) data_dir: PathBuf,
    pub(super) public_url: String,
    pub(super) wake: Notify,
    pub(super) http: reqwest::Client,
    /// Webhook deployments waiting for their callback, by deployment id.
    pub(super) waiting: Mutex<HashMap<u64, oneshot::Sender<CallbackResult>>>,
    pub(super) policies: crate::policy::Policies,
    pub(super) services: Arc<crate::service::Services>,
}

impl Deployer {
    pub fn new(
        store: Store,
        secrets: Secrets,
        mirrors: Arc<Mirrors>,
        data_dir: PathBuf,
        public_url: String,
        policies: crate::policy::Policies,
        services: Arc<crate::service::Services>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            secrets,
            mirrors,
            data_dir,
            public_url,
            wake: Notify::new(),
            http: crate::core::outbound::client_builder()
                .build()
                .expect("the HTTP client builds"),
            waiting: Mutex::new(HashMap::new()),
            policies,
            services,
        })
    }

    pub fn services(&self) -> &Arc<crate::service::Services> {
        &self.services
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.data_dir.join("deployments").join(format!("{id}.log"))
    }

    pub(super) async fn environment(
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

    pub(super) async fn release(&self, project: &str, number: u64) -> Result<Release> {
        self.store
            .release(project, number)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("release {number} of project \"{project}\""),
            })
    }

    /// Drops the callback waiter of deployment `id` (it failed or stopped waiting).
    pub(super) fn forget_callback(&self, id: u64) {
        self.waiting.lock().expect("deployer lock").remove(&id);
    }

    /// Deployment `number` of `project`, or `NotFound`.
    pub(super) async fn deployment(&self, project: &str, number: u64) -> Result<Deployment> {
        self.store
            .deployment(project, number)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("deployment {number} of project \"{project}\""),
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

    pub(super) async fn set_status(
        &self,
        id: u64,
        status: DeploymentStatus,
        what: &str,
    ) -> Result<()> {
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
    pub(super) async fn reveal(
        &self,
        d: &Deployment,
        project: u64,
        wanted: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        reveal(&self.store, &self.secrets, d, project, "deploy", wanted).await
    }

    /// Promotes (`Control::Promote`) or aborts (`Control::Abort`) the canary deployment
    /// `number` is running; noted on its timeline and audited.
    pub async fn steer_canary(
        &self,
        project: &str,
        number: u64,
        what: crate::service::Control,
        audit: &Context,
    ) -> Result<Deployment> {
        let d = self.deployment(project, number).await?;
        self.services.steer(project, &d.environment, number, what)?;
        let (verb, action) = match what {
            crate::service::Control::Promote => ("promote", "deployment.canary_promote"),
            _ => ("abort", "deployment.canary_abort"),
        };
        let actor = audit.actor.clone();
        self.store
            .update_deployment(
                d.id,
                move |d| {
                    d.note(&actor, format!("{verb} the canary"));
                    Ok(())
                },
                Some(
                    Record::new(audit, action, format!("project:{project}"))
                        .detail(format!("deployment #{number}")),
                ),
            )
            .await
    }

    /// Cancels a deployment that has not started.
    pub async fn cancel(&self, project: &str, number: u64, audit: &Context) -> Result<Deployment> {
        let d = self.deployment(project, number).await?;
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
}

/// Resolves secrets for deployment `d`'s target (for `purpose`: a deploy, a service's
/// restart) in its environment's scope, and records the reads on the deployment and in
/// the audit log before anything uses them.
pub async fn reveal(
    store: &Store,
    secrets: &Secrets,
    d: &Deployment,
    project: u64,
    purpose: &str,
    wanted: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let (values, reads) = secrets
        .resolve(project, Some(&d.environment), purpose, wanted)
        .await?;
    let detail = crate::secrets::describe_reads(&reads);
    let target = format!("deployment:{}#{}", d.project, d.number);
    store
        .update_deployment(
            d.id,
            move |d| {
                d.secrets.extend(reads);
                Ok(())
            },
            Some(
                Record::new(&Context::system(target.clone()), "secret.read", target).detail(detail),
            ),
        )
        .await?;
    Ok(values)
}

/// The variables every target gets.
pub fn variables(d: &Deployment, release: &Release) -> BTreeMap<String, String> {
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

/// A deployment's log: `<ms> <o|e> <text>` per line, like a step log.
pub(super) struct LogFile {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    started: std::time::Instant,
}

impl LogFile {
    pub(super) fn create(path: &std::path::Path) -> Result<Self> {
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

    pub(super) fn write_line(&self, stderr: bool, text: &str) {
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
    fn lines(&self, _step: &str, stream: Stream, lines: &[&str]) {
        let mut file = self.file.lock().expect("log lock");
        let tag = if stream == Stream::Stderr { 'e' } else { 'o' };
        let ms = self.started.elapsed().as_millis();
        for text in lines {
            let _ = writeln!(file, "{ms} {tag} {text}");
        }
        let _ = file.flush();
    }
    fn step_finished(&self, _result: &StepResult) {}
}
