//! Administration screens: users, teams and the audit log.

use super::form::form_failed;
use super::{Console, Done, Layout, done_message, render};
use crate::app::App;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::audit::{Entry, Filter, Record};
use crate::identity::views::{TeamView, team_views};
use crate::identity::{UserView, accounts, validate_name};
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "identity/users.html")]
struct UsersPage {
    layout: Layout,
    users: Vec<UserView>,
    done: Option<&'static str>,
    error: Option<String>,
}

impl UsersPage {
    /// Whether `u` is the only enabled administrator: the page then offers no way to take
    /// that away (the store refuses it too).
    fn last_admin(&self, u: &UserView) -> bool {
        u.admin && !u.disabled && self.users.iter().filter(|v| v.admin && !v.disabled).count() == 1
    }
}

async fn users_page_with(
    app: &App,
    signed: &Signed,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    render(&UsersPage {
        layout: Layout::new("Users", "security", Some(&signed.principal)),
        users: app.store.list_users().await?,
        done,
        error,
    })
}

pub async fn users_page(
    Console { app, signed }: Console,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    users_page_with(&app, &signed, done_message(done.as_deref()), None).await
}

#[derive(Deserialize)]
pub struct NewUserForm {
    name: String,
    password: String,
    #[serde(default)]
    admin: Option<String>,
}

pub async fn create_user(
    Console { app, signed }: Console,
    Form(form): Form<NewUserForm>,
) -> ServerResult<Response> {
    match accounts::create_user(
        &app.store,
        &form.name,
        &form.password,
        form.admin.is_some(),
        &signed.audit,
    )
    .await
    {
        Ok(_) => Ok(Redirect::to("/security/users?done=user-created").into_response()),
        Err(e) => {
            form_failed(e, |message| {
                users_page_with(&app, &signed, None, Some(message))
            })
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct UserActionForm {
    /// `make_admin`, `remove_admin`, `disable`, `enable` or `reset_password`.
    action: String,
    #[serde(default)]
    password: String,
}

pub async fn update_user(
    Console { app, signed }: Console,
    Path(name): Path<String>,
    Form(form): Form<UserActionForm>,
) -> ServerResult<Response> {
    let record = Record::new(&signed.audit, "user.update", format!("user:{name}"));
    let result = match form.action.as_str() {
        "make_admin" => app
            .store
            .update_user(&name, Some(true), None, record)
            .await
            .map(drop),
        "remove_admin" => app
            .store
            .update_user(&name, Some(false), None, record)
            .await
            .map(drop),
        "disable" => app
            .store
            .update_user(&name, None, Some(true), record)
            .await
            .map(drop),
        "enable" => app
            .store
            .update_user(&name, None, Some(false), record)
            .await
            .map(drop),
        "reset_password" => {
            accounts::set_password(&app.store, &name, &form.password, &signed.audit).await
        }
        other => Err(Error::Invalid(format!("unknown action \"{other}\""))),
    };
    match result {
        Ok(()) => Ok(Redirect::to("/security/users?done=user-updated").into_response()),
        Err(e) => {
            form_failed(e, |message| {
                users_page_with(&app, &signed, None, Some(message))
            })
            .await
        }
    }
}

#[derive(Template)]
#[template(path = "identity/teams.html")]
struct TeamsPage {
    layout: Layout,
    teams: Vec<TeamView>,
    users: Vec<UserView>,
    done: Option<&'static str>,
    error: Option<String>,
}

async fn teams_page_with(
    app: &App,
    signed: &Signed,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    render(&TeamsPage {
        layout: Layout::new("Teams", "security", Some(&signed.principal)),
        teams: team_views(&app.store).await?,
        users: app.store.list_users().await?,
        done,
        error,
    })
}

pub async fn teams_page(
    Console { app, signed }: Console,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    teams_page_with(&app, &signed, done_message(done.as_deref()), None).await
}

async fn team_result(
    app: &App,
    signed: &Signed,
    result: crate::core::error::Result<()>,
    done: &str,
) -> ServerResult<Response> {
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/security/teams?done={done}")).into_response()),
        Err(e) => {
            form_failed(e, |message| {
                teams_page_with(app, signed, None, Some(message))
            })
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct NameForm {
    name: String,
}

pub async fn create_team(
    Console { app, signed }: Console,
    Form(form): Form<NameForm>,
) -> ServerResult<Response> {
    let result = match validate_name("team", &form.name) {
        Ok(()) => app
            .store
            .create_team(
                form.name.clone(),
                Record::new(&signed.audit, "team.create", format!("team:{}", form.name)),
            )
            .await
            .map(drop),
        Err(m) => Err(Error::Invalid(m)),
    };
    team_result(&app, &signed, result, "team-created").await
}

#[derive(Deserialize)]
pub struct MemberForm {
    user: String,
}

pub async fn add_member(
    Console { app, signed }: Console,
    Path(team): Path<String>,
    Form(form): Form<MemberForm>,
) -> ServerResult<Response> {
    let record = Record::new(&signed.audit, "team.add_member", format!("team:{team}"))
        .detail(format!("user:{}", form.user));
    let result = app
        .store
        .set_team_member(&team, &form.user, true, record)
        .await
        .map(drop);
    team_result(&app, &signed, result, "team-updated").await
}

pub async fn remove_member(
    Console { app, signed }: Console,
    Path((team, user)): Path<(String, String)>,
) -> ServerResult<Response> {
    let record = Record::new(&signed.audit, "team.remove_member", format!("team:{team}"))
        .detail(format!("user:{user}"));
    let result = app
        .store
        .set_team_member(&team, &user, false, record)
        .await
        .map(drop);
    team_result(&app, &signed, result, "team-updated").await
}

pub async fn delete_team(
    Console { app, signed }: Console,
    Path(team): Path<String>,
) -> ServerResult<Response> {
    let result = app
        .store
        .delete_team(
            &team,
            Record::new(&signed.audit, "team.delete", format!("team:{team}")),
        )
        .await;
    team_result(&app, &signed, result, "team-deleted").await
}

#[derive(Template)]
#[template(path = "identity/audit.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<Entry>,
    actor: String,
    action: String,
    target: String,
    older: Option<u64>,
}

pub async fn audit_page(
    Console { app, signed }: Console,
    Query(filter): Query<Filter>,
) -> ServerResult<Html<String>> {
    let limit = filter.limit.unwrap_or(100);
    let entries = app.store.audit_entries(filter.clone()).await?;
    let older = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    render(&AuditPage {
        layout: Layout::new("Audit log", "security", Some(&signed.principal)),
        entries,
        actor: filter.actor,
        action: filter.action,
        target: filter.target,
        older,
    })
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/security/users" ADMIN => users_page,
        POST "/security/users" ADMIN => create_user,
        POST "/security/users/{name}" ADMIN => update_user,
        GET "/security/teams" ADMIN => teams_page,
        POST "/security/teams" ADMIN => create_team,
        POST "/security/teams/{name}/members" ADMIN => add_member,
        POST "/security/teams/{name}/members/{user}/remove" ADMIN => remove_member,
        POST "/security/teams/{name}/delete" ADMIN => delete_team,
        GET "/security/audit" ADMIN => audit_page,
    ]
}
