//! Regression tests for defects found by attacking the server (issue 15): each drives the
//! real binary the way the attack did and failed before its fix.

use crate::harness::{Server, betcycle, client, eventually, run as run_cmd, tempdir, texts};
use crate::runs::{demo, trigger, wait_for};
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) fn finished(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("queued" | "running"))
}

pub(crate) fn running(run: &Value) -> bool {
    run["status"] == "running" && run["steps"][0]["running"] == true
}

/// `betcycle db check` on a stopped server's data directory: (exit code, stdout).
pub(crate) fn db_check(root: &Path) -> (i32, String) {
    let (code, stdout, stderr) = run_cmd(
        betcycle(root)
            .args(["db", "check", "--data-dir"])
            .arg(root.join("data")),
    );
    (code, format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn a_nan_in_a_report_never_reaches_a_record() {
    let dir = tempdir();
    let pipeline = r#"
steps:
  - name: test
    run: |
      printf '<coverage line-rate="NaN"><packages/></coverage>' > cov.xml
      printf '<testsuite time="NaN"><testcase name="a" time="NaN"/><testcase name="b" time="0.5"/></testsuite>' > junit.xml
    reports: { junit: junit.xml, coverage: cov.xml }
"#;
    let (server, _repo) = demo(dir.path(), pipeline, &[]).await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let step = &run["steps"][0];
    assert_eq!(step["tests"]["total"], 2);
    assert_eq!(step["tests"]["duration_secs"], 0.5);
    assert!(step["coverage"].is_null(), "{step:#}");
    let warnings = step["warnings"].to_string();
    assert!(
        warnings.contains("line-rate") && warnings.contains("time \\\"NaN\\\""),
        "{warnings}"
    );
    // The run list, the run and the queue still work.
    let list = server.get("/api/v1/projects/demo/runs").await;
    assert_eq!(list.status(), 200);
    assert_eq!(
        server.get("/api/v1/projects/demo/runs/1").await.status(),
        200
    );
    trigger(&server, "demo").await;
    assert_eq!(
        wait_for(&server, "demo", 2, finished).await["status"],
        "succeeded"
    );
    assert!(server.stop().success());
    let (code, out) = db_check(dir.path());
    assert_eq!(code, 0, "{out}");
    let server = Server::start_admin(dir.path(), &[]);
    assert_eq!(server.get_json("/readyz").await["ready"], true);
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_set_aside_and_the_queue_goes_on() {
    let dir = tempdir();
    let pipeline = "steps:\n  - name: wait\n    run: sleep 60\n";
    let (server, _repo) = demo(dir.path(), pipeline, &[]).await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, running).await;
    server.kill();

    // Run 1 (in the running set) no longer decodes as a run.
    {
        let db = redb::Database::open(dir.path().join("data/betcycle.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let runs: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("runs-1");
            let mut table = tx.open_table(runs).unwrap();
            table
                .insert(1, br#"{"id":1,"status":"what"}"#.as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let (code, out) = db_check(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("table runs-1"), "{out}");

    // The server starts, says what it set aside, and runs the next run.
    let server = Server::start_admin(dir.path(), &[]);
    let logs = server.logs().join("\n");
    assert!(logs.contains("set aside"), "{logs}");
    let run = trigger(&server, "demo").await;
    assert_eq!(run["number"], 2);
    wait_for(&server, "demo", 2, running).await;
    let list = server.get_json("/api/v1/projects/demo/runs").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    assert!(server.stop().success());
    let (code, out) = db_check(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("set aside by the server (did not decode): runs-1 1"),
        "{out}"
    );
    let _ = Duration::ZERO;
}

pub(crate) async fn step_log(server: &Server, slug: &str, number: u64, step: &str) -> String {
    server
        .get_text(&format!(
            "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log"
        ))
        .await
}

pub(crate) async fn add_project(server: &Server, slug: &str, pipeline: &str, root: &Path) {
    let repo = root.join(slug);
    std::fs::create_dir_all(&repo).unwrap();
    crate::run::git_repo(&repo, pipeline);
    crate::runs::project(server, slug, &repo).await;
}

#[tokio::test]
async fn a_step_cannot_read_the_data_directory_outside_its_workspace() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // Another project's run leaves a log and (failing) a workspace with a file in it.
    let other = "steps:\n  - name: leave\n    run: echo other-project-log-line; echo left-behind > left.txt; exit 1\n";
    let probe = format!(
        r#"
steps:
  - name: probe
    run: |
      for f in {data}/master.key {data}/betcycle.redb {data}/runs/1/0.log {data}/workspaces/1/left.txt; do
        if head -c 1 "$f" >/dev/null 2>&1; then echo "readable: $f"; else echo "denied: $f"; fi
      done
      # The server (this shell's parent) holds the database open: its descriptors and
      # memory are out of reach too.
      test "$(cat /proc/$PPID/comm)" = betcycle && echo "parent is the server"
      for fd in /proc/$PPID/fd/*; do [ -f "$fd" ] && head -c 1 "$fd" >/dev/null 2>&1 && echo "readable: $fd"; done
      head -c 1 /proc/$PPID/mem >/dev/null 2>&1 && echo "readable: the server's memory"
      ls {data}/workspaces >/dev/null 2>&1 && echo "listed the workspaces" || echo "denied: listing"
      echo ok > "$TMPDIR/t" && echo "temp dir ok"
      echo ok > here && echo "workspace ok"
      git --version >/dev/null && echo "tools ok"
"#
    );
    let server = Server::start_admin(dir.path(), &[]);
    add_project(&server, "other", other, dir.path()).await;
    trigger(&server, "other").await;
    assert_eq!(
        wait_for(&server, "other", 1, finished).await["status"],
        "failed"
    );
    assert!(dir.path().join("data/workspaces/1/left.txt").exists());
    add_project(&server, "demo", &probe, dir.path()).await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let log = step_log(&server, "demo", 1, "probe").await;
    assert!(!log.contains("readable:"), "{log}");
    assert_eq!(log.matches("denied:").count(), 5, "{log}");
    assert!(log.contains("parent is the server"), "{log}");
    for ok in ["temp dir ok", "workspace ok", "tools ok"] {
        assert!(log.contains(ok), "{ok}: {log}");
    }

    // An administrator lifts the isolation (the access test checks that nobody else
    // can); then the same probes read everything, which proves they would have.
    set_isolation(&server, "none", 400).await;
    let off = set_isolation(&server, "off", 200).await;
    assert_eq!(off["isolation"], "off");
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 2, finished).await;
    let log = step_log(&server, "demo", 2, "probe").await;
    assert!(log.matches("readable:").count() >= 5, "{log}");

    // Strict: no home directory, no files outside the system's directories.
    set_isolation(&server, "strict", 200).await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 3, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let log = step_log(&server, "demo", 3, "probe").await;
    assert!(!log.contains("readable:"), "{log}");
    assert!(
        log.contains("workspace ok") && log.contains("tools ok"),
        "{log}"
    );
}

/// A server killed with `kill -9` while run 1's first step runs, then started again with
/// `restart`. The step waits for a gate file, then appends a line to the returned marker
/// file; the gate opens only once the restarted server has killed what the killed one
/// left, so a step that survived would write too — however long the restart takes.
pub(crate) async fn killed_during_a_step(
    dir: &Path,
    more_steps: &str,
    restart: &[&str],
) -> (Server, std::path::PathBuf) {
    // Beside the data directory: a step may write there (not into the directory that
    // holds the data directory itself); made before the server starts, so the sandboxed
    // step sees the gate created in it later.
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let (marker, gate) = (dir.join("out/marker"), dir.join("out/gate"));
    let pipeline = format!(
        "steps:\n  - name: slow\n    run: while [ ! -f {} ]; do sleep 0.1; done; echo done >> {}\n{more_steps}",
        gate.display(),
        marker.display()
    );
    let (server, _repo) = demo(dir, &pipeline, &[]).await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, running).await;
    server.kill();
    let server = Server::start_admin(dir, restart);
    eventually(
        Duration::from_secs(20),
        "the restarted server did not kill the steps left running",
        || async {
            let killed = server
                .logs()
                .iter()
                .any(|l| l.contains("killed steps the previous BetCycle process left running"));
            if killed {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    std::fs::write(&gate, "").unwrap();
    (server, marker)
}

#[tokio::test]
async fn a_killed_server_leaves_no_step_running_and_runs_each_step_once() {
    let dir = tempdir();
    let (server, marker) = killed_during_a_step(dir.path(), "", &[]).await;
    // The re-queued run runs the step again: it must be the only one writing.
    let run = wait_for(&server, "demo", 1, |r| finished(r) && r["restarts"] == 1).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let written = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(written.lines().count(), 1, "the step ran {written:?}");
    let logs = server.logs().join("\n");
    assert!(
        logs.contains("killed steps the previous BetCycle process left running"),
        "{logs}"
    );
}

#[tokio::test]
async fn an_interrupted_run_that_is_not_requeued_gives_every_step_a_final_status() {
    let dir = tempdir();
    let after = "  - name: after\n    depends_on: [slow]\n    run: 'true'\n";
    let (server, marker) =
        killed_during_a_step(dir.path(), after, &["--run-max-restarts", "0"]).await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["steps"][0]["status"], "failed", "{run:#}");
    assert_eq!(run["steps"][1]["status"], "skipped", "{run:#}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!marker.exists(), "the killed server's step went on running");
}

/// Peak resident memory of process `pid`, in MiB.
pub(crate) fn peak_rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

pub(crate) async fn put_project_policy(server: &Server, name: &str, source: &str) {
    let response = server
        .request(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/demo/policies/{name}"),
        )
        .header("content-type", "text/plain")
        .body(source.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

#[tokio::test]
async fn a_runaway_policy_fails_its_gate_and_cannot_take_the_server_down() {
    let dir = tempdir();
    let (server, _repo) = demo(dir.path(), "steps:\n  - name: ok\n    run: 'true'\n", &[]).await;

    // Each level is 16 copies of the one before: level 7 would be 4 GiB.
    let mut bomb =
        String::from("package betcycle.pipeline\nimport rego.v1\ns0 := \"xxxxxxxxxxxxxxxx\"\n");
    for n in 1..=7 {
        let p = n - 1;
        bomb.push_str(&format!(
            "s{n} := concat(\"\", [{}])\n",
            vec![format!("s{p}"); 16].join(", ")
        ));
    }
    bomb.push_str("deny contains \"too big\" if count(s7) > 0\n");
    put_project_policy(&server, "bomb.rego", &bomb).await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "error", "{run:#}");
    let message = run["message"].as_str().unwrap();
    assert!(
        message.contains("policy project:demo/bomb.rego exceeded its memory limit"),
        "{message}"
    );
    assert!(
        peak_rss_mib(server.pid()) < 200,
        "server peak RSS {} MiB",
        peak_rss_mib(server.pid())
    );

    // A loop that runs far past the time limit is stopped at the deadline.
    put_project_policy(
        &server,
        "bomb.rego",
        "package betcycle.pipeline\nimport rego.v1\ndeny contains \"slow\" if count([1 | some x in numbers.range(1, 40000); some y in numbers.range(1, 40000); x == y]) < 0\n",
    )
    .await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 2, finished).await;
    assert_eq!(run["status"], "error", "{run:#}");
    let message = run["message"].as_str().unwrap();
    assert!(message.contains("exceeded its time limit"), "{message}");
    let decisions = server
        .get_json("/api/v1/projects/demo/decisions?subject=run%202")
        .await;
    let took = decisions[0]["duration_us"].as_u64().unwrap();
    assert!(took < 4_000_000, "the evaluation took {took} µs");

    // The server is fine, and a sound policy is evaluated again.
    assert_eq!(server.get_json("/readyz").await["ready"], true);
    put_project_policy(
        &server,
        "bomb.rego",
        "package betcycle.pipeline\nimport rego.v1\nwarn contains \"fine\" if true\n",
    )
    .await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 3, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
}

#[tokio::test]
async fn the_deploy_gate_stays_closed_when_the_repository_cannot_be_fetched() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let repo = dir.path().join("demo");
    std::fs::create_dir_all(repo.join(".betcycle/policies")).unwrap();
    std::fs::write(
        repo.join(".betcycle/policies/no.rego"),
        "package betcycle.deploy\nimport rego.v1\ndeny contains \"the repository says no\" if true\n",
    )
    .unwrap();
    add_project(
        &server,
        "demo",
        "steps:\n  - { name: build, run: 'true' }\ndeploy:\n  qa: { target: { kind: exec, run: 'echo deployed' } }\n",
        dir.path(),
    )
    .await;
    trigger(&server, "demo").await;
    assert_eq!(
        wait_for(&server, "demo", 1, finished).await["status"],
        "succeeded"
    );
    let env = server
        .request(
            reqwest::Method::PUT,
            "/api/v1/projects/demo/environments/qa",
        )
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(env.status().is_success(), "{}", env.status());
    // The forge is down: the repository cannot be fetched.
    std::fs::rename(&repo, dir.path().join("gone")).unwrap();
    let deploy = || async {
        let response = server
            .call(
                reqwest::Method::POST,
                "/api/v1/projects/demo/deployments",
                &serde_json::json!({"environment": "qa", "release": 1}),
            )
            .await;
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let (status, body) = deploy().await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["message"], "denied by policy: the repository says no");
    // Nor can the mirror say: the gate stays closed and says why.
    std::fs::remove_dir_all(dir.path().join("data/repos/1.git")).unwrap();
    let (status, body) = deploy().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("stays closed"),
        "{body}"
    );
}

pub(crate) async fn subscribe(server: &Server, token: &str) -> reqwest::Response {
    let response = crate::harness::client()
        .get(format!("{}/api/v1/events", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// What an SSE stream sends within `window`.
pub(crate) async fn sse_for(mut response: reqwest::Response, window: Duration) -> String {
    let mut seen = String::new();
    let _ = tokio::time::timeout(window, async {
        while let Ok(Some(chunk)) = response.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn the_event_stream_shows_only_what_the_subscriber_may_see() {
    use crate::harness::{ADMIN, ADMIN_PASSWORD, add_user, create_token};
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "eve", "eve password 123", false);
    let eve = create_token(dir.path(), "eve", "write");
    let (server, _repo) = demo(dir.path(), "steps:\n  - { name: ok, run: 'true' }\n", &[]).await;
    let admin = server.token.clone().unwrap();
    let theirs = subscribe(&server, &eve).await;
    let admins = subscribe(&server, &admin).await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, finished).await;
    let (theirs, admins) = tokio::join!(
        sse_for(theirs, Duration::from_secs(2)),
        sse_for(admins, Duration::from_secs(2))
    );
    assert!(theirs.contains("event: connected"), "{theirs}");
    assert!(
        !theirs.contains("demo"),
        "a user without a role saw: {theirs}"
    );
    let update = admins
        .lines()
        .find(|l| l.starts_with("data: ") && l.contains("run_updated"))
        .unwrap_or_else(|| panic!("{admins}"));
    assert_eq!(update.matches("\"id\"").count(), 1, "{update}");
    let event: Value = serde_json::from_str(update.trim_start_matches("data: ")).unwrap();
    assert_eq!(event["project"], "demo");
    assert_eq!(event["id"], 1);
}

/// POSTs a GitHub push of `commit` to `main` with delivery id `id`, signed with `secret`.
pub(crate) async fn github_push(
    server: &Server,
    slug: &str,
    secret: &str,
    id: &str,
    commit: &str,
) -> (u16, Value) {
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": commit,
        "pusher": {"name": "octocat"}, "commits": [],
    }))
    .unwrap();
    let response = crate::harness::client()
        .post(format!("{}/api/v1/hooks/{slug}", server.url))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", id)
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", crate::triggers::sign(secret, &body)),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_push_that_cannot_be_fetched_is_retried_and_replays_start_nothing() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    add_project(
        &server,
        "demo",
        "steps:\n  - { name: ok, run: 'true' }\n",
        dir.path(),
    )
    .await;
    add_project(
        &server,
        "nosecret",
        "steps:\n  - { name: ok, run: 'true' }\n",
        dir.path(),
    )
    .await;
    let secret = "whsec-hardening-0123456789";
    let set = server
        .request(
            reqwest::Method::PUT,
            "/api/v1/projects/demo/secrets/WEBHOOK_SECRET",
        )
        .json(&serde_json::json!({ "value": secret }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 201);
    let commit = crate::run::git(&dir.path().join("demo"), &["rev-parse", "HEAD"]);

    // An unknown project and one without a secret answer alike.
    let unknown = github_push(&server, "no-such-project", secret, "x-1", &commit).await;
    let unset = github_push(&server, "nosecret", secret, "x-1", &commit).await;
    assert_eq!(unknown.0, 401, "{unknown:?}");
    assert_eq!(unknown.0, unset.0);
    assert_eq!(unknown.1["message"], unset.1["message"]);

    // The repository cannot be fetched just now: a 5xx, so the forge retries.
    let repo = dir.path().join("demo");
    std::fs::rename(&repo, dir.path().join("away")).unwrap();
    let (status, body) = github_push(&server, "demo", secret, "delivery-1", &commit).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        server
            .get_json("/api/v1/projects/demo/runs")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The forge's "Redeliver" sends the same delivery id once it is back: it is built.
    std::fs::rename(dir.path().join("away"), &repo).unwrap();
    let (status, body) = github_push(&server, "demo", secret, "delivery-1", &commit).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["result"], "triggered");
    // The same push under a fresh delivery id (a replayed capture) starts nothing.
    let (status, body) = github_push(&server, "demo", secret, "delivery-2", &commit).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "duplicate");
    assert_eq!(
        server
            .get_json("/api/v1/projects/demo/runs")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Whether the server closes `stream` within `within` (a read gives end of file or an
/// error), while `feed` is written every second.
pub(crate) async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
    feed: Option<&[u8]>,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        if let Some(feed) = feed {
            let _ = stream.write_all(feed).await;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 (or other answer) is fine; the connection must still end.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_their_number_is_capped() {
    use tokio::io::AsyncWriteExt;
    let dir = tempdir();
    let server = Server::start_admin(
        dir.path(),
        &[
            "--http-header-read-timeout",
            "2s",
            "--http-idle-timeout",
            "3s",
            "--http-max-connections",
            "4",
        ],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(addr.clone());

    // A header line every second never finishes the request: cut off at the deadline.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(6), Some(b"X-Slow: 1\r\n")).await,
        "a client trickling headers was never cut off"
    );
    // A silent connection, and one idle after its request, are closed.
    let mut silent = connect().await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(6), None).await);
    let mut kept = connect().await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut kept, Duration::from_secs(8), None).await);

    // Four silent sockets take every slot: a fifth client waits until they are cut off.
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(connect().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let health = crate::harness::client()
        .get(format!("{}/healthz", server.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "served at once despite the cap: {:?}",
        started.elapsed()
    );
    drop(hogs);
}

/// Sets project `demo`'s isolation as the administrator; asserts the status.
async fn set_isolation(server: &Server, isolation: &str, status: u16) -> Value {
    let body = serde_json::json!({ "isolation": isolation });
    let path = "/api/v1/projects/demo/isolation";
    server
        .expect(reqwest::Method::PUT, path, &body, status)
        .await
}

/// Group commit: writes alone (one durable commit each) and concurrent ones (sharing an
/// fsync) alike are durable once answered. A server killed with `kill -9` while clients
/// write has, after a restart, every team it answered 201 for. Writer 0 writes alone at
/// first and last (when it is killed), the others join it in between.
#[tokio::test]
async fn every_write_answered_before_a_kill_9_is_there_after_a_restart() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let (url, token) = (server.url.clone(), server.token.clone().unwrap());
    let answered = Arc::new(Mutex::new(Vec::new()));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let (url, token, answered) = (url.clone(), token.clone(), answered.clone());
        writers.spawn(async move {
            let client = client();
            let stop = tokio::time::Instant::now() + Duration::from_millis(800);
            if writer > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for i in 0.. {
                if writer > 0 && tokio::time::Instant::now() > stop {
                    break;
                }
                let name = format!("w{writer}-{i}");
                let sent = client
                    .post(format!("{url}/api/v1/teams"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "name": name }))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 201 => answered.lock().unwrap().push(name),
                    Ok(r) => panic!("{name}: {}", r.status()),
                    Err(_) => break, // the server is gone
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.kill();
    while writers.join_next().await.is_some() {}
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 100, "only {} writes", answered.len());
    let server = Server::start_admin(dir.path(), &[]);
    let teams = server.get_json("/api/v1/teams").await;
    let stored: std::collections::HashSet<&str> = texts(&teams, "name").into_iter().collect();
    let lost: Vec<&String> = answered
        .iter()
        .filter(|n| !stored.contains(n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered writes lost: {lost:?}",
        lost.len(),
        answered.len()
    );
}
