//! A run's page: the pipeline as a graph with each step's status and live elapsed time,
//! the run's facts and actions, and one collapsible section per step with its log. While
//! the run is active the panel (header, graph) refreshes itself every two seconds (htmx)
//! and carries each step's heading and facts out of band; the logs are never re-rendered:
//! each follows its step over Server-Sent Events (`log.js`).

use super::{Console, Fragment, Layout, render};
use crate::app::App;
use crate::ci::run::{Run, StepRecord};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::present::tone;
use crate::http::routes::{Route, routes};
use crate::identity::Role;
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

/// One line of a step's log as shown: its number, its time since the step started, and
/// its HTML with ANSI colours.
pub struct LogLine {
    pub n: u64,
    pub at: String,
    pub stderr: bool,
    pub html: String,
}

/// A step's log as the page first shows it.
pub struct StepLog {
    /// The last `PAGE_LOG_LINES` stored lines.
    pub lines: Vec<LogLine>,
    /// How many earlier lines are left out (they are in the download).
    pub hidden: u64,
    /// The number of the last stored line: the live stream resumes after it.
    pub last: u64,
    /// Whether the section starts open: running, failed, or the run's only step.
    pub open: bool,
    /// The step has finished: every line is shown or in the download, nothing to follow.
    pub complete: bool,
}

#[derive(Template)]
#[template(path = "ci/_run.html")]
struct RunPanel {
    run: Run,
    /// The commit's page on the project's forge, when it has one.
    commit_url: Option<String>,
    graph: Graph,
    /// The policy decisions taken on this run.
    decisions: Vec<crate::policy::Decision>,
    developer: bool,
    csrf: String,
    /// Whether step headings and facts come along out of band (an htmx refresh).
    oob: bool,
}

impl RunPanel {
    fn base(&self) -> String {
        format!("/projects/{}/runs/{}", self.run.project, self.run.number)
    }

    /// Every test case the run's steps reported: failed first, then skipped, then
    /// passed, each group in step order.
    fn tests(&self) -> Vec<TestRow<'_>> {
        use crate::ci::reports::junit::TestOutcome;
        let mut rows: Vec<TestRow> = self
            .run
            .steps
            .iter()
            .enumerate()
            .flat_map(|(index, step)| {
                step.tests.iter().flat_map(move |t| {
                    t.cases.iter().map(move |case| TestRow {
                        step: &step.name,
                        index,
                        case,
                    })
                })
            })
            .collect();
        let rank = |o: TestOutcome| match o {
            TestOutcome::Passed => 2,
            TestOutcome::Skipped => 1,
            _ => 0,
        };
        rows.sort_by_key(|r| (rank(r.case.outcome), r.index));
        rows
    }

    /// Each step's covered files, least covered first (at most `COVERAGE_ROWS`).
    fn coverage_files(&self) -> Vec<(&str, &crate::ci::reports::coverage::FileCoverage)> {
        let mut rows: Vec<_> = self
            .run
            .steps
            .iter()
            .flat_map(|s| {
                s.coverage
                    .iter()
                    .flat_map(move |c| c.files.iter().map(move |f| (s.name.as_str(), f)))
            })
            .collect();
        rows.sort_by(|a, b| {
            a.1.percent()
                .total_cmp(&b.1.percent())
                .then(a.1.path.cmp(&b.1.path))
        });
        rows.truncate(COVERAGE_ROWS);
        rows
    }
}

/// Most files the Coverage section lists; the API has them all.
const COVERAGE_ROWS: usize = 500;

/// One test case as the run's Tests section lists it.
pub struct TestRow<'a> {
    pub step: &'a str,
    pub index: usize,
    pub case: &'a crate::ci::reports::junit::TestCase,
}

impl TestRow<'_> {
    pub fn outcome(&self) -> &'static str {
        use crate::ci::reports::junit::TestOutcome;
        match self.case.outcome {
            TestOutcome::Passed => "succeeded",
            TestOutcome::Skipped => "skipped",
            _ => "failed",
        }
    }
}

