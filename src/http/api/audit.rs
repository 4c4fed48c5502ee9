//! `GET /api/v1/audit`: the audit log, newest first, filtered by `actor`, `action`
//! (prefix), `target`, `outcome`; paged with `before` (a sequence number) and `limit`
//! (at most 500).

use crate::app::App;
use crate::http::ServerResult;
use crate::http::routes::{Route, routes};
use crate::identity::audit::{Entry, Filter};
use axum::Json;
use axum::extract::{Query, State};

pub async fn list(
    State(app): State<App>,
    Query(filter): Query<Filter>,
) -> ServerResult<Json<Vec<Entry>>> {
    Ok(Json(app.store.audit_entries(filter).await?))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/audit" ADMIN => list,
    ]
}
