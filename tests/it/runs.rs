//! Runs on the server: triggered through the API on a real git repository, executed by
//! the worker, recorded step by step, cancelled, and recovered after restarts.

use crate::harness::{Server, betcycle, eventually, run as run_cmd, tempdir};
use crate::run::{DAG, git_repo, gone, millis};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// A git repository with `pipeline`, a server (with `extra` flags) and project `demo`.
pub(crate) async fn demo(
    dir: &Path,
    pipeline: &str,
    extra: &[&str],
) -> (Server, std::path::PathBuf) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git_repo(&repo, pipeline);
    let server = Server::start_admin(dir, extra);
    project(&server, "demo", &repo).await;
    (server, repo)
}

pub(crate) async fn project(server: &Server, slug: &str, repo: &Path) {
    server
        .expect(
            Method::POST,
            "/api/v1/projects",
            &json!({"slug": slug, "repository": repo.to_str().unwrap()}),
            201,
        )
        .await;
}

pub(crate) async fn trigger(server: &Server, slug: &str) -> Value {
    let response = server
        .call(
            Method::POST,
            &format!("/api/v1/projects/{slug}/runs"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Polls run `number` until it exists and `done` says so (or 30 s pass). A run a poll or
/// a schedule creates may not exist yet.
pub(crate) async fn wait_for(
    server: &Server,
    slug: &str,
    number: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/api/v1/projects/{slug}/runs/{number}");
    let (path, done) = (&path, &done);
    eventually(
        Duration::from_secs(30),
        &format!("run {slug}#{number} did not get there"),
        || async move {
            let response = server.get(path).await;
            let status = response.status();
            let run: Value = response.json().await.unwrap_or(Value::Null);
            if status == 200 && done(&run) {
                Ok(run)
            } else {
                Err(format!("({status}) {run:#}"))
            }
        },
    )
    .await
}

fn finished(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("queued" | "running"))
}

#[tokio::test]
async fn a_triggered_run_executes_the_dag_and_records_steps_tests_coverage_and_artifacts() {
    let dir = tempdir();
    let (server, repo) = demo(dir.path(), DAG, &[]).await;

    let run = trigger(&server, "demo").await;
    assert_eq!(run["number"], 1);
    assert_eq!(run["branch"], "main");
    assert_eq!(run["commit"].as_str().unwrap().len(), 40);
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let step = |name: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(step("lint")["status"], "failed_allowed");
    assert_eq!(step("package")["status"], "succeeded");
    assert_eq!(step("package")["needs"], json!(["unit", "lint"]));
    let (unit, lint) = (step("unit"), step("lint"));
    assert!(millis(&unit["started_at"]) < millis(&lint["finished_at"]));
    assert!(millis(&lint["started_at"]) < millis(&unit["finished_at"]));
    assert_eq!(unit["tests"]["failed"], 1);
    assert_eq!(unit["coverage"]["percent"], 70.0);
    assert_eq!(step("package")["artifacts"][0]["path"], "out/app.bin");
    // Kept content-addressed and downloadable by digest.
    let sha = step("package")["artifacts"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let download = server
        .get(&format!("/api/v1/projects/demo/runs/1/artifacts/{sha}"))
        .await;
    assert_eq!(download.status(), 200);
    assert_eq!(
        download.headers()["content-disposition"],
        "attachment; filename=\"app.bin\""
    );
    assert_eq!(download.bytes().await.unwrap().as_ref(), b"release bits");
    assert!(
        server
            .data_dir
            .join(format!("artifacts/sha256/{}/{sha}", &sha[..2]))
            .exists()
    );
    let missing = server
        .get(&format!(
            "/api/v1/projects/demo/runs/1/artifacts/{}",
            "0".repeat(64)
        ))
        .await;
    assert_eq!(missing.status(), 404);

    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/lint/log")
        .await;
    assert!(
        log.lines().any(|l| l.ends_with(" e style problem")),
        "{log}"
    );
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/prepare/log")
        .await;
    let commit = run["commit"].as_str().unwrap();
    assert!(
        log.contains(&format!("hello from main at {commit}")),
        "{log}"
    );

    // A successful run's workspace is removed; the run is audited.
    assert!(!server.data_dir.join("workspaces/1").exists());
    let audit: Vec<Value> = server
        .get_json("/api/v1/audit?action=run.")
        .await
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(audit[0]["action"], "run.create");

    // A pipeline file with problems ends the run in `error`, saying why.
    std::fs::write(
        repo.join(".betcycle.yml"),
        "steps:\n  - name: a\n    runn: x\n",
    )
    .unwrap();
    crate::run::git(&repo, &["commit", "-qam", "break it"]);
    trigger(&server, "demo").await;
    let broken = wait_for(&server, "demo", 2, finished).await;
    assert_eq!(broken["status"], "error");
    assert!(
        broken["message"]
            .as_str()
            .unwrap()
            .contains(".betcycle.yml:3:5: steps[0].runn: unknown field"),
        "{broken}"
    );
}

#[tokio::test]
async fn cancel_kills_the_step_and_its_grandchild() {
    let dir = tempdir();
    let (server, _) = demo(
        dir.path(),
        "steps:\n  - name: hang\n    run: sh -c 'sleep 600 & echo $! > grandchild.pid; wait'\n",
        &[],
    )
    .await;
    trigger(&server, "demo").await;
    let pid_file = server.data_dir.join("workspaces/1/grandchild.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let cancelled = server
        .request(Method::POST, "/api/v1/projects/demo/runs/1/cancel")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["steps"][0]["status"], "cancelled");
    assert!(gone(&pid), "grandchild {pid} survived the cancel");
}

#[tokio::test]
async fn a_restart_mid_run_requeues_it_and_leaves_nothing_running() {
    let dir = tempdir();
    let (server, _) = demo(
        dir.path(),
        "steps:\n  - name: slow\n    run: sleep 2; echo finished\n",
        &[],
    )
    .await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["steps"][0]["running"] == true).await;
    assert!(server.stop().success());

    // After a graceful restart the run is re-queued once and then completes.
    let server = Server::start_admin(dir.path(), &[]);
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["restarts"], 1);
    assert!(run["message"].as_str().unwrap().contains("re-queued"));

    // A second run, killed with kill -9: it is not left running either.
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 2, |r| r["steps"][0]["running"] == true).await;
    server.kill();
    let server = Server::start_admin(dir.path(), &[]);
    // Recovered at start-up (re-queued, possibly already running again), not stuck.
    let run: Value = server.get_json("/api/v1/projects/demo/runs/2").await;
    assert_eq!(run["restarts"], 1, "{run:#}");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("interrupted by a server restart")
    );
    let run = wait_for(&server, "demo", 2, finished).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["restarts"], 1);

    // With no restarts allowed, an interrupted run is failed instead.
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 3, |r| r["steps"][0]["running"] == true).await;
    server.kill();
    let server = Server::start_admin(dir.path(), &["--run-max-restarts", "0"]);
    let run: Value = server.get_json("/api/v1/projects/demo/runs/3").await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["message"], "interrupted by a server restart");
}

