//! Users and teams (instance administrators only for changes).
//!
//! `GET|POST /api/v1/users`, `PATCH /api/v1/users/{name}`,
//! `PUT /api/v1/users/{name}/password`, `GET|POST /api/v1/teams`,
//! `DELETE /api/v1/teams/{name}`, `PUT|DELETE /api/v1/teams/{name}/members/{user}`.

use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use crate::identity::views::{TeamView, team_views};
use crate::identity::{UserView, accounts, validate_name};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

pub async fn list(State(app): State<App>) -> ServerResult<Json<Vec<UserView>>> {
    Ok(Json(app.store.list_users().await?))
}

#[derive(Deserialize)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

pub async fn create(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewUser>,
) -> ServerResult<(StatusCode, Json<UserView>)> {
    let user = accounts::create_user(
        &app.store,
        &req.name,
        &req.password,
        req.admin,
        &signed.audit,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(super::auth::view(user, Vec::new())),
    ))
}

#[derive(Deserialize)]
pub struct UserChange {
    #[serde(default)]
    pub admin: Option<bool>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

pub async fn update(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
    Json(req): Json<UserChange>,
) -> ServerResult<Json<UserView>> {
    let user = app
        .store
        .update_user(
            &name,
            req.admin,
            req.disabled,
            Record::new(&signed.audit, "user.update", format!("user:{name}")),
        )
        .await?;
    Ok(Json(super::auth::view(user, Vec::new())))
}

#[derive(Deserialize)]
pub struct PasswordReset {
    pub password: String,
}

pub async fn reset_password(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
    Json(req): Json<PasswordReset>,
) -> ServerResult<StatusCode> {
    accounts::set_password(&app.store, &name, &req.password, &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_teams(State(app): State<App>) -> ServerResult<Json<Vec<TeamView>>> {
    Ok(Json(team_views(&app.store).await?))
}

#[derive(Deserialize)]
pub struct NewTeam {
    pub name: String,
}

pub async fn create_team(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewTeam>,
) -> ServerResult<(StatusCode, Json<TeamView>)> {
    validate_name("team", &req.name).map_err(ServerError::BadRequest)?;
    let team = app
        .store
        .create_team(
            req.name.clone(),
            Record::new(&signed.audit, "team.create", format!("team:{}", req.name)),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TeamView {
            id: team.id,
            name: team.name,
            members: Vec::new(),
        }),
    ))
}

pub async fn delete_team(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
) -> ServerResult<StatusCode> {
    app.store
        .delete_team(
            &name,
            Record::new(&signed.audit, "team.delete", format!("team:{name}")),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_member(
    State(app): State<App>,
    signed: Signed,
    Path((team, user)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    set_membership(&app, &signed, &team, &user, true).await
}

pub async fn remove_member(
    State(app): State<App>,
    signed: Signed,
    Path((team, user)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    set_membership(&app, &signed, &team, &user, false).await
}

async fn set_membership(
    app: &App,
    signed: &Signed,
    team: &str,
    user: &str,
    member: bool,
) -> ServerResult<StatusCode> {
    let action = if member {
        "team.add_member"
    } else {
        "team.remove_member"
    };
    let record =
        Record::new(&signed.audit, action, format!("team:{team}")).detail(format!("user:{user}"));
    app.store
        .set_team_member(team, user, member, record)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/users" ADMIN => list,
        POST "/api/v1/users" ADMIN => create,
        PATCH "/api/v1/users/{name}" ADMIN => update,
        PUT "/api/v1/users/{name}/password" ADMIN => reset_password,
        GET "/api/v1/teams" USER => list_teams,
        POST "/api/v1/teams" ADMIN => create_team,
        DELETE "/api/v1/teams/{name}" ADMIN => delete_team,
        PUT "/api/v1/teams/{name}/members/{user}" ADMIN => add_member,
        DELETE "/api/v1/teams/{name}/members/{user}" ADMIN => remove_member,
    ]
}
