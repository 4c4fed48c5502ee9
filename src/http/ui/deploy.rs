//! The delivery screens: a project's environments board (what is live where, what waits
//! for approval, deploy/promote/rollback, settings, DORA charts) and a deployment's page
//! (timeline, approvals, release notes, log), which refreshes itself while it is active.

use super::form::{self};
use super::{Console, Done, Fragment, Layout, render};
use crate::app::App;
use crate::core::error::Error;
use crate::delivery::board::{EnvironmentChange, EnvironmentView, board, deployment_of};
use crate::delivery::dora::Dora;
use crate::delivery::{Deployment, Protection, Release};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::Role;
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, Response};
use serde::Deserialize;

/// The DORA figures as shown, with the deployments-per-day chart.
pub struct DoraView {
    pub dora: Dora,
    pub chart: super::chart::Bars,
    pub lead_time: String,
    pub fail_rate: String,
    pub recovery: String,
    /// Deployments on the busiest day (0: none in the window).
    pub top: u64,
}

impl DoraView {
    fn new(dora: Dora) -> Self {
        let days: Vec<(String, u64, u64)> = dora
            .daily
            .iter()
            .map(|d| (d.date.to_string(), d.succeeded, d.failed))
            .collect();
        let human =
            |s: Option<f64>| s.map_or("—".to_string(), |s| crate::delivery::human(s as u64));
        Self {
            lead_time: human(dora.change_lead_time_seconds),
            recovery: human(dora.recovery_time_seconds),
            fail_rate: dora
                .change_fail_rate
                .map_or("—".to_string(), |r| format!("{:.0}%", r * 100.0)),
            top: days.iter().map(|d| d.1 + d.2).max().unwrap_or(0),
            chart: super::chart::bars("deployments per day", "deployments", &days),
            dora,
        }
    }
}

#[derive(Template)]
#[template(path = "delivery/environments.html")]
struct BoardPage {
    layout: Layout,
    slug: String,
    environments: Vec<EnvironmentView>,
    /// Newest first.
    deployments: Vec<Deployment>,
    releases: Vec<Release>,
    dora: DoraView,
    developer: bool,
    maintainer: bool,
    /// Who is looking (`user:alice`): the requester of a deployment cannot approve it.
    me: String,
    done: Option<&'static str>,
    error: Option<String>,
}

impl BoardPage {
    fn requested_by_me(&self, d: &Deployment) -> bool {
        crate::delivery::approval::same_person(&d.requested_by, &self.me)
    }

    fn waiting(&self, env: &str) -> Vec<&Deployment> {
        let mut w: Vec<&Deployment> = self
            .deployments
            .iter()
            .filter(|d| d.environment == env && d.status.as_str() == "awaiting_approval")
            .collect();
        w.reverse();
        w
    }

    fn rules(p: &Protection) -> Vec<String> {
        let mut out = Vec::new();
        if p.required_approvals > 0 {
            let who = if p.approvers.is_empty() {
                "maintainers".to_string()
            } else {
                p.approvers.join(", ")
            };
            out.push(format!("{} approval(s) from {who}", p.required_approvals));
        }
        if !p.branches.is_empty() {
            out.push(format!("branches {}", p.branches.join(", ")));
        }
        for w in &p.windows {
            let days = if w.days.is_empty() {
                "every day".to_string()
            } else {
                w.days.join(",")
            };
            out.push(format!(
                "window {days} {}–{} {}",
                w.start, w.end, w.timezone
            ));
        }
        let now = jiff::Timestamp::now();
        for f in p.freezes.iter().filter(|f| f.until > now) {
            out.push(format!(
                "freeze {} → {}: {}",
                f.from.strftime("%Y-%m-%d %H:%M"),
                f.until.strftime("%Y-%m-%d %H:%M UTC"),
                f.reason
            ));
        }
        if let Some(soak) = &p.soak {
            out.push(format!("soak {soak} in the previous environment"));
        }
        out
    }
}

fn done_message(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "requested" => "Deployment requested.",
        "approved" => "Approval recorded.",
        "rejected" => "Deployment rejected.",
        "saved" => "Environment saved.",
        _ => return None,
    })
}

async fn render_board(
    app: &App,
    signed: &Signed,
    slug: &str,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let (environments, mut deployments) = board(app, slug).await?;
    deployments.truncate(50);
    let role = super::project_role(app, signed, slug).await?;
    let dora = crate::delivery::board::dora_of(app, slug, None, 30).await?;
    render(&BoardPage {
        layout: Layout::new(
            format!("{slug}: environments"),
            "environments",
            Some(&signed.principal),
        ),
        slug: slug.to_string(),
        environments,
        deployments,
        releases: app.store.releases(slug, 20).await?,
        dora: DoraView::new(dora),
        developer: role >= Some(Role::Developer),
        maintainer: role >= Some(Role::Maintainer),
        me: format!("user:{}", signed.principal.user.name),
        done,
        error,
    })
}

