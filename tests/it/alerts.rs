//! Alerts and notifications: a pipeline that fails on the default branch notifies a
//! Slack-shaped and a signed webhook channel once, a green run resolves it, a silence
//! holds notifications back, a `kill -9` in between loses and repeats nothing, and an
//! unreachable channel is retried with its error recorded.

use crate::harness::{Server, eventually, message_of, tempdir};
use crate::run::git_repo;
use crate::runs::{project, trigger, wait_for};
use crate::triggers::{recording_server, sign};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Seen = Arc<Mutex<Vec<(String, Value, Value)>>>;

/// Waits until `seen` holds `count` requests (and, for a moment, no more).
async fn exactly(seen: &Seen, count: usize, what: &str) -> Vec<(String, Value, Value)> {
    eventually(Duration::from_secs(20), what, || async {
        let got = seen.lock().unwrap().clone();
        if got.len() >= count {
            Ok(())
        } else {
            Err(format!("{got:#?}"))
        }
    })
    .await;
    // Anything sent twice would arrive within the outbox's next rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), count, "{what}: {got:#?}");
    got
}

async fn run_to_end(server: &Server, n: u64) -> Value {
    trigger(server, "demo").await;
    wait_for(server, "demo", n, |r| {
        r["status"] == "succeeded" || r["status"] == "failed"
    })
    .await
}

