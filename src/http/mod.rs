//! HTTP: the router, middleware, the JSON API (`api/`), the console (`ui/`) and embedded
//! assets. Only this module knows axum; handlers call domain functions and turn their
//! results into responses.

mod api;
mod assets;
pub mod auth;
mod error;
mod middleware;
pub mod routes;
mod ui;

use crate::app::App;
use crate::error::{Error, Result};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::{ServerError, ServerResult};

pub fn router(app: App) -> Router {
    let mut router = Router::new();
    for route in routes::table() {
        let guard = axum::middleware::from_fn_with_state((app.clone(), route.need), auth::require);
        router = router.route(&route.path, route.handler.route_layer(guard));
    }
    router
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::authenticate,
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::observe,
        ))
        .with_state(app)
}

/// Serves until `app.shutdown` is cancelled, then lets in-flight requests finish for up
/// to `shutdown_timeout` (SSE streams end on the same signal).
pub async fn serve(app: App, listener: tokio::net::TcpListener) -> Result<()> {
    let token = app.shutdown.clone();
    let grace = app.config.shutdown_timeout;
    let service = router(app).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, service)
        .with_graceful_shutdown(token.clone().cancelled_owned())
        .into_future();
    tokio::select! {
        result = server => result.map_err(Error::io("HTTP server failed")),
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(timeout = ?grace, "shutdown timeout reached; closing remaining connections");
            Ok(())
        }
    }
}
