//! Run history: every run the caller may see (`/runs`) and one project's
//! (`/projects/{slug}/runs`), newest first, with filters (status, branch, event, actor),
//! search in the commit subject, author, ref and commit, and paging by cursor, so a page
//! costs the same with ten runs stored or a million.

use super::{Console, Layout, render};
use crate::ci::run::{Run, RunStatus};
use crate::http::ServerResult;
use crate::http::routes::{Route, routes};
use crate::store::{RunFilter, RunPage, RunQuery};
use askama::Template;
use axum::extract::{Path, Query};
use axum::response::Html;
use serde::Deserialize;

/// Runs one history page shows.
const PAGE_RUNS: usize = 50;

/// The filters as the form sends them (an empty field is no filter).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HistoryForm {
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub before: Option<u64>,
}

/// The trigger events a run can have, for the filter's choices.
pub const EVENTS: [&str; 6] = ["push", "pull_request", "tag", "manual", "cron", "api"];

impl HistoryForm {
    fn some(value: &str) -> Option<String> {
        Some(value.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn query(&self, project: Option<String>) -> ServerResult<RunQuery> {
        Ok(RunQuery {
            project: project.or_else(|| Self::some(&self.project)),
            projects: None,
            filter: RunFilter {
                status: Self::some(&self.status)
                    .map(|s| RunStatus::parse(&s))
                    .transpose()?,
                branch: Self::some(&self.branch),
            },
            event: Self::some(&self.event),
            actor: Self::some(&self.actor),
            text: Self::some(&self.q),
            before: self.before,
            limit: PAGE_RUNS,
        })
    }

    /// This page's filters as a query string, with `before` set to `cursor`.
    pub fn link(&self, cursor: Option<u64>) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("project", &self.project),
            ("status", &self.status),
            ("branch", &self.branch),
            ("event", &self.event),
            ("actor", &self.actor),
            ("q", &self.q),
        ] {
            if !v.trim().is_empty() {
                pairs.append_pair(k, v.trim());
            }
        }
        if let Some(cursor) = cursor {
            pairs.append_pair("before", &cursor.to_string());
        }
        let query = pairs.finish();
        if query.is_empty() {
            "?".into()
        } else {
            format!("?{query}")
        }
    }

    /// Whether the filter `field` is set to `value` (the selected choice).
    pub fn is(&self, field: &str, value: &str) -> bool {
        let set = match field {
            "project" => &self.project,
            "status" => &self.status,
            "event" => &self.event,
            _ => return false,
        };
        set.trim() == value
    }

    /// Whether any filter is set (the page then says how to clear them).
    pub fn filtered(&self) -> bool {
        [
            &self.project,
            &self.status,
            &self.branch,
            &self.event,
            &self.actor,
            &self.q,
        ]
        .iter()
        .any(|v| !v.trim().is_empty())
    }
}

#[derive(Template)]
#[template(path = "ci/runs.html")]
struct HistoryPage {
    layout: Layout,
    /// The project whose history this is; `None` on the page for all projects.
    project: Option<String>,
    /// The projects the caller may see (the filter's choices on `/runs`; empty on a
    /// project's page).
    projects: Vec<String>,
    form: HistoryForm,
    page: RunPage,
    statuses: &'static [RunStatus],
    events: &'static [&'static str],
    /// Whether the caller maintains the project (the Secrets tab shows).
    maintainer: bool,
}

impl HistoryPage {
    fn runs(&self) -> &[Run] {
        &self.page.runs
    }

    fn empty(&self) -> &'static str {
        if self.form.filtered() {
            "No runs match these filters."
        } else {
            "No runs yet."
        }
    }

    /// The link to the next, older page, when there may be one.
    fn older(&self) -> Option<String> {
        self.page.next.map(|cursor| self.form.link(Some(cursor)))
    }

    /// Whether the page stopped looking before it was full (a rare filter, a long history).
    fn partial(&self) -> bool {
        self.page.runs.len() < PAGE_RUNS
    }
}

async fn history(
    Console { app, signed }: Console,
    project: Option<String>,
    form: HistoryForm,
) -> ServerResult<Html<String>> {
    // The projects the caller may see: `/runs`'s filter choices and its bounds (a
    // project's own page has its role checked by the route).
    let visible: Vec<String> = match &project {
        Some(_) => Vec::new(),
        None => crate::projects::visible(&app.store, &signed.principal)
            .await?
            .into_iter()
            .map(|p| p.project.slug)
            .collect(),
    };
    let mut query = form.query(project.clone())?;
    // On `/runs` a project filter can only narrow what the caller may see.
    if !signed.principal.user.admin && project.is_none() {
        query.projects = Some(visible.iter().cloned().collect());
    }
    let page = app.store.run_history(query).await?;
    let maintainer = match &project {
        Some(slug) => super::runs::maintains(&app, &signed, slug).await?,
        None => false,
    };
    let title = match &project {
        Some(slug) => format!("{slug} · runs"),
        None => "Runs".to_string(),
    };
    render(&HistoryPage {
        layout: Layout::new(
            title,
            if project.is_some() {
                "projects"
            } else {
                "runs"
            },
            Some(&signed.principal),
        ),
        project,
        projects: visible,
        form,
        page,
        statuses: &RunStatus::ALL,
        events: &EVENTS,
        maintainer,
    })
}

pub async fn all(console: Console, Query(form): Query<HistoryForm>) -> ServerResult<Html<String>> {
    history(console, None, form).await
}

pub async fn project(
    console: Console,
    Path(slug): Path<String>,
    Query(form): Query<HistoryForm>,
) -> ServerResult<Html<String>> {
    history(console, Some(slug), form).await
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/runs" USER => all,
        GET "/projects/{slug}/runs" VIEWER => project,
    ]
}
