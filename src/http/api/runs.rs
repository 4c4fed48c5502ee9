//! Runs of a project.
//!
//! `GET|POST /api/v1/projects/{slug}/runs`, `GET /api/v1/projects/{slug}/runs/{number}`,
//! `POST /api/v1/projects/{slug}/runs/{number}/cancel`,
//! `GET /api/v1/projects/{slug}/runs/{number}/steps/{step}/log`.

use crate::app::App;
use crate::ci::run::Run;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct TriggerRequest {
    /// A branch, tag, `refs/…` name or commit; the project's default branch if absent.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// An exact commit to run (with `ref`, the branch it is on).
    #[serde(default)]
    pub commit: Option<String>,
    /// Environment overrides; they win over the pipeline file's `env`.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

pub async fn trigger(
    State(app): State<App>,
    signed: Signed,
    Path(slug): Path<String>,
    Json(req): Json<TriggerRequest>,
) -> ServerResult<(StatusCode, Json<Run>)> {
    let project = crate::projects::find(&app.store, &slug).await?;
    crate::ci::pipeline::check_env_names(&req.env).map_err(ServerError::BadRequest)?;
    if let Some(commit) = &req.commit
        && !crate::core::git::is_commit(commit)
    {
        return Err(ServerError::BadRequest(format!(
            "commit \"{commit}\" is not a full 40-digit commit id"
        )));
    }
    let spec = crate::ci::runner::TriggerSpec {
        event: "api".into(),
        git_ref: req.git_ref,
        commit: req.commit,
        env: req.env,
        message: format!("started by {}", signed.principal.user.name),
        ..Default::default()
    };
    let run = app.runner.trigger(&project, spec, &signed.audit).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// `?limit=N` on a list: 50 by default, 1 to 500.
#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub limit: Option<usize>,
}

impl ListQuery {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

pub async fn list(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<ListQuery>,
) -> ServerResult<Json<Vec<Run>>> {
    crate::projects::find(&app.store, &slug).await?;
    Ok(Json(app.store.project_runs(&slug, q.limit()).await?))
}

pub async fn show(
    State(app): State<App>,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Run>> {
    Ok(Json(crate::ci::run::find(&app.store, &slug, number).await?))
}

pub async fn cancel(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
) -> ServerResult<Json<Run>> {
    let run = crate::ci::run::find(&app.store, &slug, number).await?;
    Ok(Json(app.runner.cancel(&run, &signed.audit).await?))
}

#[derive(Deserialize)]
pub struct StreamQuery {
    /// Resume after this line (like `Last-Event-ID`).
    #[serde(default)]
    pub from: Option<u64>,
}

/// Appends one `line` event in Server-Sent Events form: id = its line number, data
/// `{"n", "stderr", "html"}`.
fn push_line_event(out: &mut Vec<u8>, number: u64, stderr: bool, text: &str) {
    let n = number.to_string();
    for part in [
        "event: line\nid: ",
        &n,
        "\ndata: {\"n\":",
        &n,
        ",\"stderr\":",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(if stderr { b"true" } else { b"false" });
    out.extend_from_slice(b",\"html\":");
    if text.contains('\x1b') {
        let html = serde_json::Value::String(crate::http::present::log_html(text));
        out.extend_from_slice(html.to_string().as_bytes());
    } else {
        push_escaped(out, text);
    }
    out.extend_from_slice(b"}\n\n");
}

/// `text` HTML-escaped (as `present::log_html` does for a line without colours), as a JSON
/// string, in one pass.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            b'\\' => b"\\\\",
            0..0x20 | 0x7f => {
                out.extend_from_slice(&text.as_bytes()[plain..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                plain = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[plain..i]);
        out.extend_from_slice(escaped);
        plain = i + 1;
    }
    out.extend_from_slice(&text.as_bytes()[plain..]);
    out.push(b'"');
}

/// Browsers drop events whose data is empty, so `end` carries a word.
const END_EVENT: &[u8] = b"event: end\ndata: end\n\n";

/// Sent when nothing else was for this long, so proxies keep the stream open.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// The stored lines of a step's log after line `after`, as `line` events, made as they
/// are sent, about a thousand lines to a chunk.
struct StoredLines {
    text: String,
    /// Where the next line starts in `text`, and its number.
    at: usize,
    number: u64,
    after: u64,
}

impl StoredLines {
    fn new(text: String, after: u64) -> Self {
        Self {
            text,
            at: 0,
            number: 1,
            after,
        }
    }

    /// The number of the last line stored, or `after` if that is later. A line counts
    /// once its newline is written (the file can end inside a line being written).
    fn last_line(&self) -> u64 {
        self.after
            .max(self.text.bytes().filter(|&b| b == b'\n').count() as u64)
    }
}

impl Iterator for StoredLines {
    type Item = axum::body::Bytes;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chunk = Vec::new();
        let mut sent = 0;
        while sent < 1024 {
            let rest = &self.text[self.at..];
            let Some(end) = rest.find('\n') else { break };
            let line = &rest[..end];
            self.at += end + 1;
            if self.number > self.after {
                let (stderr, text) = crate::ci::runner::parse_log_line(line);
                push_line_event(&mut chunk, self.number, stderr, text);
                sent += 1;
            }
            self.number += 1;
        }
        (!chunk.is_empty()).then(|| chunk.into())
    }
}

/// A step's log as Server-Sent Events: every line written so far, then new lines as
/// the step writes them (a burst of them per chunk), then `end`. Each `line` event's id
/// is its line number, so a reconnecting client resumes after the last line it got
/// (`Last-Event-ID`, or `?from=`). A client that falls behind the live channel is caught
/// up from the log file, so it gets every line.
pub async fn stream(
    State(app): State<App>,
    Path((slug, number, step)): Path<(String, u64, String)>,
    Query(q): Query<StreamQuery>,
    headers: axum::http::HeaderMap,
) -> ServerResult<impl IntoResponse> {
    use futures_util::StreamExt;

    let run = crate::ci::run::find(&app.store, &slug, number).await?;
    let index = run.step_index(&step)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or(q.from)
        .unwrap_or(0);
    // Subscribe before reading the file: every line is in the file before it is sent.
    let live = app
        .runner
        .subscribe(run.id)
        .filter(|_| run.steps[index].status.is_none());
    let path = app.runner.log_path(run.id, index);
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let written = StoredLines::new(text, after);
    let last = written.last_line();
    let tail = futures_util::stream::unfold(Some((live, last, path)), move |state| async move {
        let (live, last, path) = state?;
        let Some(mut rx) = live else {
            return Some((END_EVENT.into(), None));
        };
        let (chunk, last, done) = follow(&mut rx, index, last, &path).await;
        Some((chunk, (!done).then_some((Some(rx), last, path))))
    });
    let shutdown = app.shutdown.clone();
    let events = futures_util::stream::iter(written)
        .chain(tail)
        .map(Ok::<_, std::convert::Infallible>)
        .take_until(async move { shutdown.cancelled().await });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(events),
    ))
}

/// Waits for what the live channel says next about step `index`, past line `last`:
/// (the events to send, the last line number sent, whether the log is complete).
async fn follow(
    rx: &mut tokio::sync::broadcast::Receiver<crate::ci::runner::LiveEvent>,
    index: usize,
    last: u64,
    path: &std::path::Path,
) -> (axum::body::Bytes, u64, bool) {
    use crate::ci::runner::LiveEvent;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let Ok(received) = tokio::time::timeout(KEEP_ALIVE, rx.recv()).await else {
            return (axum::body::Bytes::from_static(b":\n\n"), last, false);
        };
        match received {
            Ok(LiveEvent::Lines { step, first, lines })
                if step == index && first + lines.len() as u64 > last + 1 =>
            {
                let mut chunk = Vec::new();
                let mut n = last;
                for (number, (stderr, text)) in (first..).zip(lines.iter()) {
                    if number > last {
                        push_line_event(&mut chunk, number, *stderr, text);
                        n = number;
                    }
                }
                return (chunk.into(), n, false);
            }
            Ok(LiveEvent::StepDone { step }) if step == index => {
                return (END_EVENT.into(), last, true);
            }
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => {
                // Every line sent is in the file already: take the missed ones from there.
                let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
                let missed = StoredLines::new(text, last);
                let n = missed.last_line();
                if n > last {
                    let chunk: Vec<u8> = missed.flat_map(Vec::from).collect();
                    return (chunk.into(), n, false);
                }
            }
            Err(RecvError::Closed) => return (END_EVENT.into(), last, true),
        }
    }
}

