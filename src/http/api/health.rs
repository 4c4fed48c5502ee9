//! `/healthz` (the process answers) and `/readyz` (it can do its job: 503 with the
//! failing checks otherwise).

use crate::app::App;
use crate::core::health::{self, Readiness};
use crate::http::routes::{Route, routes};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok", "version": crate::VERSION }))
}

pub async fn readyz(State(app): State<App>) -> (StatusCode, Json<Readiness>) {
    let readiness = health::readiness(
        &app.store,
        &app.config.data_dir,
        app.config.health_min_free_disk,
    )
    .await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/healthz" PUBLIC => healthz,
        GET "/readyz" PUBLIC => readyz,
    ]
}
