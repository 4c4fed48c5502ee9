//! DORA metrics for one environment, from its deployment history:
//! - deployment frequency: successful deployments per day over the window;
//! - change lead time: median of (commit time → successful deployment finished);
//! - change fail rate: deployments that failed or were rolled back ÷ all finished ones;
//! - failed deployment recovery time: median of (a failed or rolled-back deployment
//!   finished → the next successful deployment there finished).
//!
//! Rollback deployments restore an old change rather than ship a new one: they count as
//! recoveries, not as changes (no lead time, not in the fail rate). Cancelled deployments
//! never ran and do not count.

use super::model::{Deployment, DeploymentStatus, Reason, Release};
use jiff::Timestamp;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dora {
    pub environment: String,
    pub days: u32,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Successful deployments in the window (rollbacks included).
    pub deployments: u64,
    pub deployment_frequency_per_day: f64,
    pub change_lead_time_seconds: Option<f64>,
    /// Changes (non-rollback deployments that finished) in the window, and how many failed
    /// or were rolled back.
    pub changes: u64,
    pub failed_changes: u64,
    pub change_fail_rate: Option<f64>,
    pub recovery_time_seconds: Option<f64>,
    /// Per day, oldest first: (date, successful, failed or rolled back), for charts.
    pub daily: Vec<Day>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Day {
    pub date: String,
    pub succeeded: u64,
    pub failed: u64,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    to.as_millisecond().saturating_sub(from.as_millisecond()) as f64 / 1000.0
}

/// The metrics of `environment` over the `days` before `now`. `deployments` may hold any
/// project's history in any order; `releases` maps release ids to releases.
pub fn compute(
    deployments: &[Deployment],
    releases: &HashMap<u64, Release>,
    environment: &str,
    now: Timestamp,
    days: u32,
) -> Dora {
    let from = now - jiff::SignedDuration::from_hours(24 * i64::from(days.max(1)));
    let mut here: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| d.environment == environment && d.finished_at.is_some())
        .filter(|d| d.status != DeploymentStatus::Cancelled)
        .collect();
    here.sort_by_key(|d| d.finished_at);
    let finished = |d: &Deployment| d.finished_at.expect("filtered");
    let in_window: Vec<&Deployment> = here
        .iter()
        .copied()
        .filter(|d| finished(d) >= from && finished(d) <= now)
        .collect();
    let succeeded: Vec<&Deployment> = in_window
        .iter()
        .copied()
        .filter(|d| d.status == DeploymentStatus::Succeeded)
        .collect();
    let lead_times: Vec<f64> = succeeded
        .iter()
        .filter(|d| d.reason != Reason::Rollback)
        .filter_map(|d| {
            let commit = releases.get(&d.release)?.commit_time?;
            Some(seconds(commit, finished(d)))
        })
        .collect();
    let changes: Vec<&Deployment> = in_window
        .iter()
        .copied()
        .filter(|d| d.reason != Reason::Rollback)
        .collect();
    let failed_changes = changes.iter().filter(|d| failed(d)).count() as u64;
    let recoveries: Vec<f64> = in_window
        .iter()
        .filter(|d| failed(d))
        .filter_map(|bad| {
            here.iter()
                .find(|d| d.status == DeploymentStatus::Succeeded && finished(d) > finished(bad))
                .map(|good| seconds(finished(bad), finished(good)))
        })
        .collect();
    let daily = per_day(&in_window, now, days);
    Dora {
        environment: environment.to_string(),
        days,
        from,
        to: now,
        deployments: succeeded.len() as u64,
        deployment_frequency_per_day: succeeded.len() as f64 / f64::from(days.max(1)),
        change_lead_time_seconds: median(lead_times),
        changes: changes.len() as u64,
        failed_changes,
        change_fail_rate: (!changes.is_empty())
            .then(|| failed_changes as f64 / changes.len() as f64),
        recovery_time_seconds: median(recoveries),
        daily,
    }
}

/// A deployment that failed or was rolled back.
fn failed(d: &Deployment) -> bool {
    matches!(
        d.status,
        DeploymentStatus::Failed | DeploymentStatus::RolledBack
    )
}

