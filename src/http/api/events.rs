//! `GET /api/v1/events`: committed changes as Server-Sent Events, only of the projects
//! the caller may see (an administrator sees all; others, the projects they have a role
//! in, looked up again every few seconds so a removed role stops the flow). The event's
//! sequence number is the SSE `id:`; the JSON is the change itself. The first event is
//! `connected`; a comment every 15 s keeps proxies from closing the stream; the stream
//! ends on shutdown or after an hour (clients reconnect), and `X-Accel-Buffering: no`
//! stops nginx from buffering it.

use crate::app::App;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long the caller's list of visible projects is trusted.
const ROLES_FRESH: Duration = Duration::from_secs(5);

/// The projects a subscriber may see, refreshed when older than `ROLES_FRESH`.
struct Visible {
    app: App,
    principal: crate::identity::Principal,
    projects: std::collections::HashSet<String>,
    checked: Option<std::time::Instant>,
}

impl Visible {
    async fn may_see(&mut self, event: &crate::core::events::Event) -> bool {
        use crate::core::events::Event as E;
        let project = match event {
            E::InstanceStarted { .. } => return true,
            // Alert rules are an administrator's.
            E::AlertRulesChanged => return self.principal.user.admin,
            E::RunUpdated { project, .. }
            | E::DeploymentUpdated { project, .. }
            | E::ServiceHealth { project, .. } => project,
        };
        if self.principal.user.admin {
            return true;
        }
        if self.checked.is_none_or(|t| t.elapsed() >= ROLES_FRESH) {
            // On a failed lookup nothing is shown until the next one works.
            self.projects = crate::projects::visible(&self.app.store, &self.principal)
                .await
                .map(|views| views.into_iter().map(|v| v.project.slug).collect())
                .unwrap_or_default();
            self.checked = Some(std::time::Instant::now());
        }
        self.projects.contains(project)
    }
}

pub async fn stream(State(app): State<App>, signed: Signed) -> impl IntoResponse {
    let visible = std::sync::Arc::new(tokio::sync::Mutex::new(Visible {
        app: app.clone(),
        principal: signed.principal,
        projects: Default::default(),
        checked: None,
    }));
    let updates = BroadcastStream::new(app.events.subscribe()).filter_map(move |item| {
        let visible = visible.clone();
        async move {
            match item {
                Ok(envelope) => visible
                    .lock()
                    .await
                    .may_see(&envelope.event)
                    .await
                    .then(|| {
                        Event::default()
                            .event(envelope.event.kind())
                            .id(envelope.id.to_string())
                            .json_data(&envelope.event)
                            .unwrap_or_default()
                    }),
                Err(BroadcastStreamRecvError::Lagged(missed)) => Some(
                    Event::default()
                        .event("lagged")
                        .data(format!("{missed} events were dropped; reload to catch up")),
                ),
            }
        }
    });
    let connected = Event::default()
        .event("connected")
        .data(format!("{{\"version\":\"{}\"}}", crate::VERSION));
    let shutdown = app.shutdown.clone();
    let end = async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(MAX_LIFETIME) => {}
        }
    };
    let events = futures_util::stream::once(async { connected })
        .chain(updates)
        .map(Ok::<_, Infallible>)
        .take_until(end);
    (
        [("x-accel-buffering", "no")],
        Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)),
    )
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/events" USER => stream,
    ]
}
