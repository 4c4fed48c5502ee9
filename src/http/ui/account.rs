//! My account: password, sessions and API tokens.

use super::form::form_failed;
use super::{Console, Done, Layout, done_message, render};
use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::accounts::parse_expiry;
use crate::identity::audit::Record;
use crate::identity::{ApiToken, Scope, Session, accounts};
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "identity/account.html")]
struct AccountPage {
    layout: Layout,
    name: String,
    admin: bool,
    sessions: Vec<(Session, bool)>,
    tokens: Vec<ApiToken>,
    done: Option<&'static str>,
    error: Option<String>,
    new_token: Option<String>,
}

async fn account_page(
    app: &App,
    signed: &Signed,
    done: Option<&'static str>,
    error: Option<String>,
    new_token: Option<String>,
) -> ServerResult<Html<String>> {
    let user = &signed.principal.user;
    let current = signed.principal.session_id().map(str::to_string);
    let sessions = app.store.list_sessions(user.id).await?;
    render(&AccountPage {
        layout: Layout::new("Your account", "security", Some(&signed.principal)),
        name: user.name.clone(),
        admin: user.admin,
        sessions: sessions
            .into_iter()
            .map(|s| {
                let is_current = current.as_deref() == Some(s.id.as_str());
                (s, is_current)
            })
            .collect(),
        tokens: app.store.list_tokens(Some(user.id)).await?,
        done,
        error,
        new_token,
    })
}

pub async fn page(
    Console { app, signed }: Console,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    account_page(&app, &signed, done_message(done.as_deref()), None, None).await
}

#[derive(Deserialize)]
pub struct PasswordForm {
    current_password: String,
    new_password: String,
}

pub async fn change_password(
    Console { app, signed }: Console,
    Form(form): Form<PasswordForm>,
) -> ServerResult<Response> {
    let result = accounts::change_password(
        &app.store,
        &signed.principal.user,
        &form.current_password,
        &form.new_password,
        &signed.audit,
    )
    .await;
    match result {
        // Changing the password ends every session, this one included.
        Ok(()) => Ok(Redirect::to("/login").into_response()),
        Err(e) => {
            form_failed(e, |message| {
                account_page(&app, &signed, None, Some(message), None)
            })
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    name: String,
    scope: Scope,
    #[serde(default)]
    expires_in: String,
}

/// Creates a token and shows its secret once, on this response only.
pub async fn create_token(
    Console { app, signed }: Console,
    Form(form): Form<TokenForm>,
) -> ServerResult<Response> {
    let result = match parse_expiry(Some(&form.expires_in)) {
        Ok(expires) => {
            accounts::create_token(
                &app.store,
                &signed.principal.user,
                &form.name,
                form.scope,
                expires,
                &signed.audit,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((secret, _)) => Ok(account_page(&app, &signed, None, None, Some(secret))
            .await?
            .into_response()),
        Err(e) => {
            form_failed(e, |message| {
                account_page(&app, &signed, None, Some(message), None)
            })
            .await
        }
    }
}

pub async fn revoke_token(
    Console { app, signed }: Console,
    Path(id): Path<u64>,
) -> ServerResult<Redirect> {
    app.store
        .revoke_token(
            id,
            Some(signed.principal.user.id),
            Record::new(&signed.audit, "token.revoke", format!("token:{id}")),
        )
        .await?;
    Ok(Redirect::to("/account?done=token-revoked"))
}

pub async fn revoke_session(
    Console { app, signed }: Console,
    Path(id): Path<String>,
) -> ServerResult<Redirect> {
    accounts::revoke_session(&app.store, &signed.principal, &id, &signed.audit).await?;
    Ok(Redirect::to("/account?done=session-revoked"))
}

pub async fn revoke_other_sessions(Console { app, signed }: Console) -> ServerResult<Redirect> {
    accounts::revoke_other_sessions(&app.store, &signed.principal, &signed.audit).await?;
    Ok(Redirect::to("/account?done=sessions-revoked"))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/account" USER => page,
        POST "/account/password" USER => change_password,
        POST "/account/tokens" USER => create_token,
        POST "/account/tokens/{id}/revoke" USER => revoke_token,
        POST "/account/sessions/{id}/revoke" USER => revoke_session,
        POST "/account/sessions/revoke-others" USER => revoke_other_sessions,
    ]
}