pub async fn page(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    render_board(&app, &signed, &slug, done_message(done.as_deref()), None).await
}

/// Redirects to `to` on success, or shows the board again with the error.
async fn after(
    app: &App,
    signed: &Signed,
    slug: &str,
    result: Result<String, Error>,
) -> ServerResult<Response> {
    form::finish(result, |message| {
        render_board(app, signed, slug, None, Some(message))
    })
    .await
}

fn board_url(slug: &str, done: &str) -> String {
    format!("/projects/{slug}/environments?done={done}")
}

#[derive(Deserialize)]
pub struct DeployForm {
    environment: String,
    #[serde(default)]
    release: Option<u64>,
}

pub async fn deploy(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<DeployForm>,
) -> ServerResult<Response> {
    let result = crate::delivery::board::request(
        &app,
        &slug,
        &form.environment,
        form.release,
        &signed.audit,
    )
    .await
    .map(|d| format!("/projects/{slug}/deployments/{}", d.number));
    after(&app, &signed, &slug, result).await
}

/// Promotes from, or rolls back, an environment; shows the new deployment.
async fn environment_action(
    app: &App,
    signed: &Signed,
    slug: &str,
    environment: &str,
    promote: bool,
) -> ServerResult<Response> {
    let result = async {
        let project = crate::projects::find(&app.store, slug).await?;
        if promote {
            app.deployer
                .promote(&project, environment, &signed.audit)
                .await
        } else {
            app.deployer
                .rollback(&project, environment, &signed.audit)
                .await
        }
    }
    .await
    .map(|d| format!("/projects/{slug}/deployments/{}", d.number));
    after(app, signed, slug, result).await
}

pub async fn promote(
    Console { app, signed }: Console,
    Path((slug, environment)): Path<(String, String)>,
) -> ServerResult<Response> {
    environment_action(&app, &signed, &slug, &environment, true).await
}

pub async fn rollback(
    Console { app, signed }: Console,
    Path((slug, environment)): Path<(String, String)>,
) -> ServerResult<Response> {
    environment_action(&app, &signed, &slug, &environment, false).await
}

#[derive(Deserialize)]
pub struct CanaryForm {
    /// `promote` or `abort`.
    action: String,
}

/// Promotes or aborts the deployment's running canary, then shows the deployment.
pub async fn canary(
    Console { app, signed }: Console,
    Path((slug, number)): Path<(String, u64)>,
    Form(form): Form<CanaryForm>,
) -> ServerResult<Response> {
    let control = match form.action.as_str() {
        "promote" => crate::service::Control::Promote,
        "abort" => crate::service::Control::Abort,
        other => {
            return Err(Error::Invalid(format!("action \"{other}\": use promote or abort")).into());
        }
    };
    let result = app
        .deployer
        .steer_canary(&slug, number, control, &signed.audit)
        .await
        .map(|_| format!("/projects/{slug}/deployments/{number}"));
    form::finish(result, |message| async move {
        let mut panel = deployment_panel(&app, &signed, &slug, number).await?;
        panel.d.message = message;
        render(&DeploymentPage {
            layout: Layout::new(
                format!("{slug} deployment {number}"),
                "environments",
                Some(&signed.principal),
            ),
            panel,
        })
    })
    .await
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    comment: String,
    /// `approve` or `reject`.
    decision: String,
}

pub async fn decide(
    Console { app, signed }: Console,
    Path((slug, number)): Path<(String, u64)>,
    Form(form): Form<DecisionForm>,
) -> ServerResult<Response> {
    let approve = form.decision == "approve";
    let result = app
        .deployer
        .decide(
            &slug,
            number,
            &signed.principal.user,
            approve,
            form.comment.trim().to_string(),
            &signed.audit,
        )
        .await
        .map(|_| board_url(&slug, if approve { "approved" } else { "rejected" }));
    after(&app, &signed, &slug, result).await
}

