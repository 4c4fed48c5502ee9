//! Policies: the CLI on files (`policy test`, `policy eval` with the starter policies on
//! Terraform plans), and the server's policies gating deployments, uploaded through the
//! API with syntax errors refused, every evaluation in the decision log.

use crate::harness::{betcycle, message_of, run as run_cmd, tempdir};
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
    let denies = crate::harness::texts(&decision["denies"], "msg");
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

#[tokio::test]
async fn deploy_policies_block_a_feature_branch_and_warnings_let_a_deployment_through() {
    use crate::harness::{ADMIN, ADMIN_PASSWORD, add_user, client, create_token};
    use crate::run::git;
    use crate::runs::{demo, wait_for};
    use reqwest::Method;
    use serde_json::json;
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "alice", "alice password 123", true);
    let alice = create_token(dir.path(), "alice", "write");
    let (server, repo) = demo(
        dir.path(),
        "steps:\n  - { name: build, run: 'true' }\ndeploy:\n  production: { target: { kind: exec, run: 'echo deployed' } }\n",
        &[],
    )
    .await;

    // The starter policies are on; an upload that does not parse is refused with its
    // line and column, and stores nothing.
    let starters = server.get_json("/api/v1/policies").await;
    let names = crate::harness::texts(&starters, "name");
    assert_eq!(names, ["starter-deploy.rego", "starter-terraform.rego"]);
    let bad = server
        .request(Method::PUT, "/api/v1/policies/friday.rego")
        .header("content-type", "text/plain")
        .body("package betcycle.deploy\nimport rego.v1\nwarn contains msg if {\n  msg := \n}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let message = message_of(bad).await;
    let at: Vec<&str> = message.splitn(4, ':').collect();
    assert_eq!(at[0], "friday.rego", "{message}");
    assert!(
        at[1].parse::<u32>().unwrap() >= 4 && at[2].parse::<u32>().is_ok(),
        "{message}"
    );
    assert!(server.get("/api/v1/policies/friday.rego").await.status() == 404);
    // A warning rule, uploaded properly.
    let warn = server
        .request(Method::PUT, "/api/v1/policies/care.rego")
        .header("content-type", "text/plain")
        .body("package betcycle.deploy\nimport rego.v1\nwarn contains \"production: watch the dashboards after this one\" if input.environment.production\n")
        .send()
        .await
        .unwrap();
    assert_eq!(warn.status(), 201);

    server
        .expect(
            Method::PUT,
            "/api/v1/projects/demo/environments/production",
            &json!({"protection": {"required_approvals": 1}}),
            201,
        )
        .await;

    // A release from a feature branch is refused with the starter policy's message.
    git(&repo, &["checkout", "-q", "-b", "feature/x"]);
    std::fs::write(repo.join("feature.txt"), "x").unwrap();
    git(&repo, &["add", "feature.txt"]);
    git(&repo, &["commit", "-qm", "feature"]);
    git(&repo, &["checkout", "-q", "main"]);
    let run = server
        .call(
            Method::POST,
            "/api/v1/projects/demo/runs",
            &json!({"ref": "feature/x"}),
        )
        .await;
    assert_eq!(run.status(), 201);
    wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let refused = server
        .call(
            Method::POST,
            "/api/v1/projects/demo/deployments",
            &json!({"environment": "production", "release": 1}),
        )
        .await;
    assert_eq!(refused.status(), 403);
    let message = message_of(refused).await;
    assert_eq!(
        message,
        "denied by policy: production takes releases from main or release/* only, not from feature/x"
    );

    // A release from main goes through with the warning on its timeline.
    let run = server
        .call(Method::POST, "/api/v1/projects/demo/runs", &json!({}))
        .await;
    assert_eq!(run.status(), 201);
    wait_for(&server, "demo", 2, |r| r["status"] == "succeeded").await;
    server
        .expect(
            Method::POST,
            "/api/v1/projects/demo/deployments",
            &json!({"environment": "production", "release": 2}),
            201,
        )
        .await;
    let approved = client()
        .post(format!(
            "{}/api/v1/projects/demo/deployments/1/approve",
            server.url
        ))
        .bearer_auth(&alice)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    let d =
        crate::deploy::wait_deployment(&server, "demo", 1, |d| d["status"] == "succeeded").await;
    let timeline = crate::harness::texts(&d["timeline"], "what");
    assert!(
        timeline.contains(&"warning: production: watch the dashboards after this one"),
        "{timeline:?}"
    );
    assert_eq!(
        d["decisions"].as_array().unwrap().len(),
        2,
        "request and start"
    );

    // The decision log keeps every evaluation with its input and policy versions.
    let log = server.get_json("/api/v1/projects/demo/decisions").await;
    let log: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["gate"] == "deploy")
        .collect();
    assert_eq!(log.len(), 3, "refused request, allowed request, start");
    let denied = log.iter().find(|d| d["allowed"] == false).unwrap();
    assert_eq!(denied["gate"], "deploy");
    assert_eq!(denied["stage"], "request");
    assert_eq!(denied["input"]["release"]["branch"], "feature/x");
    assert!(
        denied["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "instance/starter-deploy.rego@1")
    );
    let start = log[0];
    assert_eq!(
        (start["stage"].as_str(), start["allowed"].as_bool()),
        (Some("start"), Some(true))
    );
    assert_eq!(start["input"]["approvals"][0]["by"], "user:alice");
    assert_eq!(
        start["warnings"][0]["msg"],
        "production: watch the dashboards after this one"
    );
    let one = server
        .get_json(&format!("/api/v1/projects/demo/decisions/{}", denied["id"]))
        .await;
    assert_eq!(one["id"], denied["id"]);

    // The console: decisions on the deployment and run pages; a new version uploaded from
    // the policies page, with its history and the diff from the one before.
    let page = server.get_text("/projects/demo/deployments/1").await;
    assert!(
        page.contains("Policy decisions") && page.contains("watch the dashboards"),
        "deployment page"
    );
    let page = server.get_text("/projects/demo/runs/2").await;
    assert!(page.contains("data-decision="), "run page");
    let uploaded = server
        .request(Method::POST, "/policies")
        .form(&[
            ("name", "care.rego"),
            ("source", "package betcycle.deploy\nimport rego.v1\nwarn contains \"production: watch the dashboards for an hour\" if input.environment.production\n"),
        ])
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success() || uploaded.status().is_redirection());
    let page = server.get_text("/policies?name=care.rego").await;
    assert!(
        page.contains("version 2") && page.contains(">v1</a>"),
        "history"
    );
    let diff = page
        .split("data-policy-diff>")
        .nth(1)
        .unwrap_or("")
        .split("</pre>")
        .next()
        .unwrap_or("");
    assert!(
        diff.contains("-warn contains")
            && diff.contains("after this one")
            && diff.contains("+warn contains")
            && diff.contains("for an hour"),
        "diff: {diff}"
    );
    server.stop();
}

