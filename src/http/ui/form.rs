//! What every console form does after it is posted: on success a redirect (so a reload
//! does not post again), on an error a person can act on the page again with the message
//! under the error's status; internal errors go to the error page.

use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::error::ServerError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

/// A form error to show on the page: its status, message and Retry-After.
pub struct FormError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// Splits errors a person can act on (shown on the form) from internal ones.
pub fn form_error(e: Error) -> Result<FormError, ServerError> {
    let status = match &e {
        Error::Invalid(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => return Err(ServerError::Internal(e)),
    };
    let retry_after = match &e {
        Error::Throttled { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    Ok(FormError {
        status,
        message: e.to_string(),
        retry_after,
    })
}

/// A failed form: its page rendered again by `page` with the error's message, under the
/// error's status. Internal errors go to the error page instead.
pub async fn form_failed<F, Fut>(e: Error, page: F) -> ServerResult<Response>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ServerResult<Html<String>>>,
{
    let error = form_error(e)?;
    with_status(page(error.message.clone()).await, &error)
}

/// Renders a page for a failed form with the error's status.
pub fn with_status(page: ServerResult<Html<String>>, error: &FormError) -> ServerResult<Response> {
    let mut response = (error.status, page?).into_response();
    if let Some(secs) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Ok(response)
}

/// A posted form's answer: a redirect to the URL `result` gives, or its page again
/// (rendered by `page` with the message) when it failed.
pub async fn finish<F, Fut>(result: Result<String, Error>, page: F) -> ServerResult<Response>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ServerResult<Html<String>>>,
{
    match result {
        Ok(to) => Ok(Redirect::to(&to).into_response()),
        Err(e) => form_failed(e, page).await,
    }
}
