//! JUnit XML (`<testsuites>` or a single `<testsuite>`), as written by cargo-nextest,
//! pytest, Maven Surefire, Jest and most other runners.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TestSummary {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    #[serde(with = "super::finite")]
    pub duration_secs: f64,
    /// Every test case, for failure details and per-test history (flakiness).
    pub cases: Vec<TestCase>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    /// `classname::name` when the report gives a class name.
    pub name: String,
    pub outcome: TestOutcome,
    #[serde(with = "super::finite")]
    pub duration_secs: f64,
    /// The failure or error message, or why it was skipped (pytest's skip and xfail
    /// reasons), if the report gives one.
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    Passed,
    Failed,
    Skipped,
}

fn attr(e: &BytesStart, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
}

impl TestSummary {
    /// Adds another report's tests (several JUnit files of one step count as one).
    pub fn add(&mut self, other: TestSummary) {
        self.total += other.total;
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.duration_secs += other.duration_secs;
        self.cases.extend(other.cases);
    }
}

/// Parses a JUnit XML document. Errors say what is wrong and at which byte; a figure
/// that is not a finite number (`time="NaN"`) counts as 0 and adds to `warnings`.
pub fn parse(xml: &str, warnings: &mut Vec<String>) -> Result<TestSummary, String> {
    let mut reader = Reader::from_str(xml);
    let mut summary = TestSummary::default();
    let mut current: Option<TestCase> = None;
    let mut saw_root = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("invalid XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(e) | Event::Empty(e) if !saw_root => match e.local_name().as_ref() {
                "testsuites" | "testsuite" => saw_root = true,
                other => {
                    return Err(format!(
                        "not a JUnit report: the root element is <{}>, expected <testsuites> or <testsuite>",
                        other
                    ));
                }
            },
            Event::Start(e) if e.local_name().as_ref() == "testcase" => {
                current = Some(case(&e, warnings));
            }
            Event::Empty(e) if e.local_name().as_ref() == "testcase" => {
                push(&mut summary, case(&e, warnings));
            }
            Event::Start(e) | Event::Empty(e) => {
                if let Some(c) = current.as_mut() {
                    match e.local_name().as_ref() {
                        "failure" | "error" => {
                            c.outcome = TestOutcome::Failed;
                            if c.message.is_empty() {
                                c.message = attr(&e, "message").unwrap_or_default();
                            }
                        }
                        "skipped" if c.outcome != TestOutcome::Failed => {
                            c.outcome = TestOutcome::Skipped;
                            if c.message.is_empty() {
                                c.message = attr(&e, "message").unwrap_or_default();
                            }
                        }
                        _ => {}
                    }
                }
            }
            Event::End(e) if e.local_name().as_ref() == "testcase" => {
                if let Some(c) = current.take() {
                    push(&mut summary, c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err("not a JUnit report: no <testsuites> or <testsuite> element".into());
    }
    Ok(summary)
}

/// Reports with more bad figures than this say so once more and stop listing them.
const MAX_WARNINGS: usize = 5;

fn case(e: &BytesStart, warnings: &mut Vec<String>) -> TestCase {
    let name = attr(e, "name").unwrap_or_default();
    let name = match attr(e, "classname").filter(|c| !c.is_empty()) {
        Some(class) => format!("{class}::{name}"),
        None => name,
    };
    let duration_secs = match attr(e, "time") {
        None => 0.0,
        Some(t) => super::number(&format!("testcase \"{name}\": time"), &t).unwrap_or_else(|e| {
            if warnings.len() < MAX_WARNINGS {
                warnings.push(format!("{e}; counted as 0"));
            }
            0.0
        }),
    };
    TestCase {
        name,
        outcome: TestOutcome::Passed,
        duration_secs,
        message: String::new(),
    }
}

fn push(summary: &mut TestSummary, case: TestCase) {
    summary.total += 1;
    match case.outcome {
        TestOutcome::Passed => summary.passed += 1,
        TestOutcome::Failed => summary.failed += 1,
        TestOutcome::Skipped => summary.skipped += 1,
    }
    summary.duration_secs += case.duration_secs;
    summary.cases.push(case);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passes_failures_errors_and_skips() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="4" failures="1" errors="1">
  <testsuite name="app" tests="4">
    <testcase name="adds" classname="math" time="0.5"/>
    <testcase name="divides" classname="math" time="0.25">
      <failure message="assertion failed: 1 / 0">stack trace</failure>
    </testcase>
    <testcase name="io" time="0.25"><error message="boom &amp; bust"/></testcase>
    <testcase name="later" classname="math"><skipped message="needs a GPU"/></testcase>
  </testsuite>
</testsuites>"#;
        let mut warnings = Vec::new();
        let s = super::parse(xml, &mut warnings).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(s.cases[3].message, "needs a GPU");
        assert_eq!((s.total, s.passed, s.failed, s.skipped), (4, 1, 2, 1));
        assert_eq!(s.duration_secs, 1.0);
        assert_eq!(s.cases[1].name, "math::divides");
        assert_eq!(s.cases[1].message, "assertion failed: 1 / 0");
        assert_eq!(s.cases[2].message, "boom & bust");
    }

    #[test]
    fn non_finite_times_count_as_zero_with_a_warning() {
        let mut warnings = Vec::new();
        let xml = r#"<testsuite time="NaN"><testcase name="a" time="NaN"/><testcase name="b" time="-1"/><testcase name="c" time="0.5"/></testsuite>"#;
        let s = super::parse(xml, &mut warnings).unwrap();
        assert_eq!((s.total, s.duration_secs), (3, 0.5));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("testcase \"a\": time \"NaN\""),
            "{warnings:?}"
        );
        let back: TestSummary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    fn parse(xml: &str) -> Result<TestSummary, String> {
        super::parse(xml, &mut Vec::new())
    }

    #[test]
    fn bad_reports_say_what_is_wrong() {
        assert!(
            parse("<html></html>")
                .unwrap_err()
                .contains("root element is <html>")
        );
        assert!(
            parse("<testsuite><testcase name='x'></testsuite>")
                .unwrap_err()
                .starts_with("invalid XML")
        );
        assert!(parse("").unwrap_err().contains("no <testsuites>"));
    }
}
