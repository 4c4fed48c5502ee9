//! Bulk history for benchmarks (`betcycle dev seed`): finished runs written many to a
//! transaction, with their project index and audit entries, as `create_run` and the
//! runner would have left them, but without the queue or one commit per record.

use super::Store;
use super::run::save;
use super::tables::{PROJECT_RUNS, RUNS};
use crate::ci::run::Run;
use crate::core::error::Result;
use crate::identity::audit::{Context, Record};
use redb::ReadableTable;

impl Store {
    /// Stores finished runs in one transaction: ids and per-project numbers are assigned
    /// here (after the ones stored); each gets the audit entry a triggered run gets.
    pub async fn import_runs(&self, runs: Vec<Run>) -> Result<()> {
        self.write(move |tx| {
            let mut id = tx.open_table(RUNS)?.last()?.map_or(0, |(k, _)| k.value());
            for mut run in runs {
                id += 1;
                run.id = id;
                let last = tx
                    .open_table(PROJECT_RUNS)?
                    .range((run.project.as_str(), 0)..=(run.project.as_str(), u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                run.number = last.map_or(1, |n| n + 1);
                save(tx, &run)?;
                tx.open_table(PROJECT_RUNS)?
                    .insert((run.project.as_str(), run.number), run.id)?;
                let record = Record::new(&Context::cli(), "run.create", run.project.clone());
                tx.audit(record.detail(format!(
                    "run {} #{} {} at {}",
                    run.id, run.number, run.git_ref, run.commit
                )))?;
            }
            Ok(())
        })
        .await
    }
}
