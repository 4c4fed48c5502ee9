//! Test and coverage reports written by steps: JUnit XML, and coverage as LCOV or
//! Cobertura XML. A report that cannot be read gives a warning naming the file and the
//! problem; it never fails the run.

pub mod coverage;
pub mod junit;