/// A step's output as stored: one line per output line, `<ms since step start> <o|e> <text>`.
pub async fn log(
    State(app): State<App>,
    Path((slug, number, step)): Path<(String, u64, String)>,
) -> ServerResult<impl IntoResponse> {
    let run = crate::ci::run::find(&app.store, &slug, number).await?;
    let index = run.step_index(&step)?;
    let path = app.runner.log_path(run.id, index);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(
                crate::core::error::Error::io(format!("cannot read {}", path.display()))(e).into(),
            );
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// Downloads an artifact a step of this run kept, by its SHA-256.
pub async fn artifact(
    State(app): State<App>,
    Path((slug, number, sha256)): Path<(String, u64, String)>,
) -> ServerResult<axum::response::Response> {
    let run = crate::ci::run::find(&app.store, &slug, number).await?;
    let artifact = run
        .steps
        .iter()
        .flat_map(|s| s.artifacts.iter())
        .find(|a| a.sha256 == sha256)
        .ok_or_else(|| {
            ServerError::NotFound(format!("run {slug}#{number} has no artifact {sha256}"))
        })?;
    let path = app.runner.artifact_path(&artifact.sha256);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "a recorded artifact is missing");
        ServerError::NotFound(format!("artifact {} is no longer kept", artifact.path))
    })?;
    let name = artifact
        .path
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .replace(['"', '\\'], "_");
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, artifact.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct RerunRequest {
    /// Only the steps that did not succeed; the others keep their result.
    #[serde(default)]
    pub failed_only: bool,
}

