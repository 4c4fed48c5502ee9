//! A finished step's reports (JUnit, coverage) and artifacts, read from the workspace;
//! anything missing or malformed becomes a warning, never a failure.

use super::*;

/// The step's JUnit and coverage reports, summed over the files its patterns match.
pub(super) fn reports_of(
    workspace: &Path,
    step: &Step,
    warnings: &mut Vec<String>,
) -> (Option<TestSummary>, Option<Coverage>) {
    let tests = read_reports(
        workspace,
        &step.reports.junit.to_vec(),
        "JUnit",
        junit::parse,
        warnings,
    )
    .into_iter()
    .reduce(|mut sum, t| {
        sum.add(t);
        sum
    });
    let coverage = Coverage::sum(read_reports(
        workspace,
        &step.reports.coverage.to_vec(),
        "coverage",
        |text, _| coverage::parse(text),
        warnings,
    ));
    (tests, coverage)
}

/// Reads and parses every report file matching `patterns`; a missing or bad file
/// becomes a warning.
pub(super) fn read_reports<T>(
    workspace: &Path,
    patterns: &[String],
    kind: &str,
    parse: fn(&str, &mut Vec<String>) -> Result<T, String>,
    warnings: &mut Vec<String>,
) -> Vec<T> {
    let (mut reports, before) = (Vec::new(), warnings.len());
    for path in matching_files(workspace, patterns) {
        let text = match std::fs::read_to_string(workspace.join(&path)) {
            Ok(text) => text,
            Err(e) => {
                warnings.push(format!("{kind} report {path}: cannot read it: {e}"));
                continue;
            }
        };
        let mut found = Vec::new();
        match parse(&text, &mut found) {
            Ok(report) => reports.push(report),
            Err(e) => warnings.push(format!("{kind} report {path}: {e}")),
        }
        warnings.extend(
            found
                .into_iter()
                .map(|w| format!("{kind} report {path}: {w}")),
        );
    }
    if reports.is_empty() && !patterns.is_empty() && warnings.len() == before {
        warnings.push(format!(
            "{kind} report {}: no such file",
            patterns.join(", ")
        ));
    }
    reports
}

/// Workspace-relative paths of the files matching any of `patterns`, sorted (`.git`
/// is never searched).
pub(super) fn matching_files(workspace: &Path, patterns: &[String]) -> Vec<String> {
    if patterns.is_empty() {
        return Vec::new();
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        builder.add(Glob::new(p).expect("validated when the pipeline was parsed"));
    }
    let set = builder.build().expect("validated patterns");
    let mut found: Vec<String> = walkdir::WalkDir::new(workspace)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            if !entry.file_type().is_file() {
                return None;
            }
            let relative = entry.path().strip_prefix(workspace).ok()?;
            let relative = relative.to_string_lossy().to_string();
            set.is_match(&relative).then_some(relative)
        })
        .collect();
    found.sort();
    found
}

/// Files in the workspace matching any of `patterns`, with size and SHA-256.
pub(super) fn collect_artifacts(
    workspace: &Path,
    patterns: &[String],
    warnings: &mut Vec<String>,
) -> Vec<Artifact> {
    if patterns.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for relative in matching_files(workspace, patterns) {
        match digest_file(&workspace.join(&relative)) {
            Ok((size, sha256)) => found.push(Artifact {
                path: relative,
                size,
                sha256,
            }),
            Err(e) => warnings.push(format!("artifact {relative}: cannot read it: {e}")),
        }
    }
    if found.is_empty() {
        warnings.push(format!(
            "no files match the artifact patterns {}",
            patterns.join(", ")
        ));
    }
    found
}
