//! Continuous delivery end to end: a real repository, green runs making releases,
//! auto-deploy to staging with an `exec` target, production behind an approval that
//! its requester may not give, a failed release rolled back, DORA numbers checked by
//! hand, a freeze that blocks with its reason, and a webhook target with a callback.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, Server, add_user, client, create_token, eventually, tempdir,
};
use crate::run::git;
use crate::runs::{demo, trigger, wait_for};
use crate::triggers::{recording_server, statuses_for};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn pipeline(target_dir: &Path) -> String {
    format!(
        r#"steps:
  - name: build
    run: echo "built $BETCYCLE_COMMIT" > app.txt
    artifacts: [app.txt]
deploy:
  staging: {{ target: {{ kind: exec, run: ./deploy.sh, env: {{ TARGET_DIR: "{dir}" }} }} }}
  production: {{ target: {{ kind: exec, run: ./deploy.sh, env: {{ TARGET_DIR: "{dir}" }} }} }}
"#,
        dir = target_dir.display()
    )
}

/// Writes the release id where the environment "runs", then fails if the release is
/// broken — a bad deploy that got half-way.
const DEPLOY_SH: &str = r#"#!/bin/sh
set -e
echo "deploying $BETCYCLE_RELEASE (commit $BETCYCLE_COMMIT) to $BETCYCLE_ENVIRONMENT"
test -f "$BETCYCLE_ARTIFACTS/app.txt"
echo "$BETCYCLE_RELEASE" > "$TARGET_DIR/$BETCYCLE_ENVIRONMENT.release"
if [ -f broken ]; then echo "health check failed" >&2; exit 1; fi
echo "done"
"#;

pub(crate) async fn wait_deployment(
    server: &Server,
    slug: &str,
    number: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/api/v1/projects/{slug}/deployments/{number}");
    let (path, done) = (&path, &done);
    eventually(
        Duration::from_secs(30),
        &format!("deployment {number} never got there"),
        || async move {
            let d: Value = server.get(path).await.json().await.unwrap_or(Value::Null);
            if done(&d) { Ok(d) } else { Err(d.to_string()) }
        },
    )
    .await
}

fn finished(d: &Value) -> bool {
    ["succeeded", "failed", "rolled_back", "cancelled"]
        .contains(&d["status"].as_str().unwrap_or(""))
}

fn seconds_between(from: &Value, to: &Value) -> f64 {
    let from: jiff::Timestamp = from.as_str().unwrap().parse().unwrap();
    let to: jiff::Timestamp = to.as_str().unwrap().parse().unwrap();
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}

