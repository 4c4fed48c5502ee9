//! `GET /api/v1/audit`: the audit log, newest first, filtered by `actor`, `action`
//! (prefix), `target`, `outcome`; paged with `before` (a sequence number) and `limit`
//! (at most 500).

use crate::app::App;
use crate::audit::{Entry, Filter};
use crate::http::ServerResult;
use axum::Json;
use axum::extract::{Query, State};

pub async fn list(
    State(app): State<App>,
    Query(filter): Query<Filter>,
) -> ServerResult<Json<Vec<Entry>>> {
    Ok(Json(app.store.audit_entries(filter).await?))
}
