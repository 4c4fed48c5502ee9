//! What the API and the console show of a project's delivery and the requests they
//! share: the environment board (what is live and pending where), environment changes,
//! deployment requests and logs, DORA metrics.

use crate::app::App;
use crate::core::error::{Error, Result};
use crate::delivery::{Deployment, DeploymentStatus, Environment, Protection, Reason, Release};
use crate::identity::audit::Record;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What is live in an environment.
#[derive(Clone, Serialize)]
pub struct Live {
    pub deployment: u64,
    pub release: u64,
    pub commit: String,
    pub since: Option<jiff::Timestamp>,
}

/// An environment with what is live there and what waits.
#[derive(Clone, Serialize)]
pub struct EnvironmentView {
    #[serde(flatten)]
    pub environment: Environment,
    pub live: Option<Live>,
    /// Deployments here waiting for approval or queued, oldest first.
    pub pending: Vec<u64>,
    /// The next environment, where promotion goes.
    pub next: Option<String>,
    /// What serves requests here now, for a `service` target.
    pub service: Option<crate::service::ServiceView>,
}

/// A project's environments, in order, with what is live and pending in each.
pub async fn board(app: &App, slug: &str) -> Result<(Vec<EnvironmentView>, Vec<Deployment>)> {
    crate::projects::find(&app.store, slug).await?;
    let environments = app.store.environments(slug).await?;
    let deployments = app.store.deployments(slug, usize::MAX).await?;
    let names: Vec<String> = environments.iter().map(|e| e.name.clone()).collect();
    let views = environments
        .into_iter()
        .enumerate()
        .map(|(i, environment)| {
            let live = deployments
                .iter()
                .find(|d| {
                    d.environment == environment.name && d.status == DeploymentStatus::Succeeded
                })
                .map(|d| Live {
                    deployment: d.number,
                    release: d.release_number,
                    commit: d.commit.clone(),
                    since: d.finished_at,
                });
            let mut pending: Vec<u64> = deployments
                .iter()
                .filter(|d| {
                    d.environment == environment.name
                        && matches!(
                            d.status,
                            DeploymentStatus::AwaitingApproval
                                | DeploymentStatus::Queued
                                | DeploymentStatus::Deploying
                                | DeploymentStatus::Verifying
                        )
                })
                .map(|d| d.number)
                .collect();
            pending.reverse();
            EnvironmentView {
                service: app.deployer.services().view(slug, &environment.name),
                next: names.get(i + 1).cloned(),
                environment,
                live,
                pending,
            }
        })
        .collect();
    Ok((views, deployments))
}

/// The settings of an environment; absent fields keep their value (or the default for a
/// new environment).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentChange {
    #[serde(default)]
    pub position: Option<u32>,
    #[serde(default)]
    pub protection: Option<Protection>,
    #[serde(default)]
    pub auto_deploy: Option<bool>,
    /// An empty string removes it.
    #[serde(default)]
    pub approval_webhook: Option<String>,
    /// Production-like for policies even without a production-like name.
    #[serde(default)]
    pub production: Option<bool>,
}

/// Creates or changes an environment; `true` when it was created.
pub async fn put_environment(
    app: &App,
    slug: &str,
    name: &str,
    change: EnvironmentChange,
    audit: &crate::identity::audit::Context,
) -> Result<(Environment, bool)> {
    crate::projects::find(&app.store, slug).await?;
    crate::ci::pipeline::deploy::check_environment_name(name).map_err(Error::Invalid)?;
    let all = app.store.environments(slug).await?;
    let existing = all.iter().find(|e| e.name == name).cloned();
    let created = existing.is_none();
    let mut env = existing.unwrap_or(Environment {
        project: slug.to_string(),
        name: name.to_string(),
        position: all.iter().map(|e| e.position + 1).max().unwrap_or(0),
        protection: Protection::default(),
        auto_deploy: false,
        approval_webhook: None,
        production: false,
        created_at: jiff::Timestamp::now(),
    });
    if let Some(position) = change.position {
        env.position = position;
    }
    if let Some(protection) = change.protection {
        protection.check().map_err(Error::Invalid)?;
        env.protection = protection;
    }
    if let Some(auto) = change.auto_deploy {
        env.auto_deploy = auto;
    }
    if let Some(production) = change.production {
        env.production = production;
    }
    if let Some(hook) = change.approval_webhook {
        let hook = hook.trim().to_string();
        if !(hook.is_empty() || hook.starts_with("http://") || hook.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "approval_webhook \"{hook}\" is not an http(s) URL"
            )));
        }
        env.approval_webhook = (!hook.is_empty()).then_some(hook);
    }
    app.store
        .put_environment(
            env.clone(),
            Record::new(audit, "environment.update", format!("project:{slug}")),
        )
        .await?;
    Ok((env, created))
}

pub async fn deployment_of(app: &App, slug: &str, number: u64) -> Result<Deployment> {
    app.store
        .deployment(slug, number)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("deployment {number} of project \"{slug}\""),
        })
}

/// The deployment's output, as stored (`<ms> <o|e> <text>` per line).
pub async fn log_text(app: &App, d: &Deployment) -> Result<String> {
    let path = app.deployer.log_path(d.id);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()))(e)),
    }
}

/// Asks for a deployment of `release` (the newest when `None`) to `environment`.
pub async fn request(
    app: &App,
    slug: &str,
    environment: &str,
    release: Option<u64>,
    audit: &crate::identity::audit::Context,
) -> Result<Deployment> {
    let project = crate::projects::find(&app.store, slug).await?;
    let release = match release {
        Some(n) => n,
        None => app
            .store
            .releases(slug, 1)
            .await?
            .first()
            .map(|r| r.number)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "project \"{slug}\" has no releases yet: a green run whose pipeline has a deploy: section makes one"
                ))
            })?,
    };
    app.deployer
        .request(&project, environment, release, Reason::Manual, audit, None)
        .await
}

/// The DORA metrics of one environment: `production` if there is one, else the last.
pub async fn dora_of(
    app: &App,
    slug: &str,
    environment: Option<&str>,
    days: u32,
) -> Result<crate::delivery::dora::Dora> {
    crate::projects::find(&app.store, slug).await?;
    let environments = app.store.environments(slug).await?;
    let environment = match environment {
        Some(e) => e.to_string(),
        None => environments
            .iter()
            .find(|e| e.name == "production")
            .or(environments.last())
            .map(|e| e.name.clone())
            .unwrap_or_else(|| "production".into()),
    };
    let deployments = app.store.deployments(slug, usize::MAX).await?;
    let releases: HashMap<u64, Release> = app
        .store
        .releases(slug, usize::MAX)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    Ok(crate::delivery::dora::compute(
        &deployments,
        &releases,
        &environment,
        jiff::Timestamp::now(),
        days,
    ))
}
