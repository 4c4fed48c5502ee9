//! Polling: for repositories without webhooks, each project with a `poll_interval` has its
//! branches and tags listed (`git ls-remote`) on that interval. A branch that moved or
//! appeared starts a `push` run; a new or moved tag a `tag` run. The first poll only
//! records what is there. Errors back off: the wait doubles with each failure in a row,
//! up to an hour, and the state (last error, next check) is shown with the project.

use crate::ci::runner::{Runner, TriggerSpec};
use crate::identity::audit::Context;
use crate::projects::Project;
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between polls of a failing repository.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PollState {
    /// `refs/heads/main` → commit, as last seen.
    #[serde(default)]
    pub refs: BTreeMap<String, String>,
    #[serde(default)]
    pub last_checked: Option<Timestamp>,
    #[serde(default)]
    pub next_check: Option<Timestamp>,
    /// Failed polls in a row.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: String,
}

/// How long to wait after `failures` failed polls in a row.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.min(20));
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// What changed between two listings: (ref, before, after) for each ref that appeared or
/// moved. Deleted refs start nothing.
pub fn changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, String)> {
    after
        .iter()
        .filter(|(name, sha)| before.get(*name) != Some(sha))
        .map(|(name, sha)| (name.clone(), before.get(name).cloned(), sha.clone()))
        .collect()
}

fn at(from: Timestamp, wait: Duration) -> Timestamp {
    from.checked_add(jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(from)
}

/// Polls one project now and records the outcome.
pub async fn poll(store: &Store, runner: &Runner, project: &Project, every: Duration) {
    let mut state = store
        .poll_state(project.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let now = Timestamp::now();
    state.last_checked = Some(now);
    match crate::core::git::ls_remote(&project.repository).await {
        Ok(refs) => {
            let first = state.refs.is_empty() && state.failures == 0 && state.next_check.is_none();
            let changed = if first {
                Vec::new()
            } else {
                changes(&state.refs, &refs)
            };
            state.refs = refs;
            state.failures = 0;
            state.last_error.clear();
            state.next_check = Some(at(now, every));
            if let Err(e) = store.save_poll_state(project.id, state).await {
                tracing::error!(project = %project.slug, error = %e, "cannot record a poll");
                return;
            }
            let ctx = Context::system("poll");
            for (git_ref, before, after) in changed {
                let event = if git_ref.starts_with("refs/tags/") {
                    "tag"
                } else {
                    "push"
                };
                let spec = TriggerSpec {
                    event: event.into(),
                    git_ref: Some(git_ref.clone()),
                    commit: Some(after),
                    before,
                    message: format!("{git_ref} changed (seen by polling)"),
                    ..TriggerSpec::default()
                };
                if let Err(e) = runner.trigger(project, spec, &ctx).await {
                    tracing::warn!(project = %project.slug, git_ref, error = %e, "polling saw a change but cannot start a run");
                }
            }
        }
        Err(e) => {
            state.failures += 1;
            state.last_error = e.to_string();
            let wait = backoff(every, state.failures);
            state.next_check = Some(at(now, wait));
            tracing::warn!(project = %project.slug, failures = state.failures, retry_in_secs = wait.as_secs(), error = %e, "polling failed");
            if let Err(e) = store.save_poll_state(project.id, state).await {
                tracing::error!(project = %project.slug, error = %e, "cannot record a poll");
            }
        }
    }
}

/// Polls every project whose check is due, until `shutdown`.
pub async fn work(store: Store, runner: Arc<Runner>, shutdown: CancellationToken) {
    loop {
        if let Ok(projects) = store.list_projects().await {
            let now = Timestamp::now();
            for project in projects {
                let Some(every) = project.poll_every() else {
                    continue;
                };
                let due = match store.poll_state(project.id).await {
                    Ok(Some(state)) => state.next_check.is_none_or(|t| t <= now),
                    Ok(None) => true,
                    Err(_) => false,
                };
                if due {
                    poll(&store, &runner, &project, every).await;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let m = Duration::from_secs(60);
        assert_eq!(backoff(m, 0), m);
        assert_eq!(backoff(m, 1), Duration::from_secs(120));
        assert_eq!(backoff(m, 3), Duration::from_secs(480));
        assert_eq!(backoff(m, 30), MAX_BACKOFF);
        // An interval longer than the cap is not shortened.
        assert_eq!(
            backoff(Duration::from_secs(7200), 2),
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn changes_are_new_or_moved_refs() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let before = map(&[("refs/heads/main", "a"), ("refs/heads/old", "b")]);
        let after = map(&[("refs/heads/main", "c"), ("refs/tags/v1", "d")]);
        assert_eq!(
            changes(&before, &after),
            vec![
                ("refs/heads/main".into(), Some("a".into()), "c".into()),
                ("refs/tags/v1".into(), None, "d".into()),
            ]
        );
    }
}
