//! The one middleware every request passes: it gives the request an id (kept from a sane
//! incoming `X-Request-Id`), runs the handler inside a span carrying that id so every log
//! line has it, renders error responses in the shape the client wants, and records
//! metrics and an access log line.

use super::error::{self, ErrorInfo};
use crate::app::App;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest plain-text error body (from axum's own rejections) turned into a message.
const MAX_PLAIN_ERROR: usize = 16 * 1024;

pub async fn observe(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = method_label(req.method());
    let path = req.uri().path().to_owned();
    let wants_html = !path.starts_with("/api/") && accepts_html(&req);

    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();

    if status.is_client_error() || status.is_server_error() {
        let info = match response.extensions_mut().remove::<ErrorInfo>() {
            Some(info) => Some(info),
            None if is_plain(&response) => {
                let (parts, body) = response.into_parts();
                let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR)
                    .await
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&text).trim().to_owned();
                response = Response::from_parts(parts, axum::body::Body::empty());
                Some(ErrorInfo {
                    code: error::code_for(status),
                    message: if text.is_empty() {
                        status.canonical_reason().unwrap_or("error").to_lowercase()
                    } else {
                        text
                    },
                })
            }
            // A handler chose its own body (e.g. /readyz's checks): keep it.
            None => None,
        };
        if let Some(info) = info {
            response = error::render(response, &info, &request_id, wants_html);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }

    let elapsed = started.elapsed();
    app.metrics
        .observe_request(&route, method, status.as_u16(), elapsed);
    span.in_scope(|| {
        tracing::info!(
            method,
            path,
            status = status.as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    response
}

fn is_sane_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn accepts_html(req: &Request) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn is_plain(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"))
}

/// Bounded label values for metrics and logs.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
