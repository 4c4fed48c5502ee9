//! The local executor: runs a [`Pipeline`]'s steps as processes in a workspace,
//! independent steps in parallel, and collects what they produced (status, timing, test
//! results, coverage, artifacts). `betcycle run` uses it directly; the server uses the
//! same code for its runs.

pub mod local;

use crate::ci::pipeline::{Pipeline, Step, Trigger};
use crate::ci::reports::coverage::{self, Coverage};
use crate::ci::reports::junit::{self, TestSummary};
use crate::secrets::mask::Masker;
use globset::{Glob, GlobSetBuilder};
use jiff::Timestamp;
use local::process::{Exit, Stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    /// Failed, but `allow_failure` is set.
    FailedAllowed,
    TimedOut,
    Cancelled,
    /// Not run: a `when` filter did not match, or a dependency failed.
    Skipped,
}

impl StepStatus {
    /// How people read it: `succeeded`, `failed (allowed)`, `timed out`, …
    pub fn label(&self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::FailedAllowed => "failed (allowed)",
            StepStatus::TimedOut => "timed out",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Skipped => "skipped",
        }
    }

    /// Whether steps that depend on this one may run.
    pub fn lets_dependents_run(&self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::FailedAllowed | StepStatus::Skipped
        )
    }

    /// Whether this outcome fails the run.
    pub fn fails_run(&self) -> bool {
        matches!(
            self,
            StepStatus::Failed | StepStatus::TimedOut | StepStatus::Cancelled
        )
    }
}

/// A file a step kept, identified by its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the workspace.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    pub status: StepStatus,
    /// Why it was skipped, timed out or failed to start.
    pub reason: String,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub tests: Option<TestSummary>,
    pub coverage: Option<Coverage>,
    pub artifacts: Vec<Artifact>,
    /// Problems with reports or artifacts; they never fail the step.
    pub warnings: Vec<String>,
}

/// Receives what happens during a run, as it happens.
pub trait Observer: Send + Sync {
    fn step_started(&self, step: &str);
    fn line(&self, step: &str, stream: Stream, text: &str);
    fn step_finished(&self, result: &StepResult);
}

/// What a step was given from its `secrets:` list.
#[derive(Default)]
pub struct Revealed {
    /// `(environment variable, value)` pairs.
    pub env: Vec<(String, String)>,
    /// Said in the step's log (e.g. why secrets were withheld).
    pub notice: Option<String>,
}

/// Where steps' `secrets:` come from: the server's secret store, or, for `betcycle run`,
/// the caller's own environment. An error fails the step before it starts.
pub trait SecretSource: Send + Sync {
    fn reveal<'a>(
        &'a self,
        step: &'a Step,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Revealed, String>> + Send + 'a>>;
}

/// `betcycle run`'s secrets: the variables of the same name in its own environment.
pub struct EnvSecrets(pub BTreeMap<String, String>);

impl SecretSource for EnvSecrets {
    fn reveal<'a>(
        &'a self,
        step: &'a Step,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Revealed, String>> + Send + 'a>> {
        Box::pin(async move {
            let mut revealed = Revealed::default();
            let mut missing = Vec::new();
            for (name, env) in &step.secrets {
                match self.0.get(name) {
                    Some(value) => revealed.env.push((env.clone(), value.clone())),
                    None => missing.push(name.as_str()),
                }
            }
            if missing.is_empty() {
                Ok(revealed)
            } else {
                Err(format!(
                    "secret {} not set: `betcycle run` takes secrets from its own environment",
                    missing.join(", ")
                ))
            }
        })
    }
}

/// What to run and where.
pub struct RunSpec {
    pub pipeline: Pipeline,
    pub workspace: PathBuf,
    pub trigger: Trigger,
    /// `BETCYCLE_*` context variables every step gets.
    pub context: BTreeMap<String, String>,
    /// Variables passed through from the calling environment (see `PASSTHROUGH_ENV`).
    pub passthrough: BTreeMap<String, String>,
    /// How many steps may run at once.
    pub parallelism: usize,
    /// Run only the steps with these names (a matrix step's written name selects all its
    /// expansions); dependencies outside the selection are not run.
    pub only: Option<String>,
    /// Results to use instead of running these steps (re-running failed steps only).
    pub reuse: BTreeMap<String, StepResult>,
    /// Where the steps' `secrets:` come from.
    pub secrets: Arc<dyn SecretSource>,
    /// Where the run's processes run (and how they are confined).
    pub executor: Arc<dyn Executor>,
}

