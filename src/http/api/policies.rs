//! Policies (the instance's and a project's) and the decision log.
//!
//! `GET /api/v1/policies`, `GET|PUT|DELETE /api/v1/policies/{name}` (admins change),
//! the same under `/api/v1/projects/{slug}/policies` (maintainers change),
//! `GET /api/v1/projects/{slug}/decisions[/{id}]`.

use crate::app::App;
use crate::core::error::{Error, Result};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use crate::policy::{Decision, Policy};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

/// The path of a policy route: a project's when `slug` is there.
#[derive(Deserialize)]
pub struct PolicyPath {
    pub slug: Option<String>,
    pub name: Option<String>,
}

pub async fn scope_of(app: &App, slug: Option<&str>) -> Result<String> {
    match slug {
        None => Ok("instance".into()),
        Some(slug) => {
            crate::projects::find(&app.store, slug).await?;
            Ok(format!("project:{slug}"))
        }
    }
}

pub async fn list(
    State(app): State<App>,
    Path(path): Path<PolicyPath>,
) -> ServerResult<Json<Vec<Policy>>> {
    let scope = scope_of(&app, path.slug.as_deref()).await?;
    Ok(Json(app.store.policies(&scope).await?))
}

pub async fn policy_of(app: &App, scope: &str, name: &str) -> Result<Policy> {
    app.store
        .policy(scope, name)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("policy {name} ({scope})"),
        })
}

pub async fn show(
    State(app): State<App>,
    Path(path): Path<PolicyPath>,
) -> ServerResult<Json<Policy>> {
    let scope = scope_of(&app, path.slug.as_deref()).await?;
    let name = path.name.unwrap_or_default();
    Ok(Json(policy_of(&app, &scope, &name).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceRequest {
    source: String,
}

/// Uploads a new version: the module as the body (`text/plain`), or `{"source": "…"}`.
/// A module that does not parse is refused with its line and column.
pub async fn put(
    State(app): State<App>,
    signed: Signed,
    Path(path): Path<PolicyPath>,
    headers: HeaderMap,
    body: Bytes,
) -> ServerResult<(StatusCode, Json<Policy>)> {
    let scope = scope_of(&app, path.slug.as_deref()).await?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let source = if json {
        serde_json::from_slice::<SourceRequest>(&body)
            .map_err(|e| Error::Invalid(format!("request body: {e}")))?
            .source
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| Error::Invalid("the policy is not UTF-8 text".into()))?
    };
    let policy = app
        .policies
        .set(
            &scope,
            path.name.as_deref().unwrap_or_default(),
            source,
            &signed.audit,
        )
        .await?;
    let status = if policy.versions.len() == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(policy)))
}

pub async fn delete(
    State(app): State<App>,
    signed: Signed,
    Path(path): Path<PolicyPath>,
) -> ServerResult<StatusCode> {
    let scope = scope_of(&app, path.slug.as_deref()).await?;
    let name = path.name.unwrap_or_default();
    app.store
        .delete_policy(
            &scope,
            &name,
            Record::new(
                &signed.audit,
                "policy.delete",
                format!("policy:{scope}/{name}"),
            ),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct DecisionQuery {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

pub async fn decisions(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<DecisionQuery>,
) -> ServerResult<Json<Vec<Decision>>> {
    crate::projects::find(&app.store, &slug).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(app.store.decisions(&slug, q.subject, limit).await?))
}

pub async fn decision(
    State(app): State<App>,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<Json<Decision>> {
    let d = app
        .store
        .decision(id)
        .await?
        .filter(|d| d.project == slug)
        .ok_or_else(|| Error::NotFound {
            what: format!("decision {id} of project \"{slug}\""),
        })?;
    Ok(Json(d))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/policies" USER => list,
        GET "/api/v1/policies/{name}" USER => show,
        PUT "/api/v1/policies/{name}" ADMIN => put,
        DELETE "/api/v1/policies/{name}" ADMIN => delete,
        GET "/api/v1/projects/{slug}/policies" VIEWER => list,
        GET "/api/v1/projects/{slug}/policies/{name}" VIEWER => show,
        PUT "/api/v1/projects/{slug}/policies/{name}" MAINTAINER => put,
        DELETE "/api/v1/projects/{slug}/policies/{name}" MAINTAINER => delete,
        GET "/api/v1/projects/{slug}/decisions" VIEWER => decisions,
        GET "/api/v1/projects/{slug}/decisions/{id}" VIEWER => decision,
    ]
}