#[tokio::test]
async fn pipeline_and_infrastructure_gates_stop_runs_and_a_repository_adds_its_own_rules() {
    use crate::run::git;
    use crate::runs::{demo, trigger, wait_for};
    use reqwest::Method;
    let dir = tempdir();
    let plan = std::fs::read_to_string(fixture("terraform/public-bucket.json")).unwrap();
    let (server, repo) = demo(
        dir.path(),
        "steps:\n  - name: plan\n    run: cp fixtures/plan.json plan.json\n    reports: { terraform_plan: plan.json }\n",
        &[],
    )
    .await;
    std::fs::create_dir_all(repo.join("fixtures")).unwrap();
    std::fs::write(repo.join("fixtures/plan.json"), &plan).unwrap();
    git(&repo, &["add", "fixtures"]);
    git(&repo, &["commit", "-qm", "a plan with a public bucket"]);

    // The starter Terraform policy fails the run that reported the plan.
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "failed").await;
    let message = run["message"].as_str().unwrap();
    assert!(
        message.starts_with("infrastructure policy: step plan: denied by policy:")
            && message.contains(
                "aws_s3_bucket.assets: bucket ACL \"public-read\" makes it publicly readable"
            ),
        "{message}"
    );
    assert_eq!(
        run["steps"][0]["status"], "succeeded",
        "the step itself worked"
    );

    // A project policy on the pipeline gate, and one the repository brings.
    let project_policy = server
        .request(Method::PUT, "/api/v1/projects/demo/policies/steps.rego")
        .header("content-type", "text/plain")
        .body("package betcycle.pipeline\nimport rego.v1\ndeny contains sprintf(\"step %s pipes curl into a shell\", [s.name]) if { some s in input.pipeline.steps; contains(s.run, \"| sh\") }\n")
        .send()
        .await
        .unwrap();
    assert_eq!(project_policy.status(), 201);
    std::fs::write(
        repo.join(".betcycle.yml"),
        "steps:\n  - { name: install, run: 'curl -fsSL https://example.com/i | sh' }\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "curl | sh"]);
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 2, |r| r["status"] == "error").await;
    assert_eq!(
        run["message"],
        "denied by policy: step install pipes curl into a shell"
    );

    std::fs::create_dir_all(repo.join(".betcycle/policies")).unwrap();
    std::fs::write(
        repo.join(".betcycle/policies/names.rego"),
        "package betcycle.pipeline\nimport rego.v1\ndeny contains \"step names must be lower-case\" if { some s in input.pipeline.steps; s.name != lower(s.name) }\nexception contains [\"\"] if true\n",
    )
    .unwrap();
    std::fs::write(
        repo.join(".betcycle.yml"),
        "steps:\n  - { name: Build, run: 'true' }\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "repository policy"]);
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 3, |r| r["status"] == "error").await;
    assert_eq!(
        run["message"],
        "denied by policy: step names must be lower-case"
    );
    let decisions = server
        .get_json("/api/v1/projects/demo/decisions?subject=run%203")
        .await;
    assert_eq!(decisions[0]["gate"], "pipeline");
    assert_eq!(decisions[0]["denies"][0]["rule"], "repository:deny");
    assert!(
        decisions[0]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "repository/.betcycle/policies/names.rego")
    );
    server.stop();
}