#[tokio::test]
async fn a_failing_pipeline_notifies_once_resolves_once_and_a_silence_holds_it_back() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    // Read by the step; made before the server starts, so the sandboxed step sees it.
    let outcome = dir.path().join("outcome");
    std::fs::write(&outcome, "fail").unwrap();
    git_repo(
        &repo,
        &format!(
            "steps:\n  - name: test\n    run: test \"$(cat {})\" = pass\n",
            outcome.display()
        ),
    );
    let start = || Server::start_admin(dir.path(), &[]);
    let server = start();
    project(&server, "demo", &repo).await;
    let (slack_url, slack) = recording_server().await;
    let (hook_url, hook) = recording_server().await;
    server
        .set_secret(
            "/api/v1/secrets/SLACK_OPS_URL",
            &format!("{slack_url}/services/T0/B0/x"),
        )
        .await;
    server
        .set_secret("/api/v1/secrets/HOOK_KEY", "hook-signing-key")
        .await;
    for channel in [
        json!({"name": "ops", "kind": "slack", "url_secret": "SLACK_OPS_URL"}),
        json!({"name": "audit-hook", "kind": "webhook", "url": format!("{hook_url}/alerts"), "signing_secret": "HOOK_KEY"}),
        json!({"name": "down", "kind": "webhook", "url": "http://127.0.0.1:9/nothing-listens"}),
    ] {
        let (status, answer) = server
            .send_json(Method::POST, "/api/v1/channels", channel)
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    let (_, channels) = server
        .send_json(Method::GET, "/api/v1/channels", json!(null))
        .await;
    assert!(
        !channels.to_string().contains("services/T0"),
        "a secret URL is never shown: {channels}"
    );

    // Bad input is refused with the reason.
    for (path, body, message) in [
        (
            "/api/v1/channels",
            json!({"name": "bad", "kind": "webhook", "url": "not a url"}),
            "url \"not a url\": relative URL without a base",
        ),
        (
            "/api/v1/channels",
            json!({"name": "bad", "kind": "pager", "url": "https://example.com"}),
            "kind \"pager\": use webhook, slack, discord, teams, ntfy or gotify",
        ),
        (
            "/api/v1/silences",
            json!({"rule": "no_such_rule", "duration": "1h", "reason": "x"}),
            "unknown rule \"no_such_rule\": the rules are pipeline_failed, deployment_failed, probe_down",
        ),
    ] {
        let (status, answer) = server.send_json(Method::POST, path, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["message"], message);
    }
    let response = server
        .call(Method::POST, "/api/v1/channels/down/test", &json!({}))
        .await;
    assert_eq!(response.status(), 502);
    let message = message_of(response).await;
    assert!(
        message.starts_with("channel \"down\" did not take the test notification:"),
        "{message}"
    );

    // A failure on main: one message to each channel.
    assert_eq!(run_to_end(&server, 1).await["status"], "failed");
    let got = exactly(&slack, 1, "the Slack message").await;
    let text = got[0].2["text"].as_str().unwrap();
    assert!(
        text.contains("[FIRING] demo #1 on main failed")
            && text.contains("/projects/demo/runs/1|details>"),
        "{text}"
    );
    assert_eq!(got[0].0, "/services/T0/B0/x");
    let got = exactly(&hook, 1, "the webhook").await;
    let (path, headers, body) = &got[0];
    assert_eq!(path, "/alerts");
    assert_eq!(body["alert"], "pipeline_failed:demo");
    assert_eq!(body["state"], "firing");
    let raw = headers["x-recorded-body"].as_str().unwrap();
    let signature = headers["x-betcycle-signature-256"].as_str().unwrap();
    assert_eq!(
        signature,
        format!("sha256={}", sign("hook-signing-key", raw.as_bytes()))
    );

    // A green run resolves it; the server is killed right after: the resolved message
    // still arrives, once, and the firing one is not sent again.
    std::fs::write(&outcome, "pass").unwrap();
    assert_eq!(run_to_end(&server, 2).await["status"], "succeeded");
    server.kill();
    let server = start();
    let got = exactly(&slack, 2, "the resolved Slack message").await;
    let text = got[1].2["text"].as_str().unwrap();
    assert!(text.contains("[RESOLVED] demo #1 on main failed"), "{text}");
    let got = exactly(&hook, 2, "the resolved webhook").await;
    assert_eq!(got[1].2["state"], "resolved");

    // Silenced: the alert fires (in its history, with the silence) but nothing is sent.
    let (status, silence) = server
        .send_json(
            Method::POST,
            "/api/v1/silences",
            json!({"rule": "pipeline_failed", "subject": "demo", "duration": "1h", "reason": "fixing the runner"}),
        )
        .await;
    assert_eq!(status, 201, "{silence}");
    std::fs::write(&outcome, "fail").unwrap();
    assert_eq!(run_to_end(&server, 3).await["status"], "failed");
    let alerts = eventually(Duration::from_secs(20), "the silenced firing", || async {
        let (_, alerts) = server
            .send_json(Method::GET, "/api/v1/alerts", json!(null))
            .await;
        let history = alerts["history"].as_array().unwrap();
        if history.len() == 3 {
            Ok(alerts)
        } else {
            Err(format!("{alerts:#}"))
        }
    })
    .await;
    let latest = &alerts["history"][0];
    assert_eq!(latest["state"], "firing");
    assert!(
        latest["silenced_by"]
            .as_str()
            .unwrap()
            .contains("fixing the runner"),
        "{latest}"
    );
    assert_eq!(alerts["alerts"][0]["state"], "firing", "{alerts:#}");
    let page = server.get_text("/monitoring").await;
    assert!(
        page.contains("pipeline_failed:demo")
            && page.contains("fixing the runner")
            && page.contains("Send test notification"),
        "{page}"
    );
    exactly(&slack, 2, "nothing while silenced").await;
    exactly(&hook, 2, "nothing while silenced").await;

    // The unreachable channel: every message kept, retried, with what went wrong.
    let (_, outbox) = server
        .send_json(Method::GET, "/api/v1/notifications", json!(null))
        .await;
    let down: Vec<&Value> = outbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["channel"] == "down" && n["alert"] != "test")
        .collect();
    assert_eq!(down.len(), 2, "{outbox:#}");
    for n in down {
        assert_eq!(n["status"], "pending", "{n}");
        assert!(n["attempts"].as_u64().unwrap() >= 1, "{n}");
        assert!(!n["last_error"].as_str().unwrap().is_empty(), "{n}");
    }
    let sent = outbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "sent")
        .count();
    assert_eq!(sent, 4, "two per reachable channel: {outbox:#}");
}

/// A local site whose health the test switches: `ok all good`, or 503.
async fn switchable_site() -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = Arc::new(AtomicBool::new(true));
    let state = up.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let up = state.load(Ordering::SeqCst);
            async move {
                if up {
                    (axum::http::StatusCode::OK, "ok all good")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, up)
}

async fn probe_view(server: &Server) -> Value {
    let (status, probes) = server
        .send_json(Method::GET, "/api/v1/probes", json!(null))
        .await;
    assert_eq!(status, 200, "{probes}");
    probes[0].clone()
}

