//! The web console: server-rendered askama templates (`web/templates/`) with htmx for
//! partial updates. One file per screen; `Layout` carries what every page's frame needs.

mod account;
mod admin;
mod agents;
mod areas;
mod chart;
mod dashboard;
mod deploy;
mod form;
mod history;
mod monitoring;
mod policies;
mod projects;
mod runs;
mod secrets;
mod settings;
mod sign_in;
mod status;
mod trends;
mod triggers;

use super::assets;
use super::auth::Signed;
use super::error::{ErrorInfo, ServerError, ServerResult};
use super::routes::{Route, route};
use crate::app::App;
use crate::identity::{Credential, Need, Principal};
use askama::Template;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::Html;

pub use areas::{AREAS, Area};

pub fn routes() -> Vec<Route> {
    use Method as M;
    use Need::User;
    let mut routes: Vec<Route> = [
        dashboard::routes(),
        sign_in::routes(),
        account::routes(),
        admin::routes(),
        settings::routes(),
        agents::routes(),
        monitoring::routes(),
        policies::routes(),
        secrets::routes(),
        projects::routes(),
        runs::routes(),
        history::routes(),
        triggers::routes(),
        trends::routes(),
        status::routes(),
        deploy::routes(),
    ]
    .into_iter()
    .flatten()
    .collect();

    // Areas with screens of their own register them above.
    for area in AREAS
        .iter()
        .filter(|a| !["projects", "runs", "policies", "monitoring"].contains(&a.slug))
    {
        let page = move |signed: Signed| areas::page(area, signed);
        routes.push(route(M::GET, format!("/{}", area.slug), User, page));
    }
    routes
}

/// What the page frame (`base.html`) needs: the title, the current navigation entry, who
/// is signed in, and the CSRF token forms and htmx requests send back.
pub struct Layout {
    pub title: String,
    pub active: &'static str,
    pub user: Option<String>,
    pub csrf: String,
}

impl Layout {
    pub fn new(
        title: impl Into<String>,
        active: &'static str,
        principal: Option<&Principal>,
    ) -> Self {
        Self {
            title: title.into(),
            active,
            user: principal.map(|p| p.user.name.clone()),
            csrf: match principal.map(|p| &p.credential) {
                Some(Credential::Session(s)) => s.csrf_token.clone(),
                _ => String::new(),
            },
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

/// What every console handler starts from: the server and who is signed in (a page for
/// signed-in users only; the sign-in pages take `Anyone`).
pub struct Console {
    pub app: App,
    pub signed: Signed,
}

impl FromRequestParts<App> for Console {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ServerError> {
        Ok(Console {
            app: app.clone(),
            signed: Signed::from_request_parts(parts, app).await?,
        })
    }
}

/// Whether a page handler answers with its live panel alone instead of the whole page: on
/// an htmx refresh (`HX-Request: true`), and at the panel's own address (a path ending in
/// `/panel` or `/status`, kept for links and scripts). One handler serves both.
pub struct Fragment(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for Fragment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let htmx = parts.headers.get("hx-request").is_some_and(|v| v == "true");
        let path = parts.uri.path();
        Ok(Fragment(
            htmx || path.ends_with("/panel") || path.ends_with("/status"),
        ))
    }
}

/// The key a form's redirect left in `?done=KEY`, for the page's success message.
pub struct Done(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Done {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ServerError> {
        #[derive(serde::Deserialize)]
        struct DoneQuery {
            done: Option<String>,
        }
        let Query(q) = Query::<DoneQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ServerError::BadRequest(e.body_text()))?;
        Ok(Done(q.done))
    }
}

/// A success message shown after a form was handled (`?done=key` on the redirect).
fn done_message(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "password" => "Password changed. Your other sessions were signed out.",
        "token-revoked" => "Token revoked.",
        "session-revoked" => "Session signed out.",
        "sessions-revoked" => "All your other sessions were signed out.",
        "user-created" => "User created.",
        "user-updated" => "User updated.",
        "team-created" => "Team created.",
        "team-updated" => "Team updated.",
        "team-deleted" => "Team deleted.",
        "project-created" => "Project created.",
        "project-updated" => "Project settings saved.",
        "members-updated" => "Members updated.",
        "agent-updated" => "Agent updated.",
        "silence-created" => "Silence created.",
        "silence-deleted" => "Silence ended.",
        "probe-created" => "Probe added; its first check runs within a second.",
        "probe-deleted" => "Probe deleted.",
        "channel-created" => "Channel added.",
        "channel-tested" => "The test notification was sent.",
        "status-page-on" => "The status page is shown to anyone at /status/{project}.",
        "status-page-off" => "The status page is hidden.",
        _ => return None,
    })
}

/// The caller's role on project `slug`; administrators act as maintainers.
async fn project_role(
    app: &App,
    signed: &Signed,
    slug: &str,
) -> ServerResult<Option<crate::identity::Role>> {
    if signed.principal.user.admin {
        return Ok(Some(crate::identity::Role::Maintainer));
    }
    Ok(app.store.project_role(slug, &signed.principal.user).await?)
}

/// Renders a template, turning a rendering failure into an internal error.
fn render(template: &impl Template) -> ServerResult<Html<String>> {
    template.render().map(Html).map_err(|e| {
        ServerError::Internal(crate::core::error::Error::Invalid(format!("template: {e}")))
    })
}

#[derive(Template)]
#[template(path = "core/error.html")]
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
        layout: Layout::new(reason, "", None),
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
    /// The Content-Security-Policy allows no inline styles or scripts: templates must not
    /// rely on them (the browser would silently ignore them).
    #[test]
    fn templates_need_no_inline_styles_or_scripts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/templates");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                files.push(path);
            }
        }
        assert!(files.len() > 20, "templates found: {}", files.len());
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let at = format!("{}:{}", path.display(), n + 1);
                assert!(!line.contains(" style="), "inline style at {at}");
                assert!(!line.contains("<style"), "style element at {at}");
                assert!(!line.contains("<script>"), "inline script at {at}");
                assert!(
                    !line.contains(" onclick=") && !line.contains(" onsubmit="),
                    "inline handler at {at}"
                );
            }
        }
    }

    #[test]
    fn human_duration_reads_naturally() {
        assert_eq!(super::human_duration(7), "7s");
        assert_eq!(super::human_duration(312), "5m 12s");
        assert_eq!(super::human_duration(3 * 3600 + 60), "3h 1m");
        assert_eq!(super::human_duration(2 * 86_400 + 3 * 3600), "2d 3h");
    }
}
