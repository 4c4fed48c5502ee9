//! The delivery records: environments with their protections, releases, deployments with
//! their approvals and timeline — and the pure checks the protections make.

use crate::ci::pipeline::deploy::DeployDef;
use crate::exec::Artifact;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A place a project's releases are deployed to, in an order (dev → staging → production).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// The project's slug.
    pub project: String,
    pub name: String,
    /// Order among the project's environments, from 0; promotion goes to the next.
    pub position: u32,
    #[serde(default)]
    pub protection: Protection,
    /// Deploy every new release from an allowed branch as soon as its run is green.
    #[serde(default)]
    pub auto_deploy: bool,
    /// Where "approval requested" is POSTed (JSON), if anywhere.
    #[serde(default)]
    pub approval_webhook: Option<String>,
    /// Production-like even without a production-like name (policies treat it so).
    #[serde(default)]
    pub production: bool,
    pub created_at: Timestamp,
}

impl Environment {
    /// Production-like: marked so, or named `production`, `prod` or `live`. The starter
    /// policies apply to these.
    pub fn production_like(&self) -> bool {
        self.production || matches!(self.name.as_str(), "production" | "prod" | "live")
    }
}

/// Server-side rules a deployment to an environment must pass. The repository cannot
/// change them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Protection {
    /// Approvals needed before a deployment may start (0: none).
    #[serde(default)]
    pub required_approvals: u32,
    /// Who may approve: `role:maintainer`, `role:developer`, `user:NAME`, `team:NAME`.
    /// Empty means project maintainers (and administrators).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Branch globs a release must come from; empty allows any.
    #[serde(default)]
    pub branches: Vec<String>,
    /// When deployments may start; empty allows any time.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Periods when nothing may be deployed, each with its reason.
    #[serde(default)]
    pub freezes: Vec<Freeze>,
    /// How long a release must have been live in the previous environment (`1h`).
    #[serde(default)]
    pub soak: Option<String>,
    /// When a deploy policy fails to evaluate (an error, the time limit), let the
    /// deployment through instead of refusing it.
    #[serde(default)]
    pub policy_fail_open: bool,
}

/// A weekly deploy window, e.g. Mon–Fri 09:00–17:00 Europe/Berlin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// `mon` … `sun`; empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, inclusive.
    pub start: String,
    /// `HH:MM`, exclusive.
    pub end: String,
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Freeze {
    pub from: Timestamp,
    pub until: Timestamp,
    pub reason: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// One line of the console's windows field: `[DAYS] HH:MM-HH:MM [TIMEZONE]`, where DAYS
    /// is `mon-fri`, `mon,wed,fri` or absent (every day), the timezone UTC when absent.
    pub fn parse_line(line: &str) -> Result<Window, String> {
        let mut words = line.split_whitespace().peekable();
        let mut days = Vec::new();
        if let Some(first) = words.peek()
            && !first.contains(':')
        {
            for part in first.split(',') {
                match part.split_once('-') {
                    Some((from, to)) => {
                        let at = |d: &str| DAYS.iter().position(|x| *x == d.to_lowercase());
                        let (Some(a), Some(b)) = (at(from), at(to)) else {
                            return Err(format!("days \"{part}\": use mon-fri or mon,tue,…"));
                        };
                        if a > b {
                            return Err(format!(
                                "days \"{part}\": the first day comes after the last"
                            ));
                        }
                        days.extend(DAYS[a..=b].iter().map(|d| d.to_string()));
                    }
                    None => days.push(part.to_lowercase()),
                }
            }
            words.next();
        }
        let times = words
            .next()
            .ok_or("expected HH:MM-HH:MM, e.g. mon-fri 09:00-17:00 Europe/Berlin")?;
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("\"{times}\": expected HH:MM-HH:MM"))?;
        let window = Window {
            days,
            start: start.to_string(),
            end: end.to_string(),
            timezone: words.next().unwrap_or("UTC").to_string(),
        };
        if let Some(extra) = words.next() {
            return Err(format!("unexpected \"{extra}\" after the timezone"));
        }
        window.check()?;
        Ok(window)
    }

    /// The window as `parse_line` reads it.
    pub fn line(&self) -> String {
        let days = self.days.join(",");
        let days = if days == "mon,tue,wed,thu,fri" {
            "mon-fri".to_string()
        } else {
            days
        };
        let lead = if days.is_empty() {
            String::new()
        } else {
            format!("{days} ")
        };
        format!("{lead}{}-{} {}", self.start, self.end, self.timezone)
    }
}

