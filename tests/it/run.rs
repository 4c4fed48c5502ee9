//! `betcycle run` on real git repositories made here: the DAG, parallelism, failures,
//! reports, artifacts, timeouts and process-tree cleanup.

use crate::harness::{betcycle, run, tempdir};
use serde_json::Value;
use sha2::Digest;
use std::path::Path;

/// Runs git in `repo` (as a fixed author), returning its output.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn git_repo(dir: &Path, pipeline: &str) {
    std::fs::write(dir.join(".betcycle.yml"), pipeline).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "pipeline"]);
}

pub fn millis(v: &Value) -> i64 {
    v.as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

pub const DAG: &str = r#"
env: { GREETING: hello }
steps:
  - name: prepare
    run: mkdir -p out && echo "$GREETING from $BETCYCLE_BRANCH at $BETCYCLE_COMMIT"
  - name: unit
    depends_on: [prepare]
    run: |
      sleep 1
      printf '<testsuites><testsuite name="s"><testcase classname="calc" name="adds" time="0.2"/><testcase classname="calc" name="divides" time="0.1"><failure message="division by zero"/></testcase><testcase name="later"><skipped/></testcase></testsuite></testsuites>' > out/junit.xml
      printf 'TN:\nSF:src/a.rs\nLF:8\nLH:6\nend_of_record\nSF:src/b.rs\nLF:2\nLH:1\nend_of_record\n' > out/lcov.info
    reports: { junit: out/junit.xml, coverage: out/lcov.info }
  - name: lint
    depends_on: [prepare]
    run: sleep 1; echo "style problem" >&2; exit 3
    allow_failure: true
  - name: package
    depends_on: [unit, lint]
    run: printf 'release bits' > out/app.bin
    artifacts: [out/*.bin]
"#;

#[test]
fn a_four_step_dag_runs_in_parallel_and_reports_tests_coverage_and_artifacts() {
    let dir = tempdir();
    git_repo(dir.path(), DAG);
    let report = dir.path().join("report.json");
    let (code, stdout, stderr) = run(betcycle(dir.path()).arg("run").arg("--report").arg(&report));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("[prepare] hello from main at "), "{stdout}");
    assert!(stdout.contains("[lint] style problem"), "{stdout}");

    let results: Vec<Value> = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let step = |name: &str| results.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(step("prepare")["status"], "succeeded");
    assert_eq!(step("unit")["status"], "succeeded");
    assert_eq!(step("lint")["status"], "failed_allowed");
    assert_eq!(step("lint")["exit_code"], 3);
    assert_eq!(step("package")["status"], "succeeded");

    // unit and lint both need only prepare: their recorded times overlap.
    let (unit, lint) = (step("unit"), step("lint"));
    assert!(millis(&unit["started_at"]) < millis(&lint["finished_at"]));
    assert!(millis(&lint["started_at"]) < millis(&unit["finished_at"]));
    // package waited for both.
    assert!(millis(&step("package")["started_at"]) >= millis(&unit["finished_at"]));

    let tests = &unit["tests"];
    assert_eq!(
        (
            tests["total"].as_u64(),
            tests["passed"].as_u64(),
            tests["failed"].as_u64(),
            tests["skipped"].as_u64()
        ),
        (Some(3), Some(1), Some(1), Some(1))
    );
    let failed = tests["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["outcome"] == "failed")
        .unwrap();
    assert_eq!(failed["name"], "calc::divides");
    assert_eq!(failed["message"], "division by zero");
    assert_eq!(unit["coverage"]["percent"], 70.0);

    let artifact = &step("package")["artifacts"][0];
    assert_eq!(artifact["path"], "out/app.bin");
    assert_eq!(artifact["size"], 12);
    let expected = sha2::Sha256::digest(b"release bits");
    let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(artifact["sha256"], expected.as_str());
}

#[test]
fn a_failing_step_fails_the_run_and_skips_its_dependents() {
    let dir = tempdir();
    git_repo(
        dir.path(),
        "steps:\n  - name: build\n    run: \"echo compiling; echo 'error: it broke' >&2; exit 2\"\n  - name: ship\n    run: echo shipping\n    depends_on: [build]\n  - name: docs\n    run: echo docs\n",
    );
    let (code, stdout, stderr) = run(betcycle(dir.path()).arg("run"));
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("[build] compiling"));
    assert!(stdout.contains("[build] error: it broke"));
    assert!(stdout.contains("✗ build failed"));
    assert!(
        stdout.contains("- ship skipped")
            && stdout.contains("dependency \"build\" did not succeed"),
        "{stdout}"
    );
    assert!(stdout.contains("✓ docs succeeded"));
    assert!(!stdout.contains("[ship]"));
    assert_eq!(stderr, "error: the run failed\n");
}

#[test]
fn a_timeout_kills_the_whole_process_tree() {
    let dir = tempdir();
    git_repo(
        dir.path(),
        "steps:\n  - name: hang\n    run: sh -c 'sleep 600 & echo $! > grandchild.pid; wait'\n    timeout: 1s\n    retry: 1\n",
    );
    let started = std::time::Instant::now();
    let report = dir.path().join("report.json");
    let (code, stdout, _) = run(betcycle(dir.path()).arg("run").arg("--report").arg(&report));
    assert_eq!(code, 1, "{stdout}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let results: Vec<Value> = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(results[0]["status"], "timed_out");
    assert_eq!(results[0]["attempts"], 2, "one retry");
    let pid = std::fs::read_to_string(dir.path().join("grandchild.pid")).unwrap();
    assert!(gone(pid.trim()), "the grandchild sleep {pid} survived");
}

/// Whether a process no longer runs (absent, or a zombie waiting to be reaped).
pub fn gone(pid: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) if std::time::Instant::now() > deadline => return false,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

#[test]
fn step_selection_and_when_filters() {
    let dir = tempdir();
    git_repo(
        dir.path(),
        "steps:\n  - name: a\n    run: echo A\n  - name: b\n    run: echo B\n    depends_on: [a]\n    when: { branch: release/* }\n",
    );
    let (code, stdout, _) =
        run(betcycle(dir.path()).args(["run", "--step", "b", "--branch", "release/2"]));
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("[b] B") && !stdout.contains("[a] A"),
        "{stdout}"
    );
    let (code, stdout, _) = run(betcycle(dir.path()).arg("run"));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("- b skipped: branch \"main\" matches none of release/*"),
        "{stdout}"
    );
    let (code, _, stderr) = run(betcycle(dir.path()).args(["run", "--step", "c"]));
    assert_eq!(code, 2);
    assert_eq!(stderr, "error: no step \"c\"; steps are a, b\n");
}

#[test]
fn services_run_for_the_duration_of_the_run() {
    let dir = tempdir();
    git_repo(
        dir.path(),
        "services:\n  - name: db\n    run: echo $$ > db.pid; echo up > db.ready; exec sleep 600\n    ready: test -e db.ready\nsteps:\n  - name: use-db\n    run: cat db.ready\n",
    );
    let (code, stdout, stderr) = run(betcycle(dir.path()).arg("run"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("[use-db] up"), "{stdout}");
    let pid = std::fs::read_to_string(dir.path().join("db.pid")).unwrap();
    assert!(gone(pid.trim()), "the service outlived the run");

    // A service that dies before it is ready fails every step, saying why.
    git_repo_update(
        dir.path(),
        "services:\n  - name: db\n    run: exit 1\n    ready: test -e never\nsteps:\n  - name: use-db\n    run: echo never\n",
    );
    let (code, stdout, _) = run(betcycle(dir.path()).arg("run"));
    assert_eq!(code, 1);
    assert!(
        stdout.contains("✗ use-db failed: service \"db\" exited before it was ready"),
        "{stdout}"
    );
    assert!(!stdout.contains("[use-db] never"));
}

fn git_repo_update(dir: &Path, pipeline: &str) {
    std::fs::write(dir.join(".betcycle.yml"), pipeline).unwrap();
}
