//! The route table: every route the server answers, with its method, its path and what
//! it requires of the caller ([`Need`]). The router is built from it, `betcycle routes`
//! prints it, and the test suite checks every changing route against its own copy, so a
//! route cannot be added without deciding who may call it.

use super::{api, assets, ui};
use crate::app::App;
use crate::auth::Need;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

pub struct Route {
    pub method: Method,
    pub path: String,
    pub need: Need,
    pub(super) handler: MethodRouter<App>,
}

/// A route answering `method` at `path` with `handler`.
pub fn route<H, T>(method: Method, path: impl Into<String>, need: Need, handler: H) -> Route
where
    H: Handler<T, App>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("standard method");
    Route {
        method,
        path: path.into(),
        need,
        handler: on(filter, handler),
    }
}

/// Lets `route` take request bodies up to `bytes` (axum's default is 2 MB).
fn body_limit(mut route: Route, bytes: usize) -> Route {
    route.handler = route
        .handler
        .layer(axum::extract::DefaultBodyLimit::max(bytes));
    route
}

pub fn table() -> Vec<Route> {
    use crate::auth::Role::{Developer, Maintainer, Viewer};
    use Method as M;
    use Need::{Admin, Project, Public, User};
    let mut routes = vec![
        route(M::GET, "/healthz", Public, api::health::healthz),
        route(M::GET, "/readyz", Public, api::health::readyz),
        route(M::GET, "/metrics", Public, api::metrics::metrics),
        route(M::GET, "/static/{*path}", Public, assets::serve),
        // Set-up and sessions.
        route(M::POST, "/api/v1/setup", Public, api::auth::setup),
        route(M::POST, "/api/v1/sessions", Public, api::auth::sign_in),
        route(M::GET, "/api/v1/sessions", User, api::auth::list_sessions),
        route(
            M::DELETE,
            "/api/v1/sessions/current",
            User,
            api::auth::sign_out,
        ),
        route(
            M::POST,
            "/api/v1/sessions/revoke-others",
            User,
            api::auth::revoke_other_sessions,
        ),
        route(
            M::DELETE,
            "/api/v1/sessions/{id}",
            User,
            api::auth::revoke_session,
        ),
        // The caller's own account and tokens.
        route(M::GET, "/api/v1/me", User, api::auth::me),
        route(
            M::PUT,
            "/api/v1/me/password",
            User,
            api::auth::change_password,
        ),
        route(M::GET, "/api/v1/tokens", User, api::auth::list_tokens),
        route(M::POST, "/api/v1/tokens", User, api::auth::create_token),
        route(
            M::DELETE,
            "/api/v1/tokens/{id}",
            User,
            api::auth::revoke_token,
        ),
        // Administration.
        route(M::GET, "/api/v1/users", Admin, api::users::list),
        route(M::POST, "/api/v1/users", Admin, api::users::create),
        route(M::PATCH, "/api/v1/users/{name}", Admin, api::users::update),
        route(
            M::PUT,
            "/api/v1/users/{name}/password",
            Admin,
            api::users::reset_password,
        ),
        route(M::GET, "/api/v1/teams", User, api::users::list_teams),
        route(M::POST, "/api/v1/teams", Admin, api::users::create_team),
        route(
            M::DELETE,
            "/api/v1/teams/{name}",
            Admin,
            api::users::delete_team,
        ),
        route(
            M::PUT,
            "/api/v1/teams/{name}/members/{user}",
            Admin,
            api::users::add_member,
        ),
        route(
            M::DELETE,
            "/api/v1/teams/{name}/members/{user}",
            Admin,
            api::users::remove_member,
        ),
        route(M::GET, "/api/v1/audit", Admin, api::audit::list),
        route(M::GET, "/api/v1/backup", Admin, api::backup::download),
        // Projects.
        route(M::GET, "/api/v1/projects", User, api::projects::list),
        route(M::POST, "/api/v1/projects", Admin, api::projects::create),
        route(
            M::GET,
            "/api/v1/projects/{slug}",
            Project(Viewer),
            api::projects::show,
        ),
        route(
            M::PATCH,
            "/api/v1/projects/{slug}",
            Project(Maintainer),
            api::projects::update,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}",
            Admin,
            api::projects::delete,
        ),
        route(
            M::PUT,
            "/api/v1/projects/{slug}/isolation",
            Admin,
            api::projects::set_isolation,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/members",
            Project(Viewer),
            api::projects::members,
        ),
        route(
            M::PUT,
            "/api/v1/projects/{slug}/members/{subject}",
            Project(Maintainer),
            api::projects::set_member,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}/members/{subject}",
            Project(Maintainer),
            api::projects::remove_member,
        ),
        // Runs.
        route(
            M::GET,
            "/api/v1/projects/{slug}/runs",
            Project(Viewer),
            api::runs::list,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/runs",
            Project(Developer),
            api::runs::trigger,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/runs/{number}",
            Project(Viewer),
            api::runs::show,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/runs/{number}/cancel",
            Project(Developer),
            api::runs::cancel,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log",
            Project(Viewer),
            api::runs::log,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/runs/{number}/rerun",
            Project(Developer),
            api::runs::rerun,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log/stream",
            Project(Viewer),
            api::runs::stream,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/runs/{number}/artifacts/{sha256}",
            Project(Viewer),
            api::runs::artifact,
        ),
        // Webhooks, deliveries and schedules.
        body_limit(
            route(M::POST, "/api/v1/hooks/{slug}", Public, api::hooks::receive),
            api::hooks::MAX_PAYLOAD,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/deliveries",
            Project(Viewer),
            api::hooks::list,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/deliveries/{id}",
            Project(Viewer),
            api::hooks::show,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/deliveries/{id}/redeliver",
            Project(Maintainer),
            api::hooks::redeliver,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/schedules",
            Project(Viewer),
            api::schedules::list,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/schedules",
            Project(Maintainer),
            api::schedules::create,
        ),
        route(
            M::PATCH,
            "/api/v1/projects/{slug}/schedules/{id}",
            Project(Maintainer),
            api::schedules::update,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}/schedules/{id}",
            Project(Maintainer),
            api::schedules::delete,
        ),
        // Delivery: environments, releases, deployments, approvals, DORA.
        route(
            M::GET,
            "/api/v1/projects/{slug}/environments",
            Project(Viewer),
            api::deploy::environments,
        ),
        route(
            M::PUT,
            "/api/v1/projects/{slug}/environments/{environment}",
            Project(Maintainer),
            api::deploy::update_environment,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}/environments/{environment}",
            Project(Maintainer),
            api::deploy::delete_environment,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/environments/{environment}/promote",
            Project(Developer),
            api::deploy::promote,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/environments/{environment}/rollback",
            Project(Developer),
            api::deploy::rollback,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/releases",
            Project(Viewer),
            api::deploy::releases,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/releases/{number}",
            Project(Viewer),
            api::deploy::release,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/deployments",
            Project(Viewer),
            api::deploy::deployments,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/deployments",
            Project(Developer),
            api::deploy::create,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/deployments/{number}",
            Project(Viewer),
            api::deploy::deployment,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/deployments/{number}/log",
            Project(Viewer),
            api::deploy::log,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/deployments/{number}/approve",
            Project(Developer),
            api::deploy::approve,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/deployments/{number}/reject",
            Project(Developer),
            api::deploy::reject,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/deployments/{number}/cancel",
            Project(Developer),
            api::deploy::cancel,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/dora",
            Project(Viewer),
            api::deploy::dora,
        ),
        route(
            M::POST,
            "/api/v1/deployments/callback/{token}",
            Public,
            api::deploy::callback,
        ),
        // Policies and the decision log.
        route(M::GET, "/api/v1/policies", User, api::policies::list),
        route(M::GET, "/api/v1/policies/{name}", User, api::policies::show),
        route(M::PUT, "/api/v1/policies/{name}", Admin, api::policies::put),
        route(
            M::DELETE,
            "/api/v1/policies/{name}",
            Admin,
            api::policies::delete,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/policies",
            Project(Viewer),
            api::policies::list,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/policies/{name}",
            Project(Viewer),
            api::policies::show,
        ),
        route(
            M::PUT,
            "/api/v1/projects/{slug}/policies/{name}",
            Project(Maintainer),
            api::policies::put,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}/policies/{name}",
            Project(Maintainer),
            api::policies::delete,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/decisions",
            Project(Viewer),
            api::policies::decisions,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/decisions/{id}",
            Project(Viewer),
            api::policies::decision,
        ),
        // Secrets: the instance's, a project's, an environment's. Values are write-only.
        route(M::GET, "/api/v1/secrets", Admin, api::secrets::list),
        route(M::GET, "/api/v1/secrets/{name}", Admin, api::secrets::show),
        route(M::PUT, "/api/v1/secrets/{name}", Admin, api::secrets::set),
        route(
            M::DELETE,
            "/api/v1/secrets/{name}",
            Admin,
            api::secrets::delete,
        ),
        route(
            M::POST,
            "/api/v1/secrets/{name}/restore",
            Admin,
            api::secrets::restore,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/secrets",
            Project(Maintainer),
            api::secrets::list,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/secrets/{name}",
            Project(Maintainer),
            api::secrets::show,
        ),
        route(
            M::PUT,
            "/api/v1/projects/{slug}/secrets/{name}",
            Project(Maintainer),
            api::secrets::set,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}/secrets/{name}",
            Project(Maintainer),
            api::secrets::delete,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/secrets/{name}/restore",
            Project(Maintainer),
            api::secrets::restore,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/environments/{environment}/secrets",
            Project(Maintainer),
            api::secrets::list,
        ),
        route(
            M::GET,
            "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}",
            Project(Maintainer),
            api::secrets::show,
        ),
        route(
            M::PUT,
            "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}",
            Project(Maintainer),
            api::secrets::set,
        ),
        route(
            M::DELETE,
            "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}",
            Project(Maintainer),
            api::secrets::delete,
        ),
        route(
            M::POST,
            "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}/restore",
            Project(Maintainer),
            api::secrets::restore,
        ),
        // Instance.
        route(M::GET, "/api/v1/instance", User, api::instance::show),
        route(M::GET, "/api/v1/events", User, api::events::stream),
    ];
    routes.extend(ui::routes());
    routes
}
