//! `GET /api/v1/events`: committed changes as Server-Sent Events. The first event is
//! `connected`; a comment every 15 s keeps proxies from closing the stream; the stream
//! ends on shutdown or after an hour (clients reconnect), and `X-Accel-Buffering: no`
//! stops nginx from buffering it.

use crate::app::App;
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

pub async fn stream(State(app): State<App>) -> impl IntoResponse {
    let updates = BroadcastStream::new(app.events.subscribe()).map(|item| match item {
        Ok(envelope) => Event::default()
            .event(envelope.event.kind())
            .id(envelope.id.to_string())
            .json_data(&*envelope)
            .unwrap_or_default(),
        Err(BroadcastStreamRecvError::Lagged(missed)) => Event::default()
            .event("lagged")
            .data(format!("{missed} events were dropped; reload to catch up")),
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
