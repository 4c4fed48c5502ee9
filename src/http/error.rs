//! Error responses. Every error leaves the server in one shape: JSON
//! `{code, message, request_id}` for API clients, an HTML page for browsers. Handlers
//! return [`ServerError`]; the `observe` middleware adds the request id and picks the
//! format. Internal causes are logged, never sent.

use crate::core::error::Error;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub type ServerResult<T> = Result<T, ServerError>;

#[derive(Debug)]
pub enum ServerError {
    NotFound(String),
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    Conflict(String),
    /// A dependency failed for now; worth retrying (503).
    Unavailable(String),
    /// A remote service BetCycle called refused or failed (502).
    BadGateway(String),
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    Internal(Error),
}

impl From<Error> for ServerError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound { .. } => ServerError::NotFound(e.to_string()),
            Error::Invalid(message) => ServerError::BadRequest(message),
            Error::Conflict(message) => ServerError::Conflict(message),
            Error::Unavailable(message) => ServerError::Unavailable(message),
            Error::Unauthorized(message) => ServerError::Unauthorized(message),
            Error::Forbidden(message) => ServerError::Forbidden(message),
            Error::Throttled { retry_after_secs } => ServerError::TooManyRequests {
                message: e.to_string(),
                retry_after_secs,
            },
            other => ServerError::Internal(other),
        }
    }
}

/// The code and message of an error response, attached as a response extension until
/// the middleware renders it.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, code, message) = match self {
            ServerError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ServerError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ServerError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ServerError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ServerError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ServerError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ServerError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "bad_gateway", m),
            ServerError::TooManyRequests {
                message,
                retry_after_secs,
            } => {
                retry_after = Some(retry_after_secs);
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
            }
            ServerError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details under this request id".into(),
                )
            }
        };
        let mut response = status.into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
            .extensions_mut()
            .insert(ErrorInfo { code, message });
        response
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ServerError {
    ServerError::NotFound(format!("no page or endpoint at {}", uri.path()))
}

pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic message went to the log through the panic hook; it may hold internals.
    ServerError::Internal(Error::Invalid("handler panicked".into())).into_response()
}

/// A stable `code` for an error status produced outside our handlers (axum rejections,
/// 405s).
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// The final error response: `response`'s status and headers with a JSON or HTML body.
pub fn render(response: Response, info: &ErrorInfo, request_id: &str, html: bool) -> Response {
    let (mut parts, _) = response.into_parts();
    let (content_type, body) = if html {
        let page = super::ui::error_page(parts.status, info, request_id);
        ("text/html; charset=utf-8", page)
    } else {
        let body = ErrorBody {
            code: info.code,
            message: &info.message,
            request_id,
        };
        (
            "application/json",
            serde_json::to_string(&body).expect("plain struct"),
        )
    };
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
