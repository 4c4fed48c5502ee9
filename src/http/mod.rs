//! HTTP: the router, middleware, the JSON API (`api/`), the console (`ui/`) and embedded
//! assets. Only this module knows axum; handlers call domain functions and turn their
//! results into responses.

mod api;
mod assets;
pub mod auth;
mod error;
mod listen;
mod middleware;
pub mod present;
pub mod routes;
pub mod tls;
mod ui;

use crate::app::App;
use crate::core::error::{Error, Result};
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
/// to `shutdown_timeout` (SSE streams end on the same signal). HTTPS when TLS is
/// configured.
pub async fn serve(app: App, listener: tokio::net::TcpListener) -> Result<()> {
    let token = app.shutdown.clone();
    let grace = app.config.shutdown_timeout;
    let addr = listener
        .local_addr()
        .map_err(Error::io("cannot read the listening address"))?;
    let tls = match app.config.tls.clone() {
        Some(files) => Some((tls::load(&files).await?, files)),
        None => None,
    };
    tracing::info!(
        url = %format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
        public_url = %app.config.public_url,
        data_dir = %app.config.data_dir.display(),
        version = crate::VERSION,
        "listening"
    );
    let limits = app.config.http;
    let router = router(app);
    let rustls = match tls {
        Some((rustls, files)) => {
            tokio::spawn(tls::reload_on_change(rustls.clone(), files, token.clone()));
            Some(rustls)
        }
        None => None,
    };
    listen::serve(listener, router, rustls, limits, token, grace)
        .await
        .map_err(Error::io("HTTP server failed"))
}
