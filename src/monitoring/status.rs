//! A project's public status page: its probes, whether each is up, their uptime and a
//! bar per day for 90 days (from the daily summaries), and the recent incidents (the
//! `probe_down` alerts' history). Shown without signing in once an administrator turns
//! it on; it never shows a probe's target or error, only names, states and figures.

use super::AlertState;
use super::probes::{Period, ProbeStatus, ProbeSummary};
use crate::core::error::Result;
use crate::store::Store;
use jiff::Timestamp;
use serde::Serialize;
use std::time::Duration;

/// How many days the page draws.
pub const DAYS: usize = 90;

#[derive(Clone, Debug, Serialize)]
pub struct StatusPage {
    pub project: String,
    pub name: String,
    /// `operational` (every probe up), `degraded` (some down) or `down` (all down);
    /// `unknown` before any probe has an answer.
    pub status: &'static str,
    pub probes: Vec<ProbeStatusView>,
    /// Newest first, the last 30 days.
    pub incidents: Vec<Incident>,
    pub generated_at: Timestamp,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatusView {
    pub name: String,
    /// The environment it watches, if one.
    pub environment: Option<String>,
    pub status: ProbeStatus,
    pub since: Option<Timestamp>,
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub uptime_30d: Option<f64>,
    pub uptime_90d: Option<f64>,
    /// Mean latency over the last 24 hours, in milliseconds.
    pub latency_avg_24h_ms: Option<f64>,
    /// One per day, oldest first, ending today (UTC).
    pub days: Vec<Day>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Day {
    /// `2026-12-04`.
    pub date: String,
    pub checks: u64,
    pub uptime: Option<f64>,
}

impl Day {
    /// The CSS class of its bar: no data, all up, mostly up, or down a lot.
    pub fn class(&self) -> &'static str {
        match self.uptime {
            None => "none",
            Some(u) if u >= 99.9 => "up",
            Some(u) if u >= 95.0 => "partial",
            Some(_) => "down",
        }
    }

    pub fn title(&self) -> String {
        match self.uptime {
            None => format!("{}: no data", self.date),
            Some(u) => format!("{}: {u:.2} % up of {} checks", self.date, self.checks),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Incident {
    pub probe: String,
    pub started_at: Timestamp,
    /// Absent while it lasts.
    pub resolved_at: Option<Timestamp>,
}

impl StatusPage {
    pub fn headline(&self) -> &'static str {
        match self.status {
            "operational" => "All systems operational",
            "degraded" => "Some systems are down",
            "down" => "All systems are down",
            _ => "No checks yet",
        }
    }
}

impl ProbeStatusView {
    pub fn status_str(&self) -> &'static str {
        self.status.as_str()
    }
}

/// The checks, up checks and latency of `summaries` from the one holding `since`.
fn sum_since(summaries: &[ProbeSummary], period: Period, since: Timestamp) -> ProbeSummary {
    let from = period.start_of(since);
    let mut total = ProbeSummary::default();
    for s in summaries.iter().filter(|s| s.start.as_second() >= from) {
        total.checks += s.checks;
        total.ok += s.ok;
        total.latency_total_ms += s.latency_total_ms;
        total.latency_max_ms = total.latency_max_ms.max(s.latency_max_ms);
    }
    total
}

/// The status page of `project` (its slug and name), from the probes that belong to it.
/// Its figures come from the summaries, not the raw results, so the page costs a few
/// hundred reads per probe whoever asks for it: the uptime over 24 hours counts from the
/// start of the hour 24 hours ago, over 7 and 30 days from the start of that hour too,
/// over 90 days from the start of that day.
pub async fn page(store: &Store, project: &str, name: &str) -> Result<StatusPage> {
    let states = store.probe_states().await?;
    let now = Timestamp::now();
    let day = Duration::from_secs(24 * 3600);
    let first_day = now - day * (DAYS as u32 - 1);
    let mut views = Vec::new();
    for probe in store.probes().await? {
        if probe.project.as_deref() != Some(project) {
            continue;
        }
        let summaries = store
            .probe_summaries(&probe.name, Period::Day, first_day)
            .await?;
        let hours = store
            .probe_summaries(&probe.name, Period::Hour, now - day * 30)
            .await?;
        let state = states.iter().find(|s| s.name == probe.name);
        let uptime = |since: Timestamp| sum_since(&hours, Period::Hour, since).uptime();
        let days = (0..DAYS)
            .map(|i| {
                let start = Period::Day.start_of(first_day + day * i as u32);
                let summary = summaries.iter().find(|s| s.start.as_second() == start);
                Day {
                    date: Timestamp::from_second(start)
                        .map(|t| t.strftime("%Y-%m-%d").to_string())
                        .unwrap_or_default(),
                    checks: summary.map_or(0, |s| s.checks),
                    uptime: summary.and_then(|s| s.uptime()),
                }
            })
            .collect();
        views.push(ProbeStatusView {
            name: probe.name.clone(),
            environment: probe.environment.clone(),
            status: state.map_or(ProbeStatus::Unknown, |s| s.status),
            since: state.map(|s| s.since),
            uptime_24h: uptime(now - day),
            uptime_7d: uptime(now - day * 7),
            uptime_30d: uptime(now - day * 30),
            uptime_90d: sum_since(&summaries, Period::Day, first_day).uptime(),
            latency_avg_24h_ms: sum_since(&hours, Period::Hour, now - day).latency_avg_ms(),
            days,
        });
    }
    let known: Vec<&ProbeStatusView> = views
        .iter()
        .filter(|v| v.status != ProbeStatus::Unknown)
        .collect();
    let down = known
        .iter()
        .filter(|v| v.status == ProbeStatus::Down)
        .count();
    let status = match (known.len(), down) {
        (0, _) => "unknown",
        (_, 0) => "operational",
        (n, d) if d == n => "down",
        _ => "degraded",
    };
    let incidents = incidents(store, &views, now - day * 30).await?;
    Ok(StatusPage {
        project: project.to_string(),
        name: name.to_string(),
        status,
        probes: views,
        incidents,
        generated_at: now,
    })
}

/// The status page of project `slug`, if an administrator turned it on.
pub async fn shown(store: &Store, slug: &str) -> Result<Option<StatusPage>> {
    match store.project(slug).await?.filter(|p| p.status_page) {
        Some(project) => Ok(Some(page(store, &project.slug, &project.name).await?)),
        None => Ok(None),
    }
}

/// How far back the alert history is read for incidents.
const HISTORY_READ: usize = 5_000;

/// The `probe_down` alerts of these probes since `since`, newest first (at most 20).
async fn incidents(
    store: &Store,
    probes: &[ProbeStatusView],
    since: Timestamp,
) -> Result<Vec<Incident>> {
    let mut history = store.alert_history(HISTORY_READ).await?;
    history.reverse(); // oldest first, so each resolution follows its firing
    let mut out: Vec<Incident> = Vec::new();
    for event in history {
        let Some(probe) = event.key.strip_prefix("probe_down:") else {
            continue;
        };
        if !probes.iter().any(|p| p.name == probe) {
            continue;
        }
        match event.state {
            AlertState::Firing => out.push(Incident {
                probe: probe.to_string(),
                started_at: event.at,
                resolved_at: None,
            }),
            AlertState::Resolved => {
                if let Some(open) = out
                    .iter_mut()
                    .rev()
                    .find(|i| i.probe == probe && i.resolved_at.is_none())
                {
                    open.resolved_at = Some(event.at);
                }
            }
        }
    }
    out.retain(|i| i.resolved_at.is_none_or(|r| r >= since));
    out.reverse();
    out.truncate(20);
    Ok(out)
}
