//! Sign-in, sign-out and first-run set-up screens.

use super::form::{form_error, with_status};
use super::{Console, Layout, render};
use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Anyone;
use crate::http::auth::{session_cookie, user_agent};
use crate::http::routes::{Route, routes};
use crate::identity::accounts;
use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

/// Only same-site paths, so `?next=` cannot send people elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".into(),
    }
}

#[derive(Template)]
#[template(path = "identity/login.html")]
struct LoginPage {
    layout: Layout,
    next: String,
    name: String,
    error: Option<String>,
    setup_needed: bool,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_page_with(
    app: &App,
    next: String,
    name: String,
    error: Option<String>,
) -> ServerResult<axum::response::Html<String>> {
    render(&LoginPage {
        layout: Layout::new("Sign in", "", None),
        next,
        name,
        error,
        setup_needed: app.setup_token_digest.lock().expect("setup lock").is_some(),
    })
}

pub async fn login_page(
    State(app): State<App>,
    anyone: Anyone,
    Query(q): Query<NextQuery>,
) -> ServerResult<Response> {
    let next = safe_next(q.next.as_deref());
    if anyone.principal.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    Ok(login_page_with(&app, next, String::new(), None)?.into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(app): State<App>,
    anyone: Anyone,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> ServerResult<Response> {
    let next = safe_next(Some(&form.next));
    let result = accounts::sign_in(
        &app.store,
        &app.login_throttle,
        &form.name,
        &form.password,
        app.config.session_lifetime,
        user_agent(&headers),
        &anyone.audit,
    )
    .await;
    match result {
        Ok(signed) => {
            let cookie =
                session_cookie(&app, &signed.cookie, app.config.session_lifetime.as_secs());
            Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response())
        }
        Err(e) => {
            let error = form_error(e)?;
            with_status(
                login_page_with(&app, next, form.name, Some(error.message.clone())),
                &error,
            )
        }
    }
}

pub async fn logout(Console { app, signed }: Console) -> ServerResult<Response> {
    if let Some(id) = signed.principal.session_id().map(str::to_string) {
        app.store
            .delete_sessions(
                signed.principal.user.id,
                move |sid| sid == id,
                crate::identity::audit::Record::new(
                    &signed.audit,
                    "session.delete",
                    format!("user:{}", signed.principal.user.name),
                ),
            )
            .await?;
    }
    Ok((
        [(header::SET_COOKIE, session_cookie(&app, "", 0))],
        Redirect::to("/login"),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "identity/setup.html")]
struct SetupPage {
    layout: Layout,
    token: String,
    name: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct SetupQuery {
    #[serde(default)]
    token: String,
}

fn setup_done(app: &App) -> bool {
    app.setup_token_digest.lock().expect("setup lock").is_none()
}

pub async fn setup_page(
    State(app): State<App>,
    Query(q): Query<SetupQuery>,
) -> ServerResult<Response> {
    if setup_done(&app) {
        return Ok(Redirect::to("/login").into_response());
    }
    Ok(render(&SetupPage {
        layout: Layout::new("Set up BetCycle", "", None),
        token: q.token,
        name: String::new(),
        error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub struct SetupForm {
    token: String,
    name: String,
    password: String,
}

/// Creates the first administrator and signs them in.
pub async fn setup(
    State(app): State<App>,
    anyone: Anyone,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> ServerResult<Response> {
    let created = accounts::setup(
        &app.store,
        &app.setup_token_digest,
        &form.token,
        &form.name,
        &form.password,
        &anyone.audit,
    )
    .await;
    if let Err(e) = created {
        let error = form_error(e)?;
        let page = render(&SetupPage {
            layout: Layout::new("Set up BetCycle", "", None),
            token: form.token,
            name: form.name,
            error: Some(error.message.clone()),
        });
        return with_status(page, &error);
    }
    let signed = accounts::sign_in(
        &app.store,
        &app.login_throttle,
        &form.name,
        &form.password,
        app.config.session_lifetime,
        user_agent(&headers),
        &anyone.audit,
    )
    .await?;
    let cookie = session_cookie(&app, &signed.cookie, app.config.session_lifetime.as_secs());
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/login" PUBLIC => login_page,
        POST "/login" PUBLIC => login,
        POST "/logout" USER => logout,
        GET "/setup" PUBLIC => setup_page,
        POST "/setup" PUBLIC => setup,
    ]
}
