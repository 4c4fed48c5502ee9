//! What the API, the console and the CLI show of projects: the projects a principal may
//! see, one project with what its triggers need, and its members.

use crate::app::App;
use crate::core::error::{Error, Result};
use crate::identity::audit::{Context, Record};
use crate::identity::{Principal, Role, RoleBinding, Subject};
use crate::projects::Project;
use crate::store::Store;
use serde::Serialize;

#[derive(Serialize)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: Project,
    /// The caller's role (administrators: maintainer).
    pub role: Role,
}

/// Projects `principal` may see, with their role on each.
pub async fn visible(store: &Store, principal: &Principal) -> Result<Vec<ProjectView>> {
    let projects = store.list_projects().await?;
    if principal.user.admin {
        return Ok(projects
            .into_iter()
            .map(|project| ProjectView {
                project,
                role: Role::Maintainer,
            })
            .collect());
    }
    let roles = store.project_roles_of(&principal.user).await?;
    Ok(projects
        .into_iter()
        .filter_map(|project| {
            let role = *roles.get(&project.slug)?;
            Some(ProjectView { project, role })
        })
        .collect())
}

/// The project `slug`, or `NotFound`.
pub async fn find(store: &Store, slug: &str) -> Result<Project> {
    store.project(slug).await?.ok_or_else(|| Error::NotFound {
        what: format!("project \"{slug}\""),
    })
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
    pub poll: Option<crate::projects::poll::PollState>,
}

pub async fn detail(app: &App, slug: &str) -> Result<ProjectDetail> {
    let project = find(&app.store, slug).await?;
    let mut poll = app.store.poll_state(project.id).await?;
    if let Some(poll) = poll.as_mut() {
        // The refs are for change detection; the runs list shows what ran.
        poll.refs.clear();
    }
    Ok(ProjectDetail {
        webhook_url: webhook_url(&app.config.public_url, slug),
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
                    crate::projects::WEBHOOK_SECRET,
                    crate::projects::forge::status::FORGE_TOKEN,
                ]
                .contains(&name.as_str())
            })
            .collect(),
        poll: poll.filter(|_| project.poll_interval.is_some()),
        project,
    })
}

/// The address forges deliver `slug`'s webhooks to.
pub fn webhook_url(public_url: &str, slug: &str) -> String {
    format!("{}/api/v1/hooks/{slug}", public_url.trim_end_matches('/'))
}

#[derive(Serialize)]
pub struct Member {
    /// `user:NAME` or `team:NAME`.
    pub subject: String,
    pub role: Role,
}

/// The role bindings of project `slug`, with names.
pub async fn member_views(store: &Store, slug: &str) -> Result<Vec<Member>> {
    let bindings: Vec<RoleBinding> = store.project_members(slug).await?;
    let users = store.list_users().await?;
    let teams = store.list_teams().await?;
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

/// Resolves `user:NAME` or `team:NAME`.
async fn subject(store: &Store, text: &str) -> Result<Subject> {
    let not_found = |what: String| Error::NotFound { what };
    match text.split_once(':') {
        Some(("user", name)) => store
            .user_by_name(name)
            .await?
            .map(|u| Subject::User(u.id))
            .ok_or_else(|| not_found(format!("user \"{name}\""))),
        Some(("team", name)) => store
            .list_teams()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| Subject::Team(t.id))
            .ok_or_else(|| not_found(format!("team \"{name}\""))),
        _ => Err(Error::Invalid(format!(
            "invalid member \"{text}\": use user:NAME or team:NAME"
        ))),
    }
}

/// Grants (`Some(role)`) or removes the project role of `who` (`user:NAME` or
/// `team:NAME`); audited.
pub async fn bind_member(
    store: &Store,
    slug: &str,
    who: &str,
    role: Option<Role>,
    ctx: &Context,
) -> Result<()> {
    find(store, slug).await?;
    let subject = subject(store, who).await?;
    let (action, detail) = match role {
        Some(role) => ("project.set_member", format!("{who} = {role}")),
        None => ("project.remove_member", who.to_string()),
    };
    let record = Record::new(ctx, action, format!("project:{slug}")).detail(detail);
    store.set_role_binding(slug, subject, role, record).await
}