#[tokio::test]
async fn green_run_to_staging_approved_production_failed_release_rolled_back_and_dora() {
    let dir = tempdir();
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "alice", "alice password 123", false);
    let alice = create_token(dir.path(), "alice", "write");
    let (server, repo) = demo(dir.path(), &pipeline(&target), &[]).await;
    std::fs::write(repo.join("deploy.sh"), DEPLOY_SH).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        repo.join("deploy.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    git(&repo, &["add", "deploy.sh"]);
    git(&repo, &["commit", "-qm", "deploy script"]);
    let (approvals_url, approvals_seen) = recording_server().await;
    server.grant("demo", "user:alice", "maintainer").await;
    let as_alice = |method: Method, path: &str, body: Value| {
        client()
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(&alice)
            .json(&body)
            .send()
    };

    // Environments: staging deploys green main builds by itself; production needs one
    // approval and announces the request.
    let (status, staging) = server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/environments/staging",
            json!({"auto_deploy": true, "protection": {"branches": ["main"]}}),
        )
        .await;
    assert_eq!(status, 201, "{staging}");
    let (status, production) = server.send_json(Method::PUT, "/api/v1/projects/demo/environments/production",
        json!({"protection": {"required_approvals": 1, "branches": ["main"]}, "approval_webhook": approvals_url})).await;
    assert_eq!(status, 201, "{production}");
    assert_eq!(
        (
            staging["position"].as_u64(),
            production["position"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let (status, bad) = server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/environments/qa",
            json!({"protection": {"branches": ["["], "approvers": ["boss"]}}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");

    // A green run makes release 1, which goes to staging on its own.
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let releases = server.get_json("/api/v1/projects/demo/releases").await;
    let release1 = releases[0].clone();
    assert_eq!(release1["number"], 1);
    assert_eq!(release1["commit"], run["commit"]);
    assert_eq!(release1["artifacts"][0]["path"], "app.txt");
    assert_eq!(
        release1["artifacts"][0]["sha256"].as_str().unwrap().len(),
        64
    );
    assert!(release1["commit_time"].is_string());
    let d1 = wait_deployment(&server, "demo", 1, finished).await;
    assert_eq!(
        (
            d1["environment"].as_str(),
            d1["status"].as_str(),
            d1["reason"].as_str()
        ),
        (Some("staging"), Some("succeeded"), Some("auto"))
    );
    assert_eq!(
        std::fs::read_to_string(target.join("staging.release"))
            .unwrap()
            .trim(),
        "demo-1"
    );
    let log = server
        .get_text("/api/v1/projects/demo/deployments/1/log")
        .await;
    assert!(
        log.contains("deploying demo-1") && log.contains(" o done"),
        "{log}"
    );

    // Promotion to production waits for an approval, announced to the webhook.
    let (status, d2) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/environments/staging/promote",
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{d2}");
    assert_eq!(
        (
            d2["number"].as_u64(),
            d2["status"].as_str(),
            d2["release_number"].as_u64()
        ),
        (Some(2), Some("awaiting_approval"), Some(1))
    );
    let announced = statuses_for(&approvals_seen, 1).await;
    assert_eq!(announced[0].2["event"], "approval_requested");
    assert_eq!(announced[0].2["deployment"], 2);
    assert_eq!(announced[0].2["environment"], "production");
    // The requester (who also pushed the commit) may not approve it.
    let (status, refused) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/deployments/2/approve",
            json!({"comment": "lgtm"}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("someone else must approve"),
        "{refused}"
    );
    let approved = as_alice(
        Method::POST,
        "/api/v1/projects/demo/deployments/2/approve",
        json!({"comment": "ship it"}),
    )
    .await
    .unwrap();
    assert_eq!(approved.status(), 200);
    let d2 = wait_deployment(&server, "demo", 2, finished).await;
    assert_eq!(d2["status"], "succeeded", "{d2}");
    assert_eq!(d2["approvals"][0]["by"], "user:alice");
    let timeline = crate::harness::texts(&d2["timeline"], "what");
    assert!(
        timeline.iter().any(|w| w.starts_with("approved: ship it")),
        "{timeline:?}"
    );
    assert!(
        timeline.contains(&"queued")
            && timeline.contains(&"deploying")
            && timeline.contains(&"succeeded"),
        "{timeline:?}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("production.release"))
            .unwrap()
            .trim(),
        "demo-1"
    );

    // Release 2 is broken: staging's auto-deploy fails, and so does production's.
    std::fs::write(repo.join("broken"), "yes").unwrap();
    git(&repo, &["add", "broken"]);
    git(&repo, &["commit", "-qm", "a bad change"]);
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 2, |r| r["status"] == "succeeded").await;
    let d3 = wait_deployment(&server, "demo", 3, finished).await;
    assert_eq!(
        (d3["environment"].as_str(), d3["status"].as_str()),
        (Some("staging"), Some("failed"))
    );
    let (status, d4) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/deployments",
            json!({"environment": "production", "release": 2}),
        )
        .await;
    assert_eq!(status, 201, "{d4}");
    assert!(
        d4["notes"][0].as_str().unwrap().ends_with("a bad change"),
        "release notes: {d4}"
    );
    as_alice(
        Method::POST,
        "/api/v1/projects/demo/deployments/4/approve",
        json!({}),
    )
    .await
    .unwrap();
    let d4 = wait_deployment(&server, "demo", 4, finished).await;
    assert_eq!(d4["status"], "failed", "{d4}");
    assert!(
        d4["message"].as_str().unwrap().contains("exit code 1"),
        "{d4}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("production.release"))
            .unwrap()
            .trim(),
        "demo-2"
    );

    // One action restores release 1 and marks the bad deployment rolled back.
    let (status, d5) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/environments/production/rollback",
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{d5}");
    assert_eq!(
        (
            d5["reason"].as_str(),
            d5["release_number"].as_u64(),
            d5["rollback_of"].as_u64()
        ),
        (Some("rollback"), Some(1), Some(4))
    );
    let d5 = wait_deployment(&server, "demo", 5, finished).await;
    assert_eq!(d5["status"], "succeeded", "{d5}");
    assert_eq!(
        std::fs::read_to_string(target.join("production.release"))
            .unwrap()
            .trim(),
        "demo-1"
    );
    let d4 = wait_deployment(&server, "demo", 4, |d| d["status"] == "rolled_back").await;
    let board = server.get_json("/api/v1/projects/demo/environments").await;
    assert_eq!(board[1]["live"]["release"], 1);

    // DORA for production, by hand: two successful deployments (#2 promotion, #5
    // rollback); one change lead time (release 1's commit → #2); changes #2 and #4, one
    // of which failed; recovery #4 → #5.
    let dora = server.get_json("/api/v1/projects/demo/dora?days=7").await;
    assert_eq!(dora["environment"], "production");
    assert_eq!(dora["deployments"], 2);
    assert!((dora["deployment_frequency_per_day"].as_f64().unwrap() - 2.0 / 7.0).abs() < 1e-9);
    let lead = seconds_between(&release1["commit_time"], &d2["finished_at"]);
    assert!(
        (dora["change_lead_time_seconds"].as_f64().unwrap() - lead).abs() < 0.002,
        "{dora} vs {lead}"
    );
    assert_eq!(dora["change_fail_rate"], 0.5);
    let recovery = seconds_between(&d4["finished_at"], &d5["finished_at"]);
    assert!(
        (dora["recovery_time_seconds"].as_f64().unwrap() - recovery).abs() < 0.002,
        "{dora} vs {recovery}"
    );
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains(
            "betcycle_dora_change_fail_rate{project=\"demo\",environment=\"production\"} 0.5"
        ),
        "{metrics}"
    );

    // A freeze blocks a deployment, saying why and until when; nothing is recorded.
    let now = jiff::Timestamp::now();
    let (status, _) = server.send_json(Method::PUT, "/api/v1/projects/demo/environments/production",
        json!({"protection": {"required_approvals": 1, "freezes": [{"from": (now - jiff::SignedDuration::from_hours(1)).to_string(), "until": (now + jiff::SignedDuration::from_hours(2)).to_string(), "reason": "holiday freeze"}]}})).await;
    assert_eq!(status, 200);
    let (status, blocked) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/deployments",
            json!({"environment": "production", "release": 1}),
        )
        .await;
    assert_eq!(status, 403, "{blocked}");
    let message = blocked["message"].as_str().unwrap();
    assert!(
        message.contains("production is frozen until") && message.ends_with("holiday freeze"),
        "{message}"
    );
    assert_eq!(
        server
            .get_json("/api/v1/projects/demo/deployments")
            .await
            .as_array()
            .unwrap()
            .len(),
        5
    );
    server.stop();
}

