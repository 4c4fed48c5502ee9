//! A run's page: its steps with status, timing, tests, coverage, artifacts and logs. While
//! the run is active the panel refreshes itself every two seconds (htmx).

use super::{Console, Fragment, Layout, render};
use crate::app::App;
use crate::ci::run::Run;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, Redirect};
use serde::Deserialize;

/// One line of a step's log as shown: HTML with ANSI colours.
pub struct LogLine {
    pub stderr: bool,
    pub html: String,
}

pub struct StepView {
    pub index: usize,
    pub log: Vec<LogLine>,
}

#[derive(Template)]
#[template(path = "ci/_run.html")]
struct RunPanel {
    run: Run,
    /// The commit's page on the project's forge, when it has one.
    commit_url: Option<String>,
    logs: Vec<StepView>,
    /// The policy decisions taken on this run.
    decisions: Vec<crate::policy::Decision>,
    developer: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "ci/run.html")]
struct RunPage {
    layout: Layout,
    panel: RunPanel,
}

/// Most log lines a page shows per step; the API serves the whole log.
const PAGE_LOG_LINES: usize = 2000;

async fn panel(app: &App, signed: &Signed, slug: &str, number: u64) -> ServerResult<RunPanel> {
    let run = crate::ci::run::find(&app.store, slug, number).await?;
    let mut logs = Vec::new();
    for index in 0..run.steps.len() {
        let text = tokio::fs::read_to_string(app.runner.log_path(run.id, index))
            .await
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(PAGE_LOG_LINES);
        let log = lines[skip..]
            .iter()
            .map(|l| {
                let (stderr, text) = crate::ci::runner::parse_log_line(l);
                LogLine {
                    stderr,
                    html: crate::http::present::log_html(text),
                }
            })
            .collect();
        logs.push(StepView { index, log });
    }
    let developer =
        super::project_role(app, signed, slug).await? >= Some(crate::identity::Role::Developer);
    let commit_url = crate::projects::find(&app.store, slug)
        .await?
        .forge
        .map(|f| f.commit_url(&run.commit));
    let decisions = app
        .store
        .decisions(slug, Some(format!("run {number}")), 20)
        .await?;
    Ok(RunPanel {
        run,
        commit_url,
        logs,
        decisions,
        developer,
        csrf: super::Layout::new("", "", Some(&signed.principal)).csrf,
    })
}

pub async fn page(
    Console { app, signed }: Console,
    Fragment(fragment): Fragment,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Html<String>> {
    let panel = panel(&app, &signed, &slug, number).await?;
    if fragment {
        return render(&panel);
    }
    render(&RunPage {
        layout: Layout::new(
            format!("{slug} #{number}"),
            "projects",
            Some(&signed.principal),
        ),
        panel,
    })
}

#[derive(Deserialize)]
pub struct TriggerForm {
    #[serde(default, rename = "ref")]
    git_ref: String,
    /// `NAME=value` lines: environment overrides for the run.
    #[serde(default)]
    env: String,
}

/// Reads `NAME=value` lines (blank lines ignored).
pub fn env_lines(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut env = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| format!("environment line {}: expected NAME=value", i + 1))?;
        env.insert(name.trim().to_string(), value.to_string());
    }
    crate::ci::pipeline::check_env_names(&env)?;
    Ok(env)
}

pub async fn trigger(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<TriggerForm>,
) -> ServerResult<Redirect> {
    let project = crate::projects::find(&app.store, &slug).await?;
    let spec = crate::ci::runner::TriggerSpec {
        event: "manual".into(),
        git_ref: Some(form.git_ref),
        env: env_lines(&form.env).map_err(ServerError::BadRequest)?,
        message: format!("started by {}", signed.principal.user.name),
        ..Default::default()
    };
    let run = app.runner.trigger(&project, spec, &signed.audit).await?;
    Ok(Redirect::to(&format!(
        "/projects/{slug}/runs/{}",
        run.number
    )))
}

pub async fn cancel(
    Console { app, signed }: Console,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Redirect> {
    let run = crate::ci::run::find(&app.store, &slug, number).await?;
    app.runner.cancel(&run, &signed.audit).await?;
    Ok(Redirect::to(&format!("/projects/{slug}/runs/{number}")))
}

#[derive(Deserialize)]
pub struct RerunForm {
    #[serde(default)]
    failed_only: Option<String>,
}

pub async fn rerun(
    Console { app, signed }: Console,
    Path((slug, number)): Path<(String, u64)>,
    Form(form): Form<RerunForm>,
) -> ServerResult<Redirect> {
    let previous = crate::ci::run::find(&app.store, &slug, number).await?;
    let run = app
        .runner
        .rerun(&previous, form.failed_only.is_some(), &signed.audit)
        .await?;
    Ok(Redirect::to(&format!(
        "/projects/{slug}/runs/{}",
        run.number
    )))
}

#[derive(Template)]
#[template(path = "ci/step.html")]
struct StepPage {
    layout: Layout,
    run: Run,
    index: usize,
}

/// One step with its log followed live (Server-Sent Events, `live-log.js`).
pub async fn step(
    Console { app, signed }: Console,
    Path((slug, number, step)): Path<(String, u64, String)>,
) -> ServerResult<Html<String>> {
    let run = crate::ci::run::find(&app.store, &slug, number).await?;
    let index = run.step_index(&step)?;
    render(&StepPage {
        layout: Layout::new(
            format!("{slug} #{number} {}", run.steps[index].name),
            "projects",
            Some(&signed.principal),
        ),
        run,
        index,
    })
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        POST "/projects/{slug}/runs" DEVELOPER => trigger,
        GET "/projects/{slug}/runs/{number}" VIEWER => page,
        GET "/projects/{slug}/runs/{number}/panel" VIEWER => page,
        POST "/projects/{slug}/runs/{number}/cancel" DEVELOPER => cancel,
        POST "/projects/{slug}/runs/{number}/rerun" DEVELOPER => rerun,
        GET "/projects/{slug}/runs/{number}/steps/{step}" VIEWER => step,
    ]
}
