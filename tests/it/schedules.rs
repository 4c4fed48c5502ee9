//! Schedules, polling, API triggers, commit statuses and GitLab merge requests.

use crate::harness::{Server, eventually, tempdir};
use crate::run::{git, git_repo};
use crate::runs::{demo, wait_for};
use crate::triggers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn a_schedule_missed_during_downtime_runs_once_after_restart() {
    let dir = tempdir();
    let (server, _repo) = demo(dir.path(), SIMPLE, &[]).await;
    // Two ticks, 4 and 5 seconds from now (seconds field), both while the server is down.
    let now = jiff::Timestamp::now();
    let at = |s: i64| (now.as_second() + s).rem_euclid(60);
    let cron = format!("{},{} * * * * *", at(4), at(5));
    let created = server.call(Method::POST, "/api/v1/projects/demo/schedules", &json!({"name": "often", "cron": cron, "timezone": "Europe/Berlin", "env": {"KIND": "nightly"}})).await;
    assert_eq!(created.status(), 201);
    let schedule: Value = created.json().await.unwrap();
    assert!(schedule["next_run"].is_string(), "{schedule}");
    // Bad input is refused with the reason.
    let bad = server
        .call(
            Method::POST,
            "/api/v1/projects/demo/schedules",
            &json!({"name": "bad", "cron": "61 * * * *"}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.unwrap();
    assert!(text.contains("61 * * * *"), "{text}");
    server.stop();
    assert!(runs_in(dir.path()).is_empty());

    // Down past both ticks.
    let deadline = now.as_second() + 7;
    while jiff::Timestamp::now().as_second() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = Server::start_admin(dir.path(), &[]);
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(run["event"], "cron");
    assert_eq!(run["env"]["KIND"], "nightly");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("1 earlier tick(s) were missed"),
        "{run}"
    );
    // Give the worker time to (wrongly) start another.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs(&server, "demo").await.len(), 1);
    let schedules = server.get_json("/api/v1/projects/demo/schedules").await;
    assert_eq!(schedules[0]["last_run"], 1);
    server.stop();
}

/// Runs recorded in the data directory's log folders (the server is stopped).
fn runs_in(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("data/runs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn polling_starts_runs_for_new_commits_and_backs_off_on_errors() {
    let dir = tempdir();
    let (server, repo) = demo(dir.path(), SIMPLE, &[]).await;
    server
        .expect(
            Method::PATCH,
            "/api/v1/projects/demo",
            &json!({"poll_interval": "1s"}),
            200,
        )
        .await;
    // The first poll records what is there and starts nothing.
    let polled = &server;
    eventually(Duration::from_secs(20), "a poll happened", || async move {
        let project = polled.get_json("/api/v1/projects/demo").await;
        match project["poll"]["last_checked"].is_null() {
            true => Err(project["poll"].to_string()),
            false => Ok(()),
        }
    })
    .await;
    assert!(runs(&server, "demo").await.is_empty());
    git(&repo, &["checkout", "-q", "-b", "topic"]);
    let head = commit(&repo, &[("x.txt", "x")], "x");
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(run["commit"], head.as_str());
    assert_eq!(run["branch"], "topic");
    assert_eq!(run["event"], "push");
    assert_eq!(run["actor"], "poll");
    assert_eq!(
        run["changed_paths"],
        Value::Null,
        "a new branch has no base to compare"
    );

    // A repository that cannot be reached: the wait doubles with each failure.
    server.expect(Method::POST, "/api/v1/projects", &json!({"slug": "gone", "repository": dir.path().join("nowhere").to_str().unwrap(), "poll_interval": "1s"}), 201).await;
    let polled = &server;
    let poll = eventually(
        Duration::from_secs(20),
        "polling failed twice",
        || async move {
            let poll = polled.get_json("/api/v1/projects/gone").await["poll"].clone();
            match poll["failures"].as_u64().unwrap_or(0) >= 2 {
                true => Ok(poll),
                false => Err(poll.to_string()),
            }
        },
    )
    .await;
    assert!(
        poll["last_error"]
            .as_str()
            .unwrap()
            .contains("git ls-remote failed"),
        "{poll}"
    );
    let wait = crate::run::millis(&poll["next_check"]) - crate::run::millis(&poll["last_checked"]);
    let expected = 1000 * 2i64.pow(poll["failures"].as_u64().unwrap() as u32);
    assert_eq!(wait, expected, "{poll}");
    server.stop();
}

#[tokio::test]
async fn api_triggers_take_a_commit_and_environment_overrides() {
    let dir = tempdir();
    let pipeline = "env: { GREETING: hello }\nsteps:\n  - name: greet\n    run: echo \"$GREETING at $(git rev-parse HEAD)\"\n    env: { GREETING: step }\n";
    let (server, repo) = demo(dir.path(), pipeline, &[]).await;
    let first = git(&repo, &["rev-parse", "HEAD"]);
    commit(&repo, &[("later.txt", "later")], "later");
    let response = server
        .call(
            Method::POST,
            "/api/v1/projects/demo/runs",
            &json!({"ref": "main", "commit": first, "env": {"GREETING": "override"}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(run["commit"], first.as_str());
    assert_eq!(run["branch"], "main");
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/greet/log")
        .await;
    assert!(log.contains(&format!("override at {first}")), "{log}");
    for (body, expected) in [
        (json!({"env": {"BETCYCLE_BRANCH": "x"}}), "set by BetCycle"),
        (
            json!({"env": {"1BAD": "x"}}),
            "invalid environment variable name",
        ),
        (json!({"commit": "abc"}), "not a full 40-digit commit"),
        (json!({"ref": "no-such-branch"}), "no branch, tag or ref"),
    ] {
        let response = server
            .call(Method::POST, "/api/v1/projects/demo/runs", &body)
            .await;
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{body}: {text}");
    }
    server.stop();
}

#[tokio::test]
async fn commit_statuses_go_to_the_forge_pending_then_final() {
    let dir = tempdir();
    let (server, repo) = demo(dir.path(), SIMPLE, &[]).await;
    let (api, seen) = recording_server().await;
    server.expect(Method::PATCH, "/api/v1/projects/demo", &json!({"forge_kind": "github", "forge_url": "https://github.com/acme/app", "forge_api_url": api}), 200).await;
    let token = "ghp_test_token_0123456789";
    let stored = server
        .call(
            Method::PUT,
            "/api/v1/projects/demo/secrets/FORGE_TOKEN",
            &json!({"value": token}),
        )
        .await;
    assert_eq!(stored.status(), 201);
    let stored: Value = stored.json().await.unwrap();
    assert!(
        stored.get("value").is_none(),
        "a token is never echoed: {stored}"
    );

    let sha = git(&repo, &["rev-parse", "HEAD"]);
    crate::runs::trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let got = statuses_for(&seen, 3).await;
    let states: Vec<&str> = got
        .iter()
        .map(|(_, _, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "pending", "success"], "{got:?}");
    for (path, headers, body) in &got {
        assert_eq!(path, &format!("/repos/acme/app/statuses/{sha}"));
        assert_eq!(headers["authorization"], format!("Bearer {token}"));
        assert_eq!(body["context"], "betcycle/demo");
        assert!(
            body["target_url"]
                .as_str()
                .unwrap()
                .ends_with("/projects/demo/runs/1"),
            "{body}"
        );
    }
    // The run page links the commit on the forge.
    let page = server.get_text("/projects/demo/runs/1").await;
    assert!(page.contains(&format!("https://github.com/acme/app/commit/{sha}")));

    // GitLab, for a failing run: its own API shape and states.
    seen.lock().unwrap().clear();
    std::fs::write(
        repo.join(".betcycle.yml"),
        "steps:\n  - name: broken\n    run: exit 3\n",
    )
    .unwrap();
    let sha = commit(&repo, &[], "break it");
    server
        .call(
            Method::PATCH,
            "/api/v1/projects/demo",
            &json!({"forge_kind": "gitlab", "forge_url": "https://gitlab.example.com/group/app"}),
        )
        .await;
    crate::runs::trigger(&server, "demo").await;
    wait_for(&server, "demo", 2, |r| r["status"] == "failed").await;
    let got = statuses_for(&seen, 3).await;
    let states: Vec<&str> = got
        .iter()
        .map(|(_, _, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "running", "failed"], "{got:?}");
    let (path, headers, body) = &got[2];
    assert_eq!(path, &format!("/projects/group%2Fapp/statuses/{sha}"));
    assert_eq!(headers["private-token"], token);
    assert_eq!(body["name"], "betcycle/demo");
    assert_eq!(body["ref"], "main");
    server.stop();
    let db = std::fs::read(dir.path().join("data/betcycle.redb")).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[tokio::test]
async fn a_gitlab_merge_request_from_a_fork_and_git_diff_when_the_payload_is_truncated() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git_repo(&repo, FILTERED);
    let server = Server::start_admin(dir.path(), &[]);
    server
        .expect(
            Method::POST,
            "/api/v1/projects",
            &json!({"slug": "gl", "repository": repo.to_str().unwrap()}),
            201,
        )
        .await;
    let secret = webhook_secret(&server, "gl").await;
    git(&repo, &["checkout", "-q", "-b", "fix"]);
    let head = commit(&repo, &[("src/fix.rs", "fix")], "fix");
    git(&repo, &["update-ref", "refs/merge-requests/3/head", &head]);
    let payload = json!({
        "object_kind": "merge_request", "event_type": "merge_request",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": {"id": 1, "name": "App", "web_url": "http://gitlab.example.com/group/app", "path_with_namespace": "group/app"},
        "object_attributes": {
            "id": 99, "iid": 3, "target_branch": "main", "source_branch": "fix",
            "source_project_id": 14, "target_project_id": 1, "title": "Fix things",
            "state": "opened", "action": "open", "merge_status": "unchecked",
            "url": "http://gitlab.example.com/group/app/-/merge_requests/3",
            "last_commit": {"id": head, "message": "fix", "title": "fix"}
        },
        "source": {"name": "App", "path_with_namespace": "fork/app"},
        "target": {"name": "App", "path_with_namespace": "group/app"}
    });
    let body = serde_json::to_vec(&payload).unwrap();
    let headers = vec![
        (
            "X-Gitlab-Event".to_string(),
            "Merge Request Hook".to_string(),
        ),
        ("X-Gitlab-Event-UUID".into(), "mr-1".into()),
        ("X-Gitlab-Token".into(), secret.clone()),
    ];
    let (status, receipt) = deliver(&server, "gl", &headers, &body).await;
    assert_eq!(status, 201, "{receipt}");
    let run = wait_for(&server, "gl", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(run["pull_request"]["fork"], true);
    assert_eq!(run["git_ref"], "refs/merge-requests/3/head");
    assert_eq!(step(&run, "compile")["status"], "succeeded");
    // A title edit (no new commits) starts nothing.
    let mut edit = payload.clone();
    edit["object_attributes"]["action"] = json!("update");
    let body = serde_json::to_vec(&edit).unwrap();
    let headers = vec![
        (
            "X-Gitlab-Event".to_string(),
            "Merge Request Hook".to_string(),
        ),
        ("X-Gitlab-Event-UUID".into(), "mr-2".into()),
        ("X-Gitlab-Token".into(), secret.clone()),
    ];
    assert_eq!(deliver(&server, "gl", &headers, &body).await.0, 202);
    server.stop();
}
