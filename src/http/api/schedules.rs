//! Cron schedules of a project.
//!
//! `GET|POST /api/v1/projects/{slug}/schedules`,
//! `PATCH|DELETE /api/v1/projects/{slug}/schedules/{id}`.

use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::projects::schedule::ScheduleChange;
use crate::projects::schedules::{
    self, ScheduleView, create_schedule, delete_schedule, of_project,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

pub async fn list(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<Vec<ScheduleView>>> {
    crate::projects::find(&app.store, &slug).await?;
    Ok(Json(of_project(&app, &slug).await?))
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

pub async fn update(
    State(app): State<App>,
    signed: Signed,
    Path((slug, id)): Path<(String, u64)>,
    Json(change): Json<ScheduleChange>,
) -> ServerResult<Json<ScheduleView>> {
    let view = schedules::update(&app, &slug, id, change, &signed.audit).await?;
    Ok(Json(view))
}

pub async fn delete(
    State(app): State<App>,
    signed: Signed,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<StatusCode> {
    delete_schedule(&app, &slug, id, &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/projects/{slug}/schedules" VIEWER => list,
        POST "/api/v1/projects/{slug}/schedules" MAINTAINER => create,
        PATCH "/api/v1/projects/{slug}/schedules/{id}" MAINTAINER => update,
        DELETE "/api/v1/projects/{slug}/schedules/{id}" MAINTAINER => delete,
    ]
}