#[derive(Deserialize)]
pub struct EnvironmentForm {
    name: String,
    #[serde(default)]
    position: Option<u32>,
    #[serde(default)]
    auto_deploy: Option<String>,
    #[serde(default)]
    required_approvals: u32,
    /// Comma-separated.
    #[serde(default)]
    approvers: String,
    #[serde(default)]
    branches: String,
    #[serde(default)]
    soak: String,
    #[serde(default)]
    approval_webhook: String,
    #[serde(default)]
    production: Option<String>,
    /// One `[DAYS] HH:MM-HH:MM [TIMEZONE]` per line; absent (the add form) keeps them.
    #[serde(default)]
    windows: Option<String>,
    /// One `FROM UNTIL REASON` per line; absent keeps them.
    #[serde(default)]
    freezes: Option<String>,
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Saves an environment's settings from the board's form; windows and freezes set
/// through the API are kept.
pub async fn save_environment(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<EnvironmentForm>,
) -> ServerResult<Response> {
    let result = async {
        let name = form.name.trim().to_string();
        let existing = app
            .store
            .environments(&slug)
            .await?
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.protection)
            .unwrap_or_default();
        let soak = form.soak.trim();
        use crate::delivery::model::{Freeze, Window, parse_lines};
        let windows = match &form.windows {
            Some(text) => {
                parse_lines("windows", text, Window::parse_line).map_err(Error::Invalid)?
            }
            None => existing.windows.clone(),
        };
        let freezes = match &form.freezes {
            Some(text) => {
                parse_lines("freezes", text, Freeze::parse_line).map_err(Error::Invalid)?
            }
            None => existing.freezes.clone(),
        };
        let change = EnvironmentChange {
            position: form.position,
            protection: Some(Protection {
                required_approvals: form.required_approvals,
                approvers: list(&form.approvers),
                branches: list(&form.branches),
                soak: (!soak.is_empty()).then(|| soak.to_string()),
                windows,
                freezes,
                ..existing
            }),
            auto_deploy: Some(form.auto_deploy.is_some()),
            approval_webhook: Some(form.approval_webhook),
            production: Some(form.production.is_some()),
        };
        crate::delivery::board::put_environment(&app, &slug, &name, change, &signed.audit).await
    }
    .await
    .map(|_| board_url(&slug, "saved"));
    after(&app, &signed, &slug, result).await
}

#[derive(Template)]
#[template(path = "delivery/_deployment.html")]
struct DeploymentPanel {
    /// The environment's running service, when its target is `service`.
    service: Option<crate::service::ServiceView>,
    /// This deployment's canary is running: the promote and abort buttons show.
    canary_running: bool,
    /// The end of the first stable instance's log.
    service_log: String,
    d: Deployment,
    decisions: Vec<crate::policy::Decision>,
    release: Option<Release>,
    log: Vec<super::runs::LogLine>,
    developer: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "delivery/deployment.html")]
struct DeploymentPage {
    layout: Layout,
    panel: DeploymentPanel,
}

async fn deployment_panel(
    app: &App,
    signed: &Signed,
    slug: &str,
    number: u64,
) -> ServerResult<DeploymentPanel> {
    let d = deployment_of(app, slug, number).await?;
    let text = crate::delivery::board::log_text(app, &d).await?;
    let log = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let (ms, stderr, text) = crate::ci::runner::parse_log_line_at(l);
            super::runs::LogLine {
                n: i as u64 + 1,
                at: crate::http::present::offset(ms),
                stderr,
                html: crate::http::present::log_html(text),
            }
        })
        .collect();
    let mut decisions = Vec::new();
    for id in &d.decisions {
        decisions.extend(app.store.decision(*id).await?);
    }
    let service = app.deployer.services().view(slug, &d.environment);
    let canary_running = !d.status.is_finished()
        && service
            .as_ref()
            .and_then(|s| s.canary.as_ref())
            .is_some_and(|c| c.deployment == d.number);
    let service_log = match &service {
        Some(_) => app
            .deployer
            .services()
            .log_tail(slug, &d.environment, crate::service::Track::Stable, 1, 30)
            .unwrap_or_default(),
        None => String::new(),
    };
    Ok(DeploymentPanel {
        service,
        canary_running,
        service_log,
        decisions,
        release: app.store.release(slug, d.release_number).await?,
        d,
        log,
        developer: super::project_role(app, signed, slug).await? >= Some(Role::Developer),
        csrf: Layout::new("", "", Some(&signed.principal)).csrf,
    })
}

pub async fn deployment(
    Console { app, signed }: Console,
    Fragment(fragment): Fragment,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Html<String>> {
    let panel = deployment_panel(&app, &signed, &slug, number).await?;
    if fragment {
        return render(&panel);
    }
    render(&DeploymentPage {
        layout: Layout::new(
            format!("{slug} deployment {number}"),
            "environments",
            Some(&signed.principal),
        ),
        panel,
    })
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/projects/{slug}/environments" VIEWER => page,
        POST "/projects/{slug}/environments" MAINTAINER => save_environment,
        POST "/projects/{slug}/environments/{environment}/promote" DEVELOPER => promote,
        POST "/projects/{slug}/environments/{environment}/rollback" DEVELOPER => rollback,
        POST "/projects/{slug}/deployments" DEVELOPER => deploy,
        GET "/projects/{slug}/deployments/{number}" VIEWER => deployment,
        GET "/projects/{slug}/deployments/{number}/panel" VIEWER => deployment,
        POST "/projects/{slug}/deployments/{number}/decide" DEVELOPER => decide,
        POST "/projects/{slug}/deployments/{number}/canary" DEVELOPER => canary,
    ]
}
