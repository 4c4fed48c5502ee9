//! Flaky tests: from the test cases a project's recent runs reported, the tests whose
//! outcome does not follow the code — one that failed and passed on the same commit (a
//! re-run made it pass), or that flips between passing and failing often.

use crate::ci::reports::junit::TestOutcome;
use crate::ci::run::Run;
use serde::Serialize;
use std::collections::BTreeMap;

/// How many runs back the analysis looks.
pub const WINDOW: usize = 200;
/// Pass/fail changes in the window that make a test flaky on their own.
pub const FLIPS: usize = 3;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlakyTest {
    /// The test case's name (`classname::name`).
    pub name: String,
    /// The step that ran it.
    pub step: String,
    /// Why it is listed: `failed and passed on commit 3f2a1c0` or `flipped 4 times`.
    pub reason: String,
    pub flips: usize,
    pub passes: usize,
    pub failures: usize,
    /// Oldest first: every run in the window that ran it (passed or failed).
    pub history: Vec<Outcome>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub run: u64,
    pub commit: String,
    pub passed: bool,
}

/// The flaky tests among `runs` (any order), most flips first.
pub fn flaky_tests(runs: &[Run]) -> Vec<FlakyTest> {
    let mut runs: Vec<&Run> = runs.iter().collect();
    runs.sort_by_key(|r| r.number);
    let mut seen: BTreeMap<(String, String), Vec<Outcome>> = BTreeMap::new();
    for run in runs {
        for step in &run.steps {
            let Some(tests) = &step.tests else { continue };
            for case in &tests.cases {
                let passed = match case.outcome {
                    TestOutcome::Passed => true,
                    TestOutcome::Failed => false,
                    TestOutcome::Skipped => continue,
                };
                seen.entry((case.name.clone(), step.name.clone()))
                    .or_default()
                    .push(Outcome {
                        run: run.number,
                        commit: run.commit.clone(),
                        passed,
                    });
            }
        }
    }
    let mut flaky: Vec<FlakyTest> = seen
        .into_iter()
        .filter_map(|((name, step), history)| {
            let flips = history
                .windows(2)
                .filter(|w| w[0].passed != w[1].passed)
                .count();
            let same_commit = history.iter().find(|failed| {
                !failed.passed
                    && history
                        .iter()
                        .any(|o| o.passed && o.commit == failed.commit)
            });
            let reason = match same_commit {
                Some(o) => format!(
                    "failed and passed on commit {}",
                    &o.commit[..o.commit.len().min(7)]
                ),
                None if flips >= FLIPS => format!("flipped {flips} times"),
                None => return None,
            };
            let passes = history.iter().filter(|o| o.passed).count();
            Some(FlakyTest {
                name,
                step,
                reason,
                flips,
                passes,
                failures: history.len() - passes,
                history,
            })
        })
        .collect();
    flaky.sort_by(|a, b| b.flips.cmp(&a.flips).then_with(|| a.name.cmp(&b.name)));
    flaky
}
