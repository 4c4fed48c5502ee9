//! DNS and JSONPath probes against small real servers in the test, the hourly and daily
//! summaries their results add up to, a project's public status page (hidden until an
//! administrator turns it on, never showing a target) and per-project channels (a
//! project's alert reaches its channels and the instance's, not another project's).

use crate::harness::{Server, client, eventually, tempdir};
use crate::run::git_repo;
use crate::runs::project;
use crate::triggers::recording_server;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A DNS server on loopback (UDP) that knows one name: `app.shop.test A 192.0.2.7`;
/// anything else is NXDOMAIN.
async fn dns_server() -> u16 {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(question) = query.queries.first().cloned() else {
                continue;
            };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.add_query(question.clone());
            if question.name().to_ascii() == "app.shop.test."
                && question.query_type() == RecordType::A
            {
                answer.answers.push(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 7)),
                ));
            } else {
                answer.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
        }
    });
    port
}

/// A health endpoint answering JSON: `{"status": "UP", …}` or, switched, `"DOWN"`.
async fn json_site() -> (String, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(true));
    let state = up.clone();
    let app =
        axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let status = if state.load(Ordering::SeqCst) {
                    "UP"
                } else {
                    "DOWN"
                };
                async move {
                    axum::Json(json!({"status": status, "checks": [{"name": "db", "ok": true}]}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, up)
}

async fn probe(server: &Server, name: &str) -> Value {
    let (status, probes) = server
        .send_json(Method::GET, "/api/v1/probes", json!(null))
        .await;
    assert_eq!(status, 200, "{probes}");
    probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no probe {name}: {probes:#}"))
}

pub(crate) async fn probe_is(server: &Server, name: &str, status: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("probe {name} {status}"),
        || async {
            let view = probe(server, name).await;
            if view["status"] == status {
                Ok(view)
            } else {
                Err(format!("{view:#}"))
            }
        },
    )
    .await
}

/// `GET path` without signing in: the status and the body.
async fn anonymous(server: &Server, path: &str) -> (u16, String) {
    let response = client()
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn dns_and_json_probes_add_up_to_summaries_a_public_status_page_and_project_channels() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git_repo(&repo, "steps:\n  - name: test\n    run: true\n");
    let server = Server::start_admin(dir.path(), &[]);
    project(&server, "shop", &repo).await;
    project(&server, "other", &repo).await;
    server
        .expect(
            Method::PUT,
            "/api/v1/projects/shop/environments/staging",
            &json!({}),
            201,
        )
        .await;
    let dns = dns_server().await;
    let (site, up) = json_site().await;
    let (instance_url, instance_seen) = recording_server().await;
    let (shop_url, shop_seen) = recording_server().await;
    let (other_url, other_seen) = recording_server().await;
    for channel in [
        json!({"name": "everything", "kind": "webhook", "url": instance_url}),
        json!({"name": "shop-team", "kind": "webhook", "url": shop_url, "project": "shop"}),
        json!({"name": "other-team", "kind": "webhook", "url": other_url, "project": "other"}),
    ] {
        server
            .expect(Method::POST, "/api/v1/channels", &channel, 201)
            .await;
    }

    // Bad input: each refused with the field and why.
    let dns_target = format!("127.0.0.1:{dns}");
    for (body, message) in [
        (
            json!({"name": "p", "kind": "dns", "target": dns_target}),
            "query_name: a dns probe asks for a name (example.com)",
        ),
        (
            json!({"name": "p", "kind": "dns", "target": dns_target, "query_name": "app.shop.test", "query_type": "BOGUS"}),
            "query_type \"BOGUS\": one of A, AAAA, CNAME, MX, NS, TXT, SRV, PTR, SOA, CAA",
        ),
        (
            json!({"name": "p", "kind": "dns", "target": "127.0.0.1:port", "query_name": "x.test"}),
            "target \"127.0.0.1:port\": port \"port\" is not a number",
        ),
        (
            json!({"name": "p", "kind": "dns", "target": dns_target, "query_name": "x.test", "body_contains": "x"}),
            "body_contains: only http probes check a response",
        ),
        (
            json!({"name": "p", "kind": "http", "target": site, "query_name": "x.test"}),
            "query_name: only dns probes ask a DNS server",
        ),
        (
            json!({"name": "p", "kind": "http", "target": site, "json_equals": "UP"}),
            "json_equals: compares what json_path finds: give json_path",
        ),
        (
            json!({"name": "p", "kind": "http", "target": site, "project": "nope"}),
            "project \"nope\": no such project",
        ),
        (
            json!({"name": "p", "kind": "http", "target": site, "environment": "staging"}),
            "environment: name the project whose environment it is",
        ),
        (
            json!({"name": "p", "kind": "http", "target": site, "project": "shop", "environment": "prod"}),
            "environment \"prod\": shop has no such environment",
        ),
    ] {
        let (status, answer) = server.send_json(Method::POST, "/api/v1/probes", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["message"], message);
    }
    let (status, answer) = server
        .send_json(
            Method::POST,
            "/api/v1/probes",
            json!({"name": "p", "kind": "http", "target": site, "json_path": "$[?("}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("json_path \"$[?(\": "),
        "{answer}"
    );
    let (status, answer) = server
        .send_json(
            Method::POST,
            "/api/v1/channels",
            json!({"name": "c", "kind": "webhook", "url": "http://127.0.0.1:9/", "project": "nope"}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["message"], "project \"nope\": no such project");

    // The probes: DNS right, DNS wrong, a name the server does not know, JSON.
    for body in [
        json!({"name": "dns-app", "kind": "dns", "target": dns_target, "query_name": "app.shop.test",
               "expect_answer": "192.0.2.7", "interval": "1s", "timeout": "1s", "project": "shop",
               "environment": "staging"}),
        json!({"name": "dns-moved", "kind": "dns", "target": dns_target, "query_name": "app.shop.test",
               "expect_answer": "192.0.2.8", "interval": "1s", "timeout": "1s", "failure_threshold": 1}),
        json!({"name": "dns-missing", "kind": "dns", "target": dns_target, "query_name": "missing.shop.test",
               "interval": "1s", "timeout": "1s", "failure_threshold": 1}),
        json!({"name": "api", "kind": "http", "target": site, "json_path": "$.status", "json_equals": "UP",
               "interval": "1s", "timeout": "1s", "failure_threshold": 2, "project": "shop"}),
        json!({"name": "api-db", "kind": "http", "target": site, "json_path": "$.checks[?@.name == 'db'].ok",
               "json_equals": "true", "interval": "1s", "timeout": "1s", "project": "shop"}),
    ] {
        server
            .expect(Method::POST, "/api/v1/probes", &body, 201)
            .await;
    }
    probe_is(&server, "dns-app", "up").await;
    probe_is(&server, "api", "up").await;
    probe_is(&server, "api-db", "up").await;
    let moved = probe_is(&server, "dns-moved", "down").await;
    assert_eq!(
        moved["last"]["error"], "app.shop.test A is 192.0.2.7, not 192.0.2.8",
        "{moved:#}"
    );
    let missing = probe_is(&server, "dns-missing", "down").await;
    assert_eq!(
        missing["last"]["error"], "missing.shop.test A: Non-Existent Domain",
        "{missing:#}"
    );

    // Hidden until an administrator shows it: the same 404 as a project that does not exist.
    for path in ["/status/shop", "/api/v1/status/shop", "/status/nope"] {
        let (status, _) = anonymous(&server, path).await;
        assert_eq!(status, 404, "{path}");
    }
    let shown = server
        .expect(
            Method::PUT,
            "/api/v1/projects/shop/status-page",
            &json!({"enabled": true}),
            200,
        )
        .await;
    assert_eq!(shown["status_page"], true);

    // The JSON check fails: down after two failures; the alert goes to the instance's
    // channel and shop's, not to other's.
    up.store(false, Ordering::SeqCst);
    let api = probe_is(&server, "api", "down").await;
    assert_eq!(
        api["last"]["error"], "$.status is DOWN, not \"UP\"",
        "{api:#}"
    );
    let fired = |seen: &crate::alerts::Seen| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, _, body)| body["alert"] == "probe_down:api")
            .count()
    };
    eventually(
        Duration::from_secs(20),
        "the alert at both channels",
        || async {
            let got = (fired(&instance_seen), fired(&shop_seen));
            if got == (1, 1) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    let shop_got = shop_seen.lock().unwrap().clone();
    assert!(
        shop_got
            .iter()
            .all(|(_, _, body)| body["alert"] != "probe_down:dns-moved"),
        "an instance probe's alert is not shop's: {shop_got:#?}"
    );
    let instance_got = instance_seen.lock().unwrap().clone();
    assert!(
        instance_got
            .iter()
            .any(|(_, _, body)| body["alert"] == "probe_down:dns-moved"),
        "the instance channel takes every alert: {instance_got:#?}"
    );
    assert_eq!(
        other_seen.lock().unwrap().len(),
        0,
        "another project's channel takes none of shop's"
    );

    // Summaries: this hour's and today's checks are the results recorded so far.
    let results = server.get_json("/api/v1/probes/api/results").await;
    let summaries = server.get_json("/api/v1/probes/api/summaries").await;
    let days = server
        .get_json("/api/v1/probes/api/summaries?per=day")
        .await;
    let hours = summaries["summaries"].as_array().unwrap();
    let checks: u64 = hours.iter().map(|h| h["checks"].as_u64().unwrap()).sum();
    let ok: u64 = hours.iter().map(|h| h["ok"].as_u64().unwrap()).sum();
    let recorded = results["results"].as_array().unwrap();
    // Checks go on between the two reads; the summaries were read after the results.
    assert!(
        checks >= recorded.len() as u64 && checks <= recorded.len() as u64 + 2,
        "{checks} vs {}",
        recorded.len()
    );
    let recorded_ok = recorded.iter().filter(|r| r["ok"] == true).count() as u64;
    assert_eq!(ok, recorded_ok, "{summaries:#}");
    assert_eq!(summaries["per"], "hour");
    assert_eq!(days["per"], "day");
    assert!(hours.len() <= 2, "{summaries:#}");
    let day_checks: u64 = days["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["checks"].as_u64().unwrap())
        .sum();
    assert!(day_checks >= checks, "{days:#}");
    let (status, answer) = server
        .send_json(
            Method::GET,
            "/api/v1/probes/api/summaries?per=week",
            json!(null),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["message"], "per \"week\": hour or day");

    // The public page: shop's probes only, no targets, today's bar, the open incident.
    let (status, body) = anonymous(&server, "/api/v1/status/shop").await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["status"], "degraded", "{page:#}");
    let names: Vec<&str> = page["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "api-db", "dns-app"]);
    for secret in [site.as_str(), dns_target.as_str(), "DOWN", "192.0.2"] {
        assert!(!body.contains(secret), "{secret} shown: {body}");
    }
    let api = &page["probes"][0];
    assert_eq!(api["status"], "down");
    assert_eq!(api["days"].as_array().unwrap().len(), 90);
    let today = &api["days"][89];
    assert!(today["checks"].as_u64().unwrap() >= checks, "{today:#}");
    let uptime = api["uptime_24h"].as_f64().unwrap();
    assert!(uptime > 0.0 && uptime < 100.0, "{api:#}");
    assert_eq!(page["probes"][2]["uptime_24h"], 100.0, "{page:#}");
    assert_eq!(page["probes"][2]["environment"], "staging", "{page:#}");
    assert!(page["probes"][0]["environment"].is_null(), "{page:#}");
    assert_eq!(page["incidents"][0]["probe"], "api", "{page:#}");
    assert!(page["incidents"][0]["resolved_at"].is_null(), "{page:#}");
    let (status, html) = anonymous(&server, "/status/shop").await;
    assert_eq!(status, 200);
    assert!(html.contains("Some systems are down"), "{html}");
    assert!(
        html.contains("api-db") && html.contains("dns-app"),
        "{html}"
    );
    assert!(
        !html.contains(&site) && !html.contains("dns-moved"),
        "{html}"
    );
    assert!(html.contains("ongoing"), "{html}");

    // Back up: resolved everywhere, the incident closed, operational.
    up.store(true, Ordering::SeqCst);
    probe_is(&server, "api", "up").await;
    let page = eventually(Duration::from_secs(20), "the page operational", || async {
        let (_, body) = anonymous(&server, "/api/v1/status/shop").await;
        let page: Value = serde_json::from_str(&body).unwrap();
        if page["status"] == "operational" && !page["incidents"][0]["resolved_at"].is_null() {
            Ok(page)
        } else {
            Err(format!("{page:#}"))
        }
    })
    .await;
    assert_eq!(page["incidents"].as_array().unwrap().len(), 1, "{page:#}");

    // Hidden again.
    server
        .expect(
            Method::PUT,
            "/api/v1/projects/shop/status-page",
            &json!({"enabled": false}),
            200,
        )
        .await;
    let (status, _) = anonymous(&server, "/status/shop").await;
    assert_eq!(status, 404);
}
