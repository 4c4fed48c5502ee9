//! Stored runs, the queue and the running set. Every status change publishes a
//! `RunUpdated` event after it commits.

use super::records;
use super::tables::{PROJECT_RUNS, RUN_QUEUE, RUNS, RUNS_RUNNING};
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

pub(super) fn save(tx: &WriteTx, run: &Run) -> Result<()> {
    tx.open_table(RUNS)?
        .insert(run.id, codec::encode(run).as_slice())?;
    tx.publish(Event::RunUpdated {
        id: run.id,
        project: run.project.clone(),
        status: run.status,
    });
    Ok(())
}

impl Store {
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
    pub async fn project_runs(&self, project: &str, limit: usize) -> Result<Vec<Run>> {
        let project = project.to_string();
        self.read(move |db| records::newest(&db.begin_read()?, PROJECT_RUNS, RUNS, &project, limit))
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
