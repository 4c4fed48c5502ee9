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
use std::time::{Duration, Instant};

pub(crate) type Seen = Arc<Mutex<Vec<(String, Value, Value)>>>;

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
            "kind \"pager\": use webhook, slack, discord, teams, ntfy, gotify or email",
        ),
        (
            "/api/v1/silences",
            json!({"rule": "no_such_rule", "duration": "1h", "reason": "x"}),
            "unknown rule \"no_such_rule\": the rules are pipeline_failed, deployment_failed, probe_down, certificate_expiring, queue_stuck, runner_saturated, disk_low, audit_chain_broken",
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

/// A TLS acceptor presenting `cert` (PEM) with `key`, for a test's own servers.
fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Changes rule `name` (`PUT /api/v1/alert-rules/{name}`), asserting it was taken.
async fn put_rule(server: &Server, name: &str, change: Value) -> Value {
    let (status, answer) = server
        .send_json(Method::PUT, &format!("/api/v1/alert-rules/{name}"), change)
        .await;
    assert_eq!(status, 200, "{name}: {answer}");
    answer
}

/// A message the SMTP server took: envelope, data, and how the client got there.
#[derive(Clone, Debug, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
    /// It came after STARTTLS.
    tls: bool,
    /// The user that authenticated (AUTH PLAIN).
    user: String,
}

type Mails = Arc<Mutex<Vec<Mail>>>;

/// A small real SMTP server on 127.0.0.1 that offers STARTTLS with `cert`/`key`, wants
/// TLS before anything else, takes AUTH PLAIN for `bot`/`s3cret` only, and records every
/// message it takes.
async fn smtp_server(cert: &str, key: &str) -> (u16, Mails) {
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    let acceptor = tls_acceptor(cert, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Mails = Arc::default();
    let seen = mails.clone();

    async fn line<S: AsyncRead + Unpin>(s: &mut BufReader<S>) -> Option<String> {
        let mut text = String::new();
        match s.read_line(&mut text).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(text.trim_end_matches(['\r', '\n']).to_string()),
        }
    }
    async fn say<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>, text: &str) {
        let _ = s.get_mut().write_all(text.as_bytes()).await;
    }
    async fn after_tls<S: AsyncRead + AsyncWrite + Unpin>(stream: S, seen: Mails) {
        use base64::Engine;
        let mut s = BufReader::new(stream);
        let mut mail = Mail {
            tls: true,
            ..Mail::default()
        };
        while let Some(command) = line(&mut s).await {
            let upper = command.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                say(&mut s, "250-localhost\r\n250 AUTH PLAIN\r\n").await;
            } else if let Some(b64) = upper.strip_prefix("AUTH PLAIN ").map(|_| &command[11..]) {
                let plain = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap_or_default();
                if plain == b"\0bot\0s3cret" {
                    mail.user = "bot".into();
                    say(&mut s, "235 2.7.0 accepted\r\n").await;
                } else {
                    say(&mut s, "535 5.7.8 bad credentials\r\n").await;
                }
            } else if mail.user.is_empty() && !upper.starts_with("QUIT") {
                say(&mut s, "530 5.7.0 authentication required\r\n").await;
            } else if upper.starts_with("MAIL FROM:") {
                mail.from = command[10..].trim().to_string();
                say(&mut s, "250 ok\r\n").await;
            } else if upper.starts_with("RCPT TO:") {
                mail.to.push(command[8..].trim().to_string());
                say(&mut s, "250 ok\r\n").await;
            } else if upper == "DATA" {
                say(&mut s, "354 end with <CRLF>.<CRLF>\r\n").await;
                let mut data = String::new();
                while let Some(l) = line(&mut s).await {
                    if l == "." {
                        break;
                    }
                    data.push_str(&l);
                    data.push('\n');
                }
                mail.data = data;
                seen.lock().unwrap().push(mail.clone());
                mail.from.clear();
                mail.to.clear();
                say(&mut s, "250 queued\r\n").await;
            } else if upper.starts_with("QUIT") {
                say(&mut s, "221 bye\r\n").await;
                return;
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                say(&mut s, "250 ok\r\n").await;
            } else {
                say(&mut s, "502 unknown command\r\n").await;
            }
        }
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let mut s = BufReader::new(stream);
                say(&mut s, "220 localhost ESMTP recording server\r\n").await;
                while let Some(command) = line(&mut s).await {
                    let upper = command.to_ascii_uppercase();
                    if upper.starts_with("EHLO") {
                        say(&mut s, "250-localhost\r\n250 STARTTLS\r\n").await;
                    } else if upper == "STARTTLS" {
                        say(&mut s, "220 2.0.0 go ahead\r\n").await;
                        if let Ok(tls) = acceptor.accept(s.into_inner()).await {
                            after_tls(tls, seen).await;
                        }
                        return;
                    } else if upper.starts_with("QUIT") {
                        say(&mut s, "221 bye\r\n").await;
                        return;
                    } else {
                        say(&mut s, "530 5.7.0 must issue a STARTTLS command first\r\n").await;
                    }
                }
            });
        }
    });
    (port, mails)
}

