//! Set-up, sessions, the caller's own account and API tokens.
//!
//! `POST /api/v1/setup`, `POST|GET /api/v1/sessions`, `DELETE /api/v1/sessions/current`,
//! `DELETE /api/v1/sessions/{id}`, `POST /api/v1/sessions/revoke-others`,
//! `GET /api/v1/me`, `PUT /api/v1/me/password`, `GET|POST /api/v1/tokens`,
//! `DELETE /api/v1/tokens/{id}`.

use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::{Anyone, Signed};
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use crate::identity::{Credential, Scope, SessionView, TokenView, User, UserView, accounts};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct SetupRequest {
    pub setup_token: String,
    pub name: String,
    pub password: String,
}

pub async fn setup(
    State(app): State<App>,
    anyone: Anyone,
    Json(req): Json<SetupRequest>,
) -> ServerResult<(StatusCode, Json<UserView>)> {
    let user = accounts::setup(
        &app.store,
        &app.setup_token_digest,
        &req.setup_token,
        &req.name,
        &req.password,
        &anyone.audit,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(user, Vec::new()))))
}

pub fn view(user: User, teams: Vec<String>) -> UserView {
    UserView {
        id: user.id,
        name: user.name,
        admin: user.admin,
        disabled: user.disabled,
        created_at: user.created_at,
        teams,
    }
}

#[derive(Deserialize)]
pub struct SignInRequest {
    pub name: String,
    pub password: String,
}

#[derive(Serialize)]
pub struct SignInResponse {
    pub user: UserView,
    pub session: SessionView,
    /// Send it as `X-CSRF-Token` with every change made with this session's cookie.
    pub csrf_token: String,
}

pub async fn sign_in(
    State(app): State<App>,
    anyone: Anyone,
    headers: HeaderMap,
    Json(req): Json<SignInRequest>,
) -> ServerResult<Response> {
    let signed = accounts::sign_in(
        &app.store,
        &app.login_throttle,
        &req.name,
        &req.password,
        app.config.session_lifetime,
        crate::http::auth::user_agent(&headers),
        &anyone.audit,
    )
    .await?;
    let cookie = crate::http::auth::session_cookie(
        &app,
        &signed.cookie,
        app.config.session_lifetime.as_secs(),
    );
    let body = SignInResponse {
        csrf_token: signed.session.csrf_token.clone(),
        user: view(signed.user, Vec::new()),
        session: signed.session.view(true),
    };
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, cookie)],
        Json(body),
    )
        .into_response())
}

pub async fn sign_out(State(app): State<App>, signed: Signed) -> ServerResult<Response> {
    let current = signed
        .principal
        .session_id()
        .ok_or_else(|| ServerError::BadRequest("this request is not made with a session".into()))?
        .to_string();
    app.store
        .delete_sessions(
            signed.principal.user.id,
            move |id| id == current,
            Record::new(
                &signed.audit,
                "session.delete",
                format!("user:{}", signed.principal.user.name),
            ),
        )
        .await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            crate::http::auth::session_cookie(&app, "", 0),
        )],
    )
        .into_response())
}

pub async fn list_sessions(
    State(app): State<App>,
    signed: Signed,
) -> ServerResult<Json<Vec<SessionView>>> {
    let current = signed.principal.session_id().map(str::to_string);
    let sessions = app.store.list_sessions(signed.principal.user.id).await?;
    Ok(Json(
        sessions
            .iter()
            .map(|s| s.view(current.as_deref() == Some(s.id.as_str())))
            .collect(),
    ))
}

pub async fn revoke_session(
    State(app): State<App>,
    signed: Signed,
    Path(id): Path<String>,
) -> ServerResult<StatusCode> {
    let n = accounts::revoke_session(&app.store, &signed.principal, &id, &signed.audit).await?;
    if n == 0 {
        return Err(ServerError::NotFound(format!("session {id} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct Revoked {
    pub revoked: usize,
}

/// Signs out every session of the caller except the one making the request.
pub async fn revoke_other_sessions(
    State(app): State<App>,
    signed: Signed,
) -> ServerResult<Json<Revoked>> {
    let revoked =
        accounts::revoke_other_sessions(&app.store, &signed.principal, &signed.audit).await?;
    Ok(Json(Revoked { revoked }))
}

#[derive(Serialize)]
pub struct Me {
    pub user: UserView,
    /// `session` or `token`.
    pub via: &'static str,
    /// The token's scope when the request used a token.
    pub scope: Option<Scope>,
}

pub async fn me(signed: Signed) -> Json<Me> {
    let (via, scope) = match &signed.principal.credential {
        Credential::Session(_) => ("session", None),
        Credential::Token(t) => ("token", Some(t.scope)),
    };
    Json(Me {
        user: view(signed.principal.user, Vec::new()),
        via,
        scope,
    })
}

#[derive(Deserialize)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

pub async fn change_password(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<PasswordChange>,
) -> ServerResult<StatusCode> {
    accounts::change_password(
        &app.store,
        &signed.principal.user,
        &req.current_password,
        &req.new_password,
        &signed.audit,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct TokenRequest {
    pub name: String,
    pub scope: Scope,
    /// A duration such as `30d`; no expiry when absent.
    #[serde(default)]
    pub expires_in: Option<String>,
}

#[derive(Serialize)]
pub struct CreatedToken {
    /// The secret: shown once, never again.
    pub token: String,
    #[serde(flatten)]
    pub record: TokenView,
}

pub async fn create_token(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<TokenRequest>,
) -> ServerResult<(StatusCode, Json<CreatedToken>)> {
    let expires = accounts::parse_expiry(req.expires_in.as_deref())?;
    let (token, record) = accounts::create_token(
        &app.store,
        &signed.principal.user,
        &req.name,
        req.scope,
        expires,
        &signed.audit,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            record: record.view(),
        }),
    ))
}

pub async fn list_tokens(
    State(app): State<App>,
    signed: Signed,
) -> ServerResult<Json<Vec<TokenView>>> {
    let tokens = app
        .store
        .list_tokens(Some(signed.principal.user.id))
        .await?;
    Ok(Json(tokens.iter().map(|t| t.view()).collect()))
}

pub async fn revoke_token(
    State(app): State<App>,
    signed: Signed,
    Path(id): Path<u64>,
) -> ServerResult<Json<TokenView>> {
    let owner = (!signed.principal.user.admin).then_some(signed.principal.user.id);
    let token = app
        .store
        .revoke_token(
            id,
            owner,
            Record::new(&signed.audit, "token.revoke", format!("token:{id}")),
        )
        .await?;
    Ok(Json(token.view()))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        POST "/api/v1/setup" PUBLIC => setup,
        POST "/api/v1/sessions" PUBLIC => sign_in,
        GET "/api/v1/sessions" USER => list_sessions,
        DELETE "/api/v1/sessions/current" USER => sign_out,
        POST "/api/v1/sessions/revoke-others" USER => revoke_other_sessions,
        DELETE "/api/v1/sessions/{id}" USER => revoke_session,
        GET "/api/v1/me" USER => me,
        PUT "/api/v1/me/password" USER => change_password,
        GET "/api/v1/tokens" USER => list_tokens,
        POST "/api/v1/tokens" USER => create_token,
        DELETE "/api/v1/tokens/{id}" USER => revoke_token,
    ]
}
