//! Stored runs, the queue and the running set. Every status change publishes a
//! `RunUpdated` event after it commits.

use super::records;
use super::tables::{
    PROJECT_RUN_BRANCHES, PROJECT_RUN_STATUSES, PROJECT_RUNS, RUN_QUEUE, RUNS, RUNS_RUNNING,
};
use super::{Store, WriteTx, codec, quarantine};
use crate::ci::run::{Run, RunStatus};
use crate::core::error::{Error, Result};
use crate::core::events::Event;
use crate::identity::audit::Record;
use redb::{ReadableDatabase, ReadableTable};

pub(super) fn load(tx: &WriteTx, id: u64) -> Result<Run> {
    match tx.open_table(RUNS)?.get(id)? {
        Some(v) => codec::decode(RUNS, v.value()),
        None => Err(Error::NotFound {
            what: format!("run {id}"),
        }),
    }
}

/// Run `id`, met in the queue or the running set `from`: one that does not decode is set
/// aside and taken out of `from` (`None`), so it cannot stop the queue or recovery.
fn load_or_set_aside(
    tx: &WriteTx,
    id: u64,
    from: redb::TableDefinition<u64, ()>,
) -> Result<Option<Run>> {
    match load(tx, id) {
        Ok(run) => Ok(Some(run)),
        Err(Error::Corrupt { reason, .. }) => {
            quarantine::set_aside(tx, RUNS, id, &reason)?;
            tx.open_table(from)?.remove(id)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The ids in a queue or set, oldest first.
fn ids(tx: &WriteTx, table: redb::TableDefinition<u64, ()>) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for item in tx.open_table(table)?.iter()? {
        ids.push(item?.0.value());
    }
    Ok(ids)
}

/// Stores `run` and keeps its status and branch index entries with it.
pub(super) fn save(tx: &WriteTx, run: &Run) -> Result<()> {
    /// What the indexes need of the record being replaced.
    #[derive(serde::Deserialize)]
    struct Indexed {
        status: RunStatus,
    }
    let old = tx
        .open_table(RUNS)?
        .insert(run.id, codec::encode(run).as_slice())?
        .map(|old| serde_json::from_slice::<Indexed>(old.value()).map(|i| i.status));
    let (project, number) = (run.project.as_str(), run.number);
    match old {
        Some(Ok(status)) if status == run.status => {}
        old => {
            let mut statuses = tx.open_table(PROJECT_RUN_STATUSES)?;
            if let Some(Ok(status)) = old {
                statuses.remove((project, status.as_str(), number))?;
            }
            statuses.insert((project, run.status.as_str(), number), run.id)?;
            // The branch is set when the run is made and never changes.
            if old.is_none()
                && let Some(branch) = &run.branch
            {
                tx.open_table(PROJECT_RUN_BRANCHES)?
                    .insert((project, branch.as_str(), number), run.id)?;
            }
        }
    }
    tx.publish(Event::RunUpdated {
        id: run.id,
        project: run.project.clone(),
        status: run.status,
    });
    Ok(())
}

/// Which of a project's runs a list shows: all, or those with this status, on this branch.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub branch: Option<String>,
}

/// A page of run history, newest first: runs in one project or in all, narrowed by
/// status, branch, event, actor and words, older than a cursor.
#[derive(Clone, Debug, Default)]
pub struct RunQuery {
    /// One project's runs (`before` is then a run number), or every project's (`before` is
    /// then a run id), of those `projects` names when given.
    pub project: Option<String>,
    pub projects: Option<std::collections::BTreeSet<String>>,
    pub filter: RunFilter,
    /// `push`, `pull_request`, `tag`, `manual`, `cron` or `api`.
    pub event: Option<String>,
    /// Who or what started it, as stored (`user:alice`).
    pub actor: Option<String>,
    /// Words the commit subject, author, ref, commit or `#number` contains (any case).
    pub text: Option<String>,
    /// Only runs before this cursor (the `next` of the page before).
    pub before: Option<u64>,
    pub limit: usize,
}

/// What a history page shows: its runs, where the next (older) one starts, and how many
/// runs were looked at for it.
#[derive(Clone, Debug, Default)]
pub struct RunPage {
    pub runs: Vec<Run>,
    /// The cursor of the next page, when there may be older runs that match.
    pub next: Option<u64>,
    pub scanned: usize,
}

/// Most runs one history page looks at: a filter that matches rarely answers with what it
/// found so far and a cursor to go on, in bounded time, however long the history.
pub const HISTORY_SCAN: usize = 2000;

/// The fields of a stored run a history filter reads; decoding only these skips the
/// rest of the record (steps, tests, artifacts) for runs the filter leaves out.
#[derive(serde::Deserialize)]
struct RunHead<'a> {
    #[serde(borrow)]
    project: std::borrow::Cow<'a, str>,
    number: u64,
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    git_ref: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    branch: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    commit: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    commit_subject: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    commit_author: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    actor: std::borrow::Cow<'a, str>,
    status: RunStatus,
}

