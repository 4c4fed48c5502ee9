//! The one middleware every request passes: it gives the request an id (kept from a sane
//! incoming `X-Request-Id`), runs the handler inside a span carrying that id so every log
//! line has it, renders error responses in the shape the client wants, and records
//! metrics and an access log line.

use super::error::{self, ErrorInfo};
use crate::app::App;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::Instrument;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Facts about the request that handlers record in audit entries.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    /// The client's IP address.
    pub source: String,
}

/// The Content-Security-Policy of every response: only our own scripts, styles and
/// images; no framing. Style *attributes* are allowed (not `<style>` elements, not
/// scripts) because step logs render ANSI colours as `style='color:…'` spans, produced
/// by `ansi-to-html` from HTML-escaped text.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'self'; \
                   object-src 'none'";

/// Largest plain-text error body (from axum's own rejections) turned into a message.
const MAX_PLAIN_ERROR: usize = 16 * 1024;

pub async fn observe(State(app): State<App>, mut req: Request, next: Next) -> Response {
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
    let wants_html = !path.starts_with("/api/") && super::auth::wants_html(req.headers());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    req.extensions_mut().insert(RequestMeta {
        request_id: request_id.clone(),
        source,
    });

    // `otel.*` and the `http.*` names are OpenTelemetry's, for the OTLP export.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }

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
    security_headers(response.headers_mut(), app.config.tls.is_some());

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

fn security_headers(headers: &mut axum::http::HeaderMap, tls: bool) {
    let mut set = |name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(header::CONTENT_SECURITY_POLICY, CSP);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "same-origin");
    if tls {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
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
