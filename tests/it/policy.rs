//! Policies: the CLI on files (`policy test`, `policy eval` with the starter policies on
//! Terraform plans), and the server's policies gating deployments, uploaded through the
//! API with syntax errors refused, every evaluation in the decision log.

use crate::harness::{betcycle, run as run_cmd, tempdir};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

#[test]
fn policy_test_counts_passes_and_failures_and_exits_non_zero_on_a_failure() {
    let dir = tempdir();
    let (code, stdout, stderr) = run_cmd(
        betcycle(dir.path())
            .args(["policy", "test", "--verbose"])
            .arg(fixture("policy-tests")),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("PASS: data.betcycle.deploy_test.test_main_may_go_to_production"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL: data.betcycle.deploy_test.test_this_one_fails"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS: 3/4") && stdout.contains("FAIL: 1/4"),
        "{stdout}"
    );

    // Without the failing test, all pass and the exit code is 0.
    let only_good = dir.path().join("good");
    std::fs::create_dir_all(&only_good).unwrap();
    std::fs::copy(
        fixture("policy-tests/branches.rego"),
        only_good.join("branches.rego"),
    )
    .unwrap();
    let tests = std::fs::read_to_string(fixture("policy-tests/branches_test.rego")).unwrap();
    let good = tests.split("# Wrong on purpose").next().unwrap();
    std::fs::write(only_good.join("branches_test.rego"), good).unwrap();
    let (code, stdout, _) = run_cmd(
        betcycle(dir.path())
            .args(["policy", "test"])
            .arg(&only_good),
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("PASS: 3/3") && !stdout.contains("FAIL"),
        "{stdout}"
    );
}

#[test]
fn the_starter_terraform_policy_denies_a_public_bucket() {
    let dir = tempdir();
    let (code, stdout, stderr) = run_cmd(
        betcycle(dir.path())
            .args(["policy", "eval", "--gate", "infrastructure", "--input"])
            .arg(fixture("terraform/public-bucket.json")),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let decision: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(decision["allowed"], false);
    let denies: Vec<&str> = decision["denies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["msg"].as_str().unwrap())
        .collect();
    assert!(
        denies.contains(
            &"aws_s3_bucket.assets: bucket ACL \"public-read\" makes it publicly readable"
        ),
        "{denies:?}"
    );
    assert!(
        denies.contains(&"aws_s3_bucket.assets: missing required tags [\"environment\"]"),
        "{denies:?}"
    );
    // An unchanged resource is not judged.
    assert!(
        !denies.iter().any(|d| d.contains("aws_instance.web")),
        "{denies:?}"
    );

    let (code, stdout, _) = run_cmd(
        betcycle(dir.path())
            .args(["policy", "eval", "--gate", "infrastructure", "--input"])
            .arg(fixture("terraform/private-bucket.json")),
    );
    assert_eq!(code, 0, "{stdout}");
    let decision: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(decision["allowed"], true);
}
