//! Cron schedules: a project runs its pipeline on a cron expression in a time zone.
//! Standard five-field syntax (`minute hour day-of-month month day-of-week`, with
//! `*/5`, ranges, lists, names and `@daily`-style nicknames), optionally with a leading
//! seconds field. After downtime, missed ticks run **once**, not once per tick: the
//! worker records the last tick it acted on, and on waking takes only the latest one due.

use crate::ci::runner::{Runner, TriggerSpec};
use crate::identity::audit::Context;
use crate::store::Store;
use croner::Cron;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    pub id: u64,
    pub project: String,
    /// Unique within the project: `nightly`.
    pub name: String,
    pub cron: String,
    /// An IANA time zone name (`Europe/Berlin`); `UTC` by default.
    pub timezone: String,
    /// The branch or tag to run; the project's default branch when absent.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Environment overrides for its runs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub enabled: bool,
    pub created_at: Timestamp,
    /// The tick last acted on.
    #[serde(default)]
    pub last_tick: Option<Timestamp>,
    /// The number of the run it last started.
    #[serde(default)]
    pub last_run: Option<u64>,
    /// Why the last tick could not start a run.
    #[serde(default)]
    pub last_error: String,
}

/// What a caller sends to create or change a schedule.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ScheduleChange {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Parses a cron expression; the error says what is wrong with it.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    croner::parser::CronParser::new()
        .parse(expr.trim())
        .map_err(|e| format!("cron \"{}\": {e}", expr.trim()))
}

pub fn parse_timezone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
        format!(
            "unknown time zone \"{}\" (use an IANA name such as Europe/Berlin or UTC)",
            name.trim()
        )
    })
}

impl Schedule {
    /// A new schedule from `change` (name and cron required).
    pub fn create(project: &str, change: ScheduleChange) -> Result<Self, String> {
        let mut schedule = Schedule {
            id: 0,
            project: project.to_string(),
            name: String::new(),
            cron: String::new(),
            timezone: "UTC".into(),
            git_ref: None,
            env: BTreeMap::new(),
            enabled: true,
            created_at: Timestamp::now(),
            last_tick: None,
            last_run: None,
            last_error: String::new(),
        };
        if change.name.is_none() || change.cron.is_none() {
            return Err("a schedule needs a name and a cron expression".into());
        }
        schedule.apply(change)?;
        Ok(schedule)
    }

    /// Applies `change`, validating every field it sets.
    pub fn apply(&mut self, change: ScheduleChange) -> Result<(), String> {
        if let Some(name) = change.name {
            crate::identity::validate_name("schedule", name.trim())?;
            self.name = name.trim().to_string();
        }
        if let Some(cron) = change.cron {
            parse_cron(&cron)?;
            self.cron = cron.trim().to_string();
        }
        if let Some(tz) = change.timezone.filter(|t| !t.trim().is_empty()) {
            parse_timezone(&tz)?;
            self.timezone = tz.trim().to_string();
        }
        if let Some(git_ref) = change.git_ref {
            self.git_ref = Some(git_ref.trim().to_string()).filter(|r| !r.is_empty());
        }
        if let Some(env) = change.env {
            crate::ci::pipeline::check_env_names(&env)?;
            self.env = env;
        }
        if let Some(enabled) = change.enabled {
            self.enabled = enabled;
        }
        Ok(())
    }

    /// The parsed expression and time zone (both were validated when set).
    fn parsed(&self) -> Option<(Cron, jiff::tz::TimeZone)> {
        Some((
            parse_cron(&self.cron).ok()?,
            parse_timezone(&self.timezone).ok()?,
        ))
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let (cron, tz) = self.parsed()?;
        next_tick(&cron, &tz, after)
    }

    /// The next tick, counted from the last one acted on (or from creation).
    pub fn next_tick(&self) -> Option<Timestamp> {
        self.next_after(self.last_tick.unwrap_or(self.created_at))
    }

    /// When due at `now`: the latest tick not after `now` and how many ticks were missed
    /// before it (0 when the worker was on time; counting stops at 100 000).
    pub fn due(&self, now: Timestamp) -> Option<(Timestamp, u64)> {
        let (cron, tz) = self.parsed()?;
        let first = next_tick(&cron, &tz, self.last_tick.unwrap_or(self.created_at))
            .filter(|t| *t <= now)?;
        let latest = cron
            .find_previous_occurrence(&now.to_zoned(tz.clone()), true)
            .ok()?
            .timestamp();
        let (mut tick, mut missed) = (first, 0);
        while tick < latest && missed < 100_000 {
            tick = next_tick(&cron, &tz, tick)?;
            missed += 1;
        }
        Some((latest, missed))
    }
}

