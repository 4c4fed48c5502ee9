//! `GET /api/v1/instance`: version, uptime, store and start history.

use crate::app::App;
use crate::core::instance::InstanceView;
use crate::http::ServerResult;
use crate::http::routes::{Route, routes};
use axum::Json;
use axum::extract::State;

pub async fn show(State(app): State<App>) -> ServerResult<Json<InstanceView>> {
    Ok(Json(app.instance_view().await?))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/instance" USER => show,
    ]
}
