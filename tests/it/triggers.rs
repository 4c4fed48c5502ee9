//! Triggers: signed webhooks from each forge (payloads shaped like the forges' documented
//! examples), deliveries and re-delivery, changed-path filters, pull requests from forks,
//! cron schedules across downtime, concurrency groups, polling, trigger parameters, and
//! commit statuses reported to a stand-in forge (a small real HTTP server that records).

use crate::harness::{Server, tempdir};
use crate::run::git;
use crate::runs::{demo, wait_for};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Commits `files` on the current branch and returns the new commit.
pub fn commit(repo: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, content) in files {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Sets the project's webhook secret (the project secret `WEBHOOK_SECRET`) through the
/// API; the answer never holds the value.
pub(crate) async fn webhook_secret(server: &Server, slug: &str) -> String {
    let secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
    let response = server
        .request(
            Method::PUT,
            &format!("/api/v1/projects/{slug}/secrets/WEBHOOK_SECRET"),
        )
        .json(&json!({ "value": secret }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "WEBHOOK_SECRET");
    assert!(!body.to_string().contains(&secret), "{body}");
    secret
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Forge {
    GitHub,
    Gitea,
    Forgejo,
    GitLab,
}

/// A push delivery as `forge` sends it: (headers, body). Shaped like each forge's
/// documented example payload.
pub(crate) fn push_delivery(
    forge: Forge,
    secret: &str,
    delivery: &str,
    branch: &str,
    before: &str,
    after: &str,
    modified: &[&str],
) -> (Vec<(String, String)>, Vec<u8>) {
    let git_ref = format!("refs/heads/{branch}");
    let body = match forge {
        Forge::GitHub => json!({
            "ref": git_ref, "before": before, "after": after,
            "repository": {"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": "app",
                "full_name": "octocat/app", "private": false, "owner": {"login": "octocat", "id": 1},
                "html_url": "https://github.com/octocat/app", "fork": false,
                "clone_url": "https://github.com/octocat/app.git", "default_branch": "main"},
            "pusher": {"name": "octocat", "email": "octocat@github.com"},
            "sender": {"login": "octocat", "id": 1, "type": "User"},
            "created": false, "deleted": false, "forced": false, "base_ref": null,
            "compare": format!("https://github.com/octocat/app/compare/{}...{}", &before[..12], &after[..12]),
            "commits": [{"id": after, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true,
                "message": "change", "timestamp": "2026-11-22T08:00:00Z",
                "url": format!("https://github.com/octocat/app/commit/{after}"),
                "author": {"name": "Octo Cat", "email": "octocat@github.com", "username": "octocat"},
                "committer": {"name": "Octo Cat", "email": "octocat@github.com", "username": "octocat"},
                "added": [], "removed": [], "modified": modified}],
            "head_commit": {"id": after, "message": "change", "added": [], "removed": [], "modified": modified},
        }),
        Forge::Gitea | Forge::Forgejo => json!({
            "ref": git_ref, "before": before, "after": after,
            "compare_url": format!("https://gitea.example.com/gitea/app/compare/{before}...{after}"),
            "commits": [{"id": after, "message": "change\n", "url": format!("https://gitea.example.com/gitea/app/commit/{after}"),
                "author": {"name": "gitea", "email": "gitea@example.com", "username": "gitea"},
                "committer": {"name": "gitea", "email": "gitea@example.com", "username": "gitea"},
                "verification": null, "timestamp": "2026-11-22T08:00:00Z",
                "added": [], "removed": [], "modified": modified}],
            "total_commits": 1,
            "head_commit": {"id": after, "message": "change\n", "added": [], "removed": [], "modified": modified},
            "repository": {"id": 140, "owner": {"id": 1, "login": "gitea", "full_name": "", "username": "gitea"},
                "name": "app", "full_name": "gitea/app", "private": false, "fork": false,
                "html_url": "https://gitea.example.com/gitea/app", "clone_url": "https://gitea.example.com/gitea/app.git",
                "default_branch": "main"},
            "pusher": {"id": 1, "login": "gitea", "full_name": "", "email": "gitea@example.com", "username": "gitea"},
            "sender": {"id": 1, "login": "gitea", "username": "gitea"},
        }),
        Forge::GitLab => json!({
            "object_kind": "push", "event_name": "push", "before": before, "after": after,
            "ref": git_ref, "ref_protected": true, "checkout_sha": after, "message": null,
            "user_id": 4, "user_name": "John Smith", "user_username": "jsmith",
            "user_email": "john@example.com", "project_id": 15,
            "project": {"id": 15, "name": "App", "description": "", "web_url": "https://gitlab.example.com/mike/app",
                "git_ssh_url": "git@gitlab.example.com:mike/app.git", "git_http_url": "https://gitlab.example.com/mike/app.git",
                "namespace": "Mike", "visibility_level": 0, "path_with_namespace": "mike/app", "default_branch": "main"},
            "commits": [{"id": after, "message": "change", "title": "change", "timestamp": "2026-11-22T08:00:00+00:00",
                "url": format!("https://gitlab.example.com/mike/app/-/commit/{after}"),
                "author": {"name": "John Smith", "email": "john@example.com"},
                "added": [], "modified": modified, "removed": []}],
            "total_commits_count": 1,
            "repository": {"name": "App", "url": "git@gitlab.example.com:mike/app.git", "description": "",
                "homepage": "https://gitlab.example.com/mike/app"},
        }),
    };
    let body = serde_json::to_vec(&body).unwrap();
    let sig = sign(secret, &body);
    let headers: Vec<(&str, String)> = match forge {
        Forge::GitHub => vec![
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", delivery.into()),
            ("X-GitHub-Hook-ID", "292430182".into()),
            ("X-Hub-Signature-256", format!("sha256={sig}")),
            ("User-Agent", "GitHub-Hookshot/044aadd".into()),
        ],
        Forge::Gitea => vec![
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", delivery.into()),
            ("X-Gogs-Event", "push".into()),
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Event-Type", "push".into()),
            ("X-Gitea-Delivery", delivery.into()),
            ("X-Gitea-Signature", sig.clone()),
            ("X-Hub-Signature-256", format!("sha256={sig}")),
        ],
        Forge::Forgejo => vec![
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Delivery", delivery.into()),
            ("X-Gitea-Signature", sig.clone()),
            ("X-Forgejo-Event", "push".into()),
            ("X-Forgejo-Event-Type", "push".into()),
            ("X-Forgejo-Delivery", delivery.into()),
            ("X-Forgejo-Signature", sig.clone()),
        ],
        Forge::GitLab => vec![
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Event-UUID", delivery.into()),
            (
                "X-Gitlab-Webhook-UUID",
                "0f3bd6a6-1ed6-4a5b-a8b8-2a4f8f8f4b3f".into(),
            ),
            ("X-Gitlab-Instance", "https://gitlab.example.com".into()),
            ("X-Gitlab-Token", secret.into()),
        ],
    };
    (
        headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        body,
    )
}

pub(crate) async fn deliver(
    server: &Server,
    slug: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut request = crate::harness::client()
        .post(format!("{}/api/v1/hooks/{slug}", server.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn runs(server: &Server, slug: &str) -> Vec<Value> {
    server
        .get_json(&format!("/api/v1/projects/{slug}/runs"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) const SIMPLE: &str =
    "steps:\n  - name: build\n    run: echo \"built $BETCYCLE_BRANCH on $BETCYCLE_EVENT\"\n";

#[tokio::test]
async fn signed_pushes_from_each_forge_start_one_run_and_bad_signatures_none() {
    let dir = tempdir();
    let (server, repo) = demo(dir.path(), SIMPLE, &[]).await;
    let secret = webhook_secret(&server, "demo").await;
    let first = git(&repo, &["rev-parse", "HEAD"]);

    // Without a valid signature nothing is created.
    let head = commit(&repo, &[("README.md", "v2")], "second");
    let (mut headers, body) = push_delivery(
        Forge::GitHub,
        &secret,
        "bad-1",
        "main",
        &first,
        &head,
        &["README.md"],
    );
    headers.retain(|(k, _)| k != "X-Hub-Signature-256");
    let (status, error) = deliver(&server, "demo", &headers, &body).await;
    assert_eq!(status, 401);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("missing X-Hub-Signature-256"),
        "{error}"
    );
    headers.push((
        "X-Hub-Signature-256".into(),
        format!("sha256={}", sign("not the secret", &body)),
    ));
    assert_eq!(deliver(&server, "demo", &headers, &body).await.0, 401);
    let (mut gl_headers, gl_body) = push_delivery(
        Forge::GitLab,
        "wrong token",
        "bad-2",
        "main",
        &first,
        &head,
        &["README.md"],
    );
    assert_eq!(deliver(&server, "demo", &gl_headers, &gl_body).await.0, 401);
    // A signed body that was altered in transit.
    let (headers, mut body) = push_delivery(
        Forge::Gitea,
        &secret,
        "bad-3",
        "main",
        &first,
        &head,
        &["README.md"],
    );
    body.push(b' ');
    assert_eq!(deliver(&server, "demo", &headers, &body).await.0, 401);
    assert!(runs(&server, "demo").await.is_empty());
    let deliveries = server.get_json("/api/v1/projects/demo/deliveries").await;
    assert_eq!(deliveries.as_array().unwrap().len(), 0);

    // Each forge's signed push starts a run of the pushed commit.
    let mut expected = 0;
    for (i, forge) in [Forge::GitHub, Forge::Gitea, Forge::Forgejo, Forge::GitLab]
        .into_iter()
        .enumerate()
    {
        let delivery = format!("d-{i}");
        let (headers, body) = push_delivery(
            forge,
            &secret,
            &delivery,
            "main",
            &first,
            &head,
            &["README.md"],
        );
        let (status, receipt) = deliver(&server, "demo", &headers, &body).await;
        assert_eq!(status, 201, "{forge:?}: {receipt}");
        expected += 1;
        assert_eq!(receipt["result"], "triggered");
        assert_eq!(
            receipt["delivery"]["forge"],
            format!("{forge:?}").to_lowercase()
        );
        let number = receipt["delivery"]["runs"][0].as_u64().unwrap();
        let run = wait_for(&server, "demo", number, |r| r["status"] == "succeeded").await;
        assert_eq!(run["commit"], head.as_str());
        assert_eq!(run["event"], "push");
        assert_eq!(run["branch"], "main");
        assert_eq!(run["delivery"], receipt["delivery"]["id"]);
        assert_eq!(run["changed_paths"], json!(["README.md"]));

        // The same delivery again starts nothing new.
        let (status, again) = deliver(&server, "demo", &headers, &body).await;
        assert_eq!(status, 200, "{forge:?}");
        assert_eq!(again["result"], "duplicate");
        assert_eq!(again["duplicate_of"], receipt["delivery"]["id"]);
        assert_eq!(runs(&server, "demo").await.len(), expected);
    }
    let log = server
        .get_text("/api/v1/projects/demo/runs/4/steps/build/log")
        .await;
    assert!(log.contains("built main on push"), "{log}");
    let run = server.get_json("/api/v1/projects/demo/runs/4").await;
    assert!(
        run["actor"].as_str().unwrap().starts_with("gitlab:jsmith"),
        "{run}"
    );

    // A ping and an event that starts nothing are recorded and answered 202.
    let ping = br#"{"zen":"Design for failure.","hook_id":109948940,"hook":{"type":"Repository","id":109948940,"active":true,"events":["push","pull_request"]}}"#;
    let headers = vec![
        ("X-GitHub-Event".to_string(), "ping".to_string()),
        ("X-GitHub-Delivery".into(), "ping-1".into()),
        (
            "X-Hub-Signature-256".into(),
            format!("sha256={}", sign(&secret, ping)),
        ),
    ];
    let (status, receipt) = deliver(&server, "demo", &headers, ping).await;
    assert_eq!(status, 202);
    assert_eq!(receipt["delivery"]["outcome"], "ignored");
    let issues = br#"{"action":"opened","issue":{"number":1}}"#;
    let headers = vec![
        ("X-GitHub-Event".to_string(), "issues".to_string()),
        ("X-GitHub-Delivery".into(), "issues-1".into()),
        (
            "X-Hub-Signature-256".into(),
            format!("sha256={}", sign(&secret, issues)),
        ),
    ];
    let (status, receipt) = deliver(&server, "demo", &headers, issues).await;
    assert_eq!(status, 202);
    assert!(
        receipt["delivery"]["message"]
            .as_str()
            .unwrap()
            .contains("\"issues\""),
        "{receipt}"
    );
    // A malformed payload is a 400 that names the field, and is recorded as failed.
    let broken = br#"{"ref":"refs/heads/main","before":"x"}"#;
    let headers = vec![
        ("X-GitHub-Event".to_string(), "push".to_string()),
        ("X-GitHub-Delivery".into(), "broken-1".into()),
        (
            "X-Hub-Signature-256".into(),
            format!("sha256={}", sign(&secret, broken)),
        ),
    ];
    let (status, error) = deliver(&server, "demo", &headers, broken).await;
    assert_eq!(status, 400);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("missing field `after`"),
        "{error}"
    );

    // Every delivery is listed; one re-delivered from the API starts a new run.
    let deliveries = server.get_json("/api/v1/projects/demo/deliveries").await;
    let deliveries = deliveries.as_array().unwrap();
    assert_eq!(deliveries.len(), 7);
    assert_eq!(deliveries[0]["outcome"], "failed");
    let github = deliveries
        .iter()
        .find(|d| d["delivery_id"] == "d-0")
        .unwrap();
    assert_eq!(github["outcome"], "triggered");
    assert_eq!(github["runs"], json!([1]));
    let redelivered = server
        .request(
            Method::POST,
            &format!(
                "/api/v1/projects/demo/deliveries/{}/redeliver",
                github["id"]
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(redelivered.status(), 201);
    let redelivered: Value = redelivered.json().await.unwrap();
    assert_eq!(redelivered["delivery"]["redelivery_of"], github["id"]);
    assert_eq!(redelivered["delivery"]["runs"], json!([5]));
    assert_eq!(runs(&server, "demo").await.len(), 5);

    // The console lists the deliveries with their outcome and a re-deliver button.
    let page = server.get("/projects/demo/triggers").await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("/api/v1/hooks/demo"), "webhook address");
    assert!(page.contains("<code>d-0</code>") && page.contains("triggered"));
    assert!(page.contains("/triggers/deliveries/1/redeliver"));
    assert!(page.contains("set (never shown again)") && !page.contains(&secret));

    // The secret is never shown again, nor stored in plaintext.
    let project = server.get_json("/api/v1/projects/demo").await;
    assert_eq!(project["secrets"], json!(["WEBHOOK_SECRET"]));
    assert!(!project.to_string().contains(&secret));
    gl_headers.clear();
    drop(gl_headers);
    server.stop();
    let db = std::fs::read(dir.path().join("data/betcycle.redb")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

pub(crate) const FILTERED: &str = r#"
steps:
  - name: docs
    run: echo "docs changed"
    when: { paths: ["docs/**"] }
  - name: compile
    run: echo "compiling"
    when: { paths: ["src/**"] }
  - name: report
    run: echo "pr=$BETCYCLE_PULL_REQUEST fork=$BETCYCLE_PULL_REQUEST_FORK target=$BETCYCLE_BRANCH source=$BETCYCLE_SOURCE_BRANCH token=${API_TOKEN:-none}"
    when: { event: [pull_request] }
    secrets: [API_TOKEN]
"#;

pub(crate) fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

pub(crate) fn step_running(run: &Value, name: &str) -> bool {
    run["steps"].as_array().is_some_and(|steps| {
        steps
            .iter()
            .any(|s| s["name"] == name && s["running"] == true)
    })
}

#[tokio::test]
async fn changed_paths_pick_the_steps_and_fork_pull_requests_are_marked() {
    let dir = tempdir();
    let (server, repo) = demo(dir.path(), FILTERED, &[]).await;
    let secret = webhook_secret(&server, "demo").await;
    server
        .set_secret(
            "/api/v1/projects/demo/secrets/API_TOKEN",
            "not-for-forks-1234",
        )
        .await;
    let first = git(&repo, &["rev-parse", "HEAD"]);
    // Two commits pushed at once; the payload lists only the last one's files, git
    // knows both — and neither touches src/.
    commit(&repo, &[("docs/guide.md", "guide")], "docs 1");
    let head = commit(&repo, &[("docs/faq.md", "faq")], "docs 2");
    let (headers, body) = push_delivery(
        Forge::GitHub,
        &secret,
        "p-1",
        "main",
        &first,
        &head,
        &["docs/faq.md"],
    );
    let (status, receipt) = deliver(&server, "demo", &headers, &body).await;
    assert_eq!(status, 201, "{receipt}");
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(
        run["changed_paths"],
        json!(["docs/faq.md", "docs/guide.md"])
    );
    assert_eq!(step(&run, "docs")["status"], "succeeded");
    assert_eq!(step(&run, "compile")["status"], "skipped");
    assert!(
        step(&run, "compile")["reason"]
            .as_str()
            .unwrap()
            .contains("src/**")
    );
    assert_eq!(step(&run, "report")["status"], "skipped");

    // A pull request from a fork: its commits live on another repository; the forge
    // keeps them under refs/pull/N/head, which the test repository stands in for.
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    let pr_head = commit(&repo, &[("src/lib.rs", "fn main() {}")], "feature");
    git(&repo, &["update-ref", "refs/pull/7/head", &pr_head]);
    git(&repo, &["checkout", "-q", "main"]);
    let payload = json!({
        "action": "opened", "number": 7,
        "pull_request": {
            "url": "https://api.github.com/repos/octocat/app/pulls/7", "id": 279147437, "number": 7,
            "state": "open", "locked": false, "title": "Add a library",
            "user": {"login": "contributor", "id": 2}, "body": "Please pull these awesome changes",
            "html_url": "https://github.com/octocat/app/pull/7",
            "head": {"label": "contributor:feature", "ref": "feature", "sha": pr_head,
                "user": {"login": "contributor"},
                "repo": {"id": 2, "name": "app", "full_name": "contributor/app", "fork": true}},
            "base": {"label": "octocat:main", "ref": "main", "sha": head,
                "user": {"login": "octocat"},
                "repo": {"id": 1296269, "name": "app", "full_name": "octocat/app", "fork": false}},
            "merged": false, "draft": false, "commits": 1, "changed_files": 1
        },
        "repository": {"id": 1296269, "full_name": "octocat/app"},
        "sender": {"login": "contributor", "id": 2}
    });
    let body = serde_json::to_vec(&payload).unwrap();
    let headers = vec![
        ("X-GitHub-Event".to_string(), "pull_request".to_string()),
        ("X-GitHub-Delivery".into(), "pr-1".into()),
        (
            "X-Hub-Signature-256".into(),
            format!("sha256={}", sign(&secret, &body)),
        ),
    ];
    let (status, receipt) = deliver(&server, "demo", &headers, &body).await;
    assert_eq!(status, 201, "{receipt}");
    let run = wait_for(&server, "demo", 2, |r| r["status"] == "succeeded").await;
    assert_eq!(run["event"], "pull_request");
    assert_eq!(run["commit"], pr_head.as_str());
    assert_eq!(run["pull_request"]["fork"], true);
    assert_eq!(run["pull_request"]["number"], 7);
    assert_eq!(run["changed_paths"], json!(["src/lib.rs"]));
    assert_eq!(step(&run, "compile")["status"], "succeeded");
    assert_eq!(step(&run, "docs")["status"], "skipped");
    let log = server
        .get_text("/api/v1/projects/demo/runs/2/steps/report/log")
        .await;
    // Code from a fork gets no secrets; the log says why.
    assert!(
        log.contains("pr=7 fork=true target=main source=feature token=none"),
        "{log}"
    );
    assert!(
        log.contains("secrets are withheld from pull requests from forks: API_TOKEN"),
        "{log}"
    );
    assert_eq!(run["secrets"], json!([]));
    server.stop();
}

#[tokio::test]
async fn a_newer_push_cancels_the_superseded_run_of_its_concurrency_group() {
    let dir = tempdir();
    let pipeline = "concurrency: { group: \"deploy-${branch}\", cancel_in_progress: true }\nsteps:\n  - name: slow\n    run: sleep 60\n";
    let (server, repo) = demo(dir.path(), pipeline, &[]).await;
    let secret = webhook_secret(&server, "demo").await;
    let first = git(&repo, &["rev-parse", "HEAD"]);
    let second = commit(&repo, &[("a.txt", "a")], "a");
    let (headers, body) = push_delivery(
        Forge::GitHub,
        &secret,
        "c-1",
        "main",
        &first,
        &second,
        &["a.txt"],
    );
    assert_eq!(deliver(&server, "demo", &headers, &body).await.0, 201);
    wait_for(&server, "demo", 1, |r| step_running(r, "slow")).await;
    let third = commit(&repo, &[("b.txt", "b")], "b");
    let (headers, body) = push_delivery(
        Forge::GitHub,
        &secret,
        "c-2",
        "main",
        &second,
        &third,
        &["b.txt"],
    );
    assert_eq!(deliver(&server, "demo", &headers, &body).await.0, 201);

    let superseded = wait_for(&server, "demo", 1, |r| r["status"] == "cancelled").await;
    assert!(
        superseded["message"]
            .as_str()
            .unwrap()
            .contains("superseded by #2"),
        "{superseded}"
    );
    assert_eq!(superseded["concurrency_group"], "deploy-main");
    let newer = wait_for(&server, "demo", 2, |r| step_running(r, "slow")).await;
    assert_eq!(newer["status"], "running");
    assert_eq!(newer["commit"], third.as_str());
    let cancelled = server
        .request(Method::POST, "/api/v1/projects/demo/runs/2/cancel")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    wait_for(&server, "demo", 2, |r| r["status"] == "cancelled").await;
    server.stop();
}

/// A stand-in for a remote service (a forge API, a webhook receiver): answers 201 to
/// every POST and records its path, headers and JSON body (the exact body bytes, as
/// text, under the pseudo-header `x-recorded-body`, for signature checks).
pub(crate) async fn recording_server() -> (String, Arc<Mutex<Vec<(String, Value, Value)>>>) {
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    type Seen = Arc<Mutex<Vec<(String, Value, Value)>>>;
    let seen: Seen = Arc::default();
    async fn record(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
        raw: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let mut headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::String(v.to_str().unwrap_or("").into()),
                )
            })
            .collect();
        headers.insert(
            "x-recorded-body".into(),
            Value::String(String::from_utf8_lossy(&raw).into_owned()),
        );
        seen.lock()
            .unwrap()
            .push((uri.path().to_string(), Value::Object(headers), body));
        axum::http::StatusCode::CREATED
    }
    let app = axum::Router::new()
        .fallback(axum::routing::post(record))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

pub(crate) async fn statuses_for(
    seen: &Mutex<Vec<(String, Value, Value)>>,
    count: usize,
) -> Vec<(String, Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= count || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
