//! What a running run records: step progress in the store (in order, on one task) and
//! each step's output in its log file, then on the live channel.

use super::*;
use crate::exec::local::process::Stream;
use crate::exec::{Observer, StepResult, StepStatus};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::mpsc;

pub(super) enum Update {
    Started(usize),
    Finished(usize, Box<StepResult>),
}

/// An open step log: the file, when the step started, bytes and lines written.
pub(super) type StepLog = (std::io::BufWriter<std::fs::File>, Instant, u64, u64);

/// Writes each step's output to its log file (`<ms since step start> <o|e> <text>` per
/// line) and forwards progress to the recorder.
pub(super) struct RunObserver {
    index: HashMap<String, usize>,
    logs: Vec<Mutex<Option<StepLog>>>,
    /// Per step, the first error writing its log (a full disk): said on the step.
    log_errors: Vec<Mutex<Option<String>>>,
    paths: Vec<PathBuf>,
    max_log: u64,
    updates: mpsc::UnboundedSender<Update>,
    live: tokio::sync::broadcast::Sender<LiveEvent>,
    /// The run's span (current when the observer is made) and each running step's, open
    /// from its start to its end: the OTLP export's step spans.
    run_span: tracing::Span,
    spans: Vec<Mutex<Option<tracing::Span>>>,
}