#[tokio::test]
async fn trigger_cli_waits_for_the_result_and_the_console_shows_the_run() {
    let dir = tempdir();
    let (server, _) = demo(dir.path(), DAG, &[]).await;
    let token = server.token.clone().unwrap();

    let (code, stdout, stderr) = run_cmd(
        betcycle(dir.path())
            .args([
                "trigger",
                "--server",
                &server.url,
                "--project",
                "demo",
                "--env",
                "GREETING=bonjour",
                "--wait",
            ])
            .env("BETCYCLE_TOKEN", &token),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/prepare/log")
        .await;
    assert!(log.contains("bonjour from main"), "{log}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("queued demo#1 at "), "{stdout}");
    assert!(lines[0].ends_with("/projects/demo/runs/1)"), "{stdout}");
    assert_eq!(lines.last().unwrap(), &"demo#1 succeeded");

    let (code, _, stderr) = run_cmd(
        betcycle(dir.path())
            .args([
                "trigger",
                "--server",
                &server.url,
                "--project",
                "demo",
                "--ref",
                "nope",
            ])
            .env("BETCYCLE_TOKEN", &token),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("400") && stderr.contains("no branch, tag or ref \"nope\""),
        "{stderr}"
    );
    let (code, _, stderr) = run_cmd(betcycle(dir.path()).args(["trigger", "--project", "demo"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("BETCYCLE_TOKEN"));

    // The run page shows steps, results, artifacts and logs.
    let page = server.get_text("/projects/demo/runs/1").await;
    for expected in [
        "data-run-status>succeeded<",
        "data-step=\"package\"",
        "failed (allowed)",
        "tests 1/3",
        "70.0%",
        "failed: calc::divides — division by zero",
        "<code>out/app.bin</code></a> 12 bytes",
        "<span class=\"line stderr\"",
        "</span>style problem</span>",
    ] {
        assert!(page.contains(expected), "run page lacks {expected}");
    }
    // The same handler answers an htmx refresh, and the panel's address, with the panel
    // alone.
    let refresh = server.request(Method::GET, "/projects/demo/runs/1");
    let refresh = refresh.header("HX-Request", "true").send().await.unwrap();
    let panel = refresh.text().await.unwrap();
    let alias = server.get_text("/projects/demo/runs/1/panel").await;
    for fragment in [&panel, &alias] {
        assert!(fragment.starts_with("<div id=\"run-panel\""), "{fragment}");
        assert!(fragment.contains("data-run-status>succeeded<") && !fragment.contains("<html"));
    }
    let project_page = server.get_text("/projects/demo").await;
    assert!(project_page.contains("href=\"/projects/demo/runs/1\">#1</a>"));
}

#[tokio::test]
async fn step_output_beyond_the_cap_is_dropped_with_a_notice() {
    let dir = tempdir();
    let (server, _) = demo(
        dir.path(),
        "steps:\n  - name: chatty\n    run: for i in $(seq 1 100); do echo line $i; done\n",
        &["--log-step-max-size", "200"],
    )
    .await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded");
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/chatty/log")
        .await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() < 40, "{} lines kept", lines.len());
    assert!(lines[0].ends_with(" o line 1"));
    assert!(
        lines
            .last()
            .unwrap()
            .contains("output truncated: this step wrote more than 200 bytes"),
        "{log}"
    );
}

#[tokio::test]
async fn re_running_failed_steps_keeps_the_steps_that_succeeded() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    // `flaky` fails until a marker file outside the workspace exists.
    let marker = dir.path().join("fixed");
    let pipeline = format!(
        "steps:\n  - name: build\n    run: echo built\n  - name: flaky\n    run: test -e {}\n    depends_on: [build]\n",
        marker.display()
    );
    git_repo(&repo, &pipeline);
    let server = Server::start_admin(dir.path(), &[]);
    project(&server, "demo", &repo).await;
    trigger(&server, "demo").await;
    let first = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(first["status"], "failed");

    std::fs::write(&marker, "").unwrap();
    let rerun = |failed_only: bool| {
        server
            .request(Method::POST, "/api/v1/projects/demo/runs/1/rerun")
            .json(&json!({"failed_only": failed_only}))
            .send()
    };
    let second = rerun(true).await.unwrap();
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["commit"], first["commit"]);
    assert_eq!(second["rerun_of"], first["id"]);
    let second = wait_for(&server, "demo", 2, finished).await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(
        second["steps"][0]["reused_from"], first["id"],
        "build was kept, not run again"
    );
    assert_eq!(
        second["steps"][0]["started_at"],
        first["steps"][0]["started_at"]
    );
    assert!(second["steps"][1]["reused_from"].is_null());
    let log = server
        .get_text("/api/v1/projects/demo/runs/2/steps/build/log")
        .await;
    assert!(
        log.contains(" o built"),
        "the kept step's log comes along: {log}"
    );

    // A full re-run runs everything again.
    assert_eq!(rerun(false).await.unwrap().status(), 201);
    let third = wait_for(&server, "demo", 3, finished).await;
    assert_eq!(third["status"], "succeeded");
    assert!(third["steps"][0]["reused_from"].is_null());
}

/// Reads Server-Sent Events until `end`: (number, `{n, stderr, html}`) of each line the
/// `lines` events carried.
pub(crate) async fn read_log_stream(response: reqwest::Response) -> Vec<(u64, Value)> {
    read_log_events(response).await.0
}

/// `read_log_stream`, and how many `lines` events carried the lines.
async fn read_log_events(mut response: reqwest::Response) -> (Vec<(u64, Value)>, usize) {
    let mut buffer = String::new();
    let mut lines = Vec::new();
    let mut events = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk())
            .await
            .expect("the stream ended in time")
            .unwrap();
        let Some(chunk) = chunk else {
            panic!("stream closed without an end event")
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buffer.find("\n\n") {
            let event: String = buffer.drain(..at + 2).collect();
            let field = |name: &str| {
                event.lines().find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim_start().to_string())
                })
            };
            match field("event").as_deref() {
                Some("lines") => {
                    events += 1;
                    let batch: Value = serde_json::from_str(&field("data").unwrap()).unwrap();
                    let first = batch["first"].as_u64().unwrap();
                    let html = batch["html"].as_array().unwrap();
                    assert!(!html.is_empty(), "an empty lines event: {event}");
                    let id: u64 = field("id").unwrap().parse().unwrap();
                    assert_eq!(id, first + html.len() as u64 - 1, "id = the last line");
                    for (n, html) in (first..).zip(html) {
                        let line = json!({"n": n, "stderr": batch["stderr"], "html": html});
                        lines.push((n, line));
                    }
                }
                Some("end") => return (lines, events),
                Some("reload") => panic!("the server sent reload after {} lines", lines.len()),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn a_step_log_streams_live_with_colours_and_resumes_after_a_reconnect() {
    let dir = tempdir();
    let (server, _) = demo(dir.path(), "steps:\n  - name: talk\n    run: \"printf '\\\\033[31mred alert\\\\033[0m\\\\n'; for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done\"\n", &[]).await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["steps"][0]["running"] == true).await;

    // Connected mid-step: everything so far, then the rest live, each line once.
    let stream = server
        .get("/api/v1/projects/demo/runs/1/steps/talk/log/stream")
        .await;
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let lines = read_log_stream(stream).await;
    let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=6).collect::<Vec<u64>>());
    let first = lines[0].1["html"].as_str().unwrap();
    assert!(
        first.contains("<span style='color:") && first.contains("red alert"),
        "{first}"
    );
    assert_eq!(lines[5].1["html"], "line 5");

    // A reconnect with Last-Event-ID gets only what it missed.
    wait_for(&server, "demo", 1, finished).await;
    let resumed = server
        .request(
            Method::GET,
            "/api/v1/projects/demo/runs/1/steps/talk/log/stream",
        )
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap();
    let lines = read_log_stream(resumed).await;
    let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [5, 6]);
}