impl Freeze {
    /// One line of the console's freezes field: `FROM UNTIL REASON`, the times RFC 3339
    /// (`2026-12-20T00:00:00Z`).
    pub fn parse_line(line: &str) -> Result<Freeze, String> {
        let mut words = line.splitn(3, char::is_whitespace);
        let mut time = |what: &str| -> Result<Timestamp, String> {
            let text = words.next().unwrap_or("").trim();
            text.parse().map_err(|e| {
                format!("{what} \"{text}\": expected a time like 2026-12-20T00:00:00Z ({e})")
            })
        };
        let from = time("from")?;
        let until = time("until")?;
        let reason = words.next().unwrap_or("").trim().to_string();
        if reason.is_empty() {
            return Err("a freeze needs a reason after its two times".into());
        }
        if until <= from {
            return Err(format!("freeze \"{reason}\" ends before it starts"));
        }
        Ok(Freeze {
            from,
            until,
            reason,
        })
    }

    /// The freeze as `parse_line` reads it.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.from, self.until, self.reason)
    }
}

/// Reads a field of one item per line (blank lines skipped) with `parse`, naming the line
/// of the first that does not read.
pub fn parse_lines<T>(
    field: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse(l.trim()).map_err(|e| format!("{field}, line {}: {e}", i + 1)))
        .collect()
}

fn parse_hm(text: &str) -> Option<jiff::civil::Time> {
    let (h, m) = text.split_once(':')?;
    jiff::civil::Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

impl Window {
    fn check(&self) -> Result<(), String> {
        for day in &self.days {
            if !DAYS.contains(&day.as_str()) {
                return Err(format!(
                    "window day \"{day}\": use mon, tue, wed, thu, fri, sat or sun"
                ));
            }
        }
        for t in [&self.start, &self.end] {
            if parse_hm(t).is_none() {
                return Err(format!("window time \"{t}\": use HH:MM"));
            }
        }
        jiff::tz::TimeZone::get(&self.timezone)
            .map_err(|_| format!("window time zone \"{}\" is not an IANA zone", self.timezone))?;
        Ok(())
    }

    fn contains(&self, now: Timestamp) -> bool {
        let Ok(tz) = jiff::tz::TimeZone::get(&self.timezone) else {
            return false;
        };
        let local: Zoned = now.to_zoned(tz);
        let day = DAYS[local.weekday().to_monday_zero_offset() as usize];
        let (Some(start), Some(end)) = (parse_hm(&self.start), parse_hm(&self.end)) else {
            return false;
        };
        (self.days.is_empty() || self.days.iter().any(|d| d == day))
            && local.time() >= start
            && local.time() < end
    }

    fn describe(&self) -> String {
        let days = if self.days.is_empty() {
            "every day".to_string()
        } else {
            self.days.join(",")
        };
        format!("{days} {}–{} {}", self.start, self.end, self.timezone)
    }
}

impl Protection {
    /// Checks the settings themselves (globs, windows, soak), for the API.
    pub fn check(&self) -> Result<(), String> {
        for glob in &self.branches {
            globset::Glob::new(glob).map_err(|e| format!("branch pattern \"{glob}\": {e}"))?;
        }
        for window in &self.windows {
            window.check()?;
        }
        for freeze in &self.freezes {
            if freeze.until <= freeze.from {
                return Err(format!(
                    "freeze \"{}\" ends before it starts",
                    freeze.reason
                ));
            }
            if freeze.reason.trim().is_empty() {
                return Err("a freeze needs a reason".into());
            }
        }
        if let Some(soak) = &self.soak {
            crate::core::config::parse_duration(soak)
                .map_err(|e| format!("soak \"{soak}\": {e}"))?;
        }
        for who in &self.approvers {
            let valid = matches!(
                who.split_once(':'),
                Some(("role", "viewer" | "developer" | "maintainer")) | Some(("user" | "team", _))
            );
            if !valid {
                return Err(format!(
                    "approver \"{who}\": use role:developer, role:maintainer, user:NAME or team:NAME"
                ));
            }
        }
        Ok(())
    }

    /// Whether a release from `branch` may go to this environment.
    pub fn check_branch(&self, environment: &str, branch: Option<&str>) -> Result<(), String> {
        if self.branches.is_empty() {
            return Ok(());
        }
        let allowed = branch.is_some_and(|b| {
            self.branches
                .iter()
                .filter_map(|g| globset::Glob::new(g).ok())
                .any(|g| g.compile_matcher().is_match(b))
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{environment} accepts releases from {} only; this one is from {}",
                self.branches.join(", "),
                branch.map_or("no branch".to_string(), |b| format!("branch {b}"))
            ))
        }
    }

    /// Whether a deployment may start at `now`: no freeze, and inside a window if any.
    pub fn check_time(&self, environment: &str, now: Timestamp) -> Result<(), String> {
        if let Some(freeze) = self.freezes.iter().find(|f| f.from <= now && now < f.until) {
            return Err(format!(
                "{environment} is frozen until {}: {}",
                freeze.until.strftime("%Y-%m-%d %H:%M UTC"),
                freeze.reason
            ));
        }
        if !self.windows.is_empty() && !self.windows.iter().any(|w| w.contains(now)) {
            let windows: Vec<String> = self.windows.iter().map(Window::describe).collect();
            return Err(format!(
                "{environment} takes deployments only during {}",
                windows.join("; ")
            ));
        }
        Ok(())
    }

    /// Whether the release has been live long enough in the previous environment:
    /// `live_since` is when it became current there (None: it is not current there).
    pub fn check_soak(
        &self,
        previous: &str,
        live_since: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), String> {
        let Some(soak) = self
            .soak
            .as_deref()
            .and_then(|s| crate::core::config::parse_duration(s).ok())
        else {
            return Ok(());
        };
        let Some(since) = live_since else {
            return Err(format!(
                "this release must be live in {previous} for {} first; it is not live there",
                self.soak.as_deref().unwrap_or_default()
            ));
        };
        let needed = since + jiff::SignedDuration::try_from(soak).unwrap_or_default();
        if now >= needed {
            Ok(())
        } else {
            let left = needed.duration_since(now).as_secs().max(0) as u64;
            Err(format!(
                "this release must be live in {previous} for {}; {} to go",
                self.soak.as_deref().unwrap_or_default(),
                human(left)
            ))
        }
    }
}

