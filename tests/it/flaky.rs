//! Flaky tests: a test that fails, then passes on a re-run of the same commit, is listed
//! with its history; a test that always passes is not.

use crate::harness::tempdir;
use crate::runs::{demo, trigger, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;

/// A project whose one step, `test`, counts its attempts in `$COUNTER` (`$n` in
/// `script`, which writes `junit.xml` from it); the counter file is made before the
/// server starts, since a local step reaches only what existed then.
async fn counting_project(
    dir: &std::path::Path,
    script: &str,
) -> (crate::harness::Server, PathBuf) {
    let counter = dir.join("attempts");
    std::fs::write(&counter, "0").unwrap();
    let script: String = script.lines().map(|l| format!("      {l}\n")).collect();
    let pipeline = format!(
        "env: {{ COUNTER: \"{}\" }}\nsteps:\n  - name: test\n    run: |\n      n=$(cat \"$COUNTER\"); n=$((n+1)); echo $n > \"$COUNTER\"\n{script}    reports: {{ junit: junit.xml }}\n",
        counter.display()
    );
    demo(dir, &pipeline, &[]).await
}

/// `GET /api/v1/projects/demo/tests/flaky`, answered 200.
async fn flaky_tests(server: &crate::harness::Server) -> Value {
    let (status, flaky) = server
        .send_json(
            Method::GET,
            "/api/v1/projects/demo/tests/flaky",
            json!(null),
        )
        .await;
    assert_eq!(status, 200, "{flaky}");
    flaky
}

#[tokio::test]
async fn a_test_that_fails_then_passes_on_a_rerun_of_the_same_commit_is_flaky() {
    let dir = tempdir();
    let (server, _) = counting_project(
        dir.path(),
        r#"if [ $n -eq 1 ]; then r='<failure message="boom"/>'; else r=''; fi
printf '<testsuite name="suite" tests="2"><testcase classname="suite" name="always"/><testcase classname="suite" name="sometimes">%s</testcase></testsuite>' "$r" > junit.xml"#,
    )
    .await;
    trigger(&server, "demo").await;
    let first: Value = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(first["steps"][0]["tests"]["failed"], 1, "{first:#}");
    let none = flaky_tests(&server).await;
    assert_eq!(
        none["tests"],
        json!([]),
        "one failure is not flakiness: {none}"
    );

    let (status, _) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/runs/1/rerun",
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    let second: Value = wait_for(&server, "demo", 2, |r| r["status"] == "succeeded").await;
    assert_eq!(second["steps"][0]["tests"]["failed"], 0, "{second:#}");
    assert_eq!(second["commit"], first["commit"]);

    let flaky = flaky_tests(&server).await;
    let tests = flaky["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 1, "{flaky:#}");
    let t = &tests[0];
    assert_eq!(t["name"], "suite::sometimes");
    assert_eq!(t["step"], "test");
    let short = &first["commit"].as_str().unwrap()[..7];
    assert_eq!(t["reason"], format!("failed and passed on commit {short}"));
    assert_eq!(t["failures"], 1);
    assert_eq!(t["passes"], 1);
    // The project page lists it too.
    let page = server.get_text("/projects/demo").await;
    assert!(
        page.contains("Flaky tests") && page.contains("suite::sometimes"),
        "{page}"
    );
    assert!(
        page.contains(&format!("failed and passed on commit {short}")),
        "{page}"
    );
    assert_eq!(
        t["history"],
        json!([
            {"run": 1, "commit": first["commit"], "passed": false},
            {"run": 2, "commit": first["commit"], "passed": true},
        ])
    );
}

#[tokio::test]
async fn a_test_that_flips_across_commits_is_flaky_and_one_fixed_once_is_not() {
    let dir = tempdir();
    // `flips` fails on odd attempts; `fixed` fails on the first only.
    let (server, repo) = counting_project(
        dir.path(),
        r#"if [ $((n % 2)) -eq 1 ]; then a='<failure message="odd"/>'; else a=''; fi
if [ $n -eq 1 ]; then b='<failure message="first"/>'; else b=''; fi
printf '<testsuite name="s" tests="2"><testcase classname="s" name="flips">%s</testcase><testcase classname="s" name="fixed">%s</testcase></testsuite>' "$a" "$b" > junit.xml"#,
    )
    .await;
    for n in 1..=4 {
        if n > 1 {
            crate::run::git(
                &repo,
                &["commit", "-q", "--allow-empty", "-m", &format!("c{n}")],
            );
        }
        trigger(&server, "demo").await;
        wait_for(&server, "demo", n, |r| r["status"] == "succeeded").await;
    }
    let flaky = flaky_tests(&server).await;
    let tests = flaky["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 1, "{flaky:#}");
    assert_eq!(tests[0]["name"], "s::flips");
    assert_eq!(tests[0]["reason"], "flipped 3 times");
    assert_eq!(tests[0]["flips"], 3);
}