impl RunQuery {
    fn keeps(&self, run: &RunHead, words: &[String]) -> bool {
        let contains = |field: &str| {
            let field = field.to_lowercase();
            words.iter().all(|w| field.contains(w.as_str()))
        };
        self.projects
            .as_ref()
            .is_none_or(|p| p.contains(run.project.as_ref()))
            && self.filter.status.is_none_or(|s| run.status == s)
            && self
                .filter
                .branch
                .as_deref()
                .is_none_or(|b| run.branch.as_deref() == Some(b))
            && self.event.as_deref().is_none_or(|e| run.event == e)
            && self.actor.as_deref().is_none_or(|a| run.actor == a)
            && (words.is_empty()
                || contains(&format!(
                    "{} {} {} {} #{}",
                    run.commit_subject, run.commit_author, run.git_ref, run.commit, run.number
                )))
    }
}

impl Store {
    /// One page of run history (see `RunQuery`): through the project's status or branch
    /// index when the query names them, else newest first through all runs, looking at
    /// `HISTORY_SCAN` runs at most.
    pub async fn run_history(&self, query: RunQuery) -> Result<RunPage> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let runs = tx.open_table(RUNS)?;
            let words: Vec<String> = query
                .text
                .iter()
                .flat_map(|t| t.split_whitespace())
                .map(str::to_lowercase)
                .collect();
            let before = query.before.unwrap_or(u64::MAX);
            // Candidate run ids, newest first, each with the cursor that resumes after it.
            // Through the project's status index, else its branch index (the record then
            // decides the rest of the filter).
            let by: Option<(super::records::NumbersBy, &str)> =
                match (query.filter.status, &query.filter.branch) {
                    (Some(status), _) => Some((PROJECT_RUN_STATUSES, status.as_str())),
                    (None, Some(branch)) => Some((PROJECT_RUN_BRANCHES, branch.as_str())),
                    (None, None) => None,
                };
            // Candidate run ids, newest first, each with the cursor that resumes after it.
            let candidates: Vec<Result<(u64, u64)>> = match (&query.project, by) {
                (Some(project), Some((index, value))) => {
                    let key = |n| (project.as_str(), value, n);
                    let index = tx.open_table(index)?;
                    let range = index.range(key(0)..key(before))?;
                    range
                        .rev()
                        .take(HISTORY_SCAN)
                        .map(|item| {
                            item.map(|(k, v)| (v.value(), k.value().2))
                                .map_err(Into::into)
                        })
                        .collect()
                }
                (Some(project), None) => {
                    let key = |n| (project.as_str(), n);
                    let index = tx.open_table(PROJECT_RUNS)?;
                    let range = index.range(key(0)..key(before))?;
                    range
                        .rev()
                        .take(HISTORY_SCAN)
                        .map(|item| {
                            item.map(|(k, v)| (v.value(), k.value().1))
                                .map_err(Into::into)
                        })
                        .collect()
                }
                (None, _) => runs
                    .range(0..before)?
                    .rev()
                    .take(HISTORY_SCAN)
                    .map(|item| {
                        item.map(|(k, _)| (k.value(), k.value()))
                            .map_err(Into::into)
                    })
                    .collect(),
            };
            let mut page = RunPage::default();
            let mut last = None;
            for candidate in candidates {
                let (id, cursor) = candidate?;
                page.scanned += 1;
                last = Some(cursor);
                let Some(value) = runs.get(id)? else { continue };
                let bytes = value.value();
                let keep = match serde_json::from_slice::<RunHead>(bytes) {
                    Ok(head) => query.keeps(&head, &words),
                    Err(_) => false,
                };
                if keep && let Some(run) = quarantine::decode_listed(RUNS, id, bytes) {
                    page.runs.push(run);
                    if page.runs.len() >= query.limit {
                        break;
                    }
                }
            }
            // Looked at fewer than the scan allows without filling the page: nothing older.
            let exhausted = page.scanned < HISTORY_SCAN && page.runs.len() < query.limit;
            page.next = if exhausted { None } else { last };
            Ok(page)
        })
        .await
    }

    /// Stores a new run (its `id` and `number` are assigned here) and queues it.
    pub async fn create_run(&self, mut run: Run, audit: Record) -> Result<Run> {
        self.write(move |tx| {
            run.id = tx
                .open_table(RUNS)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            let project = run.project.clone();
            run.number = {
                let index = tx.open_table(PROJECT_RUNS)?;
                let last = index
                    .range((project.as_str(), 0)..=(project.as_str(), u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                last.map_or(1, |n| n + 1)
            };
            run.status = RunStatus::Queued;
            save(tx, &run)?;
            tx.open_table(PROJECT_RUNS)?
                .insert((project.as_str(), run.number), run.id)?;
            tx.open_table(RUN_QUEUE)?.insert(run.id, ())?;
            tx.audit(audit.detail(format!(
                "run {} #{} {} at {}",
                run.id, run.number, run.git_ref, run.commit
            )))?;
            Ok(run)
        })
        .await
    }

    /// Takes the oldest queued run that may start and marks it running, in one
    /// transaction. A run waits while another run of its concurrency group is running.
    pub async fn claim_next_run(&self) -> Result<Option<Run>> {
        self.write(|tx| {
            let mut busy = std::collections::BTreeSet::new();
            for id in ids(tx, RUNS_RUNNING)? {
                if let Some(run) = load_or_set_aside(tx, id, RUNS_RUNNING)?
                    && let Some(group) = run.concurrency_group
                {
                    busy.insert((run.project, group));
                }
            }
            let mut next = None;
            for id in ids(tx, RUN_QUEUE)? {
                let Some(run) = load_or_set_aside(tx, id, RUN_QUEUE)? else {
                    continue;
                };
                let blocked = run
                    .concurrency_group
                    .is_some_and(|g| busy.contains(&(run.project, g)));
                if !blocked {
                    next = Some(id);
                    break;
                }
            }
            let Some(id) = next else { return Ok(None) };
            tx.open_table(RUN_QUEUE)?.remove(id)?;
            tx.open_table(RUNS_RUNNING)?.insert(id, ())?;
            let mut run = load(tx, id)?;
            run.status = RunStatus::Running;
            run.started_at = Some(jiff::Timestamp::now());
            save(tx, &run)?;
            Ok(Some(run))
        })
        .await
    }

    /// Changes a run; a finished status also takes it out of the queue and running set.
    pub async fn update_run(
        &self,
        id: u64,
        change: impl FnOnce(&mut Run) + Send + 'static,
    ) -> Result<Run> {
        self.write(move |tx| {
            let mut run = load(tx, id)?;
            change(&mut run);
            if run.status.is_finished() {
                tx.open_table(RUN_QUEUE)?.remove(id)?;
                tx.open_table(RUNS_RUNNING)?.remove(id)?;
                if run.finished_at.is_none() {
                    run.finished_at = Some(jiff::Timestamp::now());
                }
            }
            save(tx, &run)?;
            Ok(run)
        })
        .await
    }

    /// Every queued or running run (few: the queue and the running set are small).
    pub async fn unfinished_runs(&self) -> Result<Vec<Run>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let runs = tx.open_table(RUNS)?;
            let mut out = Vec::new();
            for table in [RUN_QUEUE, RUNS_RUNNING] {
                for item in tx.open_table(table)?.iter()? {
                    let id = item?.0.value();
                    if let Some(v) = runs.get(id)?
                        && let Some(run) = quarantine::decode_listed(RUNS, id, v.value())
                    {
                        out.push(run);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn run(&self, id: u64) -> Result<Option<Run>> {
        self.read(move |db| records::by_id(&db.begin_read()?, RUNS, id))
            .await
    }

    /// Run `number` of a project.
    pub async fn run_by_number(&self, project: &str, number: u64) -> Result<Option<Run>> {
        let project = project.to_string();
        self.read(move |db| {
            records::by_number(&db.begin_read()?, PROJECT_RUNS, RUNS, &project, number)
        })
        .await
    }

    /// A project's runs, newest first.
    /// `project`'s runs newest first, at most `limit`, those `filter` keeps: through the
    /// status index when a status is asked for, else the branch index when a branch is,
    /// else the project's index (with both, the status index, checking the branch).
    pub async fn project_runs(
        &self,
        project: &str,
        filter: RunFilter,
        limit: usize,
    ) -> Result<Vec<Run>> {
        let project = project.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let keep = |run: &Run| {
                filter.status.is_none_or(|s| run.status == s)
                    && filter
                        .branch
                        .as_ref()
                        .is_none_or(|b| run.branch.as_ref() == Some(b))
            };
            match (filter.status, &filter.branch) {
                (Some(status), _) => {
                    let key = (project.as_str(), status.as_str());
                    records::newest_by(&tx, PROJECT_RUN_STATUSES, RUNS, key, limit, keep)
                }
                (None, Some(branch)) => {
                    let key = (project.as_str(), branch.as_str());
                    records::newest_by(&tx, PROJECT_RUN_BRANCHES, RUNS, key, limit, keep)
                }
                (None, None) => records::newest(&tx, PROJECT_RUNS, RUNS, &project, limit),
            }
        })
        .await
    }

    /// After a restart: every run left `running` is re-queued if it was interrupted fewer
    /// than `max_restarts` times, otherwise marked failed. Returns (re-queued, failed).
    pub async fn recover_interrupted_runs(&self, max_restarts: u32) -> Result<(usize, usize)> {
        self.write(move |tx| {
            let (mut requeued, mut failed) = (0, 0);
            for id in ids(tx, RUNS_RUNNING)? {
                let Some(mut run) = load_or_set_aside(tx, id, RUNS_RUNNING)? else {
                    continue;
                };
                tx.open_table(RUNS_RUNNING)?.remove(id)?;
                for step in run.steps.iter_mut() {
                    step.running = false;
                }
                if run.restarts < max_restarts {
                    run.restarts += 1;
                    run.status = RunStatus::Queued;
                    run.message = format!(
                        "interrupted by a server restart; re-queued (restart {})",
                        run.restarts
                    );
                    for step in run.steps.iter_mut() {
                        *step = crate::ci::run::StepRecord {
                            name: step.name.clone(),
                            needs: step.needs.clone(),
                            ..crate::ci::run::StepRecord::pending()
                        };
                    }
                    tx.open_table(RUN_QUEUE)?.insert(id, ())?;
                    requeued += 1;
                } else {
                    let now = jiff::Timestamp::now();
                    run.status = RunStatus::Failed;
                    run.finished_at = Some(now);
                    run.message = "interrupted by a server restart".into();
                    // Every step gets a final status: the one running failed, the rest
                    // never ran.
                    for step in run.steps.iter_mut().filter(|s| s.status.is_none()) {
                        if step.started_at.is_some() {
                            step.status = Some(crate::exec::StepStatus::Failed);
                            step.reason = "interrupted by a server restart".into();
                            step.finished_at = Some(now);
                        } else {
                            step.status = Some(crate::exec::StepStatus::Skipped);
                            step.reason =
                                "not run: the run was interrupted by a server restart".into();
                        }
                    }
                    failed += 1;
                }
                save(tx, &run)?;
            }
            Ok((requeued, failed))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::EventBus;
    use crate::identity::audit::Context;
    use redb::ReadableDatabase;

    fn run(branch: Option<&str>) -> Run {
        serde_json::from_value(serde_json::json!({
            "id": 0, "number": 0, "project": "p", "event": "push",
            "git_ref": branch.unwrap_or("v1"), "branch": branch, "commit": "c0ffee",
            "actor": "user:1", "status": "queued", "created_at": jiff::Timestamp::now(),
            "steps": [],
        }))
        .unwrap()
    }

    /// Every (status or branch, number) the two indexes hold for project `p`.
    async fn indexed(store: &Store) -> (Vec<(String, u64)>, Vec<(String, u64)>) {
        store
            .read(|db| {
                let tx = db.begin_read()?;
                let keys = |def: redb::TableDefinition<(&str, &str, u64), u64>| {
                    let mut out = Vec::new();
                    for item in tx.open_table(def)?.iter()? {
                        let key = item?.0;
                        let (project, value, number) = key.value();
                        assert_eq!(project, "p");
                        out.push((value.to_string(), number));
                    }
                    Ok::<_, Error>(out)
                };
                Ok((keys(PROJECT_RUN_STATUSES)?, keys(PROJECT_RUN_BRANCHES)?))
            })
            .await
            .unwrap()
    }

    /// A run moves in the status index as its status changes (never left behind), and a
    /// store from before the indexes gets them filled at open.
    #[tokio::test]
    async fn runs_are_indexed_by_their_current_status_and_their_branch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path, 1 << 20, EventBus::new()).unwrap();
        for branch in [Some("main"), Some("main"), None] {
            let audit = Record::new(&Context::cli(), "run.create", "p");
            store.create_run(run(branch), audit).await.unwrap();
        }
        store.claim_next_run().await.unwrap().unwrap();
        store
            .update_run(1, |r| r.status = RunStatus::Succeeded)
            .await
            .unwrap();
        let expected = (
            vec![
                ("queued".to_string(), 2),
                ("queued".to_string(), 3),
                ("succeeded".to_string(), 1),
            ],
            vec![("main".to_string(), 1), ("main".to_string(), 2)],
        );
        assert_eq!(indexed(&store).await, expected);

        // As a store of schema 9 was: no indexes.
        store
            .write(|tx| {
                tx.delete_table(PROJECT_RUN_STATUSES)?;
                tx.delete_table(PROJECT_RUN_BRANCHES)?;
                tx.open_table(super::super::tables::META)?
                    .insert("schema_version", codec::encode(&9u64).as_slice())?;
                Ok(())
            })
            .await
            .unwrap();
        drop(store);
        let store = Store::open(&path, 1 << 20, EventBus::new()).unwrap();
        assert_eq!(indexed(&store).await, expected);
    }
}
