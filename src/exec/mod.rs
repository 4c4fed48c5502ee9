//! Runs a [`Pipeline`]'s steps in a workspace — as processes on the host (`local/`) or,
//! for those with an `image`, in containers (`container.rs`) — independent steps in
//! parallel, and collects what they produced (status, timing, test results, coverage,
//! artifacts). `betcycle run` uses it directly; the server uses the same code for its
//! runs.

pub mod cache;
pub mod container;
pub mod local;
pub mod remote;
mod reports;
mod services;
mod step;

use reports::*;
use services::*;
use step::*;

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
    /// A burst of output lines from one stream of `step` (what one read from the pipe
    /// held): an observer writes and forwards them together.
    fn lines(&self, step: &str, stream: Stream, lines: &[&str]);
    fn step_finished(&self, result: &StepResult);

    /// One line BetCycle says in the step's log (a retry, a notice).
    fn line(&self, step: &str, stream: Stream, text: &str) {
        self.lines(step, stream, &[text]);
    }
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
    /// Where its steps and services with an `image` run; without an engine they fail
    /// and say so.
    pub containers: Option<Arc<container::RunContainers>>,
    /// Where steps' `cache:` is kept (none: caches are neither restored nor saved).
    pub cache: Option<cache::CacheSpace>,
    /// The queue of the server's agents, for steps with `runs_on` (none: such steps run
    /// here, and say so).
    pub agents: Option<Arc<remote::Dispatcher>>,
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
    /// Called with the output as it arrives, a burst of lines at a time.
    pub on_lines: OnLines,
    /// Run in a container instead (see [`RunSpec::spawn`]).
    pub container: Option<container::ContainerSpec>,
}

pub type OnLines = Arc<dyn Fn(Stream, &[&str]) + Send + Sync>;

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
    /// A container gets neither the host's variables nor the executor's: its image
    /// says what `PATH` and `HOME` are.
    fn env(
        &self,
        extra: &BTreeMap<String, String>,
        in_container: bool,
    ) -> BTreeMap<String, String> {
        let mut env = if in_container {
            BTreeMap::new()
        } else {
            self.passthrough.clone()
        };
        env.extend(self.pipeline.env.clone());
        env.extend(extra.clone());
        env.extend(self.context.clone());
        if !in_container {
            env.extend(self.executor.env());
        }
        env
    }

    /// Starts `process`: in a container when it names one, else through the executor.
    fn spawn(&self, mut process: Process) -> Result<Spawned, String> {
        match process.container.take() {
            None => self.executor.spawn(process),
            Some(spec) => match &self.containers {
                Some(containers) => Ok(containers.spawn(process, spec)),
                None => Err(format!(
                    "image \"{}\": this executor runs no containers",
                    spec.image
                )),
            },
        }
    }
}

/// The step's container — or none, with a warning in its log, when the engine cannot
/// be reached and the administrator lets such steps fall back to the host.
async fn container_or_fallback<'a>(
    spec: &RunSpec,
    step: &'a Step,
    observer: &Arc<dyn Observer>,
) -> Option<&'a crate::ci::pipeline::Container> {
    let container = step.container.as_ref()?;
    let Some(containers) = spec.containers.as_ref().filter(|c| c.fallback_local) else {
        return Some(container);
    };
    match containers.reachable().await {
        Ok(()) => Some(container),
        Err(e) => {
            let line = format!(
                "betcycle: warning: {e}; container.fallback is local, so the step runs on \
                 this host, without image {}",
                container.image
            );
            observer.line(&step.name, Stream::Stderr, &line);
            None
        }
    }
}

/// What a step's or service's `container` asks of the engine.
fn container_spec(
    container: Option<&crate::ci::pipeline::Container>,
    service: Option<&str>,
) -> Option<container::ContainerSpec> {
    container.map(|c| container::ContainerSpec {
        image: c.image.clone(),
        memory: c.memory,
        cpus: c.cpus,
        privileged: c.privileged,
        volumes: c.volumes.clone(),
        service: service.map(str::to_string),
        exec_in: None,
    })
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
    fn lines(&self, step: &str, stream: Stream, lines: &[&str]) {
        if !self.masker.active() {
            return self.inner.lines(step, stream, lines);
        }
        let stderr = stream == Stream::Stderr;
        let mut masked = Vec::with_capacity(lines.len());
        for text in lines {
            self.wrapped.line(&self.masker, step, stderr, text, |line| {
                masked.push(line.to_string())
            });
        }
        let masked: Vec<&str> = masked.iter().map(String::as_str).collect();
        if !masked.is_empty() {
            self.inner.lines(step, stream, &masked);
        }
    }
    fn step_finished(&self, result: &StepResult) {
        self.flush(Some(&result.name));
        self.inner.step_finished(result);
    }
}

/// Starts the pipeline's services, runs every step, stops the services; returns the
/// step results in pipeline order. If a service does not become ready, no step runs and
/// each fails with the reason.
pub async fn run(
    spec: RunSpec,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Vec<StepResult> {
    let executor = spec.executor.clone();
    let containers = spec.containers.clone();
    let results = run_confined(spec, observer, cancel).await;
    if let Some(containers) = containers {
        containers.clean_up().await;
    }
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
    observer.step_started(&step.name);
    let started_at = Timestamp::now();
    let remote = spec.agents.as_ref().filter(|_| !step.runs_on.is_empty());
    let container = container_or_fallback(spec, step, &observer).await;
    // A step on an agent gets the agent's own PATH, HOME and TMPDIR, not the server's.
    let mut env = spec.env(&step.env, container.is_some() || remote.is_some());
    env.insert("BETCYCLE_STEP".into(), step.name.clone());
    env.insert("CI".into(), "true".into());
    if let Err(reason) = reveal_into(spec, step, &observer, masker, &mut env).await {
        return StepResult {
            status: StepStatus::Failed,
            started_at: Some(started_at),
            finished_at: Some(Timestamp::now()),
            ..skipped(&step.name, reason)
        };
    }
    if remote.is_none() && !step.runs_on.is_empty() {
        let line = format!(
            "betcycle: runs_on [{}]: no agents here, so the step runs on this host",
            step.runs_on.join(", ")
        );
        observer.line(&step.name, Stream::Stderr, &line);
    }
    let cache = restore_cache(spec, step, &observer).await;
    let mut attempts = 0;
    let (status, exit_code, reason) = loop {
        attempts += 1;
        let on_lines: OnLines = {
            let (observer, name) = (observer.clone(), step.name.clone());
            Arc::new(move |stream, lines: &[&str]| observer.lines(&name, stream, lines))
        };
        let process = Process {
            script: step.run.clone(),
            workspace: spec.workspace.clone(),
            dir: dir.clone(),
            env: env.clone(),
            timeout: step.timeout,
            cancel: cancel.clone(),
            on_lines,
            container: container_spec(container, None),
        };
        let exit = match remote {
            Some(agents) => agents.spawn(process, step.runs_on.clone()).await,
            None => match spec.spawn(process) {
                Ok(spawned) => spawned.await,
                Err(e) => Exit::SpawnFailed(e),
            },
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

    if status == StepStatus::Succeeded {
        save_cache(spec, step, cache, &observer).await;
    }
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
