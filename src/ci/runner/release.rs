//! The release a green run makes.

use super::*;
use crate::ci::run::Run;
use crate::core::git::{self};
use crate::delivery::Release;
use crate::exec::StepResult;
use crate::projects::Project;
use std::collections::BTreeMap;

impl Runner {
    /// The release a green run makes: its commit (with the commit's time and subject from
    /// the mirror), artifacts, test counts and coverage, and the deploy section.
    pub(super) async fn release_of(
        &self,
        run: &Run,
        project: &Project,
        results: &[StepResult],
        deploy: BTreeMap<String, crate::ci::pipeline::deploy::DeployDef>,
    ) -> Release {
        let mirror = self.mirrors.path(project.id);
        let (commit_time, commit_message) = match git::git(
            &["log", "-1", "--format=%cI%n%s", &run.commit],
            Some(&mirror),
        )
        .await
        {
            Ok(out) => {
                let mut lines = out.lines();
                (
                    lines.next().and_then(|t| t.parse::<jiff::Timestamp>().ok()),
                    lines.next().unwrap_or_default().to_string(),
                )
            }
            Err(_) => (None, String::new()),
        };
        let mut tests: Option<crate::delivery::TestCounts> = None;
        for (step, t) in results
            .iter()
            .filter_map(|r| Some((&r.name, r.tests.as_ref()?)))
        {
            let sum = tests.get_or_insert_with(Default::default);
            sum.total += t.total;
            sum.passed += t.passed;
            sum.failed += t.failed;
            sum.skipped += t.skipped;
            for case in t
                .cases
                .iter()
                .filter(|c| c.outcome == crate::ci::reports::junit::TestOutcome::Failed)
            {
                if sum.failing.len() < crate::delivery::TestCounts::LISTED {
                    let message = case.message.lines().next().unwrap_or_default();
                    sum.failing.push(if message.is_empty() {
                        format!("{step}: {}", case.name)
                    } else {
                        format!("{step}: {} — {message}", case.name)
                    });
                }
            }
        }
        let coverage = crate::ci::reports::coverage::Coverage::sum(
            results.iter().filter_map(|r| r.coverage.clone()).collect(),
        )
        .map(|c| c.percent);
        Release {
            id: 0,
            project: run.project.clone(),
            number: 0,
            run: run.id,
            run_number: run.number,
            commit: run.commit.clone(),
            git_ref: run.git_ref.clone(),
            branch: run.branch.clone(),
            commit_time,
            commit_message,
            actor: run.actor.clone(),
            artifacts: results.iter().flat_map(|r| r.artifacts.clone()).collect(),
            tests,
            coverage,
            deploy,
            created_at: jiff::Timestamp::now(),
        }
    }
}
