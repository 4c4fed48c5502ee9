//! Secrets of the instance, a project, or one of a project's environments. Values are
//! write-only: every answer names a secret and its versions, never a value.
//!
//! `GET /api/v1/secrets`, `GET|PUT|DELETE /api/v1/secrets/{name}`,
//! `POST /api/v1/secrets/{name}/restore` (admins), and the same under
//! `/api/v1/projects/{slug}/` and `/api/v1/projects/{slug}/environments/{environment}/`
//! (project maintainers).

use crate::app::App;
use crate::core::error::{Error, Result};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::secrets::Scope;
use crate::secrets::views::{SecretView, scope_of};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

/// The path of any secret route; absent parts select a wider scope.
#[derive(Deserialize)]
pub struct SecretPath {
    pub slug: Option<String>,
    pub environment: Option<String>,
    pub name: Option<String>,
}

fn name_of(path: &SecretPath) -> &str {
    path.name.as_deref().unwrap_or_default()
}

async fn scope(app: &App, path: &SecretPath) -> Result<Scope> {
    scope_of(
        &app.store,
        path.slug.as_deref(),
        path.environment.as_deref(),
    )
    .await
}

pub async fn list(
    State(app): State<App>,
    Path(path): Path<SecretPath>,
) -> ServerResult<Json<Vec<SecretView>>> {
    let scope = scope(&app, &path).await?;
    let secrets = app.secrets.list(&scope).await?;
    Ok(Json(secrets.into_iter().map(SecretView::from).collect()))
}

pub async fn show(
    State(app): State<App>,
    Path(path): Path<SecretPath>,
) -> ServerResult<Json<SecretView>> {
    let scope = scope(&app, &path).await?;
    let secret = app
        .secrets
        .get(&scope, name_of(&path))
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("secret {} ({})", name_of(&path), scope.label()),
        })?;
    Ok(Json(secret.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub value: String,
}

/// Sets a new version; `201` for a new secret, `200` for a new version of one.
pub async fn set(
    State(app): State<App>,
    signed: Signed,
    Path(path): Path<SecretPath>,
    Json(request): Json<SetRequest>,
) -> ServerResult<(StatusCode, Json<SecretView>)> {
    let scope = scope(&app, &path).await?;
    let secret = app
        .secrets
        .set(scope, name_of(&path), request.value, &signed.audit)
        .await?;
    let status = if secret.versions.len() == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(secret.into())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub version: u64,
}

/// Makes an older version current again (as a new version).
pub async fn restore(
    State(app): State<App>,
    signed: Signed,
    Path(path): Path<SecretPath>,
    Json(request): Json<RestoreRequest>,
) -> ServerResult<Json<SecretView>> {
    let scope = scope(&app, &path).await?;
    let secret = app
        .secrets
        .restore(scope, name_of(&path), request.version, &signed.audit)
        .await?;
    Ok(Json(secret.into()))
}

pub async fn delete(
    State(app): State<App>,
    signed: Signed,
    Path(path): Path<SecretPath>,
) -> ServerResult<StatusCode> {
    let scope = scope(&app, &path).await?;
    app.secrets
        .delete(scope, name_of(&path), &signed.audit)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/secrets" ADMIN => list,
        GET "/api/v1/secrets/{name}" ADMIN => show,
        PUT "/api/v1/secrets/{name}" ADMIN => set,
        DELETE "/api/v1/secrets/{name}" ADMIN => delete,
        POST "/api/v1/secrets/{name}/restore" ADMIN => restore,
        GET "/api/v1/projects/{slug}/secrets" MAINTAINER => list,
        GET "/api/v1/projects/{slug}/secrets/{name}" MAINTAINER => show,
        PUT "/api/v1/projects/{slug}/secrets/{name}" MAINTAINER => set,
        DELETE "/api/v1/projects/{slug}/secrets/{name}" MAINTAINER => delete,
        POST "/api/v1/projects/{slug}/secrets/{name}/restore" MAINTAINER => restore,
        GET "/api/v1/projects/{slug}/environments/{environment}/secrets" MAINTAINER => list,
        GET "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}" MAINTAINER => show,
        PUT "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}" MAINTAINER => set,
        DELETE "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}" MAINTAINER => delete,
        POST "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}/restore" MAINTAINER => restore,
    ]
}
