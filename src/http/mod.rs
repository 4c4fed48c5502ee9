//! HTTP: the router, middleware, the JSON API (`api/`), the console (`ui/`) and embedded
//! assets. Only this module knows axum; handlers call domain functions and turn their
//! results into responses.

mod api;
mod assets;
mod error;
mod middleware;
mod ui;

use crate::app::App;
use crate::error::{Error, Result};
use axum::Router;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::{ServerError, ServerResult};

pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(api::health::healthz))
        .route("/readyz", get(api::health::readyz))
        .route("/metrics", get(api::metrics::metrics))
        .route("/api/v1/instance", get(api::instance::show))
        .route("/api/v1/events", get(api::events::stream))
        .route("/static/{*path}", get(assets::serve))
        .merge(ui::routes())
        .fallback(error::not_found)
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
    let server = axum::serve(listener, router(app))
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
