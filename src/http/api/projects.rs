//! Projects and their members (role bindings).
//!
//! `GET|POST /api/v1/projects`, `GET|PATCH|DELETE /api/v1/projects/{slug}`,
//! `GET /api/v1/projects/{slug}/members`,
//! `PUT|DELETE /api/v1/projects/{slug}/members/{subject}` (`user:NAME` or `team:NAME`).

use crate::app::App;
use crate::audit::Record;
use crate::auth::{Principal, Role, RoleBinding, Subject};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::project::{Project, ProjectChange};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: Project,
    /// The caller's role (administrators: maintainer).
    pub role: Role,
}

/// Projects the caller may see, with their role on each.
pub async fn visible(app: &App, principal: &Principal) -> ServerResult<Vec<ProjectView>> {
    let projects = app.store.list_projects().await?;
    if principal.user.admin {
        return Ok(projects
            .into_iter()
            .map(|project| ProjectView {
                project,
                role: Role::Maintainer,
            })
            .collect());
    }
    let roles = app.store.project_roles_of(&principal.user).await?;
    Ok(projects
        .into_iter()
        .filter_map(|project| {
            let role = *roles.get(&project.slug)?;
            Some(ProjectView { project, role })
        })
        .collect())
}

pub async fn list(State(app): State<App>, signed: Signed) -> ServerResult<Json<Vec<ProjectView>>> {
    Ok(Json(visible(&app, &signed.principal).await?))
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

/// The project `slug`, for helpers that return domain errors.
pub async fn project_of(app: &App, slug: &str) -> crate::error::Result<Project> {
    app.store
        .project(slug)
        .await?
        .ok_or_else(|| crate::error::Error::NotFound {
            what: format!("project \"{slug}\""),
        })
}

pub async fn find(app: &App, slug: &str) -> ServerResult<Project> {
    app.store
        .project(slug)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("project \"{slug}\" not found")))
}

/// A project with what its triggers need: the webhook address, which of the secrets
/// BetCycle itself uses are set (names only; the full list is for maintainers) and the
/// polling state.
#[derive(Serialize)]
pub struct ProjectDetail {
    #[serde(flatten)]
    pub project: Project,
    pub webhook_url: String,
    pub secrets: Vec<String>,
    pub poll: Option<crate::poll::PollState>,
}

pub async fn detail(app: &App, slug: &str) -> ServerResult<ProjectDetail> {
    let project = find(app, slug).await?;
    let mut poll = app.store.poll_state(project.id).await?;
    if let Some(poll) = poll.as_mut() {
        // The refs are for change detection; the runs list shows what ran.
        poll.refs.clear();
    }
    Ok(ProjectDetail {
        webhook_url: super::hooks::webhook_url(app, slug),
        secrets: app
            .secrets
            .list(&crate::secrets::Scope::Project {
                project: project.id,
            })
            .await?
            .into_iter()
            .map(|s| s.name)
            .filter(|name| {
                [
                    crate::project::WEBHOOK_SECRET,
                    crate::forge::status::FORGE_TOKEN,
                ]
                .contains(&name.as_str())
            })
            .collect(),
        poll: poll.filter(|_| project.poll_interval.is_some()),
        project,
    })
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

/// How far the project's local steps are confined; administrators only, since `off`
/// lets a pipeline read the server's data directory.
pub async fn set_isolation(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(change): Json<IsolationChange>,
) -> ServerResult<Json<Project>> {
    let isolation = crate::executor::sandbox::Isolation::parse(change.isolation.trim())
        .map_err(ServerError::BadRequest)?;
    let project = app
        .store
        .update_project(
            &slug,
            ProjectChange {
                isolation: Some(isolation),
                ..ProjectChange::default()
            },
            Record::new(
                &signed.audit,
                "project.isolation",
                format!("project:{slug}"),
            )
            .detail(isolation.as_str()),
        )
        .await?;
    Ok(Json(project))
}

pub async fn delete(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
) -> ServerResult<StatusCode> {
    let project = find(&app, &slug).await?;
    app.store
        .delete_project(
            &slug,
            Record::new(&signed.audit, "project.delete", format!("project:{slug}")),
        )
        .await?;
    app.runner.mirrors.remove(project.id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct Member {
    /// `user:NAME` or `team:NAME`.
    pub subject: String,
    pub role: Role,
}

pub async fn member_views(app: &App, slug: &str) -> ServerResult<Vec<Member>> {
    let bindings: Vec<RoleBinding> = app.store.project_members(slug).await?;
    let users = app.store.list_users().await?;
    let teams = app.store.list_teams().await?;
    Ok(bindings
        .into_iter()
        .map(|b| Member {
            subject: match b.subject {
                Subject::User(id) => format!(
                    "user:{}",
                    users.iter().find(|u| u.id == id).map_or("?", |u| &u.name)
                ),
                Subject::Team(id) => format!(
                    "team:{}",
                    teams.iter().find(|t| t.id == id).map_or("?", |t| &t.name)
                ),
            },
            role: b.role,
        })
        .collect())
}

pub async fn members(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<Vec<Member>>> {
    find(&app, &slug).await?;
    Ok(Json(member_views(&app, &slug).await?))
}

/// Resolves `user:NAME` or `team:NAME`.
async fn subject(app: &App, text: &str) -> crate::error::Result<Subject> {
    let not_found = |what: String| crate::error::Error::NotFound { what };
    match text.split_once(':') {
        Some(("user", name)) => app
            .store
            .user_by_name(name)
            .await?
            .map(|u| Subject::User(u.id))
            .ok_or_else(|| not_found(format!("user \"{name}\""))),
        Some(("team", name)) => app
            .store
            .list_teams()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| Subject::Team(t.id))
            .ok_or_else(|| not_found(format!("team \"{name}\""))),
        _ => Err(crate::error::Error::Invalid(format!(
            "invalid member \"{text}\": use user:NAME or team:NAME"
        ))),
    }
}

/// Grants (`Some(role)`) or removes the project role of `who` (`user:NAME` or
/// `team:NAME`); audited. Shared by the API and the console.
pub async fn bind_member(
    app: &App,
    slug: &str,
    who: &str,
    role: Option<Role>,
    ctx: &crate::audit::Context,
) -> crate::error::Result<()> {
    if app.store.project(slug).await?.is_none() {
        return Err(crate::error::Error::NotFound {
            what: format!("project \"{slug}\""),
        });
    }
    let subject = subject(app, who).await?;
    let (action, detail) = match role {
        Some(role) => ("project.set_member", format!("{who} = {role}")),
        None => ("project.remove_member", who.to_string()),
    };
    let record = Record::new(ctx, action, format!("project:{slug}")).detail(detail);
    app.store
        .set_role_binding(slug, subject, role, record)
        .await
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
    bind_member(&app, &slug, &who, Some(req.role), &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member(
    State(app): State<App>,
    signed: Signed,
    Path((slug, who)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    bind_member(&app, &slug, &who, None, &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}
