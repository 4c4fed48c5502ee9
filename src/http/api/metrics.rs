//! `/metrics`: the Prometheus scrape endpoint. OpenMetrics when the scraper asks for it
//! (Prometheus does), the classic text format otherwise.

use crate::app::App;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;

pub async fn metrics(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let body = tokio::task::spawn_blocking(move || {
        if openmetrics {
            app.metrics.render_openmetrics()
        } else {
            app.metrics.render_text()
        }
    })
    .await
    .unwrap_or_default();
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, content_type)], body)
}
