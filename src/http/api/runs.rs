//! Runs of a project.
//!
//! `GET|POST /api/v1/projects/{slug}/runs`, `GET /api/v1/projects/{slug}/runs/{number}`,
//! `POST /api/v1/projects/{slug}/runs/{number}/cancel`,
//! `GET /api/v1/projects/{slug}/runs/{number}/steps/{step}/log`.

use crate::app::App;
use crate::ci::run::{Run, RunStatus};
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

/// `?status=failed&branch=main&limit=N` on a project's runs.
#[derive(Deserialize)]
pub struct RunListQuery {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

pub async fn list(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<RunListQuery>,
) -> ServerResult<Json<Vec<Run>>> {
    crate::projects::find(&app.store, &slug).await?;
    let filter = crate::store::RunFilter {
        status: q.status.as_deref().map(RunStatus::parse).transpose()?,
        branch: q.branch,
    };
    Ok(Json(
        app.store
            .project_runs(&slug, filter, ListQuery { limit: q.limit }.limit())
            .await?,
    ))
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

/// Appends one `lines` event in Server-Sent Events form: lines `first..=last` (from one
/// stream), as data `{"first", "stderr", "html": [one string per line]}` with ANSI colours
/// as styled spans, HTML-escaped; the id is `last`. `text` holds the lines, each ending
/// in `\n`.
fn push_lines_event(out: &mut Vec<u8>, first: u64, last: u64, stderr: bool, text: &str) {
    out.extend_from_slice(b"event: lines\nid: ");
    out.extend_from_slice(last.to_string().as_bytes());
    out.extend_from_slice(b"\ndata: {\"first\":");
    out.extend_from_slice(first.to_string().as_bytes());
    out.extend_from_slice(if stderr {
        b",\"stderr\":true,\"html\":["
    } else {
        b",\"stderr\":false,\"html\":["
    });
    let text = text.strip_suffix('\n').unwrap_or(text);
    if !text.as_bytes().contains(&0x1b) {
        // No colours anywhere (the usual case): the whole burst in one pass.
        push_escaped(out, text);
    } else {
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let html = crate::http::present::log_html(line);
            out.extend_from_slice(serde_json::Value::String(html).to_string().as_bytes());
        }
    }
    out.extend_from_slice(b"]}\n\n");
}

/// `text` HTML-escaped (as `present::log_html` does for lines without colours) as JSON
/// strings, one pass: each `\n` ends one string and starts the next.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped: &[u8] = match b {
            b'\n' => b"\",\"",
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

/// The stored lines of a step's log after line `after`, as `lines` events (one per run
/// of lines from the same stream), made as they are sent, up to 1,024 lines a chunk.
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
        // The run of lines from one stream being gathered: its first number, its stream.
        let mut run: Option<(u64, bool)> = None;
        let mut text = String::new();
        let mut sent = 0;
        while sent < 1024 {
            let rest = &self.text[self.at..];
            let Some(end) = rest.find('\n') else { break };
            self.at += end + 1;
            self.number += 1;
            if self.number - 1 <= self.after {
                continue;
            }
            let (stderr, line) = crate::ci::runner::parse_log_line(&rest[..end]);
            if let Some((first, was)) = run
                && was != stderr
            {
                push_lines_event(&mut chunk, first, self.number - 2, was, &text);
                text.clear();
                run = None;
            }
            run.get_or_insert((self.number - 1, stderr));
            text.push_str(line);
            text.push('\n');
            sent += 1;
        }
        if let Some((first, stderr)) = run {
            push_lines_event(&mut chunk, first, self.number - 1, stderr, &text);
        }
        (!chunk.is_empty()).then(|| chunk.into())
    }
}

