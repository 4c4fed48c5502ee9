//! Projects: the list (administrators create projects here) and a project's page with
//! its settings and members.

use super::form::{self, form_failed};
use super::{Console, Done, Layout, done_message, render};
use crate::app::App;
use crate::ci::run::Run;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::Role;
use crate::identity::audit::Record;
use crate::monitoring::trends::{ActivityWeek, ProjectActivity};
use crate::projects::{
    Member, Project, ProjectChange, ProjectView, bind_member, member_views, visible,
};
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "projects/projects.html")]
struct ProjectsPage {
    layout: Layout,
    /// Each project with its activity over 12 weeks.
    projects: Vec<(ProjectView, Option<ProjectActivity>)>,
    /// Every listed project's runs per week.
    runs: super::chart::Bars,
    deployments: super::chart::Bars,
    admin: bool,
    error: Option<String>,
}

impl ProjectsPage {
    fn rate(&self, a: &ProjectActivity) -> String {
        a.success_rate()
            .map_or("–".into(), |r| format!("{:.0} %", r * 100.0))
    }

    fn when(&self, a: &ProjectActivity) -> String {
        a.last_activity_at
            .map_or("–".into(), crate::http::present::utc)
    }
}

async fn list_page(
    app: &App,
    signed: &Signed,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let projects = visible(&app.store, &signed.principal).await?;
    let slugs: Vec<String> = projects.iter().map(|p| p.project.slug.clone()).collect();
    let activity = crate::monitoring::trends::activity(&app.store, &slugs).await?;
    let weekly = |of: fn(&ActivityWeek) -> (u64, u64)| -> Vec<(String, u64, u64)> {
        activity
            .total
            .iter()
            .map(|w| {
                let (ok, bad) = of(w);
                (w.week.clone(), ok, bad)
            })
            .collect()
    };
    let runs = super::chart::bars(
        "Runs per week, every project listed",
        "runs",
        &weekly(|w| (w.succeeded, w.failed)),
    );
    let deployments = super::chart::bars(
        "Deployments per week, every project listed",
        "deployments",
        &weekly(|w| (w.deployments - w.failed_deployments, w.failed_deployments)),
    );
    let projects = projects
        .into_iter()
        .map(|p| {
            let a = activity
                .projects
                .iter()
                .find(|a| a.project == p.project.slug)
                .cloned();
            (p, a)
        })
        .collect();
    render(&ProjectsPage {
        layout: Layout::new("Projects", "projects", Some(&signed.principal)),
        projects,
        runs,
        deployments,
        admin: signed.principal.user.admin,
        error,
    })
}

pub async fn list(Console { app, signed }: Console) -> ServerResult<Html<String>> {
    list_page(&app, &signed, None).await
}

pub async fn create(
    Console { app, signed }: Console,
    Form(change): Form<ProjectChange>,
) -> ServerResult<Response> {
    let slug = change.slug.clone().unwrap_or_default();
    let change = change.without_empty();
    let branch = change
        .default_branch
        .clone()
        .unwrap_or_else(|| crate::projects::DEFAULT_BRANCH.to_string());
    if let Err(message) =
        crate::projects::check_repository(change.repository.as_deref().unwrap_or(""), &branch).await
    {
        let page = |message| list_page(&app, &signed, Some(message));
        return form_failed(Error::Invalid(message), page).await;
    }
    let record = Record::new(&signed.audit, "project.create", format!("project:{slug}"));
    match app.store.create_project(change, record).await {
        Ok(p) => {
            Ok(Redirect::to(&format!("/projects/{}?done=project-created", p.slug)).into_response())
        }
        Err(e) => form_failed(e, |message| list_page(&app, &signed, Some(message))).await,
    }
}

