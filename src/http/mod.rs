//! HTTP: the router, middleware, the JSON API (`api/`), the console (`ui/`) and embedded
//! assets. Only this module knows axum; handlers call domain functions and turn their
//! results into responses.

mod api;
mod assets;
pub mod auth;
mod error;
mod middleware;
pub mod routes;
pub mod tls;
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
    let service = router(app).into_make_service_with_connect_info::<std::net::SocketAddr>();

    let Some((rustls, files)) = tls else {
        let server = axum::serve(listener, service)
            .with_graceful_shutdown(token.clone().cancelled_owned())
            .into_future();
        return tokio::select! {
            result = server => result.map_err(Error::io("HTTP server failed")),
            () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(timeout = ?grace, "shutdown timeout reached; closing remaining connections");
                Ok(())
            }
        };
    };
    tokio::spawn(tls::reload_on_change(rustls.clone(), files, token.clone()));
    let handle = axum_server::Handle::new();
    let on_stop = handle.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        on_stop.graceful_shutdown(Some(grace));
    });
    let listener = listener
        .into_std()
        .map_err(Error::io("cannot hand the listener to the TLS server"))?;
    axum_server::from_tcp_rustls(listener, rustls)
        .map_err(Error::io("cannot start the TLS server"))?
        .handle(handle)
        .serve(service)
        .await
        .map_err(Error::io("HTTPS server failed"))
}