/// A step's log as Server-Sent Events: every line written so far, then new lines as
/// the step writes them (a burst of them per `lines` event), then `end`. Each event's id
/// is the number of its last line, so a reconnecting client resumes after the last line it got
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
    let follower = live.map(|rx| Follower {
        rx,
        index,
        last,
        path,
        next: tokio::time::Instant::now(),
    });
    let tail = futures_util::stream::unfold(Some(follower), |state| async move {
        let Some(mut follower) = state? else {
            return Some((END_EVENT.into(), None));
        };
        let (chunk, done) = follower.next_chunk().await;
        Some((chunk, (!done).then_some(Some(follower))))
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

/// After a write, a live stream gathers what the step prints for this long before the
/// next one: a busy step costs a viewer a few writes a second, not one per burst, and a
/// quiet one's next line still goes out at once.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// A chunk this big goes out without waiting for the rest of `GATHER`.
const FULL_CHUNK: usize = 1 << 20;

/// Follows step `index` on a run's live channel, past line `last`.
struct Follower {
    rx: tokio::sync::broadcast::Receiver<crate::ci::runner::LiveEvent>,
    index: usize,
    last: u64,
    path: std::path::PathBuf,
    /// When the next chunk may be written.
    next: tokio::time::Instant,
}

impl Follower {
    /// The next chunk to send — every burst the channel holds by then, or a keep-alive
    /// comment — and whether the log is complete.
    async fn next_chunk(&mut self) -> (axum::body::Bytes, bool) {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        tokio::time::sleep_until(self.next).await;
        let mut chunk = Vec::new();
        let done = loop {
            let received = if chunk.is_empty() {
                match tokio::time::timeout(KEEP_ALIVE, self.rx.recv()).await {
                    Ok(received) => received,
                    Err(_) => return (axum::body::Bytes::from_static(b":\n\n"), false),
                }
            } else {
                match self.rx.try_recv() {
                    Ok(event) => Ok(event),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                }
            };
            if self.take(received, &mut chunk).await {
                break true;
            }
            if chunk.len() >= FULL_CHUNK {
                break false;
            }
        };
        self.next = tokio::time::Instant::now();
        if chunk.len() < FULL_CHUNK {
            self.next += GATHER;
        }
        (chunk.into(), done)
    }

    /// Appends what `received` says about the step to `chunk`; true once the log is complete.
    async fn take(
        &mut self,
        received: Result<crate::ci::runner::LiveEvent, tokio::sync::broadcast::error::RecvError>,
        chunk: &mut Vec<u8>,
    ) -> bool {
        use crate::ci::runner::LiveEvent;
        use tokio::sync::broadcast::error::RecvError;
        match received {
            Ok(LiveEvent::Lines {
                step,
                first,
                count,
                stderr,
                text,
            }) if step == self.index && first + count > self.last + 1 => {
                // A viewer that read the file after this burst was written has some of it.
                let seen = (self.last + 1).saturating_sub(first);
                let at = match seen {
                    0 => 0,
                    n => text
                        .match_indices('\n')
                        .nth(n as usize - 1)
                        .map_or(0, |(i, _)| i + 1),
                };
                self.last = first + count - 1;
                push_lines_event(chunk, first + seen, self.last, stderr, &text[at..]);
                false
            }
            Ok(LiveEvent::StepDone { step }) if step == self.index => {
                chunk.extend_from_slice(END_EVENT);
                true
            }
            Ok(_) => false,
            Err(RecvError::Lagged(_)) => {
                // Every line sent is in the file already: take the missed ones from there.
                let text = tokio::fs::read_to_string(&self.path)
                    .await
                    .unwrap_or_default();
                let missed = StoredLines::new(text, self.last);
                self.last = missed.last_line();
                chunk.extend(missed.flat_map(Vec::from));
                false
            }
            Err(RecvError::Closed) => {
                chunk.extend_from_slice(END_EVENT);
                true
            }
        }
    }
}

/// `?format=` of a step's log: `raw` (as stored, the default), `text` (the output alone,
/// colours removed) or `ansi` (the output alone, with its escapes).
#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    pub format: Option<String>,
}

/// A step's output: as stored (one line per output line, `<ms since step start> <o|e>
/// <text>`), or with `?format=text|ansi` the output alone, as the step printed it.
pub async fn log(
    State(app): State<App>,
    Path((slug, number, step)): Path<(String, u64, String)>,
    Query(q): Query<LogQuery>,
) -> ServerResult<impl IntoResponse> {
    let strip = match q.format.as_deref() {
        None | Some("raw") => None,
        Some("text") => Some(true),
        Some("ansi") => Some(false),
        Some(other) => {
            return Err(ServerError::BadRequest(format!(
                "unknown log format \"{other}\"; expected raw, text or ansi"
            )));
        }
    };
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
    let text = match strip {
        None => text,
        Some(strip) => {
            let mut out = String::with_capacity(text.len());
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let (_, output) = crate::ci::runner::parse_log_line(line.trim_end_matches('\n'));
                if strip {
                    out.push_str(&crate::http::present::log_text(output));
                } else {
                    out.push_str(output);
                }
                out.push('\n');
            }
            out
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

/// The project's flaky tests over its last runs (see `ci::flaky`).
pub async fn flaky(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<serde_json::Value>> {
    crate::projects::find(&app.store, &slug).await?;
    let runs = app
        .store
        .project_runs(&slug, Default::default(), crate::ci::flaky::WINDOW)
        .await?;
    Ok(Json(serde_json::json!({
        "window": runs.len(),
        "tests": crate::ci::flaky::flaky_tests(&runs),
    })))
}

/// The project's trends week by week (see `monitoring::trends`): the data of the
/// console's Trends charts.
pub async fn trends(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<crate::monitoring::trends::Trends>> {
    Ok(Json(
        crate::monitoring::trends::of_project(&app.store, &slug).await?,
    ))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/projects/{slug}/runs" VIEWER => list,
        GET "/api/v1/projects/{slug}/tests/flaky" VIEWER => flaky,
        GET "/api/v1/projects/{slug}/trends" VIEWER => trends,
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
    /// The one-pass escaper writes what `log_html` then JSON would, with colours or not.
    #[test]
    fn a_lines_event_carries_the_same_html_as_log_html() {
        let plain = [
            "plain",
            "<a href=\"x\">&'</a>",
            "tab\there \\ back",
            "",
            "ünï\u{1}",
        ];
        let coloured = ["\x1b[31mred\x1b[0m", "<b>"];
        for texts in [&plain[..], &coloured[..]] {
            let text: String = texts.iter().map(|t| format!("{t}\n")).collect();
            let mut event = Vec::new();
            let last = 6 + texts.len() as u64;
            super::push_lines_event(&mut event, 7, last, true, &text);
            let event = String::from_utf8(event).unwrap();
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let data: serde_json::Value = serde_json::from_str(data).unwrap();
            let html: Vec<_> = texts
                .iter()
                .map(|t| crate::http::present::log_html(t))
                .collect();
            assert_eq!(data["html"], serde_json::json!(html));
            assert_eq!(
                (data["first"].as_u64(), data["stderr"].as_bool()),
                (Some(7), Some(true))
            );
            let head = format!("event: lines\nid: {last}\ndata: ");
            assert!(
                event.starts_with(&head) && event.ends_with("]}\n\n"),
                "{event}"
            );
        }
    }
}