#[derive(Template)]
#[template(path = "projects/project.html")]
struct ProjectPage {
    layout: Layout,
    project: Project,
    runs: Vec<Run>,
    /// Flaky tests over the last [`FLAKY_RUNS`] runs.
    flaky: Vec<crate::ci::flaky::FlakyTest>,
    maintainer: bool,
    developer: bool,
    done: Option<&'static str>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "projects/settings.html")]
struct SettingsPage {
    layout: Layout,
    project: Project,
    members: Vec<Member>,
    maintainer: bool,
    done: Option<&'static str>,
    error: Option<String>,
}

/// A project's settings and members (changeable by maintainers, shown to everyone else).
async fn settings_page(
    app: &App,
    signed: &Signed,
    slug: &str,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let project = crate::projects::find(&app.store, slug).await?;
    let role = super::project_role(app, signed, slug).await?;
    render(&SettingsPage {
        layout: Layout::new(
            format!("{}: settings", project.name),
            "projects",
            Some(&signed.principal),
        ),
        members: member_views(&app.store, slug).await?,
        maintainer: role >= Some(Role::Maintainer),
        project,
        done,
        error,
    })
}

pub async fn show_settings(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    settings_page(&app, &signed, &slug, done_message(done.as_deref()), None).await
}

/// How many runs the project page looks back for flaky tests (the API looks further).
const FLAKY_RUNS: usize = 50;

pub(super) async fn project_page(
    app: &App,
    signed: &Signed,
    slug: &str,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let project = crate::projects::find(&app.store, slug).await?;
    let role = super::project_role(app, signed, slug).await?;
    let recent = app
        .store
        .project_runs(slug, Default::default(), FLAKY_RUNS)
        .await?;
    render(&ProjectPage {
        layout: Layout::new(project.name.clone(), "projects", Some(&signed.principal)),
        flaky: crate::ci::flaky::flaky_tests(&recent),
        runs: recent.into_iter().take(10).collect(),
        maintainer: role >= Some(Role::Maintainer),
        developer: role >= Some(Role::Developer),
        project,
        done,
        error,
    })
}

pub async fn show(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    project_page(&app, &signed, &slug, done_message(done.as_deref()), None).await
}

async fn after(
    app: &App,
    signed: &Signed,
    slug: &str,
    result: Result<(), Error>,
    done: &str,
) -> ServerResult<Response> {
    let to = result.map(|()| format!("/projects/{slug}/settings?done={done}"));
    form::finish(to, |message| {
        settings_page(app, signed, slug, None, Some(message))
    })
    .await
}

pub async fn settings(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(change): Form<ProjectChange>,
) -> ServerResult<Response> {
    let record = Record::new(&signed.audit, "project.update", format!("project:{slug}"));
    let result = app
        .store
        .update_project(&slug, change.without_empty(), record)
        .await
        .map(drop);
    after(&app, &signed, &slug, result, "project-updated").await
}

#[derive(Deserialize)]
pub struct MemberForm {
    subject: String,
    role: Role,
}

pub async fn add_member(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<MemberForm>,
) -> ServerResult<Response> {
    let result = bind_member(
        &app.store,
        &slug,
        form.subject.trim(),
        Some(form.role),
        &signed.audit,
    )
    .await;
    after(&app, &signed, &slug, result, "members-updated").await
}

pub async fn remove_member(
    Console { app, signed }: Console,
    Path((slug, who)): Path<(String, String)>,
) -> ServerResult<Response> {
    let result = bind_member(&app.store, &slug, &who, None, &signed.audit).await;
    after(&app, &signed, &slug, result, "members-updated").await
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/projects" USER => list,
        POST "/projects" ADMIN => create,
        GET "/projects/{slug}" VIEWER => show,
        GET "/projects/{slug}/settings" VIEWER => show_settings,
        POST "/projects/{slug}/settings" MAINTAINER => settings,
        POST "/projects/{slug}/members" MAINTAINER => add_member,
        POST "/projects/{slug}/members/{subject}/remove" MAINTAINER => remove_member,
    ]
}