pub async fn rerun(
    State(app): State<App>,
    signed: Signed,
    Path((slug, number)): Path<(String, u64)>,
    Json(req): Json<RerunRequest>,
) -> ServerResult<(StatusCode, Json<Run>)> {
    let previous = crate::ci::run::find(&app.store, &slug, number).await?;
    let run = app
        .runner
        .rerun(&previous, req.failed_only, &signed.audit)
        .await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/projects/{slug}/runs" VIEWER => list,
        POST "/api/v1/projects/{slug}/runs" DEVELOPER => trigger,
        GET "/api/v1/projects/{slug}/runs/{number}" VIEWER => show,
        POST "/api/v1/projects/{slug}/runs/{number}/cancel" DEVELOPER => cancel,
        GET "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log" VIEWER => log,
        POST "/api/v1/projects/{slug}/runs/{number}/rerun" DEVELOPER => rerun,
        GET "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log/stream" VIEWER => stream,
        GET "/api/v1/projects/{slug}/runs/{number}/artifacts/{sha256}" VIEWER => artifact,
    ]
}

#[cfg(test)]
mod tests {
    /// The one-pass escaper writes what `log_html` then JSON would.
    #[test]
    fn a_line_event_carries_the_same_html_as_log_html() {
        for text in [
            "plain",
            "<a href=\"x\">&'</a>",
            "tab\there \\ back",
            "",
            "ünï\u{1}",
        ] {
            let mut event = Vec::new();
            super::push_line_event(&mut event, 7, true, text);
            let event = String::from_utf8(event).unwrap();
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let data: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["html"], crate::http::present::log_html(text), "{text}");
            assert_eq!(
                (data["n"].as_u64(), data["stderr"].as_bool()),
                (Some(7), Some(true))
            );
            assert!(event.starts_with("event: line\nid: 7\n") && event.ends_with("}\n\n"));
        }
    }
}
