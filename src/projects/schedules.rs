//! Cron schedules as the API and the console change them: every change is audited and
//! wakes the schedule worker.

use crate::app::App;
use crate::core::error::{Error, Result};
use crate::identity::audit::{Context, Record};
use crate::projects::schedule::{Schedule, ScheduleChange};
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

/// The schedules of project `slug`, by name.
pub async fn of_project(app: &App, slug: &str) -> Result<Vec<ScheduleView>> {
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

pub async fn create_schedule(
    app: &App,
    slug: &str,
    change: ScheduleChange,
    audit: &Context,
) -> Result<ScheduleView> {
    crate::projects::find(&app.store, slug).await?;
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

async fn find(app: &App, slug: &str, id: u64) -> Result<Schedule> {
    crate::projects::find(&app.store, slug).await?;
    app.store
        .schedule(id)
        .await?
        .filter(|s| s.project == slug)
        .ok_or_else(|| Error::NotFound {
            what: format!("schedule {id} of project \"{slug}\""),
        })
}

pub async fn update(
    app: &App,
    slug: &str,
    id: u64,
    change: ScheduleChange,
    audit: &Context,
) -> Result<ScheduleView> {
    find(app, slug, id).await?;
    let record = Record::new(audit, "schedule.update", format!("project:{slug}"));
    let schedule = app
        .store
        .update_schedule(id, Some(record), move |s| s.apply(change))
        .await?;
    app.schedules_changed.notify_one();
    Ok(schedule.into())
}

pub async fn delete_schedule(app: &App, slug: &str, id: u64, audit: &Context) -> Result<()> {
    find(app, slug, id).await?;
    app.store
        .delete_schedule(
            id,
            Record::new(audit, "schedule.delete", format!("project:{slug}")),
        )
        .await?;
    app.schedules_changed.notify_one();
    Ok(())
}
