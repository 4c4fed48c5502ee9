//! `/settings/agents`: the remote agents — their labels, capacity, the jobs they hold and
//! when they were last heard from — with buttons to pause, drain, resume or revoke one,
//! and a form that creates an agent and shows its token once.

use super::form::form_failed;
use super::{Console, Done, Layout, done_message, render};
use crate::agents::{self, AgentState, AgentView};
use crate::app::App;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use askama::Template;
use axum::Form;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "core/agents.html")]
struct AgentsPage {
    layout: Layout,
    agents: Vec<AgentView>,
    /// The agent just created and its token, shown this once.
    created: Option<(String, String)>,
    server_url: String,
    lease_s: u64,
    queued: usize,
    done: Option<&'static str>,
    error: Option<String>,
}

async fn page_with(
    app: &App,
    signed: &Signed,
    created: Option<(String, String)>,
    done: Option<&'static str>,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    render(&AgentsPage {
        layout: Layout::new("Agents", "settings", Some(&signed.principal)),
        agents: agents::views(&app.store, &app.runner.agents).await?,
        created,
        server_url: app.config.public_url.clone(),
        lease_s: app.runner.agents.lease().as_secs(),
        queued: app.runner.agents.queued_count(),
        done,
        error,
    })
}

pub async fn agents_page(
    Console { app, signed }: Console,
    Done(done): Done,
) -> ServerResult<Html<String>> {
    page_with(&app, &signed, None, done_message(done.as_deref()), None).await
}

#[derive(Deserialize)]
pub struct NewAgentForm {
    name: String,
}

pub async fn create_agent(
    Console { app, signed }: Console,
    Form(form): Form<NewAgentForm>,
) -> ServerResult<Response> {
    let name = form.name.trim().to_string();
    let audit = Record::new(&signed.audit, "agent.create", format!("agent:{name}"));
    match agents::create(&app.store, &name, audit).await {
        Ok((agent, token)) => Ok(
            page_with(&app, &signed, Some((agent.name, token)), None, None)
                .await?
                .into_response(),
        ),
        Err(e) => {
            form_failed(e, |message| {
                page_with(&app, &signed, None, None, Some(message))
            })
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct AgentActionForm {
    /// `active`, `paused`, `draining` or `revoke`.
    action: String,
}

pub async fn agent_action(
    Console { app, signed }: Console,
    Path(name): Path<String>,
    Form(form): Form<AgentActionForm>,
) -> ServerResult<Response> {
    let result = match form.action.as_str() {
        "revoke" => {
            let audit = Record::new(&signed.audit, "agent.revoke", format!("agent:{name}"));
            agents::revoke(&app.store, &app.runner.agents, &name, audit).await
        }
        other => match AgentState::parse(other) {
            Ok(state) => {
                let audit = Record::new(&signed.audit, "agent.state", format!("agent:{name}"));
                agents::set_state(&app.store, &app.runner.agents, &name, state, audit)
                    .await
                    .map(drop)
            }
            Err(e) => Err(Error::Invalid(e)),
        },
    };
    match result {
        Ok(()) => Ok(Redirect::to("/settings/agents?done=agent-updated").into_response()),
        Err(e) => {
            form_failed(e, |message| {
                page_with(&app, &signed, None, None, Some(message))
            })
            .await
        }
    }
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/settings/agents" ADMIN => agents_page,
        POST "/settings/agents" ADMIN => create_agent,
        POST "/settings/agents/{name}" ADMIN => agent_action,
    ]
}