#[tokio::test]
async fn a_webhook_target_is_signed_and_waits_for_its_callback() {
    let dir = tempdir();
    let (hook, seen) = recording_server().await;
    let pipeline = format!(
        "steps:\n  - {{ name: build, run: 'true' }}\ndeploy:\n  preview: {{ target: {{ kind: webhook, url: \"{hook}/deploy\", secret: HOOK_KEY, callback: true, timeout: 30s }} }}\n"
    );
    let (server, _) = demo(dir.path(), &pipeline, &[]).await;
    let (status, _) = server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/secrets/HOOK_KEY",
            json!({"value": "hook-signing-key"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/environments/preview",
            json!({}),
        )
        .await;
    assert_eq!(status, 201);
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let (status, d) = server
        .send_json(
            Method::POST,
            "/api/v1/projects/demo/deployments",
            json!({"environment": "preview"}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    let calls = statuses_for(&seen, 1).await;
    let (path, headers, body) = &calls[0];
    assert_eq!(path, "/deploy");
    assert_eq!(body["release"], "demo-1");
    // The signature is HMAC-SHA256 of the body with the secret.
    let signature = headers["x-betcycle-signature-256"].as_str().unwrap();
    let expected = format!(
        "sha256={}",
        crate::triggers::sign(
            "hook-signing-key",
            headers["x-recorded-body"].as_str().unwrap().as_bytes()
        )
    );
    assert_eq!(signature, expected);
    let callback = body["callback_url"].as_str().unwrap().to_string();
    let d = wait_deployment(&server, "demo", 1, |d| d["status"] == "verifying").await;
    assert_eq!(d["secrets"][0]["name"], "HOOK_KEY");
    // A wrong token is refused; the right one works once.
    let wrong = client()
        .post(format!("{}/api/v1/deployments/callback/nope", server.url))
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
    let ok = client()
        .post(&callback)
        .json(&json!({"status": "succeeded", "message": "all pods ready"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    let again = client()
        .post(&callback)
        .json(&json!({"status": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let d = wait_deployment(&server, "demo", 1, finished).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let log = server
        .get_text("/api/v1/projects/demo/deployments/1/log")
        .await;
    assert!(log.contains("callback: succeeded all pods ready"), "{log}");
    server.stop();
}

#[tokio::test]
async fn the_cli_deploys_promotes_approves_and_rolls_back() {
    use crate::harness::{betcycle, run as run_cmd};
    let dir = tempdir();
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "alice", "alice password 123", true);
    let alice = create_token(dir.path(), "alice", "write");
    let pipeline = format!(
        "steps:\n  - {{ name: build, run: 'true' }}\ndeploy:\n  staging: {{ target: {{ kind: exec, run: 'echo \"$BETCYCLE_RELEASE\" > {dir}/staging' }} }}\n  production: {{ target: {{ kind: exec, run: 'echo \"$BETCYCLE_RELEASE\" > {dir}/production' }} }}\n",
        dir = target.display()
    );
    let (server, _) = demo(dir.path(), &pipeline, &[]).await;
    let admin = server.token.clone().unwrap();
    server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/environments/staging",
            json!({}),
        )
        .await;
    server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/environments/production",
            json!({"protection": {"required_approvals": 1}}),
        )
        .await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let cli = |token: &str, args: &[&str]| {
        let mut cmd = betcycle(dir.path());
        cmd.args(args)
            .args(["--server", &server.url, "--project", "demo"])
            .env("BETCYCLE_TOKEN", token);
        run_cmd(&mut cmd)
    };

    let (code, stdout, stderr) = cli(&admin, &["deploy", "--environment", "staging", "--wait"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("deployment demo#1: release 1 to staging"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("demo#1 succeeded"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(target.join("staging"))
            .unwrap()
            .trim(),
        "demo-1"
    );

    let (code, stdout, _) = cli(&admin, &["promote", "--from", "staging", "--wait"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("demo#2 awaiting_approval"), "{stdout}");
    let (code, _, stderr) = cli(&admin, &["approve", "2"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("someone else must approve"), "{stderr}");
    let (code, stdout, stderr) = cli(&alice, &["approve", "2", "--comment", "ok", "--wait"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.trim_end().ends_with("demo#2 succeeded"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(target.join("production"))
            .unwrap()
            .trim(),
        "demo-1"
    );

    let (code, _, stderr) = cli(&admin, &["rollback", "--environment", "production"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no earlier successful release in production"),
        "{stderr}"
    );
    server.stop();
}

/// The environments board's settings form sets everything the API can: the production
/// flag, deploy windows and freezes (one per line), with errors naming the field and line.
#[tokio::test]
async fn the_environment_form_sets_production_windows_and_freezes() {
    let dir = crate::harness::tempdir();
    let (server, _) =
        crate::runs::demo(dir.path(), "steps:\n  - { name: a, run: 'true' }\n", &[]).await;
    let save = |fields: Vec<(&'static str, &'static str)>| {
        server
            .request(reqwest::Method::POST, "/projects/demo/environments")
            .form(&fields)
            .send()
    };
    let saved = save(vec![
        ("name", "live"),
        ("production", "1"),
        (
            "windows",
            "mon-fri 09:00-17:00 Europe/Berlin\n\nsat 10:00-12:00\n",
        ),
        (
            "freezes",
            "2026-12-20T00:00:00Z 2027-01-04T00:00:00Z the holidays",
        ),
    ])
    .await
    .unwrap();
    assert_eq!(saved.status(), 200, "{}", saved.text().await.unwrap());
    let envs = server.get_json("/api/v1/projects/demo/environments").await;
    let env = &envs[0];
    assert_eq!(env["production"], true, "{env}");
    let windows = &env["protection"]["windows"];
    assert_eq!(
        windows[0]["days"],
        serde_json::json!(["mon", "tue", "wed", "thu", "fri"])
    );
    assert_eq!(windows[0]["timezone"], "Europe/Berlin");
    assert_eq!(windows[1]["days"], serde_json::json!(["sat"]));
    assert_eq!(windows[1]["timezone"], "UTC");
    assert_eq!(env["protection"]["freezes"][0]["reason"], "the holidays");
    // The board shows them back in the same form, ready to edit.
    let page = server.get_text("/projects/demo/environments").await;
    assert!(
        page.contains("mon-fri 09:00-17:00 Europe/Berlin\nsat 10:00-12:00 UTC\n"),
        "{page}"
    );
    // A bad line is refused, naming the field and the line; nothing changes.
    let refused = save(vec![
        ("name", "live"),
        ("windows", "mon-fri 09:00-17:00\nfri-mon 10:00-11:00"),
    ])
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(page.contains("windows, line 2: days"), "{page}");
    let refused = save(vec![("name", "live"), ("freezes", "2026-12-20 soon")])
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("freezes, line 1: from")
    );
    let envs = server.get_json("/api/v1/projects/demo/environments").await;
    assert_eq!(
        envs[0]["protection"]["windows"].as_array().unwrap().len(),
        2
    );
    // The add form has no windows or freezes fields: saving with it keeps them.
    let kept = save(vec![("name", "live"), ("production", "1")])
        .await
        .unwrap();
    assert_eq!(kept.status(), 200);
    let envs = server.get_json("/api/v1/projects/demo/environments").await;
    assert_eq!(
        envs[0]["protection"]["freezes"].as_array().unwrap().len(),
        1
    );
}