#[tokio::test]
async fn a_probe_that_goes_down_fires_after_its_threshold_and_resolves_after_its_successes() {
    use std::sync::atomic::Ordering;
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let (hook_url, hook) = recording_server().await;
    let (site, up) = switchable_site().await;
    let (status, answer) = server
        .send_json(
            Method::POST,
            "/api/v1/channels",
            json!({"name": "hook", "kind": "webhook", "url": hook_url}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    // Bad input first.
    for (probe, message) in [
        (
            json!({"name": "p", "kind": "tcp", "target": "nohost"}),
            "target \"nohost\": a tcp probe's target is host:port",
        ),
        (
            json!({"name": "p", "kind": "http", "target": site, "interval": "500ms", "timeout": "100ms"}),
            "interval: at least 1s",
        ),
        (
            json!({"name": "p", "kind": "http", "target": "ftp://example.com/"}),
            "url \"ftp://example.com/\": expected an http(s):// URL with a host",
        ),
    ] {
        let (status, answer) = server
            .send_json(Method::POST, "/api/v1/probes", probe)
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["message"], message);
    }
    let (status, created) = server
        .send_json(
            Method::POST,
            "/api/v1/probes",
            json!({"name": "site", "kind": "http", "target": site, "interval": "1s", "timeout": "1s",
                   "body_contains": "all good", "failure_threshold": 3, "success_threshold": 2}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    eventually(Duration::from_secs(20), "the probe up", || async {
        let view = probe_view(&server).await;
        if view["status"] == "up" {
            Ok(())
        } else {
            Err(format!("{view:#}"))
        }
    })
    .await;

    // Down for good: it fires once, after three failures in a row.
    up.store(false, Ordering::SeqCst);
    let got = exactly(&hook, 1, "the probe's firing").await;
    assert_eq!(got[0].2["alert"], "probe_down:site");
    assert_eq!(got[0].2["state"], "firing");
    assert!(
        got[0].2["summary"]
            .as_str()
            .unwrap()
            .contains("is down: status 503"),
        "{:#}",
        got[0].2
    );
    let (_, results) = server
        .send_json(Method::GET, "/api/v1/probes/site/results", json!(null))
        .await;
    let results = results["results"].as_array().unwrap();
    let failing = results
        .iter()
        .rev()
        .take_while(|r| r["ok"] == false)
        .count();
    assert!(
        failing >= 3,
        "it fired after {failing} failures: {results:#?}"
    );
    assert_eq!(probe_view(&server).await["status"], "down");

    // Back up: resolved after two successes.
    up.store(true, Ordering::SeqCst);
    let got = exactly(&hook, 2, "the probe's resolved").await;
    assert_eq!(got[1].2["state"], "resolved");
    let view = probe_view(&server).await;
    assert_eq!(view["status"], "up", "{view:#}");

    // Uptime is the share of recorded results that were up.
    let matched = eventually(
        Duration::from_secs(10),
        "uptime matching the results",
        || async {
            let (_, before) = server
                .send_json(Method::GET, "/api/v1/probes/site/results", json!(null))
                .await;
            let view = probe_view(&server).await;
            let (_, after) = server
                .send_json(Method::GET, "/api/v1/probes/site/results", json!(null))
                .await;
            let results = before["results"].as_array().unwrap().clone();
            if results.len() != after["results"].as_array().unwrap().len() {
                return Err("a result came in between".to_string());
            }
            let ok = results.iter().filter(|r| r["ok"] == true).count();
            let expected = ok as f64 * 100.0 / results.len() as f64;
            Ok((
                expected,
                view["uptime_24h"].as_f64().unwrap(),
                results.len(),
            ))
        },
    )
    .await;
    let (expected, reported, n) = matched;
    assert!(
        (expected - reported).abs() < 1e-9,
        "{reported} vs {expected} over {n}"
    );
    assert!(reported < 100.0 && reported > 0.0, "{reported}");

    // The same through the CLI.
    let cli = |args: &[&str]| {
        let mut cmd = crate::harness::betcycle(dir.path());
        cmd.args(args)
            .env("BETCYCLE_SERVER", &server.url)
            .env("BETCYCLE_TOKEN", server.token.as_deref().unwrap());
        crate::harness::run(&mut cmd)
    };
    let (code, out, err) = cli(&["probes", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("site") && l.contains(" up ")),
        "{out}"
    );
    let (code, out, err) = cli(&["alerts", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("resolved") && l.contains("probe_down:site")),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "alerts",
        "silence",
        "--rule",
        "probe_down",
        "--subject",
        "site",
        "--for",
        "2h",
        "--reason",
        "maintenance",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("silence 1 until "), "{out}");
    let (code, _, err) = cli(&[
        "alerts", "silence", "--rule", "nope", "--for", "2h", "--reason", "x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown rule \"nope\""), "{err}");
}