#[tokio::test]
async fn a_live_log_client_that_falls_behind_still_gets_every_line_in_order() {
    let dir = tempdir();
    let flood = "steps:\n  - name: flood\n    run: sleep 0.5; seq 1 300000; echo done >&2\n";
    let (server, _) = demo(dir.path(), flood, &[]).await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["steps"][0]["running"] == true).await;
    let stream = server
        .get("/api/v1/projects/demo/runs/1/steps/flood/log/stream")
        .await;
    // Reads nothing while the step writes its lines, then all of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (lines, events) = read_log_events(stream).await;
    assert_eq!(lines.len(), 300_001);
    assert!(
        events * 100 < lines.len(),
        "{events} events: lines come in bursts"
    );
    // Numbered 1, 2, 3… without a gap; stdout in its order. The stderr line comes
    // through its own pipe, so under load it may be read before the last stdout lines
    // (as in any CI that keeps the two streams apart): only its presence is certain.
    for (i, (n, _)) in lines.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1);
    }
    let stdout: Vec<&Value> = lines
        .iter()
        .filter(|(_, l)| l["stderr"] != true)
        .map(|(_, l)| &l["html"])
        .collect();
    assert_eq!(stdout.len(), 300_000);
    for (i, html) in stdout.iter().enumerate() {
        assert_eq!(**html, json!((i + 1).to_string()));
    }
    let stderr: Vec<&(u64, Value)> = lines.iter().filter(|(_, l)| l["stderr"] == true).collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0].1["html"], "done");
    let stored = server
        .get_text("/api/v1/projects/demo/runs/1/steps/flood/log")
        .await;
    assert_eq!(stored.lines().count(), 300_001);
}