fn next_tick(cron: &Cron, tz: &jiff::tz::TimeZone, after: Timestamp) -> Option<Timestamp> {
    cron.find_next_occurrence(&after.to_zoned(tz.clone()), false)
        .ok()
        .map(|z: Zoned| z.timestamp())
}

/// Starts the runs of due schedules until `shutdown`; `changed` wakes it when schedules
/// are created or changed.
pub async fn work(
    store: Store,
    runner: Arc<Runner>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let mut wait = Duration::from_secs(60);
        match store.schedules().await {
            Ok(schedules) => {
                for schedule in schedules.iter().filter(|s| s.enabled) {
                    let next = match schedule.due(Timestamp::now()) {
                        Some((tick, missed)) => {
                            fire(&store, &runner, schedule, tick, missed).await;
                            schedule.next_after(tick)
                        }
                        None => schedule.next_tick(),
                    };
                    if let Some(next) = next {
                        let until = next.duration_since(Timestamp::now());
                        let until = Duration::try_from(until).unwrap_or_default();
                        wait = wait.min(until);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read schedules"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = changed.notified() => {}
            () = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
        }
    }
}

/// Acts on `tick`: records it first (so a crash cannot make it run twice), then starts
/// the run.
async fn fire(store: &Store, runner: &Runner, schedule: &Schedule, tick: Timestamp, missed: u64) {
    let id = schedule.id;
    if let Err(e) = store
        .update_schedule(id, None, move |s| {
            s.last_tick = Some(tick);
            Ok(())
        })
        .await
    {
        tracing::error!(schedule = id, error = %e, "cannot record a schedule tick");
        return;
    }
    let project = match store.project(&schedule.project).await {
        Ok(Some(p)) => p,
        _ => return,
    };
    let message = if missed == 0 {
        format!("scheduled by \"{}\" ({})", schedule.name, schedule.cron)
    } else {
        format!(
            "scheduled by \"{}\" ({}): {} earlier tick(s) were missed while BetCycle was down; runs once",
            schedule.name, schedule.cron, missed
        )
    };
    let spec = TriggerSpec {
        event: "cron".into(),
        git_ref: schedule.git_ref.clone(),
        env: schedule.env.clone(),
        schedule: Some(id),
        message,
        ..TriggerSpec::default()
    };
    let ctx = Context::system(format!("schedule:{}", schedule.name));
    let outcome = runner.trigger(&project, spec, &ctx).await;
    let _ = store
        .update_schedule(id, None, move |s| {
            match outcome {
                Ok(run) => {
                    s.last_run = Some(run.number);
                    s.last_error.clear();
                }
                Err(e) => s.last_error = e.to_string(),
            }
            Ok(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str, created: &str) -> Schedule {
        let mut s = Schedule::create(
            "app",
            ScheduleChange {
                name: Some("nightly".into()),
                cron: Some(cron.into()),
                timezone: Some(tz.into()),
                ..ScheduleChange::default()
            },
        )
        .unwrap();
        s.created_at = created.parse().unwrap();
        s
    }

    #[test]
    fn ticks_follow_the_time_zone() {
        let s = schedule("0 2 * * *", "Europe/Berlin", "2026-01-10T12:00:00Z");
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_tick().unwrap(),
            "2026-01-11T01:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn missed_ticks_collapse_into_one() {
        let s = schedule("*/5 * * * *", "UTC", "2026-01-10T12:00:00Z");
        assert_eq!(s.due("2026-01-10T12:04:59Z".parse().unwrap()), None);
        let (tick, missed) = s.due("2026-01-10T12:31:00Z".parse().unwrap()).unwrap();
        assert_eq!(tick, "2026-01-10T12:30:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(missed, 5);
        let mut after = s.clone();
        after.last_tick = Some(tick);
        assert_eq!(after.due("2026-01-10T12:34:00Z".parse().unwrap()), None);
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(parse_cron("61 * * * *").unwrap_err().contains("61 * * * *"));
        assert!(parse_cron("* * *").is_err());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("*/10 * * * * *").is_ok(), "seconds field");
        assert!(
            parse_timezone("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }
}
