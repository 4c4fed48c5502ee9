//! Webhooks and their deliveries.
//!
//! `POST /api/v1/hooks/{slug}` receives deliveries from GitHub, Gitea/Forgejo and GitLab
//! (public; the signature is the credential). `GET /api/v1/projects/{slug}/deliveries`,
//! `GET /api/v1/projects/{slug}/deliveries/{id}`,
//! `POST /api/v1/projects/{slug}/deliveries/{id}/redeliver`. The webhook secret is the
//! project secret `WEBHOOK_SECRET` (see `secrets.rs`).

use super::runs::ListQuery;
use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::{Anyone, Signed};
use crate::http::error::ServerError;
use crate::http::routes::{Route, body_limit, routes};
use crate::projects::forge::webhook::Headers;
use crate::projects::inbox::{Delivery, Receipt};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

/// The largest payload accepted (GitHub caps deliveries at 25 MB).
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;

#[derive(Serialize)]
pub struct ReceiptView {
    /// `triggered`, `ignored` or `duplicate`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// For a duplicate: the delivery that was first received with this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<u64>,
}

/// Triggered → 201, ignored → 202 (with the reason), duplicate → 200.
fn respond(receipt: Receipt) -> (StatusCode, Json<ReceiptView>) {
    match receipt {
        Receipt::Triggered(d) => (
            StatusCode::CREATED,
            Json(ReceiptView {
                result: "triggered",
                delivery: Some(d),
                duplicate_of: None,
            }),
        ),
        Receipt::Ignored(d) => (
            StatusCode::ACCEPTED,
            Json(ReceiptView {
                result: "ignored",
                delivery: Some(d),
                duplicate_of: None,
            }),
        ),
        Receipt::Duplicate(first) => (
            StatusCode::OK,
            Json(ReceiptView {
                result: "duplicate",
                delivery: None,
                duplicate_of: Some(first),
            }),
        ),
    }
}

pub async fn receive(
    State(app): State<App>,
    anyone: Anyone,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ServerResult<(StatusCode, Json<ReceiptView>)> {
    let project = app.store.project(&slug).await?;
    let headers: Headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let receipt = app
        .inbox()
        .receive(project.as_ref(), &headers, &body, &anyone.audit.source)
        .await
        .inspect_err(|e| {
            tracing::warn!(project = %slug, error = %e, "webhook delivery refused");
        })?;
    Ok(respond(receipt))
}

pub async fn list(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<ListQuery>,
) -> ServerResult<Json<Vec<Delivery>>> {
    crate::projects::find(&app.store, &slug).await?;
    Ok(Json(app.store.project_deliveries(&slug, q.limit()).await?))
}

pub async fn show(
    State(app): State<App>,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<Json<Delivery>> {
    crate::projects::find(&app.store, &slug).await?;
    app.store
        .delivery(id)
        .await?
        .filter(|d| d.project == slug)
        .map(Json)
        .ok_or_else(|| {
            ServerError::NotFound(format!("delivery {id} of project \"{slug}\" not found"))
        })
}

pub async fn redeliver(
    State(app): State<App>,
    signed: Signed,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<(StatusCode, Json<ReceiptView>)> {
    let project = crate::projects::find(&app.store, &slug).await?;
    let receipt = app.inbox().redeliver(&project, id, &signed.audit).await?;
    Ok(respond(receipt))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    let mut routes = routes![
        POST "/api/v1/hooks/{slug}" PUBLIC => receive,
        GET "/api/v1/projects/{slug}/deliveries" VIEWER => list,
        GET "/api/v1/projects/{slug}/deliveries/{id}" VIEWER => show,
        POST "/api/v1/projects/{slug}/deliveries/{id}/redeliver" MAINTAINER => redeliver,
    ];
    // Deliveries are large (GitHub's cap is 25 MB).
    let receive = routes.remove(0);
    routes.insert(0, body_limit(receive, MAX_PAYLOAD));
    routes
}