#[tokio::test]
async fn a_failed_runs_workspace_is_kept_until_its_retention_passes() {
    let dir = tempdir();
    let (server, _) = demo(
        dir.path(),
        "steps:\n  - name: broken\n    run: echo evidence > left-behind.txt; exit 1\n",
        &[],
    )
    .await;
    trigger(&server, "demo").await;
    assert_eq!(
        wait_for(&server, "demo", 1, finished).await["status"],
        "failed"
    );
    let workspace = server.data_dir.join("workspaces/1");
    assert!(
        workspace.join("left-behind.txt").exists(),
        "kept for inspection"
    );
    assert!(server.stop().success());

    // With the retention passed, the sweep at start-up removes it.
    let _server = Server::start_admin(dir.path(), &["--workspace-retention", "0s"]);
    let workspace = &workspace;
    eventually(
        Duration::from_secs(10),
        "the kept workspace was swept",
        || async move {
            if workspace.exists() {
                Err("it is still there".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

/// The numbers of the runs `GET /api/v1/projects/{slug}/runs{query}` lists, in order.
pub(crate) async fn run_numbers(server: &Server, slug: &str, query: &str) -> Vec<u64> {
    let runs = server
        .get_json(&format!("/api/v1/projects/{slug}/runs{query}"))
        .await;
    let runs = runs.as_array().unwrap_or_else(|| panic!("{runs}"));
    runs.iter().map(|r| r["number"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn runs_are_listed_newest_first_by_status_and_by_branch() {
    let dir = tempdir();
    let pipeline = "steps:\n  - name: check\n    run: test -z \"$FAIL\"\n";
    let (server, repo) = demo(dir.path(), pipeline, &[]).await;
    crate::run::git(&repo, &["branch", "feature"]);
    let start = |body: Value| {
        let server = &server;
        async move {
            let response = server
                .call(Method::POST, "/api/v1/projects/demo/runs", &body)
                .await;
            assert_eq!(response.status(), 201);
            let run: Value = response.json().await.unwrap();
            let number = run["number"].as_u64().unwrap();
            wait_for(server, "demo", number, finished).await;
        }
    };
    // 1 main ok, 2 main failed, 3 feature ok, 4 feature failed, 5 main ok.
    start(json!({})).await;
    start(json!({"env": {"FAIL": "1"}})).await;
    start(json!({"ref": "feature"})).await;
    start(json!({"ref": "feature", "env": {"FAIL": "1"}})).await;
    start(json!({})).await;
    let numbers = |query: &'static str| run_numbers(&server, "demo", query);
    assert_eq!(numbers("").await, [5, 4, 3, 2, 1]);
    assert_eq!(numbers("?status=failed").await, [4, 2]);
    assert_eq!(numbers("?status=succeeded&limit=2").await, [5, 3]);
    assert_eq!(numbers("?branch=feature").await, [4, 3]);
    assert_eq!(numbers("?branch=main&status=succeeded").await, [5, 1]);
    assert_eq!(numbers("?status=running").await, Vec::<u64>::new());
    assert_eq!(numbers("?branch=nowhere").await, Vec::<u64>::new());

    let bad = server.get("/api/v1/projects/demo/runs?status=sunny").await;
    assert_eq!(bad.status(), 400);
    let message = crate::harness::message_of(bad).await;
    assert!(
        message.contains("unknown run status \"sunny\"") && message.contains("succeeded"),
        "{message}"
    );
}
