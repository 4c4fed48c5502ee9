//! A project's trends, week by week: its pipeline (runs, success rate, duration and queue
//! time p50/p95), each environment's DORA figures, and its slowest steps; and the
//! activity of several projects side by side (runs and deployments per week). Weeks are
//! the seven-day windows that end now, oldest first — the same windows `delivery::dora`
//! computes over, so a week here and the board's 7-day figures agree.

use crate::ci::run::{Run, RunStatus};
use crate::delivery::{Deployment, Release};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// How many weeks the trends cover.
pub const WEEKS: u32 = 12;

/// How many steps the slowest list shows.
const SLOWEST: usize = 10;

#[derive(Clone, Debug, Serialize)]
pub struct Trends {
    pub project: String,
    pub weeks: u32,
    pub from: Timestamp,
    pub to: Timestamp,
    pub pipeline: Vec<PipelineWeek>,
    pub environments: Vec<EnvironmentTrend>,
    /// The steps that take longest (p50 over the weeks), slowest first.
    pub slowest_steps: Vec<SlowStep>,
}

/// A week of runs: those that finished in it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PipelineWeek {
    /// The week's first day (UTC), `2026-11-26`.
    pub week: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub runs: u64,
    pub succeeded: u64,
    /// Failed, or could not start (error).
    pub failed: u64,
    pub cancelled: u64,
    /// succeeded ÷ (succeeded + failed); none without either.
    pub success_rate: Option<f64>,
    /// Start to finish.
    pub duration_p50_seconds: Option<f64>,
    pub duration_p95_seconds: Option<f64>,
    /// Created to started: how long runs waited for a slot.
    pub queue_p50_seconds: Option<f64>,
    pub queue_p95_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnvironmentTrend {
    pub environment: String,
    pub weeks: Vec<DoraWeek>,
}

/// An environment's DORA figures over one week.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DoraWeek {
    pub week: String,
    pub deployments: u64,
    pub deployment_frequency_per_day: f64,
    pub change_lead_time_seconds: Option<f64>,
    pub changes: u64,
    pub failed_changes: u64,
    pub change_fail_rate: Option<f64>,
    pub recovery_time_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlowStep {
    pub name: String,
    /// Times it ran (reused results not counted).
    pub runs: u64,
    pub p50_seconds: f64,
    pub p95_seconds: f64,
    pub max_seconds: f64,
}

/// The nearest-rank percentile `p` (0–1) of `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()).max(0) as f64 / 1000.0
}

/// The `WEEKS` windows ending at `now`, oldest first: (first day, from, to).
fn windows(now: Timestamp) -> Vec<(String, Timestamp, Timestamp)> {
    let week = SignedDuration::from_hours(24 * 7);
    (0..i64::from(WEEKS))
        .rev()
        .map(|back| {
            let to = now - week * back as i32;
            let from = to - week;
            let day = from.to_zoned(jiff::tz::TimeZone::UTC).date().to_string();
            (day, from, to)
        })
        .collect()
}

/// How many of a project's latest runs the trends read at most.
pub const RUNS_READ: usize = 10_000;

/// The trends of project `slug` over the last [`WEEKS`] weeks, read from the store.
pub async fn of_project(
    store: &crate::store::Store,
    slug: &str,
) -> crate::core::error::Result<Trends> {
    crate::projects::find(store, slug).await?;
    let runs = store
        .project_runs(slug, Default::default(), RUNS_READ)
        .await?;
    let deployments = store.deployments(slug, usize::MAX).await?;
    let releases: HashMap<u64, Release> = store
        .releases(slug, usize::MAX)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let environments: Vec<String> = store
        .environments(slug)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    Ok(compute(
        slug,
        &runs,
        &deployments,
        &releases,
        &environments,
        Timestamp::now(),
    ))
}

