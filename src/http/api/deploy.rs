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

use crate::app::App;
use crate::core::error::{Error, Result};
use crate::delivery::board::{
    EnvironmentChange, EnvironmentView, board, deployment_of, dora_of, log_text, request,
};
use crate::delivery::{Deployment, Environment, Release};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;

pub async fn environments(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<Vec<EnvironmentView>>> {
    Ok(Json(board(&app, &slug).await?.0))
}

pub async fn update_environment(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
    Json(change): Json<EnvironmentChange>,
) -> ServerResult<(StatusCode, Json<Environment>)> {
    let (env, created) =
        crate::delivery::board::put_environment(&app, &slug, &name, change, &signed.audit).await?;
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
    // A service it ran stops with it.
    app.deployer.services().remove(&slug, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn promote(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
) -> ServerResult<(StatusCode, Json<Deployment>)> {
    let project = crate::projects::find(&app.store, &slug).await?;
    let d = app.deployer.promote(&project, &name, &signed.audit).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub async fn rollback(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
) -> ServerResult<(StatusCode, Json<Deployment>)> {
    let project = crate::projects::find(&app.store, &slug).await?;
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
    crate::projects::find(&app.store, &slug).await?;
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
    crate::projects::find(&app.store, &slug).await?;
    Ok(Json(app.store.deployments(&slug, q.limit()).await?))
}

pub async fn deployment(
    State(app): State<App>,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Deployment>> {
    Ok(Json(deployment_of(&app, &slug, number).await?))
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

/// Sends every request to the running canary now.
pub async fn promote_canary(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Deployment>> {
    steer(
        &app,
        &signed,
        &slug,
        number,
        crate::service::Control::Promote,
    )
    .await
}

/// Stops the running canary; the deployment ends rolled back.
pub async fn abort_canary(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Deployment>> {
    steer(&app, &signed, &slug, number, crate::service::Control::Abort).await
}

async fn steer(
    app: &App,
    signed: &Signed,
    slug: &str,
    number: u64,
    what: crate::service::Control,
) -> ServerResult<Json<Deployment>> {
    Ok(Json(
        app.deployer
            .steer_canary(slug, number, what, &signed.audit)
            .await?,
    ))
}

/// The environment's running service: its instances, health and traffic split.
pub async fn service(
    State(app): State<App>,
    Path((slug, environment)): Path<(String, String)>,
) -> ServerResult<Json<crate::service::ServiceView>> {
    app.deployer
        .services()
        .view(&slug, &environment)
        .map(Json)
        .ok_or_else(|| {
            Error::NotFound {
                what: format!("a running service in {slug}/{environment}"),
            }
            .into()
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLogQuery {
    /// 1-based; default 1.
    #[serde(default)]
    pub instance: Option<u32>,
    /// `stable` (default) or `canary`.
    #[serde(default)]
    pub track: Option<String>,
    /// Default 200, at most 10,000.
    #[serde(default)]
    pub lines: Option<usize>,
}

/// The end of an instance's log, as text.
pub async fn service_log(
    State(app): State<App>,
    Path((slug, environment)): Path<(String, String)>,
    Query(q): Query<ServiceLogQuery>,
) -> ServerResult<impl IntoResponse> {
    let track = match q.track.as_deref() {
        None | Some("stable") => crate::service::Track::Stable,
        Some("canary") => crate::service::Track::Canary,
        Some(other) => {
            return Err(Error::Invalid(format!("track \"{other}\": use stable or canary")).into());
        }
    };
    let text = app.deployer.services().log_tail(
        &slug,
        &environment,
        track,
        q.instance.unwrap_or(1),
        q.lines.unwrap_or(200).min(10_000),
    )?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
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
            crate::delivery::CallbackResult {
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

pub async fn dora(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<DoraQuery>,
) -> ServerResult<Json<crate::delivery::dora::Dora>> {
    let days = q.days.unwrap_or(30).clamp(1, 365);
    Ok(Json(
        dora_of(&app, &slug, q.environment.as_deref(), days).await?,
    ))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/projects/{slug}/environments" VIEWER => environments,
        PUT "/api/v1/projects/{slug}/environments/{environment}" MAINTAINER => update_environment,
        DELETE "/api/v1/projects/{slug}/environments/{environment}" MAINTAINER => delete_environment,
        POST "/api/v1/projects/{slug}/environments/{environment}/promote" DEVELOPER => promote,
        POST "/api/v1/projects/{slug}/environments/{environment}/rollback" DEVELOPER => rollback,
        GET "/api/v1/projects/{slug}/releases" VIEWER => releases,
        GET "/api/v1/projects/{slug}/releases/{number}" VIEWER => release,
        GET "/api/v1/projects/{slug}/deployments" VIEWER => deployments,
        POST "/api/v1/projects/{slug}/deployments" DEVELOPER => create,
        GET "/api/v1/projects/{slug}/deployments/{number}" VIEWER => deployment,
        GET "/api/v1/projects/{slug}/deployments/{number}/log" VIEWER => log,
        POST "/api/v1/projects/{slug}/deployments/{number}/approve" DEVELOPER => approve,
        POST "/api/v1/projects/{slug}/deployments/{number}/reject" DEVELOPER => reject,
        POST "/api/v1/projects/{slug}/deployments/{number}/cancel" DEVELOPER => cancel,
        POST "/api/v1/projects/{slug}/deployments/{number}/promote" DEVELOPER => promote_canary,
        POST "/api/v1/projects/{slug}/deployments/{number}/abort" DEVELOPER => abort_canary,
        GET "/api/v1/projects/{slug}/environments/{environment}/service" VIEWER => service,
        GET "/api/v1/projects/{slug}/environments/{environment}/service/log" VIEWER => service_log,
        GET "/api/v1/projects/{slug}/dora" VIEWER => dora,
        POST "/api/v1/deployments/callback/{token}" PUBLIC => callback,
    ]
}
