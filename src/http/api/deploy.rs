//! Environments, releases, deployments, approvals, promotion, rollback and DORA metrics
//! of a project.
//!
//! `GET /api/v1/projects/{slug}/environments`,
//! `PUT|DELETE /api/v1/projects/{slug}/environments/{environment}`,
//! `POST …/environments/{environment}/promote|rollback`,
//! `GET /api/v1/projects/{slug}/releases[/{number}]`,
//! `GET|POST /api/v1/projects/{slug}/deployments`, `GET …/deployments/{number}[/log]`,
//! `POST …/deployments/{number}/approve|reject|cancel`,
//! `GET /api/v1/projects/{slug}/dora`, `POST /api/v1/deployments/callback/{token}`.

use super::projects::project_of;
use crate::app::App;
use crate::audit::Record;
use crate::deploy::{Deployment, DeploymentStatus, Environment, Protection, Reason, Release};
use crate::error::{Error, Result};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
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
}

/// A project's environments, in order, with what is live and pending in each.
pub async fn board(app: &App, slug: &str) -> Result<(Vec<EnvironmentView>, Vec<Deployment>)> {
    project_of(app, slug).await?;
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
                next: names.get(i + 1).cloned(),
                environment,
                live,
                pending,
            }
        })
        .collect();
    Ok((views, deployments))
}

pub async fn environments(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<Vec<EnvironmentView>>> {
    Ok(Json(board(&app, &slug).await?.0))
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
    audit: &crate::audit::Context,
) -> Result<(Environment, bool)> {
    project_of(app, slug).await?;
    crate::pipeline::deploy::check_environment_name(name).map_err(Error::Invalid)?;
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

pub async fn update_environment(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
    Json(change): Json<EnvironmentChange>,
) -> ServerResult<(StatusCode, Json<Environment>)> {
    let (env, created) = put_environment(&app, &slug, &name, change, &signed.audit).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(env)))
}

pub async fn delete_environment(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    app.store
        .delete_environment(
            &slug,
            &name,
            Record::new(
                &signed.audit,
                "environment.delete",
                format!("project:{slug}"),
            )
            .detail(name.clone()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn promote(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
) -> ServerResult<(StatusCode, Json<Deployment>)> {
    let project = project_of(&app, &slug).await?;
    let d = app.deployer.promote(&project, &name, &signed.audit).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub async fn rollback(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
) -> ServerResult<(StatusCode, Json<Deployment>)> {
    let project = project_of(&app, &slug).await?;
    let d = app
        .deployer
        .rollback(&project, &name, &signed.audit)
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub async fn releases(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<super::runs::ListQuery>,
) -> ServerResult<Json<Vec<Release>>> {
    project_of(&app, &slug).await?;
    Ok(Json(app.store.releases(&slug, q.limit()).await?))
}

pub async fn release(
    State(app): State<App>,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Release>> {
    let release = app
        .store
        .release(&slug, number)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("release {number} of project \"{slug}\""),
        })?;
    Ok(Json(release))
}

pub async fn deployments(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<super::runs::ListQuery>,
) -> ServerResult<Json<Vec<Deployment>>> {
    project_of(&app, &slug).await?;
    Ok(Json(app.store.deployments(&slug, q.limit()).await?))
}

pub async fn deployment_of(app: &App, slug: &str, number: u64) -> Result<Deployment> {
    app.store
        .deployment(slug, number)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("deployment {number} of project \"{slug}\""),
        })
}

pub async fn deployment(
    State(app): State<App>,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Deployment>> {
    Ok(Json(deployment_of(&app, &slug, number).await?))
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

pub async fn log(
    State(app): State<App>,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<impl IntoResponse> {
    let d = deployment_of(&app, &slug, number).await?;
    let text = log_text(&app, &d).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub environment: String,
    /// A release number; the newest release when absent.
    #[serde(default)]
    pub release: Option<u64>,
}

/// Asks for a deployment of `release` (the newest when `None`) to `environment`.
pub async fn request(
    app: &App,
    slug: &str,
    environment: &str,
    release: Option<u64>,
    audit: &crate::audit::Context,
) -> Result<Deployment> {
    let project = project_of(app, slug).await?;
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

pub async fn create(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(req): Json<DeployRequest>,
) -> ServerResult<(StatusCode, Json<Deployment>)> {
    let d = request(&app, &slug, &req.environment, req.release, &signed.audit).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub comment: String,
}

fn decision(body: &axum::body::Bytes) -> Result<Decision> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Decision::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::Invalid(format!("request body: {e}")))
}

/// Records an approval (`approve`) or a rejection from the caller.
async fn decide(
    app: &App,
    signed: &Signed,
    slug: &str,
    number: u64,
    body: &axum::body::Bytes,
    approve: bool,
) -> Result<Deployment> {
    let d = decision(body)?;
    app.deployer
        .decide(
            slug,
            number,
            &signed.principal.user,
            approve,
            d.comment,
            &signed.audit,
        )
        .await
}

pub async fn approve(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
    body: axum::body::Bytes,
) -> ServerResult<Json<Deployment>> {
    Ok(Json(
        decide(&app, &signed, &slug, number, &body, true).await?,
    ))
}

pub async fn reject(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
    body: axum::body::Bytes,
) -> ServerResult<Json<Deployment>> {
    Ok(Json(
        decide(&app, &signed, &slug, number, &body, false).await?,
    ))
}

pub async fn cancel(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Deployment>> {
    Ok(Json(
        app.deployer.cancel(&slug, number, &signed.audit).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
    /// `succeeded` or `failed`.
    pub status: String,
    #[serde(default)]
    pub message: String,
}

/// A webhook target reports how its deployment went. Public: the one-time token in the
/// path is the credential.
pub async fn callback(
    State(app): State<App>,
    Path(token): Path<String>,
    Json(req): Json<CallbackRequest>,
) -> ServerResult<StatusCode> {
    let succeeded = match req.status.as_str() {
        "succeeded" => true,
        "failed" => false,
        other => {
            return Err(
                Error::Invalid(format!("status \"{other}\": use succeeded or failed")).into(),
            );
        }
    };
    app.deployer
        .callback(
            &token,
            crate::deploy::CallbackResult {
                succeeded,
                message: req.message,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct DoraQuery {
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub days: Option<u32>,
}

/// The DORA metrics of one environment: `production` if there is one, else the last.
pub async fn dora_of(
    app: &App,
    slug: &str,
    environment: Option<&str>,
    days: u32,
) -> Result<crate::deploy::dora::Dora> {
    project_of(app, slug).await?;
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
    Ok(crate::deploy::dora::compute(
        &deployments,
        &releases,
        &environment,
        jiff::Timestamp::now(),
        days,
    ))
}

pub async fn dora(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<DoraQuery>,
) -> ServerResult<Json<crate::deploy::dora::Dora>> {
    let days = q.days.unwrap_or(30).clamp(1, 365);
    Ok(Json(
        dora_of(&app, &slug, q.environment.as_deref(), days).await?,
    ))
}
