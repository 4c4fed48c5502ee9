//! The dashboard: getting started on a new instance, the latest runs across the caller's
//! projects, then version, uptime, store size, readiness and the start history. The
//! status panel refreshes itself every 10 s through htmx (the same handler answers an htmx
//! request, or `/dashboard/status`, with the panel alone).

use super::{Console, Fragment, Layout, human_duration, render};
use crate::app::App;
use crate::core::health::{self, Check};
use crate::http::ServerResult;
use crate::http::routes::{Route, routes};
use askama::Template;
use axum::response::Html;

#[derive(Template)]
#[template(path = "core/dashboard.html")]
struct DashboardPage {
    layout: Layout,
    status: StatusPanel,
    /// The latest runs of the projects the caller may see.
    runs: Vec<crate::ci::run::Run>,
    /// How many projects the caller may see (none: the getting-started steps show).
    projects: usize,
    admin: bool,
    /// The latest deployments across those projects, newest first.
    deployments: Vec<crate::delivery::Deployment>,
    /// Deployments waiting for an approval someone other than their requester may give.
    waiting: Vec<crate::delivery::Deployment>,
}

/// Projects whose deployments the dashboard gathers (the first ones, by slug).
const DASHBOARD_PROJECTS: usize = 50;

#[derive(Template)]
#[template(path = "core/_status.html")]
struct StatusPanel {
    version: &'static str,
    uptime: String,
    store_size: String,
    memory: String,
    ready: bool,
    checks: Vec<Check>,
    instance_id: String,
    created_at: String,
    public_url: String,
    /// Shown to administrators only.
    data_dir: Option<String>,
    starts_total: u64,
    previous_shutdown_unclean: bool,
}

async fn status_panel(app: &App, admin: bool) -> ServerResult<StatusPanel> {
    let view = app.instance_view().await?;
    let readiness = health::readiness(
        &app.store,
        &app.config.data_dir,
        app.config.health_min_free_disk,
    )
    .await;
    let memory = crate::core::metrics::process_stats()
        .map(|p| size(p.rss_bytes as u64))
        .unwrap_or_else(|| "unknown".into());
    Ok(StatusPanel {
        version: view.version,
        uptime: human_duration(view.uptime_seconds),
        store_size: size(view.store.size_bytes),
        memory,
        ready: readiness.ready,
        checks: readiness.checks,
        instance_id: view.instance.id,
        created_at: view
            .instance
            .created_at
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string(),
        public_url: view.public_url,
        data_dir: admin.then(|| app.config.data_dir.display().to_string()),
        starts_total: view.starts_total,
        previous_shutdown_unclean: view.previous_shutdown_unclean,
    })
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

pub async fn page(
    Console { app, signed }: Console,
    Fragment(fragment): Fragment,
) -> ServerResult<Html<String>> {
    let admin = signed.principal.user.admin;
    let status = status_panel(&app, admin).await?;
    if fragment {
        return render(&status);
    }
    let visible = crate::projects::visible(&app.store, &signed.principal).await?;
    let query = crate::store::RunQuery {
        projects: (!admin).then(|| visible.iter().map(|p| p.project.slug.clone()).collect()),
        limit: 10,
        ..Default::default()
    };
    let runs = app.store.run_history(query).await?.runs;
    let me = format!("user:{}", signed.principal.user.name);
    let mut deployments = Vec::new();
    let mut waiting = Vec::new();
    for view in visible.iter().take(DASHBOARD_PROJECTS) {
        let recent = app.store.deployments(&view.project.slug, 10).await?;
        waiting.extend(
            recent
                .iter()
                .filter(|d| {
                    d.status.as_str() == "awaiting_approval"
                        && view.role >= crate::identity::Role::Developer
                        && !crate::delivery::approval::same_person(&d.requested_by, &me)
                })
                .cloned(),
        );
        deployments.extend(recent);
    }
    deployments.sort_by_key(|d| std::cmp::Reverse(d.requested_at));
    deployments.truncate(10);
    render(&DashboardPage {
        layout: Layout::new("Dashboard", "dashboard", Some(&signed.principal)),
        status,
        runs,
        projects: visible.len(),
        admin,
        deployments,
        waiting,
    })
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/" USER => page,
        GET "/dashboard/status" USER => page,
    ]
}
