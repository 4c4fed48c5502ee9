//! Runs: one execution of a project's pipeline for one commit, from the queue to its
//! result. The record holds each step's status, timing, tests, coverage and artifacts;
//! step output lives in log files under `<data-dir>/runs/<id>/`.

use crate::ci::reports::coverage::Coverage;
use crate::ci::reports::junit::TestSummary;
use crate::core::error::{Error, Result};
use crate::exec::{Artifact, StepResult, StepStatus};
use crate::projects::forge::webhook::PullRequest;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The run could not start: checkout failed or the pipeline file has problems.
    Error,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Error,
    ];

    /// The status a name (`as_str`) means; an unknown one is an error listing them.
    pub fn parse(name: &str) -> crate::core::error::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                crate::core::error::Error::Invalid(format!(
                    "unknown run status \"{name}\"; expected one of {}",
                    names.join(", ")
                ))
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Error => "error",
        }
    }
}

/// "1.2 s", "3 m 04 s": how long between two moments, or until now while running.
pub fn duration_text(start: Option<Timestamp>, end: Option<Timestamp>) -> String {
    let Some(start) = start else {
        return String::new();
    };
    let end = end.unwrap_or_else(Timestamp::now);
    let ms = (end.as_millisecond() - start.as_millisecond()).max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} m {:02} s", ms / 60_000, ms / 1000 % 60)
    }
}

impl Run {
    pub fn duration(&self) -> String {
        duration_text(self.started_at, self.finished_at)
    }

    /// When it started, or (still queued) when it was created.
    pub fn started_or_created(&self) -> Timestamp {
        self.started_at.unwrap_or(self.created_at)
    }

    pub fn short_commit(&self) -> &str {
        &self.commit[..self.commit.len().min(12)]
    }

    /// The values `${name}` placeholders (in `concurrency.group`) expand to.
    pub fn variables(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("project", self.project.clone()),
            ("branch", self.branch.clone().unwrap_or_default()),
            ("ref", self.git_ref.clone()),
            ("event", self.event.clone()),
            ("commit", self.commit.clone()),
            (
                "pull_request",
                self.pull_request
                    .as_ref()
                    .map(|p| p.number.to_string())
                    .unwrap_or_default(),
            ),
        ])
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub project: String,
    /// 1, 2, … within the project.
    pub number: u64,
    /// `push`, `pull_request`, `tag`, `manual`, `cron` or `api`.
    pub event: String,
    /// The ref that was asked for (`main`, `refs/tags/v1`, or a commit).
    pub git_ref: String,
    #[serde(default)]
    pub branch: Option<String>,
    /// The exact commit, resolved when the run was created.
    pub commit: String,
    /// The first line of the commit's message.
    #[serde(default)]
    pub commit_subject: String,
    /// The commit's author (name).
    #[serde(default)]
    pub commit_author: String,
    /// Who or what started it (`user:alice`).
    pub actor: String,
    pub status: RunStatus,
    pub created_at: Timestamp,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Why the run is in `error`, or a note such as a restart.
    #[serde(default)]
    pub message: String,
    /// How many times a server restart interrupted and re-queued it.
    #[serde(default)]
    pub restarts: u32,
    /// The run this one repeats (same commit), if it is a re-run.
    #[serde(default)]
    pub rerun_of: Option<u64>,
    /// A re-run of failed steps only: steps that succeeded in `rerun_of` are not run again.
    #[serde(default)]
    pub failed_only: bool,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Environment overrides given with the trigger (parameters, not secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files the change touched (from git or the webhook payload); `None` when unknown,
    /// and then `when.paths` filters pass.
    #[serde(default)]
    pub changed_paths: Option<Vec<String>>,
    /// The pull (merge) request the run checks, for `pull_request` runs.
    #[serde(default)]
    pub pull_request: Option<PullRequest>,
    /// The pipeline's concurrency group for this run (`concurrency.group`, expanded).
    #[serde(default)]
    pub concurrency_group: Option<String>,
    /// The webhook delivery that triggered it.
    #[serde(default)]
    pub delivery: Option<u64>,
    /// The cron schedule that triggered it.
    #[serde(default)]
    pub schedule: Option<u64>,
    /// The secrets its steps were given (name, scope, version — never a value).
    #[serde(default)]
    pub secrets: Vec<crate::secrets::SecretRead>,
}

/// A step of a run as stored; `status` is `None` until it has finished.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub status: Option<StepStatus>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub tests: Option<TestSummary>,
    #[serde(default)]
    pub coverage: Option<Coverage>,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Set when the step's result was taken from the run it re-runs instead of running.
    #[serde(default)]
    pub reused_from: Option<u64>,
}

impl StepRecord {
    pub fn duration(&self) -> String {
        duration_text(self.started_at, self.finished_at)
    }

    /// `running`, `pending`, or the finished status.
    pub fn state(&self) -> &'static str {
        match (&self.status, self.running) {
            (Some(s), _) => s.label(),
            (None, true) => "running",
            (None, false) => "pending",
        }
    }

    /// Whether the state is a good one (for the badge colour).
    pub fn ok(&self) -> bool {
        matches!(
            self.status,
            Some(StepStatus::Succeeded | StepStatus::Skipped)
        ) || self.running
    }

    /// The finished step as an executor result (to reuse it in a re-run).
    pub fn as_result(&self) -> Option<StepResult> {
        Some(StepResult {
            name: self.name.clone(),
            status: self.status.clone()?,
            reason: self.reason.clone(),
            exit_code: self.exit_code,
            attempts: self.attempts,
            started_at: self.started_at,
            finished_at: self.finished_at,
            tests: self.tests.clone(),
            coverage: self.coverage.clone(),
            artifacts: self.artifacts.clone(),
            warnings: self.warnings.clone(),
        })
    }

    /// A step that has not run yet.
    pub fn pending() -> Self {
        Self::default()
    }

    pub fn finish(&mut self, result: &StepResult) {
        self.running = false;
        self.status = Some(result.status.clone());
        self.reason = result.reason.clone();
        self.exit_code = result.exit_code;
        self.attempts = result.attempts;
        self.started_at = result.started_at.or(self.started_at);
        self.finished_at = result.finished_at;
        self.tests = result.tests.clone();
        self.coverage = result.coverage.clone();
        self.artifacts = result.artifacts.clone();
        self.warnings = result.warnings.clone();
    }
}

impl Run {
    /// The index of `step` (a name, or an index) in this run.
    pub fn step_index(&self, step: &str) -> Result<usize> {
        self.steps
            .iter()
            .position(|s| s.name == step)
            .or_else(|| step.parse::<usize>().ok().filter(|i| *i < self.steps.len()))
            .ok_or_else(|| Error::NotFound {
                what: format!("step \"{step}\" of run {}#{}", self.project, self.number),
            })
    }
}

/// Run `number` of project `slug`, or `NotFound`.
pub async fn find(store: &crate::store::Store, slug: &str, number: u64) -> Result<Run> {
    store
        .run_by_number(slug, number)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("run {slug}#{number}"),
        })
}
