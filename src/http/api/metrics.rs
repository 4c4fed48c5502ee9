//! `/metrics`: the Prometheus scrape endpoint. OpenMetrics when the scraper asks for it
//! (Prometheus does), the classic text format otherwise.

use crate::app::App;
use crate::http::routes::{Route, routes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;

/// Recomputes the DORA gauges of every project's environments (30 days).
async fn refresh_dora(app: &App) -> crate::core::error::Result<()> {
    for project in app.store.list_projects().await? {
        for environment in app.store.environments(&project.slug).await? {
            let dora =
                crate::delivery::board::dora_of(app, &project.slug, Some(&environment.name), 30)
                    .await?;
            app.metrics.set_dora(&project.slug, &dora);
        }
    }
    Ok(())
}

pub async fn metrics(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
    if let Err(e) = refresh_dora(&app).await {
        tracing::warn!(error = %e, "cannot compute the DORA metrics for /metrics");
    }
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

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/metrics" PUBLIC => metrics,
    ]
}
