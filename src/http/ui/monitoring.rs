//! `/monitoring`: the alerts (firing first) and their history, the uptime probes, the
//! notification channels, the latest notifications and the projects' status pages, with
//! forms to silence, add a probe or a channel, send a channel a test and turn a status
//! page on or off (administrators).

use super::form::form_failed;
use super::{Console, Done, Layout, done_message, render};
use crate::app::App;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use crate::monitoring::probes::{self, NewProbe, ProbeView};
use crate::monitoring::{
    self, Alert, AlertEvent, AlertState, Channel, NewChannel, NewSilence, Notification, Silence,
    notify,
};
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};

#[derive(Template)]
#[template(path = "core/monitoring.html")]
struct MonitoringPage {
    layout: Layout,
    admin: bool,
    rules: Vec<crate::monitoring::rules::Rule>,
    alerts: Vec<Alert>,
    history: Vec<AlertEvent>,
    silences: Vec<Silence>,
    probes: Vec<ProbeView>,
    channels: Vec<Channel>,
    notifications: Vec<Notification>,
    projects: Vec<crate::projects::Project>,
    done: Option<&'static str>,
    error: Option<String>,
}

async fn page_with(
    app: &App,
    signed: &Signed,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let layout = Layout::new("Monitoring", "monitoring", Some(&signed.principal));
    if !signed.principal.user.admin {
        return render(&MonitoringPage {
            layout,
            admin: false,
            rules: monitoring::all_rules(&app.store).await?,
            alerts: Vec::new(),
            history: Vec::new(),
            silences: Vec::new(),
            probes: Vec::new(),
            channels: Vec::new(),
            notifications: Vec::new(),
            projects: Vec::new(),
            done,
            error,
        });
    }
    let alerts = monitoring::alerts_view(&app.store).await?;
    let now = jiff::Timestamp::now();
    render(&MonitoringPage {
        layout,
        admin: true,
        rules: alerts.rules,
        alerts: alerts.alerts,
        history: alerts.history.into_iter().take(20).collect(),
        silences: app
            .store
            .silences()
            .await?
            .into_iter()
            .filter(|s| s.until > now)
            .collect(),
        probes: probes::views(&app.store).await?,
        channels: app.store.channels().await?,
        notifications: app.store.notifications(None, 20).await?,
        projects: app.store.list_projects().await?,
        done,
        error,
    })
}

pub async fn monitoring_page(
    Console { app, signed }: Console,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    page_with(&app, &signed, done_message(done.as_deref()), None).await
}

/// After a form: back to the page with `done`, or the page again with the error.
async fn finish(
    app: &App,
    signed: &Signed,
    result: crate::core::error::Result<()>,
    done: &str,
) -> ServerResult<Response> {
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/monitoring?done={done}")).into_response()),
        Err(e) => form_failed(e, |message| page_with(app, signed, None, Some(message))).await,
    }
}

pub async fn create_silence(
    Console { app, signed }: Console,
    Form(form): Form<NewSilence>,
) -> ServerResult<Response> {
    let result = monitoring::create_silence(&app.store, form, &signed.audit).await;
    finish(&app, &signed, result.map(drop), "silence-created").await
}

pub async fn delete_silence(
    Console { app, signed }: Console,
    Path(id): Path<u64>,
) -> ServerResult<Response> {
    let audit = Record::new(&signed.audit, "silence.delete", format!("silence:{id}"));
    let result = app.store.delete_silence(id, audit).await;
    finish(&app, &signed, result, "silence-deleted").await
}

pub async fn create_probe(
    Console { app, signed }: Console,
    Form(form): Form<NewProbe>,
) -> ServerResult<Response> {
    let result = probes::create(&app.store, form, &signed.audit).await;
    finish(&app, &signed, result.map(drop), "probe-created").await
}

pub async fn delete_probe(
    Console { app, signed }: Console,
    Path(name): Path<String>,
) -> ServerResult<Response> {
    let audit = Record::new(&signed.audit, "probe.delete", format!("probe:{name}"));
    let result = app.store.delete_probe(&name, audit).await;
    finish(&app, &signed, result, "probe-deleted").await
}

pub async fn create_channel(
    Console { app, signed }: Console,
    Form(form): Form<NewChannel>,
) -> ServerResult<Response> {
    let result = monitoring::create_channel(&app.store, form, &signed.audit).await;
    finish(&app, &signed, result.map(drop), "channel-created").await
}

pub async fn test_channel(
    Console { app, signed }: Console,
    Path(name): Path<String>,
) -> ServerResult<Response> {
    let result = match notify::test(&app.store, &app.secrets, &name, &app.config.public_url).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::Invalid(e)),
        Err(e) => Err(e),
    };
    finish(&app, &signed, result, "channel-tested").await
}

#[derive(serde::Deserialize)]
pub struct StatusPageForm {
    /// `on` or `off`.
    pub status_page: String,
}

pub async fn set_status_page(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<StatusPageForm>,
) -> ServerResult<Response> {
    let on = form.status_page == "on";
    let change = crate::projects::ProjectChange {
        status_page: Some(on),
        ..Default::default()
    };
    let detail = if on { "on" } else { "off" };
    let audit = Record::new(
        &signed.audit,
        "project.status_page",
        format!("project:{slug}"),
    )
    .detail(detail);
    let result = app.store.update_project(&slug, change, audit).await;
    let done = if on {
        "status-page-on"
    } else {
        "status-page-off"
    };
    finish(&app, &signed, result.map(drop), done).await
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/monitoring" USER => monitoring_page,
        POST "/monitoring/silences" ADMIN => create_silence,
        POST "/monitoring/silences/{id}/delete" ADMIN => delete_silence,
        POST "/monitoring/probes" ADMIN => create_probe,
        POST "/monitoring/probes/{name}/delete" ADMIN => delete_probe,
        POST "/monitoring/channels" ADMIN => create_channel,
        POST "/monitoring/channels/{name}/test" ADMIN => test_channel,
        POST "/monitoring/status-pages/{slug}" ADMIN => set_status_page,
    ]
}
