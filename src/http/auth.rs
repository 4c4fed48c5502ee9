//! Who is calling, and may they? `authenticate` (a middleware on every request) resolves
//! the caller from `Authorization: Bearer <token>` or the session cookie. `require` (a
//! layer on each route, from the route table) enforces the route's [`Need`]: 401 for
//! nobody (browsers are sent to the sign-in page), 403 for too little, and CSRF
//! protection for every cookie-authenticated change.

use super::error::ServerError;
use super::middleware::RequestMeta;
use crate::app::App;
use crate::identity::audit::{self, Outcome, Record};
use crate::identity::{Credential, Need, Principal, secret};
use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

pub const SESSION_COOKIE: &str = "betcycle_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "_csrf";

/// Largest form body the CSRF check reads.
const MAX_FORM: usize = 64 * 1024;

/// The caller of a request, if any; set by [`authenticate`] for every request.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<Principal>);

pub async fn authenticate(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let caller = match resolve(&app, req.headers()).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(Caller(caller));
    next.run(req).await
}

async fn resolve(app: &App, headers: &HeaderMap) -> Result<Option<Principal>, ServerError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ServerError::Unauthorized("expected Authorization: Bearer <token>".into())
            })?;
        // An agent's token is checked by the agent routes themselves; elsewhere it is
        // no sign-in.
        if token.starts_with(crate::agents::TOKEN_PREFIX) {
            return Ok(None);
        }
        return match app.store.token(&secret::digest(token)).await? {
            Some((token, user)) => Ok(Some(Principal {
                user,
                credential: Credential::Token(token),
            })),
            None => Err(ServerError::Unauthorized(
                "the API token is invalid, expired or revoked".into(),
            )),
        };
    }
    let Some(session_key) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    // A stale or forged cookie is treated as no sign-in, not as an error.
    Ok(app
        .store
        .session(&secret::digest(&session_key))
        .await?
        .map(|(session, user)| Principal {
            user,
            credential: Credential::Session(session),
        }))
}

/// The value of cookie `name`, if the request sent it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The route guard: `need` comes from the route table.
pub async fn require(State((app, need)): State<(App, Need)>, req: Request, next: Next) -> Response {
    if matches!(need, Need::Public | Need::Agent) {
        return next.run(req).await;
    }
    let mutates = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let caller = req.extensions().get::<Caller>().and_then(|c| c.0.clone());
    let Some(principal) = caller else {
        if !mutates && wants_html(req.headers()) && !req.uri().path().starts_with("/api/") {
            let next_url = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return Redirect::to(&format!("/login?next={}", urlencode(next_url))).into_response();
        }
        return ServerError::Unauthorized("sign in or send an API token".into()).into_response();
    };
    if let Err(reason) = principal.check(need, mutates) {
        return deny(&app, Denied::of(&req), &principal, reason).await;
    }
    let mut req = req;
    if let Need::Project(role) = need
        && !principal.user.admin
    {
        let (mut parts, body) = req.into_parts();
        let slug = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(k, _)| *k == "slug")
                    .map(|(_, v)| v.to_string())
            })
            .unwrap_or_default();
        req = Request::from_parts(parts, body);
        match app.store.project_role(&slug, &principal.user).await {
            Ok(Some(held)) if held >= role => {}
            Ok(_) => {
                let reason = format!("this needs the {role} role on project \"{slug}\"");
                return deny(&app, Denied::of(&req), &principal, reason).await;
            }
            Err(e) => return ServerError::from(e).into_response(),
        }
    }
    if mutates && let Credential::Session(session) = &principal.credential {
        return match check_csrf(req, &session.csrf_token).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    next.run(req).await
}

/// What a denial records about the request.
struct Denied {
    meta: RequestMeta,
    method: Method,
    path: String,
}

impl Denied {
    fn of(req: &Request) -> Self {
        Self {
            meta: req
                .extensions()
                .get::<RequestMeta>()
                .cloned()
                .unwrap_or_default(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
        }
    }
}

/// 403 with the reason; the denial is audited.
async fn deny(app: &App, denied: Denied, principal: &Principal, reason: String) -> Response {
    let record = Record::new(
        &context(&denied.meta, Some(principal)),
        "request.denied",
        denied.path.clone(),
    )
    .outcome(Outcome::Denied)
    .detail(format!("{} {}: {reason}", denied.method, denied.path));
    if let Err(e) = app.store.audit(record).await {
        tracing::error!(error = %e, "cannot record a denied request");
    }
    ServerError::Forbidden(reason).into_response()
}

/// A cookie-authenticated change must carry the session's CSRF token, in the
/// `X-CSRF-Token` header (htmx, scripts) or the `_csrf` form field (plain forms).
async fn check_csrf(req: Request, expected: &str) -> Result<Request, ServerError> {
    let missing = || {
        ServerError::Forbidden("missing or wrong CSRF token; reload the page and try again".into())
    };
    if let Some(sent) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if secret::constant_time_eq(sent, expected) {
            Ok(req)
        } else {
            Err(missing())
        };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(missing());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| ServerError::BadRequest(format!("form body larger than {MAX_FORM} bytes")))?;
    let sent = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned())
        .ok_or_else(missing)?;
    if !secret::constant_time_eq(&sent, expected) {
        return Err(missing());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

pub fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The audit context of a request: who (or `anonymous`), from where, which request.
pub fn context(meta: &RequestMeta, principal: Option<&Principal>) -> audit::Context {
    audit::Context {
        actor: principal.map_or_else(|| "anonymous".to_string(), Principal::actor),
        source: meta.source.clone(),
        request_id: meta.request_id.clone(),
    }
}

/// Extractor for handlers behind `Need::User` or `Need::Admin`: the signed-in caller and
/// the audit context of the request.
pub struct Signed {
    pub principal: Principal,
    pub audit: audit::Context,
}

impl<S: Send + Sync> FromRequestParts<S> for Signed {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ServerError> {
        let principal = parts
            .extensions
            .get::<Caller>()
            .and_then(|c| c.0.clone())
            .ok_or_else(|| ServerError::Unauthorized("sign in or send an API token".into()))?;
        let meta = parts
            .extensions
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_default();
        Ok(Signed {
            audit: context(&meta, Some(&principal)),
            principal,
        })
    }
}

/// Extractor for public handlers: the caller if any, and the audit context.
pub struct Anyone {
    pub principal: Option<Principal>,
    pub audit: audit::Context,
}

impl<S: Send + Sync> FromRequestParts<S> for Anyone {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ServerError> {
        let principal = parts.extensions.get::<Caller>().and_then(|c| c.0.clone());
        let meta = parts
            .extensions
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_default();
        Ok(Anyone {
            audit: context(&meta, principal.as_ref()),
            principal,
        })
    }
}

/// The `Set-Cookie` value for a session (empty value and `max_age` 0 to clear it).
pub fn session_cookie(app: &crate::app::App, value: &str, max_age: u64) -> axum::http::HeaderValue {
    let secure = if app.https() { "; Secure" } else { "" };
    axum::http::HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("cookie value is hex")
}

/// The request's `User-Agent`, or "".
pub fn user_agent(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