/// The trends of project `slug` from its runs, deployments and releases (any order).
pub fn compute(
    slug: &str,
    runs: &[Run],
    deployments: &[Deployment],
    releases: &HashMap<u64, Release>,
    environments: &[String],
    now: Timestamp,
) -> Trends {
    let windows = windows(now);
    let pipeline = windows
        .iter()
        .map(|(week, from, to)| pipeline_week(runs, week, *from, *to))
        .collect();
    let environments = environments
        .iter()
        .map(|environment| EnvironmentTrend {
            environment: environment.clone(),
            weeks: windows
                .iter()
                .map(|(week, _, to)| {
                    let d =
                        crate::delivery::dora::compute(deployments, releases, environment, *to, 7);
                    DoraWeek {
                        week: week.clone(),
                        deployments: d.deployments,
                        deployment_frequency_per_day: d.deployment_frequency_per_day,
                        change_lead_time_seconds: d.change_lead_time_seconds,
                        changes: d.changes,
                        failed_changes: d.failed_changes,
                        change_fail_rate: d.change_fail_rate,
                        recovery_time_seconds: d.recovery_time_seconds,
                    }
                })
                .collect(),
        })
        .collect();
    let from = windows.first().map_or(now, |w| w.1);
    Trends {
        project: slug.to_string(),
        weeks: WEEKS,
        from,
        to: now,
        pipeline,
        environments,
        slowest_steps: slowest_steps(runs, from, now),
    }
}

fn pipeline_week(runs: &[Run], week: &str, from: Timestamp, to: Timestamp) -> PipelineWeek {
    let here: Vec<&Run> = runs
        .iter()
        .filter(|r| r.finished_at.is_some_and(|f| f >= from && f < to))
        .collect();
    let count = |status: &[RunStatus]| here.iter().filter(|r| status.contains(&r.status)).count();
    let succeeded = count(&[RunStatus::Succeeded]) as u64;
    let failed = count(&[RunStatus::Failed, RunStatus::Error]) as u64;
    let cancelled = count(&[RunStatus::Cancelled]) as u64;
    let durations: Vec<f64> = here
        .iter()
        .filter_map(|r| Some(seconds(r.started_at?, r.finished_at?)))
        .collect();
    let queued: Vec<f64> = here
        .iter()
        .filter_map(|r| Some(seconds(r.created_at, r.started_at?)))
        .collect();
    PipelineWeek {
        week: week.to_string(),
        from,
        to,
        runs: here.len() as u64,
        succeeded,
        failed,
        cancelled,
        success_rate: (succeeded + failed > 0)
            .then(|| succeeded as f64 / (succeeded + failed) as f64),
        duration_p50_seconds: percentile(&durations, 0.5),
        duration_p95_seconds: percentile(&durations, 0.95),
        queue_p50_seconds: percentile(&queued, 0.5),
        queue_p95_seconds: percentile(&queued, 0.95),
    }
}

/// The steps that took longest in the runs finished between `from` and `to`.
fn slowest_steps(runs: &[Run], from: Timestamp, to: Timestamp) -> Vec<SlowStep> {
    let mut by_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in runs
        .iter()
        .filter(|r| r.finished_at.is_some_and(|f| f >= from && f <= to))
    {
        for step in &run.steps {
            if step.reused_from.is_some() {
                continue;
            }
            if let (Some(start), Some(end)) = (step.started_at, step.finished_at) {
                by_name
                    .entry(step.name.as_str())
                    .or_default()
                    .push(seconds(start, end));
            }
        }
    }
    let mut out: Vec<SlowStep> = by_name
        .into_iter()
        .map(|(name, times)| SlowStep {
            name: name.to_string(),
            runs: times.len() as u64,
            p50_seconds: percentile(&times, 0.5).unwrap_or(0.0),
            p95_seconds: percentile(&times, 0.95).unwrap_or(0.0),
            max_seconds: times.iter().copied().fold(0.0, f64::max),
        })
        .collect();
    out.sort_by(|a, b| b.p50_seconds.total_cmp(&a.p50_seconds));
    out.truncate(SLOWEST);
    out
}

/// A week of one project's (or every project's) activity: the runs and deployments that
/// finished in it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ActivityWeek {
    /// The week's first day (none in a project's totals).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub week: String,
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub deployments: u64,
    /// Failed or rolled back.
    pub failed_deployments: u64,
}

impl ActivityWeek {
    fn add(&mut self, other: &ActivityWeek) {
        self.runs += other.runs;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.deployments += other.deployments;
        self.failed_deployments += other.failed_deployments;
    }
}

