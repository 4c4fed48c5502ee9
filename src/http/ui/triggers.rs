//! A project's triggers: the webhook (address, secret, recorded deliveries with
//! re-delivery), the forge link and token for commit statuses, polling, and cron
//! schedules.

use super::form::{self};
use super::{Console, Done, Layout, render};
use crate::app::App;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::Role;
use crate::identity::audit::Record;
use crate::projects::forge::status::FORGE_TOKEN;
use crate::projects::inbox::Delivery;
use crate::projects::schedule::ScheduleChange;
use crate::projects::schedules::{ScheduleView, create_schedule, delete_schedule, of_project};
use crate::projects::{ProjectChange, ProjectDetail, WEBHOOK_SECRET, detail};
use crate::secrets::Scope;
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "projects/triggers.html")]
struct TriggersPage {
    layout: Layout,
    project: ProjectDetail,
    deliveries: Vec<Delivery>,
    schedules: Vec<ScheduleView>,
    maintainer: bool,
    /// A webhook secret just generated: shown once.
    new_secret: Option<String>,
    done: Option<&'static str>,
    error: Option<String>,
}

impl TriggersPage {
    /// Whether the project has this secret (`WEBHOOK_SECRET`, `FORGE_TOKEN`).
    fn has(&self, secret: &str) -> bool {
        self.project.secrets.iter().any(|c| c == secret)
    }
}

fn done_message(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "forge" => "Forge and polling settings saved.",
        "schedule-created" => "Schedule created.",
        "schedule-deleted" => "Schedule deleted.",
        "redelivered" => "Delivery repeated.",
        _ => return None,
    })
}

async fn page(
    app: &App,
    signed: &Signed,
    slug: &str,
    new_secret: Option<String>,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let project = detail(app, slug).await?;
    let maintainer = super::project_role(app, signed, slug).await? >= Some(Role::Maintainer);
    render(&TriggersPage {
        layout: Layout::new(
            format!("{}: triggers", project.project.name),
            "projects",
            Some(&signed.principal),
        ),
        deliveries: app.store.project_deliveries(slug, 50).await?,
        schedules: of_project(app, slug).await?,
        project,
        maintainer,
        new_secret,
        done,
        error,
    })
}

pub async fn show(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    page(
        &app,
        &signed,
        &slug,
        None,
        done_message(done.as_deref()),
        None,
    )
    .await
}

/// Redirects to the page with `done`, or shows it again with the error.
async fn after(
    app: &App,
    signed: &Signed,
    slug: &str,
    result: Result<(), Error>,
    done: &str,
) -> ServerResult<Response> {
    let to = result.map(|()| format!("/projects/{slug}/triggers?done={done}"));
    form::finish(to, |message| {
        page(app, signed, slug, None, None, Some(message))
    })
    .await
}

/// Generates a new webhook secret and shows it once.
pub async fn webhook_secret(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
) -> ServerResult<Html<String>> {
    let project = crate::projects::find(&app.store, &slug).await?;
    let value = crate::identity::secret::random_hex(32);
    app.secrets
        .set(
            Scope::Project {
                project: project.id,
            },
            WEBHOOK_SECRET,
            value.clone(),
            &signed.audit,
        )
        .await?;
    page(
        &app,
        &signed,
        &slug,
        Some(value),
        Some("New webhook secret generated. Copy it now: it is not shown again."),
        None,
    )
    .await
}

#[derive(Deserialize)]
pub struct ForgeForm {
    #[serde(default)]
    forge_kind: String,
    #[serde(default)]
    forge_url: String,
    #[serde(default)]
    forge_api_url: String,
    /// Left empty: the stored token is kept.
    #[serde(default)]
    forge_token: String,
    #[serde(default)]
    poll_interval: String,
}

pub async fn forge(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<ForgeForm>,
) -> ServerResult<Response> {
    let change = ProjectChange {
        forge_kind: Some(form.forge_kind),
        forge_url: Some(form.forge_url),
        forge_api_url: Some(form.forge_api_url),
        poll_interval: Some(form.poll_interval),
        ..ProjectChange::default()
    };
    let record = Record::new(&signed.audit, "project.update", format!("project:{slug}"));
    let mut result = app
        .store
        .update_project(&slug, change, record)
        .await
        .map(drop);
    if result.is_ok() && !form.forge_token.trim().is_empty() {
        result = match crate::projects::find(&app.store, &slug).await {
            Ok(project) => app
                .secrets
                .set(
                    Scope::Project {
                        project: project.id,
                    },
                    FORGE_TOKEN,
                    form.forge_token.trim().to_string(),
                    &signed.audit,
                )
                .await
                .map(drop),
            Err(e) => Err(e),
        };
    }
    after(&app, &signed, &slug, result, "forge").await
}

#[derive(Deserialize)]
pub struct ScheduleForm {
    name: String,
    cron: String,
    #[serde(default)]
    timezone: String,
    #[serde(default, rename = "ref")]
    git_ref: String,
    #[serde(default)]
    env: String,
}

pub async fn add_schedule(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<ScheduleForm>,
) -> ServerResult<Response> {
    let result = match super::runs::env_lines(&form.env) {
        Err(e) => Err(Error::Invalid(e)),
        Ok(env) => {
            let change = ScheduleChange {
                name: Some(form.name),
                cron: Some(form.cron),
                timezone: Some(form.timezone),
                git_ref: Some(form.git_ref),
                env: Some(env),
                enabled: Some(true),
            };
            create_schedule(&app, &slug, change, &signed.audit)
                .await
                .map(drop)
        }
    };
    after(&app, &signed, &slug, result, "schedule-created").await
}

pub async fn remove_schedule(
    Console { app, signed }: Console,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<Response> {
    let result = delete_schedule(&app, &slug, id, &signed.audit).await;
    after(&app, &signed, &slug, result, "schedule-deleted").await
}

pub async fn redeliver(
    Console { app, signed }: Console,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<Response> {
    let project = crate::projects::find(&app.store, &slug).await?;
    let result = app
        .inbox()
        .redeliver(&project, id, &signed.audit)
        .await
        .map(drop);
    after(&app, &signed, &slug, result, "redelivered").await
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/projects/{slug}/triggers" VIEWER => show,
        POST "/projects/{slug}/triggers/webhook-secret" MAINTAINER => webhook_secret,
        POST "/projects/{slug}/triggers/forge" MAINTAINER => forge,
        POST "/projects/{slug}/triggers/schedules" MAINTAINER => add_schedule,
        POST "/projects/{slug}/triggers/schedules/{id}/delete" MAINTAINER => remove_schedule,
        POST "/projects/{slug}/triggers/deliveries/{id}/redeliver" MAINTAINER => redeliver,
    ]
}
