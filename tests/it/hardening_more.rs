//! Hardening, continued: reports, failing tests and production, lockout, full disk,
//! masking gaps, restore errors, session revocation.

use crate::hardening::*;
use crate::harness::{Server, betcycle, message_of, run as run_cmd, tempdir};
use crate::runs::{demo, trigger, wait_for};
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn reports_take_globs_keep_skip_reasons_and_count_coverage_right() {
    let dir = tempdir();
    let pipeline = r#"
steps:
  - name: test
    run: |
      mkdir -p reports
      printf '<testsuite><testcase name="a"/><testcase name="b"><skipped message="needs a GPU"/></testcase></testsuite>' > reports/unit.xml
      printf '<testsuite><testcase name="c"/><testcase name="d"><skipped message="xfail: known bug #12"/></testcase></testsuite>' > reports/integration.xml
      printf 'SF:src/a.c\nDA:1,3\nDA:2,0\nDA:3,1\nDA:4,1\nBRDA:1,0,0,1\nBRDA:1,0,1,0\nend_of_record\n' > lcov.info
    reports: { junit: "reports/*.xml", coverage: [lcov.info] }
  - name: bogus
    run: printf '<coverage lines-valid="-1" lines-covered="0" line-rate="0.5"/>' > cobertura.xml
    reports: { coverage: cobertura.xml }
"#;
    let (server, _repo) = demo(dir.path(), pipeline, &[]).await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let test = &run["steps"][0];
    assert_eq!(test["tests"]["total"], 4, "{test:#}");
    assert_eq!(test["tests"]["skipped"], 2);
    let reasons: Vec<&str> = test["tests"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["outcome"] == "skipped")
        .map(|c| c["message"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["xfail: known bug #12", "needs a GPU"]);
    assert_eq!(test["coverage"]["lines_total"], 4, "{test:#}");
    assert_eq!(test["coverage"]["lines_covered"], 3);
    assert_eq!(test["coverage"]["percent"], 75.0);
    assert_eq!(test["coverage"]["branch_percent"], 50.0);
    // The run's page shows branch coverage and the skip reasons.
    let page = server.get_text("/projects/demo/runs/1").await;
    assert!(page.contains("(branches 50.0%)"), "{page}");
    assert!(page.contains("skipped: b — needs a GPU"), "{page}");
    // Its Tests section lists every case, failures first; coverage is listed by file.
    assert!(page.contains("id=\"tests\""), "{page}");
    assert!(
        page.contains("data-file=\"src/a.c\"><td><code>src/a.c</code></td><td class=\"wide\">test</td><td>3/4</td><td>75.0%</td>"),
        "{page}"
    );
    assert_eq!(test["coverage"]["files"][0]["path"], "src/a.c");
    let bogus = &run["steps"][1];
    assert!(bogus["coverage"].is_null(), "{bogus:#}");
    assert!(
        bogus["warnings"]
            .to_string()
            .contains("lines-valid=\\\"-1\\\""),
        "{bogus:#}"
    );
}

#[tokio::test]
async fn a_release_with_failing_tests_is_refused_by_production_and_warned_elsewhere() {
    let dir = tempdir();
    let pipeline = r#"
steps:
  - name: test
    run: |
      printf '<testsuite><testcase name="a"/><testcase name="b"/><testcase name="c"/><testcase classname="calc" name="divides"><failure message="division by zero"/></testcase></testsuite>' > junit.xml
    reports: { junit: junit.xml }
deploy:
  staging: { target: { kind: exec, run: 'echo deployed' } }
  production: { target: { kind: exec, run: 'echo deployed' } }
"#;
    let (server, _repo) = demo(dir.path(), pipeline, &[]).await;
    trigger(&server, "demo").await;
    assert_eq!(
        wait_for(&server, "demo", 1, finished).await["status"],
        "succeeded"
    );
    for env in ["staging", "production"] {
        let put = server
            .request(
                reqwest::Method::PUT,
                &format!("/api/v1/projects/demo/environments/{env}"),
            )
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }
    let request = |env: &'static str| {
        server
            .request(reqwest::Method::POST, "/api/v1/projects/demo/deployments")
            .json(&serde_json::json!({"environment": env, "release": 1}))
            .send()
    };
    let refused = request("production").await.unwrap();
    assert_eq!(refused.status(), 403);
    let message = message_of(refused).await;
    assert_eq!(
        message,
        "denied by policy: 1 test(s) failed in the release's run: test: calc::divides — division by zero"
    );
    let staged = request("staging").await.unwrap();
    assert_eq!(staged.status(), 201);
    let d =
        crate::deploy::wait_deployment(&server, "demo", 1, |d| d["status"] == "succeeded").await;
    let timeline = crate::harness::texts(&d["timeline"], "what");
    assert!(
        timeline
            .iter()
            .any(|t| t.contains("warning: 1 test(s) failed") && t.contains("calc::divides")),
        "{timeline:?}"
    );
}

