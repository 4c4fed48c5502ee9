//! Secrets of the instance, a project, or one of a project's environments. Values are
//! write-only: every answer names a secret and its versions, never a value.
//!
//! `GET /api/v1/secrets`, `GET|PUT|DELETE /api/v1/secrets/{name}`,
//! `POST /api/v1/secrets/{name}/restore` (admins), and the same under
//! `/api/v1/projects/{slug}/` and `/api/v1/projects/{slug}/environments/{environment}/`
//! (project maintainers).

use super::projects::project_of;
use crate::app::App;
use crate::error::{Error, Result};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::secrets::{Scope, Secret};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The path of any secret route; absent parts select a wider scope.
#[derive(Deserialize)]
pub struct SecretPath {
    pub slug: Option<String>,
    pub environment: Option<String>,
    pub name: Option<String>,
}

/// The scope a path names.
pub async fn scope_of(app: &App, slug: Option<&str>, environment: Option<&str>) -> Result<Scope> {
    let Some(slug) = slug else {
        return Ok(Scope::Instance);
    };
    let project = project_of(app, slug).await?.id;
    Ok(match environment {
        None => Scope::Project { project },
        Some(environment) => {
            crate::pipeline::deploy::check_environment_name(environment).map_err(Error::Invalid)?;
            Scope::Environment {
                project,
                environment: environment.to_string(),
            }
        }
    })
}

#[derive(Serialize)]
pub struct VersionView {
    pub version: u64,
    pub created_by: String,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
}

/// A secret as clients see it: no value, ever.
#[derive(Serialize)]
pub struct SecretView {
    pub name: String,
    /// `instance`, `project` or `environment`.
    pub scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The current version.
    pub version: u64,
    pub updated_by: String,
    pub updated_at: Timestamp,
    /// The kept versions, newest first.
    pub versions: Vec<VersionView>,
}

impl From<Secret> for SecretView {
    fn from(secret: Secret) -> Self {
        let current = secret.current();
        let (scope, environment) = match &secret.scope {
            Scope::Instance => ("instance", None),
            Scope::Project { .. } => ("project", None),
            Scope::Environment { environment, .. } => ("environment", Some(environment.clone())),
        };
        Self {
            scope,
            environment,
            version: current.version,
            updated_by: current.created_by.clone(),
            updated_at: current.created_at,
            versions: secret
                .versions
                .iter()
                .rev()
                .map(|v| VersionView {
                    version: v.version,
                    created_by: v.created_by.clone(),
                    created_at: v.created_at,
                    restored_from: v.restored_from,
                })
                .collect(),
            name: secret.name,
        }
    }
}

fn name_of(path: &SecretPath) -> &str {
    path.name.as_deref().unwrap_or_default()
}

async fn scope(app: &App, path: &SecretPath) -> Result<Scope> {
    scope_of(app, path.slug.as_deref(), path.environment.as_deref()).await
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