/// `1h 5m`, `30m`, `45s`.
pub fn human(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// An immutable build: a successful run's commit and the digests of its artifacts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: u64,
    pub project: String,
    /// Per project, from 1.
    pub number: u64,
    /// The run it came from (id and number).
    pub run: u64,
    pub run_number: u64,
    pub commit: String,
    pub git_ref: String,
    #[serde(default)]
    pub branch: Option<String>,
    /// When the commit was made (committer date): change lead time starts here.
    #[serde(default)]
    pub commit_time: Option<Timestamp>,
    pub commit_message: String,
    /// Who triggered the run (pushed the commit): they may not approve its deployment.
    pub actor: String,
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub tests: Option<TestCounts>,
    /// Line coverage, 0–100, over the steps that reported it.
    #[serde(default, with = "crate::ci::reports::finite::option")]
    pub coverage: Option<f64>,
    /// How each environment is deployed, from the pipeline at this commit.
    pub deploy: BTreeMap<String, DeployDef>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// The failed (or errored) tests, as `step: name — message`, the first
    /// [`TestCounts::LISTED`] of them.
    #[serde(default)]
    pub failing: Vec<String>,
}

impl TestCounts {
    pub const LISTED: usize = 20;
}

impl Release {
    /// What `BETCYCLE_RELEASE` holds: the project and the release number.
    pub fn label(&self) -> String {
        format!("{}-{}", self.project, self.number)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Pending,
    AwaitingApproval,
    Queued,
    Deploying,
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
    Cancelled,
}

impl DeploymentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Queued => "queued",
            Self::Deploying => "deploying",
            Self::Verifying => "verifying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Cancelled
        )
    }
}

/// Why a deployment was requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A green run on an allowed branch, to an environment with `auto_deploy`.
    Auto,
    /// Asked for by a person (console, API, CLI).
    Manual,
    /// The release live in the previous environment, moved on.
    Promotion,
    /// The previous successful release, redeployed.
    Rollback,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// `user:NAME`.
    pub by: String,
    pub approved: bool,
    pub comment: String,
    pub at: Timestamp,
}