/// Succeeded and failed deployments on each of the `days` days up to `now` (UTC).
fn per_day(in_window: &[&Deployment], now: Timestamp, days: u32) -> Vec<Day> {
    let last = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    (0..i64::from(days.max(1)))
        .rev()
        .map(|back| {
            let date = last - jiff::Span::new().days(back);
            let on_day: Vec<&&Deployment> = in_window
                .iter()
                .filter(|d| {
                    let finished = d.finished_at.expect("finished deployments only");
                    finished.to_zoned(jiff::tz::TimeZone::UTC).date() == date
                })
                .collect();
            Day {
                date: date.to_string(),
                succeeded: on_day
                    .iter()
                    .filter(|d| d.status == DeploymentStatus::Succeeded)
                    .count() as u64,
                failed: on_day.iter().filter(|d| failed(d)).count() as u64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::model::Reason;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn deployment(
        n: u64,
        release: u64,
        status: DeploymentStatus,
        reason: Reason,
        finished: &str,
    ) -> Deployment {
        Deployment {
            id: n,
            project: "p".into(),
            number: n,
            environment: "production".into(),
            release,
            release_number: release,
            commit: String::new(),
            status,
            reason,
            requested_by: "user:a".into(),
            requested_at: at(finished),
            required_approvals: 0,
            approvals: Vec::new(),
            started_at: None,
            finished_at: Some(at(finished)),
            message: String::new(),
            rollback_of: None,
            notes: Vec::new(),
            timeline: Vec::new(),
            secrets: Vec::new(),
            decisions: Vec::new(),
        }
    }

    fn release(id: u64, commit_time: &str) -> Release {
        Release {
            id,
            project: "p".into(),
            number: id,
            run: id,
            run_number: id,
            commit: String::new(),
            git_ref: "main".into(),
            branch: Some("main".into()),
            commit_time: Some(at(commit_time)),
            commit_message: String::new(),
            actor: "user:a".into(),
            artifacts: Vec::new(),
            tests: None,
            coverage: None,
            deploy: Default::default(),
            created_at: at(commit_time),
        }
    }

    #[test]
    fn the_four_keys_by_hand() {
        use DeploymentStatus::*;
        let releases = HashMap::from([
            (1, release(1, "2026-11-20T10:00:00Z")),
            (2, release(2, "2026-11-21T10:00:00Z")),
            (3, release(3, "2026-11-21T12:00:00Z")),
        ]);
        let history = vec![
            // Release 1 shipped after 2 h.
            deployment(1, 1, Succeeded, Reason::Manual, "2026-11-20T12:00:00Z"),
            // Release 2 failed; rolled back to 1 after 30 min (a recovery, not a change).
            deployment(2, 2, RolledBack, Reason::Manual, "2026-11-21T11:00:00Z"),
            deployment(3, 1, Succeeded, Reason::Rollback, "2026-11-21T11:30:00Z"),
            // Release 3 shipped after 4 h.
            deployment(4, 3, Succeeded, Reason::Promotion, "2026-11-21T16:00:00Z"),
            // Never ran.
            deployment(5, 3, Cancelled, Reason::Manual, "2026-11-21T17:00:00Z"),
        ];
        let d = compute(
            &history,
            &releases,
            "production",
            at("2026-11-22T00:00:00Z"),
            7,
        );
        assert_eq!(d.deployments, 3);
        assert!((d.deployment_frequency_per_day - 3.0 / 7.0).abs() < 1e-9);
        // Lead times 2 h and 4 h → median 3 h; the rollback has none.
        assert_eq!(d.change_lead_time_seconds, Some(3.0 * 3600.0));
        assert_eq!((d.changes, d.failed_changes), (3, 1));
        assert!((d.change_fail_rate.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(d.recovery_time_seconds, Some(1800.0));
        assert_eq!(d.daily.len(), 7);
        assert_eq!(d.daily[6].date, "2026-11-22");
        assert_eq!((d.daily[5].succeeded, d.daily[5].failed), (2, 1));
        // Another environment has nothing.
        let empty = compute(
            &history,
            &releases,
            "staging",
            at("2026-11-22T00:00:00Z"),
            7,
        );
        assert_eq!(empty.change_fail_rate, None);
    }
}