impl RunObserver {
    pub(super) fn new(
        runner: &Runner,
        id: u64,
        names: &[String],
        updates: mpsc::UnboundedSender<Update>,
        live: tokio::sync::broadcast::Sender<LiveEvent>,
    ) -> Self {
        Self {
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            logs: names.iter().map(|_| Mutex::new(None)).collect(),
            log_errors: names.iter().map(|_| Mutex::new(None)).collect(),
            paths: (0..names.len()).map(|i| runner.log_path(id, i)).collect(),
            max_log: runner.max_step_log,
            updates,
            live,
            run_span: tracing::Span::current(),
            spans: names.iter().map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl RunObserver {
    /// Sends `count` lines of step `i` (from line `first`, one stream) to live viewers.
    fn send_lines(&self, i: usize, first: u64, stderr: bool, count: u64, text: String) {
        let _ = self.live.send(LiveEvent::Lines {
            step: i,
            first,
            count,
            stderr,
            text: text.into(),
        });
    }

    /// Notes the first error writing step `i`'s log, and logs it once.
    fn log_failed(&self, i: usize, problem: String) {
        let mut first = self.log_errors[i].lock().expect("log lock");
        if first.is_none() {
            tracing::error!(problem, "a step log cannot be written; the step goes on");
            *first = Some(problem);
        }
    }
}

impl Observer for RunObserver {
    fn step_started(&self, step: &str) {
        let Some(&i) = self.index.get(step) else {
            return;
        };
        match std::fs::File::create(&self.paths[i]) {
            Ok(file) => {
                *self.logs[i].lock().expect("log lock") =
                    Some((std::io::BufWriter::new(file), Instant::now(), 0, 0))
            }
            Err(e) => self.log_failed(i, format!("cannot create {}: {e}", self.paths[i].display())),
        }
        *self.spans[i].lock().expect("span lock") = Some(tracing::info_span!(
            parent: &self.run_span,
            "step",
            otel.name = %format!("step {step}"),
            step = %step,
            status = tracing::field::Empty,
            exit_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        ));
        let _ = self.updates.send(Update::Started(i));
    }

    fn lines(&self, step: &str, stream: Stream, texts: &[&str]) {
        let Some(&i) = self.index.get(step) else {
            return;
        };
        let mut guard = self.logs[i].lock().expect("log lock");
        let Some((file, started, written, lines)) = guard.as_mut() else {
            return;
        };
        let first = *lines + 1;
        // `<ms since step start> <o|e> `: one time for the whole burst.
        let ms = started.elapsed().as_millis();
        let prefix = format!("{ms} {} ", if stream == Stream::Stderr { 'e' } else { 'o' });
        let mut result = Ok(());
        let mut write = |prefix: &str, text: &str| {
            if result.is_ok() {
                result = [prefix.as_bytes(), text.as_bytes(), b"\n"]
                    .into_iter()
                    .try_for_each(|part| file.write_all(part));
            }
        };
        // The burst's first `kept` lines are stored; past the size limit, a notice instead.
        let mut kept = 0;
        let mut notice = None;
        for text in texts {
            if *written >= self.max_log {
                break;
            }
            *written += text.len() as u64 + 1;
            if *written >= self.max_log {
                let text = format!(
                    "betcycle: output truncated: this step wrote more than {} bytes",
                    self.max_log
                );
                write(&format!("{ms} e "), &text);
                notice = Some(text);
                break;
            }
            write(&prefix, text);
            kept += 1;
        }
        *lines += kept as u64 + u64::from(notice.is_some());
        // Flushed once per burst so the file never lags the live channel (see below).
        if let Err(e) = result.and_then(|()| file.flush()) {
            self.log_failed(i, format!("cannot write {}: {e}", self.paths[i].display()));
        }
        // The lines are in the file first, so a viewer that subscribes and then reads
        // the file misses nothing (one subscribed after this count reads them there).
        if self.live.receiver_count() > 0 {
            let stored = &texts[..kept];
            if !stored.is_empty() {
                let mut text = String::with_capacity(stored.iter().map(|t| t.len() + 1).sum());
                for line in stored {
                    text.push_str(line);
                    text.push('\n');
                }
                self.send_lines(i, first, stream == Stream::Stderr, kept as u64, text);
            }
            if let Some(notice) = notice {
                self.send_lines(i, first + kept as u64, true, 1, notice + "\n");
            }
        }
    }

    fn step_finished(&self, result: &StepResult) {
        let Some(&i) = self.index.get(&result.name) else {
            return;
        };
        let mut lines = 0;
        if let Some((mut file, _, _, written)) = self.logs[i].lock().expect("log lock").take() {
            lines = written;
            if let Err(e) = file.flush() {
                self.log_failed(i, format!("cannot write {}: {e}", self.paths[i].display()));
            }
        }
        let mut result = result.clone();
        if let Some(problem) = self.log_errors[i].lock().expect("log lock").clone() {
            let notice = format!("betcycle: the step log is incomplete: {problem}");
            self.send_lines(i, lines + 1, true, 1, format!("{notice}\n"));
            result
                .warnings
                .push(format!("the step log is incomplete: {problem}"));
        }
        if let Some(span) = self.spans[i].lock().expect("span lock").take() {
            span.record("status", result.status.label());
            if let Some(code) = result.exit_code {
                span.record("exit_code", code);
            }
            if matches!(result.status, StepStatus::Failed | StepStatus::TimedOut) {
                span.record("otel.status_code", "ERROR");
            }
        }
        let _ = self.live.send(LiveEvent::StepDone { step: i });
        let _ = self.updates.send(Update::Finished(i, Box::new(result)));
    }
}

/// Copies a step's artifacts from the workspace into the content-addressed store (a file
/// already there, by digest, is not copied again). Returns warnings for those it could not.
fn keep_artifacts(data_dir: &Path, workspace: &Path, result: &StepResult) -> Vec<String> {
    let mut warnings = Vec::new();
    for artifact in &result.artifacts {
        let target = artifact_path_in(data_dir, &artifact.sha256);
        if target.exists() {
            continue;
        }
        let copy = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let partial = target.with_extension("partial");
                std::fs::copy(workspace.join(&artifact.path), &partial)?;
                std::fs::rename(&partial, &target)
            });
        if let Err(e) = copy {
            warnings.push(format!("artifact {}: cannot keep it: {e}", artifact.path));
        }
    }
    warnings
}

/// Applies step progress to run `id`'s record in the order the observer sent it; a finished
/// step's artifacts are kept first.
pub(super) async fn record_progress(
    store: crate::store::Store,
    (id, rerun_of): (u64, Option<u64>),
    data_dir: PathBuf,
    workspace: PathBuf,
    reused: std::collections::HashSet<String>,
    mut receive: mpsc::UnboundedReceiver<Update>,
) {
    while let Some(update) = receive.recv().await {
        let result = match update {
            Update::Started(i) => {
                store
                    .update_run(id, move |r| {
                        r.steps[i].running = true;
                        r.steps[i].started_at = Some(jiff::Timestamp::now());
                    })
                    .await
            }
            Update::Finished(i, mut result) => {
                let (data_dir, workspace, copy) =
                    (data_dir.clone(), workspace.clone(), result.clone());
                let warnings = tokio::task::spawn_blocking(move || {
                    keep_artifacts(&data_dir, &workspace, &copy)
                })
                .await
                .unwrap_or_default();
                result.warnings.extend(warnings);
                let reused_from = reused.contains(&result.name).then_some(rerun_of).flatten();
                store
                    .update_run(id, move |r| {
                        r.steps[i].finish(&result);
                        r.steps[i].reused_from = reused_from;
                    })
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(run = id, error = %e, "cannot record step progress");
        }
    }
}
