//! The web console: server-rendered askama templates (`web/templates/`) with htmx for
//! partial updates. One file per screen; `Layout` carries what every page's frame needs.

mod areas;
mod dashboard;

use super::assets;
use super::error::{ErrorInfo, ServerError, ServerResult};
use crate::app::App;
use askama::Template;
use axum::Router;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;

pub use areas::{AREAS, Area};

pub fn routes() -> Router<App> {
    let mut router = Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard/status", get(dashboard::status));
    for area in AREAS {
        router = router.route(&format!("/{}", area.slug), get(move || areas::page(area)));
    }
    router
}

/// What the page frame (`base.html`) needs: the title and which navigation entry is
/// current.
pub struct Layout {
    pub title: String,
    pub active: &'static str,
}

impl Layout {
    pub fn new(title: impl Into<String>, active: &'static str) -> Self {
        Self {
            title: title.into(),
            active,
        }
    }

    pub fn asset(&self, name: &str) -> String {
        assets::url(name)
    }

    pub fn areas(&self) -> &'static [Area] {
        AREAS
    }

    pub fn version(&self) -> &'static str {
        crate::VERSION
    }
}

/// Renders a template, turning a rendering failure into an internal error.
fn render(template: &impl Template) -> ServerResult<Html<String>> {
    template
        .render()
        .map(Html)
        .map_err(|e| ServerError::Internal(crate::error::Error::Invalid(format!("template: {e}"))))
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    status: u16,
    reason: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// The HTML body for an error response shown to a browser.
pub fn error_page(status: StatusCode, info: &ErrorInfo, request_id: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    ErrorPage {
        layout: Layout::new(reason, ""),
        status: status.as_u16(),
        reason,
        message: &info.message,
        request_id,
    }
    .render()
    .unwrap_or_else(|_| {
        format!(
            "{} {reason}: {} (request {request_id})",
            status.as_u16(),
            info.message
        )
    })
}

/// "3d 4h", "5m 12s": a duration as people read it on a dashboard.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_duration_reads_naturally() {
        assert_eq!(super::human_duration(7), "7s");
        assert_eq!(super::human_duration(312), "5m 12s");
        assert_eq!(super::human_duration(3 * 3600 + 60), "3h 1m");
        assert_eq!(super::human_duration(2 * 86_400 + 3 * 3600), "2d 3h");
    }
}