/// `POST /api/v1/sessions` from loopback address `from` (any 127/8 address works).
async fn sign_in_from(server: &Server, from: &str, name: &str, password: &str) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .post(format!("{}/api/v1/sessions", server.url))
        .json(&serde_json::json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn nobody_can_lock_the_administrator_out_by_failing_their_name() {
    use crate::harness::{ADMIN, ADMIN_PASSWORD};
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    // An attacker fails the admin's name until its address is refused.
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(sign_in_from(&server, "127.0.0.2", ADMIN, "guess").await);
    }
    assert_eq!(answers[..10], [401; 10]);
    assert_eq!(answers[10..], [429, 429]);
    // The administrator, from an address that is not failing, signs in.
    assert_eq!(
        sign_in_from(&server, "127.0.0.3", ADMIN, ADMIN_PASSWORD).await,
        201
    );
    // Attacker 2 fails it again ten times from ten addresses; each further guess from
    // one of them is refused after a few, and the admin still gets in.
    for i in 10..20 {
        assert_eq!(
            sign_in_from(&server, &format!("127.0.1.{i}"), ADMIN, "guess").await,
            401
        );
    }
    let answers: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(sign_in_from(&server, "127.0.1.10", ADMIN, "guess").await);
        }
        out
    };
    assert_eq!(answers, [401, 401, 429]);
    assert_eq!(
        sign_in_from(&server, "127.0.0.3", ADMIN, ADMIN_PASSWORD).await,
        201
    );
}

#[tokio::test]
async fn a_log_that_cannot_be_written_says_so_and_runs_wait_for_disk_space() {
    let dir = tempdir();
    let pipeline = "steps:\n  - name: talk\n    run: for i in 1 2 3; do echo line $i; done\n";
    let (server, _repo) = demo(dir.path(), pipeline, &[]).await;
    // Run 1's log lands on a device that is always full.
    let runs = dir.path().join("data/runs/1");
    std::fs::create_dir_all(&runs).unwrap();
    std::os::unix::fs::symlink("/dev/full", runs.join("0.log")).unwrap();
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    let warnings = run["steps"][0]["warnings"].to_string();
    assert!(
        warnings.contains("the step log is incomplete")
            && warnings.contains("No space left on device"),
        "{run:#}"
    );
    let logs = server.logs().join("\n");
    assert!(logs.contains("a step log cannot be written"), "{logs}");
    assert!(server.stop().success());

    // With less free space than required, a queued run waits (and the log says why).
    let server = Server::start_admin(dir.path(), &["--health-min-free-disk", "1000 PiB"]);
    trigger(&server, "demo").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = server.get_json("/api/v1/projects/demo/runs/2").await;
    assert_eq!(run["status"], "queued", "{run:#}");
    assert!(
        server
            .logs()
            .join("\n")
            .contains("the data disk is nearly full")
    );
    assert!(server.stop().success());
    // With space again, it runs.
    let server = Server::start_admin(dir.path(), &[]);
    assert_eq!(
        wait_for(&server, "demo", 2, finished).await["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn a_secret_with_escapes_inside_split_in_halves_or_wrapped_base64_stays_masked() {
    use base64::Engine;
    let dir = tempdir();
    let secret = "Zq8-secret-0123456789abcdefghij";
    let pipeline = r#"
steps:
  - name: leak
    secrets: [TOKEN]
    run: |
      a=$(printf %s "$TOKEN" | cut -c1-16); b=$(printf %s "$TOKEN" | cut -c17-)
      printf 'colour: %s\033[0m%s\n' "$a" "$b"
      echo "out: $a"; echo "err: $b" >&2
      printf %s "$TOKEN$TOKEN$TOKEN" | base64
"#;
    let (server, _repo) = demo(dir.path(), pipeline, &[]).await;
    server
        .expect(
            reqwest::Method::PUT,
            "/api/v1/projects/demo/secrets/TOKEN",
            &serde_json::json!({ "value": secret }),
            201,
        )
        .await;
    trigger(&server, "demo").await;
    let run = wait_for(&server, "demo", 1, finished).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let log = step_log(&server, "demo", 1, "leak").await;
    for piece in [&secret[..16], &secret[16..], "Zq8-secret"] {
        assert!(!log.contains(piece), "{piece} in {log}");
    }
    assert!(log.contains("colour: ***"), "{log}");
    assert!(
        log.contains("out: ***") && log.contains("err: ***"),
        "{log}"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret.repeat(3));
    for chunk in encoded.as_bytes().chunks(76) {
        let chunk = std::str::from_utf8(chunk).unwrap();
        // No 8-character run of the encoded value survives on its line.
        for window in chunk.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(!log.contains(window), "{window} of {chunk} in {log}");
        }
    }
}

#[test]
fn restore_errors_name_the_entry_plainly() {
    let dir = tempdir();
    let work = dir.path().join("evil");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", work.join("link")).unwrap();
    let archive = dir.path().join("evil.tar.gz");
    let (code, _, stderr) = run_cmd(
        std::process::Command::new("tar")
            .arg("czf")
            .arg(&archive)
            .arg("-C")
            .arg(&work)
            .arg("link"),
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run_cmd(
        betcycle(dir.path())
            .args(["db", "restore"])
            .arg(&archive)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("entry \"link\" is neither a file nor a directory"),
        "{stdout}{stderr}"
    );
    assert!(!stderr.contains("Some("), "{stderr}");
}

#[tokio::test]
async fn revoking_another_users_session_is_audited_as_a_failure() {
    use crate::harness::{ADMIN, ADMIN_PASSWORD, add_user, create_token};
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "bob", "bob password 123", false);
    let bob = create_token(dir.path(), "bob", "write");
    let server = Server::start_admin(dir.path(), &[]);
    // The admin has a session; bob tries to revoke it by its id.
    let signed_in = crate::harness::client()
        .post(format!("{}/api/v1/sessions", server.url))
        .json(&serde_json::json!({"name": ADMIN, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 201);
    let id = signed_in.json::<Value>().await.unwrap()["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = crate::harness::client()
        .delete(format!("{}/api/v1/sessions/{id}", server.url))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 404);
    let entries: Vec<Value> = server
        .get("/api/v1/audit?action=session.delete&limit=10")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "failure", "{entries:?}");
    // The admin's session still works.
    assert_eq!(
        server
            .get_json("/api/v1/sessions")
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}
