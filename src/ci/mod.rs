//! Continuous integration: the pipeline file, runs and their queue, the run worker,
//! and test/coverage reports.

pub mod flaky;
pub mod pipeline;
pub mod reports;
pub mod run;
pub mod runner;
