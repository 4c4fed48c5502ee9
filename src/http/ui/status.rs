//! `/status/{slug}`: a project's public status page — anyone may read it once an
//! administrator turned it on. The figures are those of `GET /api/v1/status/{slug}`.

use super::{Layout, render};
use crate::app::App;
use crate::http::ServerResult;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::monitoring::probes::ProbeView;
use crate::monitoring::status::{self, StatusPage};
use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;

#[derive(Template)]
#[template(path = "core/status.html")]
struct Page {
    layout: Layout,
    page: StatusPage,
}

impl Page {
    fn percent(&self, value: &Option<f64>) -> String {
        ProbeView::percent(value)
    }

    fn at(&self, t: &jiff::Timestamp) -> String {
        t.strftime("%Y-%m-%d %H:%M UTC").to_string()
    }

    fn bar_x(&self, index: &usize) -> usize {
        index * 4
    }
}

pub async fn status_page(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Html<String>> {
    let page = status::shown(&app.store, &slug)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("status page \"{slug}\"")))?;
    render(&Page {
        layout: Layout::new(format!("{} status", page.name), "", None),
        page,
    })
}

pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/status/{slug}" PUBLIC => status_page,
    ]
}