#[derive(Template)]
#[template(path = "ci/run.html")]
struct RunPage {
    layout: Layout,
    panel: RunPanel,
    logs: Vec<StepLog>,
    /// Whether the caller maintains the project (the Secrets tab shows).
    maintainer: bool,
}

/// Most log lines a page shows per step; the download has the whole log.
const PAGE_LOG_LINES: usize = 2000;

/// The pipeline as the page draws it: one column per depth of `depends_on`, nodes in
/// step order within a column, an edge from each step to each that needs it.
pub struct Graph {
    pub width: u32,
    pub height: u32,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

pub struct Node {
    pub index: usize,
    pub x: u32,
    pub y: u32,
    pub name: String,
    /// The name cut to fit the node.
    pub label: String,
    pub state: &'static str,
    pub tone: &'static str,
    pub time: String,
    /// When a running step started (RFC 3339), for the live elapsed time.
    pub since: Option<String>,
}

pub struct Edge {
    /// An SVG path from the needed step's right edge to the needing step's left edge.
    pub path: String,
}

const NODE_W: u32 = 184;
const NODE_H: u32 = 46;
const COLUMN: u32 = NODE_W + 56;
const ROW: u32 = NODE_H + 14;
const PAD: u32 = 6;
const LABEL_CHARS: usize = 21;

impl Graph {
    pub fn of(steps: &[StepRecord]) -> Graph {
        let index: std::collections::HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let needs: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| {
                let mut n: Vec<usize> = s
                    .needs
                    .iter()
                    .filter_map(|name| index.get(name.as_str()).copied())
                    .collect();
                n.sort_unstable();
                n.dedup();
                n
            })
            .collect();
        // Longest path from a step without needs; a stored cycle (never written by the
        // parser) stops after as many rounds as there are steps.
        let mut depth = vec![0usize; steps.len()];
        for _ in 0..steps.len() {
            let mut changed = false;
            for (i, n) in needs.iter().enumerate() {
                let d = n.iter().map(|&j| depth[j] + 1).max().unwrap_or(0);
                if d != depth[i] {
                    depth[i] = d.min(steps.len());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut rows = vec![0u32; steps.len() + 1];
        let mut place = Vec::with_capacity(steps.len());
        for &d in &depth {
            place.push((d as u32, rows[d]));
            rows[d] += 1;
        }
        let columns = depth.iter().max().map_or(0, |d| d + 1) as u32;
        let tallest = rows.iter().copied().max().unwrap_or(0);
        let at = |i: usize| (PAD + place[i].0 * COLUMN, PAD + place[i].1 * ROW);
        let nodes = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (x, y) = at(i);
                let label = if s.name.chars().count() > LABEL_CHARS {
                    let cut: String = s.name.chars().take(LABEL_CHARS - 1).collect();
                    format!("{cut}…")
                } else {
                    s.name.clone()
                };
                Node {
                    index: i,
                    x,
                    y,
                    name: s.name.clone(),
                    label,
                    state: s.state(),
                    tone: tone(s.state()),
                    time: s.duration(),
                    since: s
                        .started_at
                        .filter(|_| s.running && s.status.is_none())
                        .map(|t| t.to_string()),
                }
            })
            .collect();
        let mut edges = Vec::new();
        for (i, n) in needs.iter().enumerate() {
            for &j in n {
                let (x1, y1) = at(j);
                let (x2, y2) = at(i);
                let (x1, y1, y2) = (x1 + NODE_W, y1 + NODE_H / 2, y2 + NODE_H / 2);
                let bend = (x2.saturating_sub(x1)) / 2;
                edges.push(Edge {
                    path: format!(
                        "M{x1} {y1} C{} {y1} {} {y2} {x2} {y2}",
                        x1 + bend,
                        x2 - bend
                    ),
                });
            }
        }
        Graph {
            width: (PAD * 2 + columns * COLUMN).saturating_sub(COLUMN - NODE_W),
            height: (PAD * 2 + tallest * ROW).saturating_sub(ROW - NODE_H),
            nodes,
            edges,
        }
    }
}

/// Whether the caller maintains project `slug`.
pub(super) async fn maintains(app: &App, signed: &Signed, slug: &str) -> ServerResult<bool> {
    Ok(super::project_role(app, signed, slug).await? >= Some(Role::Maintainer))
}

/// The run's panel for a caller with `role` on the project.
async fn panel(
    app: &App,
    signed: &Signed,
    role: Option<Role>,
    slug: &str,
    number: u64,
    oob: bool,
) -> ServerResult<RunPanel> {
    let run = crate::ci::run::find(&app.store, slug, number).await?;
    let developer = role >= Some(Role::Developer);
    let commit_url = crate::projects::find(&app.store, slug)
        .await?
        .forge
        .map(|f| f.commit_url(&run.commit));
    let decisions = app
        .store
        .decisions(slug, Some(format!("run {number}")), 20)
        .await?;
    Ok(RunPanel {
        graph: Graph::of(&run.steps),
        run,
        commit_url,
        decisions,
        developer,
        csrf: super::Layout::new("", "", Some(&signed.principal)).csrf,
        oob,
    })
}

/// The stored log of step `index` of `run`, as the page first shows it.
async fn step_log(app: &App, run: &Run, index: usize) -> StepLog {
    let text = tokio::fs::read_to_string(app.runner.log_path(run.id, index))
        .await
        .unwrap_or_default();
    // A line counts once its newline is written (the file can end inside one).
    let stored: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .collect();
    let skip = stored.len().saturating_sub(PAGE_LOG_LINES);
    let lines = stored[skip..]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (ms, stderr, text) = crate::ci::runner::parse_log_line_at(l.trim_end_matches('\n'));
            LogLine {
                n: (skip + i + 1) as u64,
                at: crate::http::present::offset(ms),
                stderr,
                html: crate::http::present::log_html(text),
            }
        })
        .collect();
    let step = &run.steps[index];
    let failed = matches!(
        step.status.as_ref().map(|s| s.lets_dependents_run()),
        Some(false)
    ) && step.status != Some(crate::exec::StepStatus::Cancelled);
    StepLog {
        lines,
        hidden: skip as u64,
        last: stored.len() as u64,
        open: step.running || failed || run.steps.len() == 1,
        complete: step.status.is_some(),
    }
}

