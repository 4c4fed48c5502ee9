//! Static assets (`web/static/`) embedded in the binary. Pages link them with a content
//! hash (`/static/app.css?v=…`); such requests are cached for a year, others revalidate
//! with the ETag.

use crate::http::routes::{Route, routes};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use std::collections::HashMap;
use std::sync::OnceLock;

use super::error::ServerError;

#[derive(RustEmbed)]
#[folder = "web/static/"]
struct Assets;

/// Short content hash of each asset, computed once.
fn hashes() -> &'static HashMap<String, String> {
    static HASHES: OnceLock<HashMap<String, String>> = OnceLock::new();
    HASHES.get_or_init(|| {
        Assets::iter()
            .filter_map(|name| {
                let file = Assets::get(&name)?;
                let hash: String = file.metadata.sha256_hash()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Some((name.into_owned(), hash))
            })
            .collect()
    })
}

/// The URL of an asset, with its content hash for cache busting.
pub fn url(name: &str) -> String {
    match hashes().get(name) {
        Some(hash) => format!("/static/{name}?v={hash}"),
        None => format!("/static/{name}"),
    }
}

pub async fn serve(
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let (Some(file), Some(hash)) = (Assets::get(&path), hashes().get(&path)) else {
        return Err(ServerError::NotFound(format!("no asset {path}")));
    };
    let etag = format!("\"{hash}\"");
    let cache = if query.get("v") == Some(hash) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    let mime = HeaderValue::from_str(file.metadata.mimetype())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response_headers.insert(header::CONTENT_TYPE, mime);
    Ok((response_headers, file.data.into_owned()).into_response())
}

/// Browsers ask for `/favicon.ico` on their own: they get the icon pages link to.
pub async fn favicon() -> axum::response::Redirect {
    axum::response::Redirect::permanent(&url("favicon.svg"))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/static/{*path}" PUBLIC => serve,
        GET "/favicon.ico" PUBLIC => favicon,
    ]
}