/// A project's activity over the weeks, with its totals.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectActivity {
    pub project: String,
    #[serde(flatten)]
    pub total: ActivityWeek,
    /// When its latest run or deployment finished.
    pub last_activity_at: Option<Timestamp>,
    pub weeks: Vec<ActivityWeek>,
}

impl ProjectActivity {
    /// succeeded ÷ (succeeded + failed) over the weeks.
    pub fn success_rate(&self) -> Option<f64> {
        let done = self.total.succeeded + self.total.failed;
        (done > 0).then(|| self.total.succeeded as f64 / done as f64)
    }
}

/// Several projects' activity: every project's weeks summed, and each project's, busiest
/// first.
#[derive(Clone, Debug, Serialize)]
pub struct Activity {
    pub weeks: u32,
    pub from: Timestamp,
    pub to: Timestamp,
    pub total: Vec<ActivityWeek>,
    pub projects: Vec<ProjectActivity>,
}

/// How many of a project's latest runs (and deployments) the activity reads at most.
pub const ACTIVITY_READ: usize = 2_000;

/// The activity of the projects `slugs` over the last [`WEEKS`] weeks.
pub async fn activity(
    store: &crate::store::Store,
    slugs: &[String],
) -> crate::core::error::Result<Activity> {
    let now = Timestamp::now();
    let mut projects = Vec::new();
    for slug in slugs {
        let runs = store
            .project_runs(slug, Default::default(), ACTIVITY_READ)
            .await?;
        let deployments = store.deployments(slug, ACTIVITY_READ).await?;
        projects.push(project_activity(slug, &runs, &deployments, now));
    }
    Ok(activity_of(projects, now))
}

/// Sums `projects` week by week and sorts them busiest first.
pub fn activity_of(mut projects: Vec<ProjectActivity>, now: Timestamp) -> Activity {
    let windows = windows(now);
    let mut total: Vec<ActivityWeek> = windows
        .iter()
        .map(|(week, _, _)| ActivityWeek {
            week: week.clone(),
            ..Default::default()
        })
        .collect();
    for p in &projects {
        for (sum, week) in total.iter_mut().zip(&p.weeks) {
            sum.add(week);
        }
    }
    projects.sort_by(|a, b| {
        (b.total.runs + b.total.deployments)
            .cmp(&(a.total.runs + a.total.deployments))
            .then(a.project.cmp(&b.project))
    });
    Activity {
        weeks: WEEKS,
        from: windows.first().map_or(now, |w| w.1),
        to: now,
        total,
        projects,
    }
}

/// One project's weeks of runs and deployments (any order).
pub fn project_activity(
    slug: &str,
    runs: &[Run],
    deployments: &[Deployment],
    now: Timestamp,
) -> ProjectActivity {
    use crate::delivery::DeploymentStatus as D;
    let mut weeks = Vec::new();
    let mut total = ActivityWeek::default();
    for (week, from, to) in windows(now) {
        let within = |t: Option<Timestamp>| t.is_some_and(|t| t >= from && t < to);
        let mut w = ActivityWeek {
            week,
            ..Default::default()
        };
        for run in runs.iter().filter(|r| within(r.finished_at)) {
            w.runs += 1;
            match run.status {
                RunStatus::Succeeded => w.succeeded += 1,
                RunStatus::Failed | RunStatus::Error => w.failed += 1,
                _ => {}
            }
        }
        for d in deployments.iter().filter(|d| within(d.finished_at)) {
            match d.status {
                D::Succeeded => w.deployments += 1,
                D::Failed | D::RolledBack => {
                    w.deployments += 1;
                    w.failed_deployments += 1;
                }
                _ => {}
            }
        }
        total.add(&w);
        weeks.push(w);
    }
    let last_run = runs.iter().filter_map(|r| r.finished_at).max();
    let last_deployment = deployments.iter().filter_map(|d| d.finished_at).max();
    ProjectActivity {
        project: slug.to_string(),
        total: ActivityWeek {
            week: String::new(),
            ..total
        },
        last_activity_at: last_run.max(last_deployment),
        weeks,
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 0.95), Some(5.0));
        assert_eq!(percentile(&v, 0.2), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
    }
}
