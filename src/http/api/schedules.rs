//! Cron schedules of a project.
//!
//! `GET|POST /api/v1/projects/{slug}/schedules`,
//! `PATCH|DELETE /api/v1/projects/{slug}/schedules/{id}`.

use super::projects::{find, project_of};
use crate::app::App;
use crate::audit::Record;
use crate::error::{Error, Result};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::schedule::{Schedule, ScheduleChange};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

#[derive(Serialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// When it runs next (RFC 3339), if enabled.
    pub next_run: Option<jiff::Timestamp>,
}

impl From<Schedule> for ScheduleView {
    fn from(schedule: Schedule) -> Self {
        let next_run = schedule
            .enabled
            .then(|| schedule.next_after(jiff::Timestamp::now()))
            .flatten();
        Self { schedule, next_run }
    }
}

pub async fn of_project(app: &App, slug: &str) -> ServerResult<Vec<ScheduleView>> {
    let mut schedules: Vec<ScheduleView> = app
        .store
        .schedules()
        .await?
        .into_iter()
        .filter(|s| s.project == slug)
        .map(ScheduleView::from)
        .collect();
    schedules.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
    Ok(schedules)
}

pub async fn list(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<Vec<ScheduleView>>> {
    find(&app, &slug).await?;
    Ok(Json(of_project(&app, &slug).await?))
}

pub async fn create_schedule(
    app: &App,
    slug: &str,
    change: ScheduleChange,
    audit: &crate::audit::Context,
) -> Result<ScheduleView> {
    project_of(app, slug).await?;
    let schedule = Schedule::create(slug, change).map_err(Error::Invalid)?;
    let schedule = app
        .store
        .create_schedule(
            schedule,
            Record::new(audit, "schedule.create", format!("project:{slug}")),
        )
        .await?;
    app.schedules_changed.notify_one();
    Ok(schedule.into())
}

pub async fn create(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(change): Json<ScheduleChange>,
) -> ServerResult<(StatusCode, Json<ScheduleView>)> {
    let view = create_schedule(&app, &slug, change, &signed.audit).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn of(app: &App, slug: &str, id: u64) -> Result<Schedule> {
    project_of(app, slug).await?;
    app.store
        .schedule(id)
        .await?
        .filter(|s| s.project == slug)
        .ok_or_else(|| Error::NotFound {
            what: format!("schedule {id} of project \"{slug}\""),
        })
}

pub async fn update(
    State(app): State<App>,
    signed: Signed,
    Path((slug, id)): Path<(String, u64)>,
    Json(change): Json<ScheduleChange>,
) -> ServerResult<Json<ScheduleView>> {
    of(&app, &slug, id).await?;
    let record = Record::new(&signed.audit, "schedule.update", format!("project:{slug}"));
    let schedule = app
        .store
        .update_schedule(id, Some(record), move |s| s.apply(change))
        .await?;
    app.schedules_changed.notify_one();
    Ok(Json(schedule.into()))
}

pub async fn delete_schedule(
    app: &App,
    slug: &str,
    id: u64,
    audit: &crate::audit::Context,
) -> Result<()> {
    of(app, slug, id).await?;
    app.store
        .delete_schedule(
            id,
            Record::new(audit, "schedule.delete", format!("project:{slug}")),
        )
        .await?;
    app.schedules_changed.notify_one();
    Ok(())
}

pub async fn delete(
    State(app): State<App>,
    signed: Signed,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<StatusCode> {
    delete_schedule(&app, &slug, id, &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}