pub async fn page(
    Console { app, signed }: Console,
    Fragment(fragment): Fragment,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Html<String>> {
    let role = super::project_role(&app, &signed, &slug).await?;
    let panel = panel(&app, &signed, role, &slug, number, fragment).await?;
    if fragment {
        return render(&panel);
    }
    let mut logs = Vec::with_capacity(panel.run.steps.len());
    for index in 0..panel.run.steps.len() {
        logs.push(step_log(&app, &panel.run, index).await);
    }
    render(&RunPage {
        layout: Layout::new(
            format!("{slug} #{number}"),
            "projects",
            Some(&signed.principal),
        ),
        panel,
        logs,
        maintainer: role >= Some(Role::Maintainer),
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

/// Starts a run from the project page; a ref that does not resolve, a repository that
/// cannot be fetched or a bad parameter shows on the project page, with its navigation.
pub async fn trigger(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
    Form(form): Form<TriggerForm>,
) -> ServerResult<Response> {
    let project = crate::projects::find(&app.store, &slug).await?;
    let started = async {
        let spec = crate::ci::runner::TriggerSpec {
            event: "manual".into(),
            git_ref: Some(form.git_ref),
            env: env_lines(&form.env).map_err(crate::core::error::Error::Invalid)?,
            message: format!("started by {}", signed.principal.user.name),
            ..Default::default()
        };
        app.runner.trigger(&project, spec, &signed.audit).await
    };
    match started.await {
        Ok(run) => {
            Ok(Redirect::to(&format!("/projects/{slug}/runs/{}", run.number)).into_response())
        }
        Err(e) => {
            let page =
                |message| super::projects::project_page(&app, &signed, &slug, None, Some(message));
            super::form::form_failed(e, page).await
        }
    }
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
    maintainer: bool,
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
        maintainer: maintains(&app, &signed, &slug).await?,
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