/// One process for an [`Executor`]: a step attempt, a service or a readiness probe.
pub struct Process {
    pub script: String,
    /// The run's workspace (what the process may use) and the directory it starts in.
    pub workspace: PathBuf,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<std::time::Duration>,
    pub cancel: CancellationToken,
    /// Called for every line of output as it arrives.
    pub on_line: OnLine,
}

pub type OnLine = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// A started process: resolves to how it ended.
pub type Spawned = std::pin::Pin<Box<dyn Future<Output = Exit> + Send + 'static>>;

/// Where a run's processes run. [`local::Local`] runs them on this host; containers,
/// remote agents and Kubernetes implement the same three calls. The scheduler above it
/// (order, parallelism, retries, services, reports, artifacts, masking) is the same for
/// every executor.
pub trait Executor: Send + Sync {
    /// Variables this executor sets for every process (e.g. `TMPDIR`).
    fn env(&self) -> BTreeMap<String, String>;
    /// Starts `process`; an error says why it cannot be started at all.
    fn spawn(&self, process: Process) -> Result<Spawned, String>;
    /// After the run: removes what the executor made for it.
    fn clean_up(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl RunSpec {
    /// The environment every process of this run starts from: passthrough, the
    /// pipeline's `env`, then `extra` (a step's or service's), then BetCycle's context.
    fn env(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = self.passthrough.clone();
        env.extend(self.pipeline.env.clone());
        env.extend(extra.clone());
        env.extend(self.context.clone());
        env.extend(self.executor.env());
        env
    }
}

/// Passes output on with every revealed secret masked.
struct Masking {
    inner: Arc<dyn Observer>,
    masker: Masker,
    wrapped: crate::secrets::mask::Wrapped,
}

impl Masking {
    /// Passes on what is still held back (wrapped base64 lines) for `step`, or for all.
    fn flush(&self, step: Option<&str>) {
        for (step, stderr, text) in self.wrapped.flush(&self.masker, step) {
            let stream = if stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            self.inner.line(&step, stream, &text);
        }
    }
}

impl Observer for Masking {
    fn step_started(&self, step: &str) {
        self.inner.step_started(step);
    }
    fn line(&self, step: &str, stream: Stream, text: &str) {
        let stderr = stream == Stream::Stderr;
        self.wrapped.line(&self.masker, step, stderr, text, |line| {
            self.inner.line(step, stream, line)
        });
    }
    fn step_finished(&self, result: &StepResult) {
        self.flush(Some(&result.name));
        self.inner.step_finished(result);
    }
}

/// How long services may take to become ready.
const SERVICE_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts the pipeline's services, runs every step, stops the services; returns the
/// step results in pipeline order. If a service does not become ready, no step runs and
/// each fails with the reason.
pub async fn run(
    spec: RunSpec,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Vec<StepResult> {
    let executor = spec.executor.clone();
    let results = run_confined(spec, observer, cancel).await;
    executor.clean_up().await;
    results
}

async fn run_confined(
    spec: RunSpec,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Vec<StepResult> {
    let spec = Arc::new(spec);
    // Every line of the run goes through the masker, services' output included.
    let masking = Arc::new(Masking {
        inner: observer,
        masker: Masker::default(),
        wrapped: Default::default(),
    });
    let observer: Arc<dyn Observer> = masking.clone();
    let stop_services = cancel.child_token();
    let services = match start_services(&spec, &observer, &stop_services).await {
        Ok(services) => services,
        Err(reason) => {
            stop_services.cancel();
            return spec
                .pipeline
                .steps
                .iter()
                .filter(|s| {
                    spec.only.as_ref().is_none_or(|only| {
                        s.name == *only || s.name.starts_with(&format!("{only} ("))
                    })
                })
                .map(|s| {
                    let mut result = skipped(&s.name, reason.clone());
                    result.status = StepStatus::Failed;
                    observer.step_finished(&result);
                    result
                })
                .collect();
        }
    };
    let results = run_steps(spec, masking.clone(), cancel).await;
    stop_services.cancel();
    for service in services {
        let _ = service.await;
    }
    // Services' held lines (steps flush their own when they finish).
    masking.flush(None);
    results
}

/// Starts every service and waits for its `ready` command to succeed.
async fn start_services(
    spec: &RunSpec,
    observer: &Arc<dyn Observer>,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<Exit>>, String> {
    let mut tasks = Vec::new();
    for service in &spec.pipeline.services {
        let env = spec.env(&service.env);
        let label = format!("service {}", service.name);
        let on_line: OnLine = {
            let (observer, label) = (observer.clone(), label.clone());
            Arc::new(move |stream, text: &str| observer.line(&label, stream, text))
        };
        let task = tokio::spawn(spec.executor.spawn(Process {
            script: service.run.clone(),
            workspace: spec.workspace.clone(),
            dir: spec.workspace.clone(),
            env: env.clone(),
            timeout: None,
            cancel: stop.clone(),
            on_line,
        })?);
        if let Some(ready) = &service.ready {
            let deadline = tokio::time::Instant::now() + SERVICE_READY_TIMEOUT;
            loop {
                if task.is_finished() {
                    return Err(format!(
                        "service \"{}\" exited before it was ready",
                        service.name
                    ));
                }
                let probe = spec
                    .executor
                    .spawn(Process {
                        script: ready.clone(),
                        workspace: spec.workspace.clone(),
                        dir: spec.workspace.clone(),
                        env: env.clone(),
                        timeout: Some(std::time::Duration::from_secs(5)),
                        cancel: stop.clone(),
                        on_line: Arc::new(|_, _| {}),
                    })?
                    .await;
                if probe == Exit::Code(0) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
                    return Err(format!(
                        "service \"{}\" did not become ready within {} s (`{ready}` kept failing)",
                        service.name,
                        SERVICE_READY_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// Runs every step, independent ones in parallel.
async fn run_steps(
    spec: Arc<RunSpec>,
    masking: Arc<Masking>,
    cancel: CancellationToken,
) -> Vec<StepResult> {
    let observer: Arc<dyn Observer> = masking.clone();
    let n = spec.pipeline.steps.len();
    let selected: Vec<bool> = spec
        .pipeline
        .steps
        .iter()
        .map(|s| match &spec.only {
            None => true,
            Some(only) => s.name == *only || s.name.starts_with(&format!("{only} (")),
        })
        .collect();
    let mut results: Vec<Option<StepResult>> = vec![None; n];
    let mut running = JoinSet::new();
    let mut started = vec![false; n];

    loop {
        // Start every step whose dependencies are done, up to the parallelism.
        for i in 0..n {
            if started[i] || running.len() >= spec.parallelism.max(1) {
                continue;
            }
            let step = &spec.pipeline.steps[i];
            let needs: Vec<usize> = step
                .needs
                .iter()
                .copied()
                .filter(|d| selected[*d])
                .collect();
            if needs.iter().any(|d| results[*d].is_none()) {
                continue;
            }
            started[i] = true;
            let skip = why_skip(&spec, i, &needs, &results, &selected, &cancel);
            if skip.is_none()
                && let Some(previous) = spec.reuse.get(&step.name)
            {
                observer.step_finished(previous);
                results[i] = Some(previous.clone());
                continue;
            }
            if let Some(reason) = skip {
                let result = skipped(&step.name, reason);
                if selected[i] {
                    observer.step_finished(&result);
                }
                results[i] = Some(result);
                continue;
            }
            let (spec, observer, masking, cancel) = (
                spec.clone(),
                observer.clone(),
                masking.clone(),
                cancel.clone(),
            );
            running.spawn(async move {
                (
                    i,
                    run_step(&spec, i, observer, &masking.masker, &cancel).await,
                )
            });
        }
        match running.join_next().await {
            Some(Ok((i, result))) => {
                observer.step_finished(&result);
                results[i] = Some(result);
            }
            Some(Err(e)) => panic!("a step task failed: {e}"),
            None => break,
        }
    }
    results
        .into_iter()
        .zip(selected)
        .filter(|(_, selected)| *selected)
        .map(|(r, _)| r.expect("every step finished"))
        .collect()
}

fn skipped(name: &str, reason: String) -> StepResult {
    StepResult {
        name: name.to_string(),
        status: StepStatus::Skipped,
        reason,
        exit_code: None,
        attempts: 0,
        started_at: None,
        finished_at: None,
        tests: None,
        coverage: None,
        artifacts: Vec::new(),
        warnings: Vec::new(),
    }
}

async fn run_step(
    spec: &RunSpec,
    index: usize,
    observer: Arc<dyn Observer>,
    masker: &Masker,
    cancel: &CancellationToken,
) -> StepResult {
    let step = &spec.pipeline.steps[index];
    let dir = match &step.workdir {
        Some(w) => spec.workspace.join(w),
        None => spec.workspace.clone(),
    };
    let mut env = spec.env(&step.env);
    env.insert("BETCYCLE_STEP".into(), step.name.clone());
    env.insert("CI".into(), "true".into());

    observer.step_started(&step.name);
    let started_at = Timestamp::now();
    if let Err(reason) = reveal_into(spec, step, &observer, masker, &mut env).await {
        return StepResult {
            status: StepStatus::Failed,
            started_at: Some(started_at),
            finished_at: Some(Timestamp::now()),
            ..skipped(&step.name, reason)
        };
    }
    let mut attempts = 0;
    let (status, exit_code, reason) = loop {
        attempts += 1;
        let on_line: OnLine = {
            let (observer, name) = (observer.clone(), step.name.clone());
            Arc::new(move |stream, text: &str| observer.line(&name, stream, text))
        };
        let process = Process {
            script: step.run.clone(),
            workspace: spec.workspace.clone(),
            dir: dir.clone(),
            env: env.clone(),
            timeout: step.timeout,
            cancel: cancel.clone(),
            on_line,
        };
        let exit = match spec.executor.spawn(process) {
            Ok(spawned) => spawned.await,
            Err(e) => Exit::SpawnFailed(e),
        };
        let outcome = outcome_of(step, exit);
        let retryable = matches!(
            outcome.0,
            StepStatus::Failed | StepStatus::FailedAllowed | StepStatus::TimedOut
        );
        if !retryable || attempts > step.retry || cancel.is_cancelled() {
            break outcome;
        }
        observer.line(
            &step.name,
            Stream::Stderr,
            &format!(
                "betcycle: {}; retrying (attempt {})",
                outcome.2,
                attempts + 1
            ),
        );
    };

    let mut warnings = Vec::new();
    let (tests, coverage) = reports_of(&spec.workspace, step, &mut warnings);
    let artifacts = collect_artifacts(&spec.workspace, &step.artifacts, &mut warnings);
    StepResult {
        name: step.name.clone(),
        status,
        reason,
        exit_code,
        attempts,
        started_at: Some(started_at),
        finished_at: Some(Timestamp::now()),
        tests,
        coverage,
        artifacts,
        warnings,
    }
}

/// Reveals the step's `secrets:` into `env`, each value added to the run's masker before
/// the step can print anything.
async fn reveal_into(
    spec: &RunSpec,
    step: &Step,
    observer: &Arc<dyn Observer>,
    masker: &Masker,
    env: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    if step.secrets.is_empty() {
        return Ok(());
    }
    match spec.secrets.reveal(step).await {
        Ok(revealed) => {
            for (name, value) in revealed.env {
                masker.add(&value);
                env.insert(name, value);
            }
            if let Some(notice) = revealed.notice {
                observer.line(&step.name, Stream::Stderr, &format!("betcycle: {notice}"));
            }
            Ok(())
        }
        Err(reason) => {
            observer.line(&step.name, Stream::Stderr, &format!("betcycle: {reason}"));
            Err(reason)
        }
    }
}

/// A step attempt's status, exit code and reason from how its process ended.
fn outcome_of(step: &Step, exit: Exit) -> (StepStatus, Option<i32>, String) {
    match exit {
        Exit::Code(0) => (StepStatus::Succeeded, Some(0), String::new()),
        Exit::Code(code) if step.allow_failure => (
            StepStatus::FailedAllowed,
            Some(code),
            format!("exit code {code} (allowed to fail)"),
        ),
        Exit::Code(code) => (StepStatus::Failed, Some(code), format!("exit code {code}")),
        Exit::TimedOut => {
            let limit = step.timeout.unwrap_or_default().as_secs();
            (
                StepStatus::TimedOut,
                None,
                format!("timed out after {limit} s"),
            )
        }
        Exit::Cancelled => (StepStatus::Cancelled, None, "cancelled".into()),
        Exit::SpawnFailed(e) => (StepStatus::Failed, None, e),
    }
}

/// The step's JUnit and coverage reports, summed over the files its patterns match.
fn reports_of(
    workspace: &Path,
    step: &Step,
    warnings: &mut Vec<String>,
) -> (Option<TestSummary>, Option<Coverage>) {
    let tests = read_reports(
        workspace,
        &step.reports.junit.to_vec(),
        "JUnit",
        junit::parse,
        warnings,
    )
    .into_iter()
    .reduce(|mut sum, t| {
        sum.add(t);
        sum
    });
    let coverage = Coverage::sum(read_reports(
        workspace,
        &step.reports.coverage.to_vec(),
        "coverage",
        |text, _| coverage::parse(text),
        warnings,
    ));
    (tests, coverage)
}

/// Why step `i` does not run (not selected, a dependency that did not succeed, the run
/// cancelled, its `when` filter), or `None`.
fn why_skip(
    spec: &RunSpec,
    i: usize,
    needs: &[usize],
    results: &[Option<StepResult>],
    selected: &[bool],
    cancel: &CancellationToken,
) -> Option<String> {
    if !selected[i] {
        return Some("not selected".to_string());
    }
    if let Some(d) = needs.iter().find(|d| {
        !results[**d]
            .as_ref()
            .expect("done")
            .status
            .lets_dependents_run()
    }) {
        return Some(format!(
            "dependency \"{}\" did not succeed",
            spec.pipeline.steps[*d].name
        ));
    }
    if cancel.is_cancelled() {
        return Some("the run was cancelled".to_string());
    }
    spec.pipeline.steps[i].when.check(&spec.trigger).err()
}

/// Reads and parses every report file matching `patterns`; a missing or bad file
/// becomes a warning.
fn read_reports<T>(
    workspace: &Path,
    patterns: &[String],
    kind: &str,
    parse: fn(&str, &mut Vec<String>) -> Result<T, String>,
    warnings: &mut Vec<String>,
) -> Vec<T> {
    let (mut reports, before) = (Vec::new(), warnings.len());
    for path in matching_files(workspace, patterns) {
        let text = match std::fs::read_to_string(workspace.join(&path)) {
            Ok(text) => text,
            Err(e) => {
                warnings.push(format!("{kind} report {path}: cannot read it: {e}"));
                continue;
            }
        };
        let mut found = Vec::new();
        match parse(&text, &mut found) {
            Ok(report) => reports.push(report),
            Err(e) => warnings.push(format!("{kind} report {path}: {e}")),
        }
        warnings.extend(
            found
                .into_iter()
                .map(|w| format!("{kind} report {path}: {w}")),
        );
    }
    if reports.is_empty() && !patterns.is_empty() && warnings.len() == before {
        warnings.push(format!(
            "{kind} report {}: no such file",
            patterns.join(", ")
        ));
    }
    reports
}

/// Workspace-relative paths of the files matching any of `patterns`, sorted (`.git`
/// is never searched).
fn matching_files(workspace: &Path, patterns: &[String]) -> Vec<String> {
    if patterns.is_empty() {
        return Vec::new();
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(Glob::new(p).expect("validated when the pipeline was parsed"));
    }
    let set = builder.build().expect("validated patterns");
    let mut found: Vec<String> = walkdir::WalkDir::new(workspace)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            if !entry.file_type().is_file() {
                return None;
            }
            let relative = entry.path().strip_prefix(workspace).ok()?;
            let relative = relative.to_string_lossy().to_string();
            set.is_match(&relative).then_some(relative)
        })
        .collect();
    found.sort();
    found
}

/// Files in the workspace matching any of `patterns`, with size and SHA-256.
fn collect_artifacts(
    workspace: &Path,
    patterns: &[String],
    warnings: &mut Vec<String>,
) -> Vec<Artifact> {
    if patterns.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for relative in matching_files(workspace, patterns) {
        match digest_file(&workspace.join(&relative)) {
            Ok((size, sha256)) => found.push(Artifact {
                path: relative,
                size,
                sha256,
            }),
            Err(e) => warnings.push(format!("artifact {relative}: cannot read it: {e}")),
        }
    }
    if found.is_empty() {
        warnings.push(format!(
            "no files match the artifact patterns {}",
            patterns.join(", ")
        ));
    }
    found
}

/// A file's size and SHA-256 (hex), read in 64 KiB pieces.
pub(crate) fn digest_file(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, crate::identity::secret::hex(&hasher.finalize())))
}