/// The Subject header of a recorded message, unfolded (a long header continues on
/// lines that start with white space).
fn subject_of(mail: &Mail) -> String {
    let mut lines = mail
        .data
        .lines()
        .skip_while(|l| !l.starts_with("Subject: "));
    let Some(first) = lines.next() else {
        return String::new();
    };
    let mut subject = first["Subject: ".len()..].to_string();
    for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        subject.push_str(more);
    }
    subject
}

/// Waits until `mails` holds `count` messages; returns them.
async fn mails_at_least(mails: &Mails, count: usize, what: &str) -> Vec<Mail> {
    eventually(Duration::from_secs(30), what, || async {
        let got = mails.lock().unwrap().clone();
        if got.len() >= count {
            Ok(got)
        } else {
            Err(format!("{got:#?}"))
        }
    })
    .await
}

#[tokio::test]
async fn email_arrives_over_starttls_and_rules_on_metrics_fire_after_their_for_and_renotify() {
    let dir = tempdir();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
    let ca_file = dir.path().join("smtp-ca.pem");
    std::fs::write(&ca_file, &cert).unwrap();
    let (port, mails) = smtp_server(&cert, &key).await;
    // The server trusts the SMTP server's certificate as a system root, as an operator's
    // own CA would be.
    let mut cmd = crate::harness::betcycle(dir.path());
    cmd.env("SSL_CERT_FILE", &ca_file);
    let server = Server::start_admin_with(cmd, dir.path(), &[]);
    server
        .set_secret(
            "/api/v1/secrets/SMTP_URL",
            &format!("smtp://bot:s3cret@localhost:{port}"),
        )
        .await;

    // Bad channels first: each says what is wrong.
    for (channel, message) in [
        (
            json!({"name": "m", "kind": "email", "url": "smtp://mail.example.com?tls=sometimes", "to": ["a@example.com"]}),
            "url: tls=sometimes: use required (the default), opportunistic or none",
        ),
        (
            json!({"name": "m", "kind": "email", "url": "imap://mail.example.com", "to": ["a@example.com"]}),
            "url: scheme imap: expected smtp:// (STARTTLS) or smtps:// (TLS)",
        ),
        (
            json!({"name": "m", "kind": "email", "url_secret": "SMTP_URL"}),
            "an email channel needs to (one or more addresses)",
        ),
        (
            json!({"name": "m", "kind": "email", "url_secret": "SMTP_URL", "to": "not an address"}),
            "to \"not an address\": not an email address such as ops@example.com or Ops <ops@example.com> (Invalid input)",
        ),
        (
            json!({"name": "m", "kind": "slack", "url": "https://hooks.example.com/x", "to": ["a@example.com"]}),
            "to and from are for email channels",
        ),
    ] {
        let (status, answer) = server
            .send_json(Method::POST, "/api/v1/channels", channel)
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["message"], message);
    }
    let (status, answer) = server
        .send_json(
            Method::POST,
            "/api/v1/channels",
            json!({"name": "mail", "kind": "email", "url_secret": "SMTP_URL",
                   "to": "ops@example.com, lead@example.com", "from": "BetCycle <ci@example.com>"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["to"], json!(["ops@example.com", "lead@example.com"]));
    assert!(
        !answer.to_string().contains("s3cret"),
        "the SMTP password stays in the secret: {answer}"
    );

    // The test button: one message, over TLS, authenticated, to both recipients.
    let (status, answer) = server
        .send_json(Method::POST, "/api/v1/channels/mail/test", json!(null))
        .await;
    assert_eq!(status, 200, "{answer}");
    let got = mails_at_least(&mails, 1, "the test email").await;
    assert_eq!(
        subject_of(&got[0]),
        "[BetCycle] FIRING: a test notification from BetCycle to channel mail"
    );
    assert!(got[0].tls && got[0].user == "bot", "{:?}", got[0]);
    assert_eq!(got[0].from, "<ci@example.com>");
    assert_eq!(got[0].to, vec!["<ops@example.com>", "<lead@example.com>"]);

    // Rules: bad ones are refused with the reason.
    for (name, change, message) in [
        (
            "db_size",
            json!({"metric": "betcycle_no_such_metric", "op": ">", "threshold": 1}),
            "unknown metric \"betcycle_no_such_metric\"",
        ),
        (
            "db_size",
            json!({"metric": "betcycle_store_size_bytes", "op": "=>", "threshold": 1}),
            "op \"=>\": use >, >=, <, <=, == or !=",
        ),
        (
            "db_size",
            json!({"metric": "betcycle_store_size_bytes", "op": ">"}),
            "a metric rule needs metric, op and threshold",
        ),
        (
            "pipeline_failed",
            json!({"threshold": 2}),
            "threshold is for certificate_expiring, queue_stuck, disk_low and metric rules, not pipeline_failed",
        ),
        (
            "disk_low",
            json!({"renotify": "5s"}),
            "renotify \"5s\": at least 10s (or 0s: never)",
        ),
        (
            "disk_low",
            json!({"severity": "loud"}),
            "severity \"loud\": use critical, warning or info",
        ),
    ] {
        let (status, answer) = server
            .send_json(Method::PUT, &format!("/api/v1/alert-rules/{name}"), change)
            .await;
        assert_eq!(status, 400, "{answer}");
        let text = answer["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{text}");
    }

    // A rule on a metric that holds now, for 3 s, sent again every 10 s.
    let created = Instant::now();
    let rule = put_rule(
        &server,
        "db_size",
        json!({"metric": "betcycle_store_size_bytes", "op": ">", "threshold": 0,
                   "for": "3s", "renotify": "10s", "severity": "warning"}),
    )
    .await;
    assert_eq!(rule["description"], "betcycle_store_size_bytes > 0");
    let got = mails_at_least(&mails, 2, "the metric rule's email").await;
    let fired = Instant::now();
    assert!(
        created.elapsed() >= Duration::from_secs(3),
        "it fired only after its for"
    );
    let subject = subject_of(&got[1]);
    assert!(
        subject.starts_with("[BetCycle] FIRING: db_size: betcycle_store_size_bytes = "),
        "{subject}"
    );
    assert!(got[1].data.contains("Severity: warning"), "{}", got[1].data);
    let (_, alerts) = server
        .send_json(Method::GET, "/api/v1/alerts", json!(null))
        .await;
    let alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "db_size")
        .cloned()
        .expect("the db_size alert");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["key"], "db_size:betcycle_store_size_bytes");
    let got = mails_at_least(&mails, 3, "the renotified email").await;
    assert!(
        fired.elapsed() >= Duration::from_secs(9),
        "renotify waits its interval"
    );
    assert_eq!(subject_of(&got[2]), subject_of(&got[1]));

    // Changed so it no longer holds: resolved, and said so.
    put_rule(
        &server,
        "db_size",
        json!({"threshold": 1e15, "renotify": "0s"}),
    )
    .await;
    let got = mails_at_least(&mails, 4, "the resolved email").await;
    assert!(
        subject_of(&got[3]).starts_with("[BetCycle] RESOLVED: db_size:"),
        "{}",
        subject_of(&got[3])
    );

    // A built-in rule with a setting: disk_low at an absurd threshold fires; its
    // resolution is not sent (send_resolved false) but is in the history.
    put_rule(
        &server,
        "disk_low",
        json!({"threshold": 1e18, "send_resolved": false}),
    )
    .await;
    let got = mails_at_least(&mails, 5, "the disk_low email").await;
    assert!(
        subject_of(&got[4]).starts_with("[BetCycle] FIRING: the data directory "),
        "{}",
        subject_of(&got[4])
    );
    put_rule(&server, "disk_low", json!({"threshold": 1})).await;
    alert_in(&server, "disk_low:data_dir", "resolved").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mails.lock().unwrap().len(),
        5,
        "no resolved email for disk_low"
    );
    server
        .expect(
            Method::DELETE,
            "/api/v1/alert-rules/disk_low",
            &json!(null),
            204,
        )
        .await;
    let rules = server.get_json("/api/v1/alert-rules").await;
    let disk = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "disk_low")
        .unwrap();
    assert_eq!(disk["send_resolved"], true, "back to its defaults: {disk}");
    // A metric rule can be silenced by name; an unknown one cannot be deleted.
    let (status, answer) = server
        .send_json(
            Method::POST,
            "/api/v1/silences",
            json!({"rule": "db_size", "duration": "1h", "reason": "resizing"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    server
        .expect(
            Method::DELETE,
            "/api/v1/alert-rules/nope",
            &json!(null),
            404,
        )
        .await;
    // The CLI lists the rules.
    let (code, out, err) = crate::harness::run(
        crate::harness::betcycle(dir.path())
            .args(["alerts", "rules"])
            .env("BETCYCLE_SERVER", &server.url)
            .env("BETCYCLE_TOKEN", server.token.as_deref().unwrap()),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("db_size") && out.contains("warning"), "{out}");
}

/// The alert of `key` as the API shows it (Null when there is none).
async fn alert_of(server: &Server, key: &str) -> Value {
    let alerts = server.get_json("/api/v1/alerts").await;
    alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until alert `key` is in `state`.
pub(crate) async fn alert_in(server: &Server, key: &str, state: &str) -> Value {
    eventually(
        Duration::from_secs(30),
        &format!("{key} {state}"),
        || async {
            let alert = alert_of(server, key).await;
            if alert["state"] == state {
                Ok(alert)
            } else {
                Err(alert.to_string())
            }
        },
    )
    .await
}

#[tokio::test]
async fn built_in_rules_watch_the_queue_the_run_slots_failure_streaks_and_the_audit_chain() {
    let dir = tempdir();
    let slow = dir.path().join("slow");
    let red = dir.path().join("red");
    std::fs::create_dir_all(&slow).unwrap();
    std::fs::create_dir_all(&red).unwrap();
    git_repo(&slow, "steps:\n  - name: wait\n    run: sleep 60\n");
    git_repo(&red, "steps:\n  - name: test\n    run: exit 1\n");
    let start = || Server::start_admin(dir.path(), &["--run-concurrency", "1"]);
    let server = start();
    project(&server, "slow", &slow).await;
    project(&server, "red", &red).await;
    for (rule, change) in [
        ("queue_stuck", json!({"threshold": 0.05})),
        ("runner_saturated", json!({"for": "0s", "severity": "info"})),
        (
            "pipeline_failed",
            json!({"failure_threshold": 2, "success_threshold": 1}),
        ),
    ] {
        put_rule(&server, rule, change).await;
    }
    let (status, answer) = server
        .send_json(
            Method::PUT,
            "/api/v1/alert-rules/probe_down",
            json!({"failure_threshold": 2}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    // One slot, taken by slow #1; slow #2 waits.
    trigger(&server, "slow").await;
    wait_for(&server, "slow", 1, |r| r["status"] == "running").await;
    trigger(&server, "slow").await;
    let stuck = alert_in(&server, "queue_stuck:slow", "firing").await;
    assert!(
        stuck["summary"]
            .as_str()
            .unwrap()
            .starts_with("slow #2 has been queued for "),
        "{stuck}"
    );
    assert_eq!(stuck["severity"], "warning");
    let saturated = alert_in(&server, "runner_saturated:runner", "firing").await;
    assert_eq!(saturated["severity"], "info");
    for n in [2, 1] {
        server
            .expect(
                Method::POST,
                &format!("/api/v1/projects/slow/runs/{n}/cancel"),
                &json!({}),
                200,
            )
            .await;
    }
    alert_in(&server, "queue_stuck:slow", "resolved").await;
    alert_in(&server, "runner_saturated:runner", "resolved").await;

    // Two failures in a row fire pipeline_failed, not one.
    trigger(&server, "red").await;
    wait_for(&server, "red", 1, |r| r["status"] == "failed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        alert_of(&server, "pipeline_failed:red").await,
        Value::Null,
        "one failure is below the threshold"
    );
    trigger(&server, "red").await;
    wait_for(&server, "red", 2, |r| r["status"] == "failed").await;
    let failed = alert_in(&server, "pipeline_failed:red", "firing").await;
    assert!(
        failed["summary"]
            .as_str()
            .unwrap()
            .starts_with("red #2 on main failed"),
        "{failed}"
    );

    // The audit log altered behind the server's back: found when it starts again.
    server.stop();
    crate::accounts::alter_audit_entry(&dir.path().join("data"), 2);
    let server = start();
    let broken = alert_in(&server, "audit_chain_broken:audit", "firing").await;
    assert!(
        broken["summary"]
            .as_str()
            .unwrap()
            .contains("audit entry 2 was altered"),
        "{broken}"
    );
    // The failure streak's alert survived the restart as it was.
    assert_eq!(
        alert_of(&server, "pipeline_failed:red").await["state"],
        "firing"
    );
}

#[tokio::test]
async fn trends_count_each_weeks_runs_and_deployments_and_the_console_draws_them() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    // Read by the step and the deployment; made before the server starts (the sandbox).
    let outcome = dir.path().join("outcome");
    let target = dir.path().join("target");
    std::fs::write(&outcome, "fail").unwrap();
    std::fs::write(&target, "down").unwrap();
    git_repo(
        &repo,
        &format!(
            "steps:\n  - {{ name: build, run: 'sleep 0.3' }}\n  - {{ name: test, run: 'test \"$(cat {o})\" = pass', depends_on: [build] }}\ndeploy:\n  staging: {{ target: {{ kind: exec, run: 'test \"$(cat {t})\" = up' }} }}\n",
            o = outcome.display(),
            t = target.display()
        ),
    );
    let server = Server::start_admin(dir.path(), &[]);
    project(&server, "demo", &repo).await;
    server
        .expect(
            Method::PUT,
            "/api/v1/projects/demo/environments/staging",
            &json!({}),
            201,
        )
        .await;
    for n in 1..=3 {
        if n == 2 {
            std::fs::write(&outcome, "pass").unwrap();
        }
        let run = run_to_end(&server, n).await;
        let expected = if n == 1 { "failed" } else { "succeeded" };
        assert_eq!(run["status"], expected, "{run}");
    }
    for (n, state) in [(1, "down"), (2, "up")] {
        std::fs::write(&target, state).unwrap();
        let d = server
            .expect(
                Method::POST,
                "/api/v1/projects/demo/deployments",
                &json!({"environment": "staging"}),
                201,
            )
            .await;
        assert_eq!(d["number"], n);
        let expected = if n == 1 { "failed" } else { "succeeded" };
        crate::deploy::wait_deployment(&server, "demo", n, |d| d["status"] == expected).await;
    }

    let t = server.get_json("/api/v1/projects/demo/trends").await;
    assert_eq!(t["weeks"], 12);
    let weeks = t["pipeline"].as_array().unwrap();
    assert_eq!(weeks.len(), 12);
    let this = &weeks[11];
    assert_eq!(
        (&this["runs"], &this["succeeded"], &this["failed"]),
        (&json!(3), &json!(2), &json!(1)),
        "{this}"
    );
    assert!(
        (this["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{this}"
    );
    assert!(
        this["duration_p50_seconds"].as_f64().unwrap() >= 0.3,
        "{this}"
    );
    assert!(this["queue_p95_seconds"].as_f64().is_some(), "{this}");
    assert_eq!(weeks[0]["runs"], 0);
    assert_eq!(weeks[0]["success_rate"], Value::Null);
    let staging = &t["environments"][0];
    assert_eq!(staging["environment"], "staging");
    let week = &staging["weeks"][11];
    assert_eq!(
        (
            &week["changes"],
            &week["failed_changes"],
            &week["deployments"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{week}"
    );
    assert_eq!(week["change_fail_rate"], 0.5);
    assert!(week["recovery_time_seconds"].as_f64().is_some(), "{week}");
    let slowest = &t["slowest_steps"][0];
    assert_eq!(slowest["name"], "build", "{t:#}");
    assert_eq!(slowest["runs"], 3);
    assert!(slowest["p50_seconds"].as_f64().unwrap() >= 0.3);

    // The console draws the same numbers.
    let page = server.get_text("/projects/demo/trends").await;
    for text in [
        "Runs per week",
        ": 2 runs succeeded, 1 failed</title>",
        "Run duration per week, p50 and p95",
        "Deployments to staging per week",
        ": 1 deployments succeeded, 1 failed</title>",
        "fail rate 50 %",
        "<td>build</td><td>3</td>",
    ] {
        assert!(page.contains(text), "{text} not in\n{page}");
    }
    // A project that does not exist: 404, not an empty chart.
    let response = server.get("/api/v1/projects/nope/trends").await;
    assert_eq!(response.status(), 404);

    // The activity across projects: demo's weeks and totals, a quiet project after it,
    // the instance's weeks their sum; the projects page draws them.
    project(&server, "quiet", &repo).await;
    let a = server.get_json("/api/v1/activity").await;
    let projects = a["projects"].as_array().unwrap();
    let slugs: Vec<&str> = projects
        .iter()
        .map(|p| p["project"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["demo", "quiet"], "busiest first: {a:#}");
    let demo = &projects[0];
    assert_eq!(
        (
            &demo["runs"],
            &demo["succeeded"],
            &demo["failed"],
            &demo["deployments"],
            &demo["failed_deployments"]
        ),
        (&json!(3), &json!(2), &json!(1), &json!(2), &json!(1)),
        "{demo:#}"
    );
    assert!(demo["last_activity_at"].is_string(), "{demo:#}");
    assert_eq!(projects[1]["runs"], 0);
    assert!(projects[1]["last_activity_at"].is_null());
    let total = a["total"].as_array().unwrap();
    assert_eq!(total.len(), 12);
    assert_eq!(total[11], demo["weeks"][11], "{a:#}");
    assert_eq!(total[11]["week"], weeks[11]["week"]);
    let page = server.get_text("/projects").await;
    for text in [
        "Runs per week, every project listed",
        ": 2 runs succeeded, 1 failed</title>",
        "Deployments per week, every project listed",
        "<td>3</td><td>67 %</td><td>2 <span class=\"muted\">(1 failed)</span></td>",
    ] {
        assert!(page.contains(text), "{text} not in\n{page}");
    }
}

/// A small real HTTPS server on 127.0.0.1 presenting `cert`: every request gets `200 ok`.
async fn https_site(cert: &str, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tls_acceptor(cert, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_https_probe_reads_the_certificates_expiry_and_fires_certificate_expiring() {
    let dir = tempdir();
    // A certificate for localhost that ends in five days.
    let ends = jiff::Timestamp::now() + Duration::from_secs(5 * 86_400);
    let date = ends.to_zoned(jiff::tz::TimeZone::UTC).date();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after =
        rcgen::date_time_ymd(i32::from(date.year()), date.month() as u8, date.day() as u8);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca_file = dir.path().join("site-ca.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let port = https_site(&cert.pem(), &key.serialize_pem()).await;
    let mut cmd = crate::harness::betcycle(dir.path());
    cmd.env("SSL_CERT_FILE", &ca_file);
    let server = Server::start_admin_with(cmd, dir.path(), &[]);
    let (status, answer) = server
        .send_json(
            Method::POST,
            "/api/v1/probes",
            json!({"name": "site", "kind": "http", "target": format!("https://localhost:{port}/"),
                   "interval": "1s", "timeout": "1s"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let alert = alert_in(&server, "certificate_expiring:site", "firing").await;
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("the certificate of probe site expires in 4.")
            || summary.starts_with("the certificate of probe site expires in 5."),
        "{summary}"
    );
    assert!(summary.contains(&format!("{date}")), "{summary}");
    assert_eq!(alert["severity"], "warning");
    let probe = probe_view(&server).await;
    assert_eq!(probe["status"], "up", "{probe}");
    let expires: jiff::Timestamp = probe["last"]["cert_expires_at"]
        .as_str()
        .expect("the certificate's expiry")
        .parse()
        .unwrap();
    assert_eq!(
        expires.to_zoned(jiff::tz::TimeZone::UTC).date(),
        date,
        "{probe}"
    );
    // Three days is inside the certificate's life: resolved.
    put_rule(&server, "certificate_expiring", json!({"threshold": 3})).await;
    alert_in(&server, "certificate_expiring:site", "resolved").await;
}