/// One line of a deployment's timeline: who did what, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub actor: String,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub project: String,
    /// Per project, from 1.
    pub number: u64,
    pub environment: String,
    /// The release id and number.
    pub release: u64,
    pub release_number: u64,
    pub commit: String,
    pub status: DeploymentStatus,
    pub reason: Reason,
    pub requested_by: String,
    pub requested_at: Timestamp,
    /// Approvals needed when requested.
    pub required_approvals: u32,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Why it failed, was cancelled or rolled back.
    #[serde(default)]
    pub message: String,
    /// For a rollback: the deployment it undoes.
    #[serde(default)]
    pub rollback_of: Option<u64>,
    /// Commits since the release previously deployed here (`short subject`), newest first.
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub timeline: Vec<Entry>,
    /// The secrets the target was given (name, scope, version — never a value).
    #[serde(default)]
    pub secrets: Vec<crate::secrets::SecretRead>,
    /// The policy decisions taken on it (ids in the decision log).
    #[serde(default)]
    pub decisions: Vec<u64>,
}

impl Deployment {
    /// A new deployment of `release` to `environment`, requested by `actor` now: queued,
    /// or awaiting `required_approvals` when there are any.
    pub fn of(
        release: &Release,
        environment: &str,
        reason: Reason,
        actor: &str,
        required_approvals: u32,
    ) -> Deployment {
        Deployment {
            id: 0,
            project: release.project.clone(),
            number: 0,
            environment: environment.to_string(),
            release: release.id,
            release_number: release.number,
            commit: release.commit.clone(),
            status: if required_approvals > 0 {
                DeploymentStatus::AwaitingApproval
            } else {
                DeploymentStatus::Queued
            },
            reason,
            requested_by: actor.to_string(),
            requested_at: Timestamp::now(),
            required_approvals,
            approvals: Vec::new(),
            started_at: None,
            finished_at: None,
            message: String::new(),
            rollback_of: None,
            notes: Vec::new(),
            timeline: Vec::new(),
            secrets: Vec::new(),
            decisions: Vec::new(),
        }
    }

    pub fn note(&mut self, actor: &str, what: impl Into<String>) {
        self.timeline.push(Entry {
            at: Timestamp::now(),
            actor: actor.to_string(),
            what: what.into(),
        });
    }

    pub fn approvals_given(&self) -> u32 {
        self.approvals.iter().filter(|a| a.approved).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn branches_freezes_windows_and_soak() {
        let p = Protection {
            branches: vec!["main".into(), "release/*".into()],
            windows: vec![Window {
                days: vec![
                    "mon".into(),
                    "tue".into(),
                    "wed".into(),
                    "thu".into(),
                    "fri".into(),
                ],
                start: "09:00".into(),
                end: "17:00".into(),
                timezone: "Europe/Berlin".into(),
            }],
            freezes: vec![Freeze {
                from: at("2026-12-20T00:00:00Z"),
                until: at("2027-01-04T00:00:00Z"),
                reason: "year-end freeze".into(),
            }],
            soak: Some("1h".into()),
            ..Protection::default()
        };
        p.check().unwrap();
        p.check_branch("production", Some("main")).unwrap();
        p.check_branch("production", Some("release/2.1")).unwrap();
        let e = p.check_branch("production", Some("feature/x")).unwrap_err();
        assert!(
            e.contains("main, release/*") && e.contains("feature/x"),
            "{e}"
        );
        // Tuesday 2026-11-24 10:30 in Berlin is 09:30 UTC: open.
        p.check_time("production", at("2026-11-24T09:30:00Z"))
            .unwrap();
        // 16:30 UTC is 17:30 in Berlin: closed.
        let e = p
            .check_time("production", at("2026-11-24T16:30:00Z"))
            .unwrap_err();
        assert!(
            e.contains("mon,tue,wed,thu,fri 09:00–17:00 Europe/Berlin"),
            "{e}"
        );
        // Saturday: closed.
        assert!(
            p.check_time("production", at("2026-11-28T10:00:00Z"))
                .is_err()
        );
        let e = p
            .check_time("production", at("2026-12-22T10:00:00Z"))
            .unwrap_err();
        assert_eq!(
            e,
            "production is frozen until 2027-01-04 00:00 UTC: year-end freeze"
        );
        let now = at("2026-11-24T12:00:00Z");
        p.check_soak("staging", Some(at("2026-11-24T10:00:00Z")), now)
            .unwrap();
        let e = p
            .check_soak("staging", Some(at("2026-11-24T11:30:00Z")), now)
            .unwrap_err();
        assert!(e.contains("30m") && e.contains("staging"), "{e}");
        assert!(p.check_soak("staging", None, now).is_err());
        let bad = Protection {
            approvers: vec!["boss".into()],
            ..Protection::default()
        };
        assert!(bad.check().unwrap_err().contains("approver \"boss\""));
    }
}
