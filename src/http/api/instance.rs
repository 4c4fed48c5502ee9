//! `GET /api/v1/instance`: version, uptime, store and start history.

use crate::app::App;
use crate::http::ServerResult;
use crate::instance::{Instance, Start};
use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use serde::Serialize;

#[derive(Serialize)]
pub struct InstanceView {
    pub version: &'static str,
    pub instance: Instance,
    pub started_at: Timestamp,
    pub uptime_seconds: u64,
    pub public_url: String,
    pub store: StoreView,
    pub starts_total: u64,
    pub previous_shutdown_unclean: bool,
    pub recent_starts: Vec<Start>,
}

#[derive(Serialize)]
pub struct StoreView {
    pub path: String,
    pub size_bytes: u64,
    pub schema_version: u64,
}

pub async fn view(app: &App) -> ServerResult<InstanceView> {
    let info = app.store.instance_info().await?;
    Ok(InstanceView {
        version: crate::VERSION,
        previous_shutdown_unclean: info.previous_shutdown_unclean(),
        instance: info.instance,
        started_at: app.started_at,
        uptime_seconds: app.uptime().as_secs(),
        public_url: app.config.public_url.clone(),
        store: StoreView {
            path: app.store.path().display().to_string(),
            size_bytes: app.store.file_size(),
            schema_version: crate::store::latest_schema_version(),
        },
        starts_total: info.starts_total,
        recent_starts: info.recent_starts,
    })
}

pub async fn show(State(app): State<App>) -> ServerResult<Json<InstanceView>> {
    Ok(Json(view(&app).await?))
}
