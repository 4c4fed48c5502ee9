//! Remote agents. Administrators manage them — `GET|POST /api/v1/agents`,
//! `PUT|DELETE /api/v1/agents/{name}` — and agents themselves, with their own token
//! (`Authorization: Bearer bca_…`, checked here rather than by the route guard), take
//! and report work: `POST /api/v1/agent/poll`, `GET|PUT /api/v1/agent/jobs/{id}/workspace`,
//! `POST /api/v1/agent/jobs/{id}/lines`, `POST /api/v1/agent/jobs/{id}/done`.

use crate::agents::{self, Agent, AgentState, AgentView};
use crate::app::App;
use crate::exec::remote::{self, Done, Lines, NotHeld, Poll, PollAnswer};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long a poll waits for a job before it answers "none".
const POLL_WAIT: Duration = Duration::from_secs(20);

pub async fn list(State(app): State<App>) -> ServerResult<Json<Vec<AgentView>>> {
    Ok(Json(agents::views(&app.store, &app.runner.agents).await?))
}

#[derive(Deserialize)]
pub struct NewAgent {
    pub name: String,
}

#[derive(Serialize)]
pub struct Created {
    pub name: String,
    /// Shown this once; the server keeps only its digest.
    pub token: String,
}

pub async fn create(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewAgent>,
) -> ServerResult<(StatusCode, Json<Created>)> {
    let name = req.name.trim();
    let audit = Record::new(&signed.audit, "agent.create", format!("agent:{name}"));
    let (agent, token) = agents::create(&app.store, name, audit).await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            name: agent.name,
            token,
        }),
    ))
}

#[derive(Deserialize)]
pub struct StateChange {
    pub state: String,
}

