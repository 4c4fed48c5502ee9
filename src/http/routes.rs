//! The route table: every route the server answers, with its method, its path and what
//! it requires of the caller ([`Need`]). The router is built from it, `betcycle routes`
//! prints it, and the test suite checks every changing route against its own copy, so a
//! route cannot be added without deciding who may call it.

use super::{api, assets, ui};
use crate::app::App;
use crate::identity::Need;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

/// Rows of routes, one per line: `METHOD "path" need => handler`.
macro_rules! routes {
    ($($method:ident $path:literal $need:expr => $handler:expr),* $(,)?) => {
        vec![$($crate::http::routes::route(
            axum::http::Method::$method,
            $path,
            $need,
            $handler,
        )),*]
    };
}
pub(crate) use routes;

/// The needs, as the route rows name them.
pub mod need {
    use crate::identity::{Need, Role};
    pub const PUBLIC: Need = Need::Public;
    pub const AGENT: Need = Need::Agent;
    pub const USER: Need = Need::User;
    pub const ADMIN: Need = Need::Admin;
    pub const VIEWER: Need = Need::Project(Role::Viewer);
    pub const DEVELOPER: Need = Need::Project(Role::Developer);
    pub const MAINTAINER: Need = Need::Project(Role::Maintainer);
}

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
pub(crate) fn body_limit(mut route: Route, bytes: usize) -> Route {
    route.handler = route
        .handler
        .layer(axum::extract::DefaultBodyLimit::max(bytes));
    route
}

/// Every route: the API's (one `routes()` per file of `api/`), the console's (`ui/`) and
/// the static assets. The order is the order `betcycle routes` prints.
pub fn table() -> Vec<Route> {
    [
        api::health::routes(),
        api::metrics::routes(),
        assets::routes(),
        api::auth::routes(),
        api::users::routes(),
        api::audit::routes(),
        api::backup::routes(),
        api::projects::routes(),
        api::runs::routes(),
        api::agents::routes(),
        api::alerts::routes(),
        api::hooks::routes(),
        api::schedules::routes(),
        api::deploy::routes(),
        api::policies::routes(),
        api::secrets::routes(),
        api::instance::routes(),
        api::events::routes(),
        ui::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
