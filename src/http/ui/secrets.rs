//! The secrets screens: `/security/secrets` (the instance's, administrators) and
//! `/projects/{slug}/secrets?environment=NAME` (a project's or one of its environments',
//! maintainers). Values can be set, never seen.

use super::form::{self};
use super::{Console, Layout, render};
use crate::app::App;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::secrets::Scope;
use crate::secrets::views::{SecretView, scope_of};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query};
use axum::response::{Html, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "secrets/secrets.html")]
struct SecretsPage {
    layout: Layout,
    /// The project, for a project's page.
    project: Option<String>,
    environment: Option<String>,
    /// Environments of the project that have secrets.
    environments: Vec<String>,
    secrets: Vec<SecretView>,
    done: Option<&'static str>,
    error: Option<String>,
}

impl SecretsPage {
    /// Where this page's forms post to.
    fn base(&self) -> String {
        match &self.project {
            Some(slug) => format!("/projects/{slug}/secrets"),
            None => "/security/secrets".into(),
        }
    }

    fn scope_label(&self) -> String {
        match (&self.project, &self.environment) {
            (None, _) => "the instance: every project's steps can use them".into(),
            (Some(slug), None) => format!("project {slug}"),
            (Some(slug), Some(e)) => format!("environment {e} of project {slug}"),
        }
    }
}

/// `/projects/{slug}/…` or `/security/…`; both with an optional secret name.
#[derive(Deserialize)]
pub struct PagePath {
    slug: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

fn done_message(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "set" => "Secret saved. Its value is not shown again.",
        "restored" => "Version restored as a new version.",
        "deleted" => "Secret deleted with all its versions.",
        _ => return None,
    })
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

async fn render_page(
    app: &App,
    signed: &Signed,
    slug: Option<&str>,
    environment: Option<String>,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let scope = scope_of(&app.store, slug, environment.as_deref()).await?;
    let environments = match &scope {
        Scope::Project { project } | Scope::Environment { project, .. } => {
            app.store.secret_environments(*project).await?
        }
        Scope::Instance => Vec::new(),
    };
    let secrets = app.secrets.list(&scope).await?;
    render(&SecretsPage {
        layout: Layout::new(
            match slug {
                Some(slug) => format!("{slug}: secrets"),
                None => "Instance secrets".into(),
            },
            if slug.is_some() {
                "projects"
            } else {
                "security"
            },
            Some(&signed.principal),
        ),
        project: slug.map(str::to_string),
        environment,
        environments,
        secrets: secrets.into_iter().map(SecretView::from).collect(),
        done,
        error,
    })
}

pub async fn page(
    Console { app, signed }: Console,
    Path(path): Path<PagePath>,
    Query(q): Query<PageQuery>,
) -> ServerResult<Html<String>> {
    render_page(
        &app,
        &signed,
        path.slug.as_deref(),
        nonempty(q.environment),
        done_message(q.done.as_deref()),
        None,
    )
    .await
}

/// Redirects back with `done`, or shows the page again with the error.
async fn after(
    app: &App,
    signed: &Signed,
    path: &PagePath,
    environment: Option<String>,
    result: Result<&'static str, Error>,
) -> ServerResult<Response> {
    let to = result.map(|done| {
        let base = match &path.slug {
            Some(slug) => format!("/projects/{slug}/secrets"),
            None => "/security/secrets".into(),
        };
        let query = environment
            .as_ref()
            .map(|e| format!("environment={e}&"))
            .unwrap_or_default();
        format!("{base}?{query}done={done}")
    });
    form::finish(to, |message| {
        render_page(
            app,
            signed,
            path.slug.as_deref(),
            environment.clone(),
            None,
            Some(message),
        )
    })
    .await
}

/// What a form asks for.
enum Change {
    Set { name: String, value: String },
    Restore { name: String, version: u64 },
    Delete { name: String },
}

/// Applies `change` in the scope the path and form name, then redirects or re-renders.
async fn apply(
    app: &App,
    signed: &Signed,
    path: &PagePath,
    environment: Option<String>,
    change: Change,
) -> ServerResult<Response> {
    let result = async {
        let scope = scope_of(&app.store, path.slug.as_deref(), environment.as_deref()).await?;
        let audit = &signed.audit;
        Ok::<_, Error>(match change {
            Change::Set { name, value } => {
                app.secrets.set(scope, name.trim(), value, audit).await?;
                "set"
            }
            Change::Restore { name, version } => {
                app.secrets.restore(scope, &name, version, audit).await?;
                "restored"
            }
            Change::Delete { name } => {
                app.secrets.delete(scope, &name, audit).await?;
                "deleted"
            }
        })
    }
    .await;
    after(app, signed, path, environment, result).await
}

#[derive(Deserialize)]
pub struct SetForm {
    name: String,
    value: String,
    #[serde(default)]
    environment: Option<String>,
}

pub async fn set(
    Console { app, signed }: Console,
    Path(path): Path<PagePath>,
    Form(form): Form<SetForm>,
) -> ServerResult<Response> {
    let change = Change::Set {
        name: form.name,
        value: form.value,
    };
    apply(&app, &signed, &path, nonempty(form.environment), change).await
}

#[derive(Deserialize)]
pub struct VersionForm {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    environment: Option<String>,
}

pub async fn restore(
    Console { app, signed }: Console,
    Path(path): Path<PagePath>,
    Form(form): Form<VersionForm>,
) -> ServerResult<Response> {
    let change = Change::Restore {
        name: path.name.clone().unwrap_or_default(),
        version: form.version,
    };
    apply(&app, &signed, &path, nonempty(form.environment), change).await
}

pub async fn delete(
    Console { app, signed }: Console,
    Path(path): Path<PagePath>,
    Form(form): Form<VersionForm>,
) -> ServerResult<Response> {
    let change = Change::Delete {
        name: path.name.clone().unwrap_or_default(),
    };
    apply(&app, &signed, &path, nonempty(form.environment), change).await
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/security/secrets" ADMIN => page,
        POST "/security/secrets" ADMIN => set,
        POST "/security/secrets/{name}/delete" ADMIN => delete,
        POST "/security/secrets/{name}/restore" ADMIN => restore,
        GET "/projects/{slug}/secrets" MAINTAINER => page,
        POST "/projects/{slug}/secrets" MAINTAINER => set,
        POST "/projects/{slug}/secrets/{name}/delete" MAINTAINER => delete,
        POST "/projects/{slug}/secrets/{name}/restore" MAINTAINER => restore,
    ]
}