pub async fn set_state(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
    Json(change): Json<StateChange>,
) -> ServerResult<StatusCode> {
    let state = AgentState::parse(change.state.trim()).map_err(ServerError::BadRequest)?;
    let audit = Record::new(&signed.audit, "agent.state", format!("agent:{name}"));
    agents::set_state(&app.store, &app.runner.agents, &name, state, audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
) -> ServerResult<StatusCode> {
    let audit = Record::new(&signed.audit, "agent.revoke", format!("agent:{name}"));
    agents::revoke(&app.store, &app.runner.agents, &name, audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The agent calling, by its token.
pub struct Caller(pub Agent);

impl FromRequestParts<App> for Caller {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ServerError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(agents::TOKEN_PREFIX))
            .ok_or_else(|| {
                ServerError::Unauthorized(
                    "send the agent's token: Authorization: Bearer bca_…".into(),
                )
            })?;
        match agents::authenticate(&app.store, token).await {
            Ok(agent) => Ok(Caller(agent)),
            Err(reason) => {
                tracing::warn!(%reason, "an agent was refused");
                Err(ServerError::Unauthorized(reason))
            }
        }
    }
}

impl From<NotHeld> for ServerError {
    fn from(e: NotHeld) -> Self {
        ServerError::Conflict(e.0)
    }
}

pub async fn poll(
    State(app): State<App>,
    Caller(agent): Caller,
    Json(poll): Json<Poll>,
) -> ServerResult<Json<PollAnswer>> {
    for label in &poll.labels {
        agents::check_label(label).map_err(ServerError::BadRequest)?;
    }
    if poll.capacity == 0 {
        return Err(ServerError::BadRequest(
            "capacity must be at least 1".into(),
        ));
    }
    let dispatcher = &app.runner.agents;
    dispatcher.hold_back(&agent.name, agent.state != AgentState::Active);
    let mut job = dispatcher.poll(&agent.name, &poll, POLL_WAIT).await;
    let state = match &mut job {
        Some(job) => {
            job.env.insert("BETCYCLE_AGENT".into(), agent.name.clone());
            agent.state
        }
        // An administrator may have paused or drained it while it waited.
        None => app
            .store
            .agents()
            .await?
            .into_iter()
            .find(|a| a.name == agent.name)
            .map_or(agent.state, |a| a.state),
    };
    Ok(Json(PollAnswer {
        job,
        state: state.as_str().into(),
    }))
}

/// The job's workspace as a tar archive.
pub async fn download(
    State(app): State<App>,
    Caller(agent): Caller,
    Path(id): Path<u64>,
) -> ServerResult<Response> {
    let workspace = app.runner.agents.workspace(&agent.name, id)?;
    let file = scratch_file(&app, id, "down").await?;
    let packed = file.clone();
    tokio::task::spawn_blocking(move || remote::pack_workspace(&workspace, &packed))
        .await
        .map_err(|e| ServerError::Unavailable(format!("packing the workspace failed: {e}")))?
        .map_err(|e| ServerError::Unavailable(format!("cannot pack the workspace: {e}")))?;
    let opened = tokio::fs::File::open(&file).await;
    // Open files stay readable once unlinked: nothing is left behind if the agent goes.
    let _ = tokio::fs::remove_file(&file).await;
    let opened =
        opened.map_err(|e| ServerError::Unavailable(format!("cannot read the archive: {e}")))?;
    let stream = tokio_util::io::ReaderStream::new(opened);
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The files the step changed, as a tar archive unpacked over the workspace.
pub async fn upload(
    State(app): State<App>,
    Caller(agent): Caller,
    Path(id): Path<u64>,
    body: Body,
) -> ServerResult<StatusCode> {
    app.runner.agents.workspace(&agent.name, id)?;
    let file = scratch_file(&app, id, "up").await?;
    let received = receive(body, &file).await;
    let applied = match received {
        Ok(()) => match app.runner.agents.workspace(&agent.name, id) {
            Ok(workspace) => {
                let from = file.clone();
                tokio::task::spawn_blocking(move || remote::apply_to_workspace(&from, &workspace))
                    .await
                    .map_err(|e| ServerError::Unavailable(format!("unpacking failed: {e}")))
                    .and_then(|r| {
                        r.map_err(|e| {
                            ServerError::BadRequest(format!("cannot unpack the archive: {e}"))
                        })
                    })
            }
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&file).await;
    applied.map(|()| StatusCode::NO_CONTENT)
}

async fn receive(body: Body, to: &std::path::Path) -> ServerResult<()> {
    let mut out = tokio::fs::File::create(to)
        .await
        .map_err(|e| ServerError::Unavailable(format!("cannot store the archive: {e}")))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ServerError::BadRequest(format!("the upload broke off: {e}")))?;
        out.write_all(&chunk)
            .await
            .map_err(|e| ServerError::Unavailable(format!("cannot store the archive: {e}")))?;
    }
    out.flush()
        .await
        .map_err(|e| ServerError::Unavailable(format!("cannot store the archive: {e}")))
}

/// A file under `<data-dir>/tmp/agent-jobs` for job `id`'s archive.
async fn scratch_file(app: &App, id: u64, what: &str) -> ServerResult<std::path::PathBuf> {
    let dir = app.config.data_dir.join("tmp").join("agent-jobs");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ServerError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.join(format!(
        "{id}-{what}-{}.tar",
        crate::identity::secret::random_hex(4)
    )))
}

#[derive(Serialize)]
pub struct Renewed {
    pub lease_ms: u64,
}

pub async fn lines(
    State(app): State<App>,
    Caller(agent): Caller,
    Path(id): Path<u64>,
    Json(lines): Json<Lines>,
) -> ServerResult<Json<Renewed>> {
    app.runner.agents.lines(&agent.name, id, &lines)?;
    Ok(Json(Renewed {
        lease_ms: app.runner.agents.lease().as_millis() as u64,
    }))
}

pub async fn done(
    State(app): State<App>,
    Caller(agent): Caller,
    Path(id): Path<u64>,
    Json(done): Json<Done>,
) -> ServerResult<StatusCode> {
    let workspace = app.runner.agents.workspace(&agent.name, id)?;
    let deleted = done.deleted.clone();
    let _ = tokio::task::spawn_blocking(move || remote::remove_deleted(&workspace, &deleted)).await;
    app.runner.agents.finish(&agent.name, id, done.exit)?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/agents" ADMIN => list,
        POST "/api/v1/agents" ADMIN => create,
        PUT "/api/v1/agents/{name}" ADMIN => set_state,
        DELETE "/api/v1/agents/{name}" ADMIN => revoke,
        POST "/api/v1/agent/poll" AGENT => poll,
        GET "/api/v1/agent/jobs/{id}/workspace" AGENT => download,
        PUT "/api/v1/agent/jobs/{id}/workspace" AGENT => upload,
        POST "/api/v1/agent/jobs/{id}/lines" AGENT => lines,
        POST "/api/v1/agent/jobs/{id}/done" AGENT => done,
    ]
}
