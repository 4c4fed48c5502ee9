//! `/projects/{slug}/trends`: a project's last 12 weeks as charts — runs per week, success
//! rate, duration and queue time p50/p95, each environment's deployments, lead time and
//! change fail rate — and its slowest steps. The numbers are those of
//! `GET /api/v1/projects/{slug}/trends`.

use super::chart::{self, Bars, Lines};
use super::{Console, Layout, render};
use crate::http::ServerResult;
use crate::http::routes::{Route, routes};
use crate::identity::Role;
use crate::monitoring::trends::{self, PipelineWeek, SlowStep, Trends};
use askama::Template;
use axum::extract::Path;
use axum::response::Html;

/// One environment's charts.
struct EnvironmentCharts {
    name: String,
    deployments: Bars,
    lead_time: Lines,
    fail_rate: Lines,
}

#[derive(Template)]
#[template(path = "projects/trends.html")]
struct TrendsPage {
    layout: Layout,
    slug: String,
    maintainer: bool,
    weeks: u32,
    runs: Bars,
    success: Lines,
    durations: Lines,
    queue: Lines,
    environments: Vec<EnvironmentCharts>,
    slowest: Vec<SlowStep>,
}

/// Seconds as people read them: `0.4 s`, `42 s`, `3m 5s`.
fn seconds(v: f64) -> String {
    if v < 60.0 {
        let text = format!("{v:.1}");
        format!("{} s", text.trim_end_matches(".0"))
    } else {
        super::human_duration(v as u64)
    }
}

fn percent(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

fn charts(t: &Trends) -> (Bars, Lines, Lines, Lines, Vec<EnvironmentCharts>) {
    let weeks: Vec<String> = t.pipeline.iter().map(|w| w.week.clone()).collect();
    let runs = chart::bars(
        "Runs per week",
        "runs",
        &t.pipeline
            .iter()
            .map(|w| (w.week.clone(), w.succeeded, w.failed))
            .collect::<Vec<_>>(),
    );
    let success = chart::lines(
        "Success rate per week",
        &weeks,
        &[(
            "line-ok",
            "success",
            t.pipeline.iter().map(|w| w.success_rate).collect(),
        )],
        percent,
    );
    // A p50 and a p95 line of seconds, each week's pair read by `of`.
    let p50_p95 = |label: &str, of: fn(&PipelineWeek) -> (Option<f64>, Option<f64>)| {
        let (p50, p95) = t.pipeline.iter().map(of).unzip();
        chart::lines(
            label,
            &weeks,
            &[("line-p50", "p50", p50), ("line-p95", "p95", p95)],
            seconds,
        )
    };
    let durations = p50_p95("Run duration per week, p50 and p95", |w| {
        (w.duration_p50_seconds, w.duration_p95_seconds)
    });
    let queue = p50_p95("Queue time per week, p50 and p95", |w| {
        (w.queue_p50_seconds, w.queue_p95_seconds)
    });
    let environments = t
        .environments
        .iter()
        .map(|e| EnvironmentCharts {
            name: e.environment.clone(),
            deployments: chart::bars(
                &format!("Deployments to {} per week", e.environment),
                "deployments",
                &e.weeks
                    .iter()
                    .map(|w| {
                        (
                            w.week.clone(),
                            w.changes - w.failed_changes,
                            w.failed_changes,
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
            lead_time: chart::lines(
                &format!("Change lead time to {} per week (median)", e.environment),
                &weeks,
                &[(
                    "line-p50",
                    "lead time",
                    e.weeks.iter().map(|w| w.change_lead_time_seconds).collect(),
                )],
                seconds,
            ),
            fail_rate: chart::lines(
                &format!("Change fail rate of {} per week", e.environment),
                &weeks,
                &[(
                    "line-bad",
                    "fail rate",
                    e.weeks.iter().map(|w| w.change_fail_rate).collect(),
                )],
                percent,
            ),
        })
        .collect();
    (runs, success, durations, queue, environments)
}

pub async fn page(
    Console { app, signed }: Console,
    Path(slug): Path<String>,
) -> ServerResult<Html<String>> {
    let t = trends::of_project(&app.store, &slug).await?;
    let maintainer = super::project_role(&app, &signed, &slug).await? >= Some(Role::Maintainer);
    let (runs, success, durations, queue, environments) = charts(&t);
    render(&TrendsPage {
        layout: Layout::new(
            format!("{slug}: trends"),
            "projects",
            Some(&signed.principal),
        ),
        slug,
        maintainer,
        weeks: t.weeks,
        runs,
        success,
        durations,
        queue,
        environments,
        slowest: t.slowest_steps,
    })
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/projects/{slug}/trends" VIEWER => page,
    ]
}
