//! Projects and their members (role bindings).
//!
//! `GET|POST /api/v1/projects`, `GET|PATCH|DELETE /api/v1/projects/{slug}`,
//! `GET /api/v1/projects/{slug}/members`,
//! `PUT|DELETE /api/v1/projects/{slug}/members/{subject}` (`user:NAME` or `team:NAME`).

use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::identity::Role;
use crate::identity::audit::Record;
use crate::projects::{
    Member, Project, ProjectChange, ProjectDetail, ProjectView, bind_member, detail, find,
    member_views, visible,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

pub async fn list(State(app): State<App>, signed: Signed) -> ServerResult<Json<Vec<ProjectView>>> {
    Ok(Json(visible(&app.store, &signed.principal).await?))
}

/// The activity of the projects you can see, week by week (12 weeks): runs and
/// deployments, summed and per project, busiest first.
pub async fn activity(
    State(app): State<App>,
    signed: Signed,
) -> ServerResult<Json<crate::monitoring::trends::Activity>> {
    let slugs: Vec<String> = visible(&app.store, &signed.principal)
        .await?
        .into_iter()
        .map(|v| v.project.slug)
        .collect();
    Ok(Json(
        crate::monitoring::trends::activity(&app.store, &slugs).await?,
    ))
}

pub async fn create(
    State(app): State<App>,
    signed: Signed,
    Json(change): Json<ProjectChange>,
) -> ServerResult<(StatusCode, Json<Project>)> {
    let target = format!("project:{}", change.slug.clone().unwrap_or_default());
    let project = app
        .store
        .create_project(change, Record::new(&signed.audit, "project.create", target))
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

pub async fn show(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<ProjectDetail>> {
    Ok(Json(detail(&app, &slug).await?))
}

pub async fn update(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(change): Json<ProjectChange>,
) -> ServerResult<Json<Project>> {
    let project = app
        .store
        .update_project(
            &slug,
            change,
            Record::new(&signed.audit, "project.update", format!("project:{slug}")),
        )
        .await?;
    Ok(Json(project))
}

#[derive(serde::Deserialize)]
pub struct IsolationChange {
    /// `standard`, `strict` or `off`.
    pub isolation: String,
}

/// One of the settings only administrators change: `change` applied and audited as
/// `action` with `detail`.
async fn admin_setting(
    app: &App,
    signed: &Signed,
    slug: &str,
    change: ProjectChange,
    action: &'static str,
    detail: &str,
) -> ServerResult<Json<Project>> {
    let record = Record::new(&signed.audit, action, format!("project:{slug}")).detail(detail);
    Ok(Json(app.store.update_project(slug, change, record).await?))
}

/// How far the project's local steps are confined; administrators only, since `off`
/// lets a pipeline read the server's data directory.
pub async fn set_isolation(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(change): Json<IsolationChange>,
) -> ServerResult<Json<Project>> {
    let isolation = crate::exec::local::sandbox::Isolation::parse(change.isolation.trim())
        .map_err(ServerError::BadRequest)?;
    let change = ProjectChange {
        isolation: Some(isolation),
        ..ProjectChange::default()
    };
    admin_setting(
        &app,
        &signed,
        &slug,
        change,
        "project.isolation",
        isolation.as_str(),
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct ContainersChange {
    /// Whether container steps may be `privileged` and mount host `volumes`.
    pub host_access: bool,
}

/// Whether the project's container steps may be privileged and mount host paths;
/// administrators only, since either gives a step the host.
pub async fn set_containers(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(change): Json<ContainersChange>,
) -> ServerResult<Json<Project>> {
    let detail = if change.host_access {
        "host access on"
    } else {
        "host access off"
    };
    let change = ProjectChange {
        container_host_access: Some(change.host_access),
        ..ProjectChange::default()
    };
    admin_setting(&app, &signed, &slug, change, "project.containers", detail).await
}

#[derive(serde::Deserialize)]
pub struct StatusPageChange {
    /// Whether `/status/{slug}` is shown to anyone, signed in or not.
    pub enabled: bool,
}

/// Turns the project's public status page on or off; administrators only, since it
/// shows the project's probes to anyone.
pub async fn set_status_page(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(change): Json<StatusPageChange>,
) -> ServerResult<Json<Project>> {
    let detail = if change.enabled { "on" } else { "off" };
    let change = ProjectChange {
        status_page: Some(change.enabled),
        ..ProjectChange::default()
    };
    admin_setting(&app, &signed, &slug, change, "project.status_page", detail).await
}

pub async fn delete(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
) -> ServerResult<StatusCode> {
    let project = find(&app.store, &slug).await?;
    app.store
        .delete_project(
            &slug,
            Record::new(&signed.audit, "project.delete", format!("project:{slug}")),
        )
        .await?;
    app.runner.mirrors.remove(project.id);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn members(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<Vec<Member>>> {
    find(&app.store, &slug).await?;
    Ok(Json(member_views(&app.store, &slug).await?))
}

#[derive(Deserialize)]
pub struct MemberRole {
    pub role: Role,
}

pub async fn set_member(
    State(app): State<App>,
    signed: Signed,
    Path((slug, who)): Path<(String, String)>,
    Json(req): Json<MemberRole>,
) -> ServerResult<StatusCode> {
    bind_member(&app.store, &slug, &who, Some(req.role), &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member(
    State(app): State<App>,
    signed: Signed,
    Path((slug, who)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    bind_member(&app.store, &slug, &who, None, &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/projects" USER => list,
        GET "/api/v1/activity" USER => activity,
        POST "/api/v1/projects" ADMIN => create,
        GET "/api/v1/projects/{slug}" VIEWER => show,
        PATCH "/api/v1/projects/{slug}" MAINTAINER => update,
        DELETE "/api/v1/projects/{slug}" ADMIN => delete,
        PUT "/api/v1/projects/{slug}/isolation" ADMIN => set_isolation,
        PUT "/api/v1/projects/{slug}/containers" ADMIN => set_containers,
        PUT "/api/v1/projects/{slug}/status-page" ADMIN => set_status_page,
        GET "/api/v1/projects/{slug}/members" VIEWER => members,
        PUT "/api/v1/projects/{slug}/members/{subject}" MAINTAINER => set_member,
        DELETE "/api/v1/projects/{slug}/members/{subject}" MAINTAINER => remove_member,
    ]
}
