//! Accounts, sessions, API tokens, roles, CSRF, sign-in throttling, the audit log and TLS.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, Server, add_user, betcycle, client, create_token, run, tempdir,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Every route that changes something, with what it requires. The server's own table
/// (`betcycle routes`) must match it exactly: a new route without a line here fails.
pub(crate) const CHANGING_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/setup", "public"),
    ("POST", "/api/v1/agents", "admin"),
    ("POST", "/api/v1/silences", "admin"),
    ("PUT", "/api/v1/alert-rules/{name}", "admin"),
    ("DELETE", "/api/v1/alert-rules/{name}", "admin"),
    ("POST", "/api/v1/probes", "admin"),
    ("DELETE", "/api/v1/probes/{name}", "admin"),
    ("DELETE", "/api/v1/silences/{id}", "admin"),
    ("POST", "/api/v1/channels", "admin"),
    ("DELETE", "/api/v1/channels/{name}", "admin"),
    ("POST", "/api/v1/channels/{name}/test", "admin"),
    ("POST", "/settings/agents", "admin"),
    ("POST", "/monitoring/silences", "admin"),
    ("POST", "/monitoring/silences/{id}/delete", "admin"),
    ("POST", "/monitoring/probes", "admin"),
    ("POST", "/monitoring/probes/{name}/delete", "admin"),
    ("POST", "/monitoring/status-pages/{slug}", "admin"),
    ("POST", "/monitoring/channels", "admin"),
    ("POST", "/monitoring/channels/{name}/test", "admin"),
    ("POST", "/settings/agents/{name}", "admin"),
    ("PUT", "/api/v1/agents/{name}", "admin"),
    ("DELETE", "/api/v1/agents/{name}", "admin"),
    ("POST", "/api/v1/agent/poll", "agent"),
    ("PUT", "/api/v1/agent/jobs/{id}/workspace", "agent"),
    ("POST", "/api/v1/agent/jobs/{id}/lines", "agent"),
    ("POST", "/api/v1/agent/jobs/{id}/done", "agent"),
    ("POST", "/api/v1/sessions", "public"),
    ("DELETE", "/api/v1/sessions/current", "user"),
    ("POST", "/api/v1/sessions/revoke-others", "user"),
    ("DELETE", "/api/v1/sessions/{id}", "user"),
    ("PUT", "/api/v1/me/password", "user"),
    ("POST", "/api/v1/tokens", "user"),
    ("DELETE", "/api/v1/tokens/{id}", "user"),
    ("POST", "/api/v1/users", "admin"),
    ("PATCH", "/api/v1/users/{name}", "admin"),
    ("PUT", "/api/v1/users/{name}/password", "admin"),
    ("POST", "/api/v1/teams", "admin"),
    ("DELETE", "/api/v1/teams/{name}", "admin"),
    ("PUT", "/api/v1/teams/{name}/members/{user}", "admin"),
    ("DELETE", "/api/v1/teams/{name}/members/{user}", "admin"),
    ("POST", "/login", "public"),
    ("POST", "/logout", "user"),
    ("POST", "/setup", "public"),
    ("POST", "/account/password", "user"),
    ("POST", "/account/tokens", "user"),
    ("POST", "/account/tokens/{id}/revoke", "user"),
    ("POST", "/account/sessions/{id}/revoke", "user"),
    ("POST", "/account/sessions/revoke-others", "user"),
    ("POST", "/security/users", "admin"),
    ("POST", "/security/users/{name}", "admin"),
    ("POST", "/security/teams", "admin"),
    ("POST", "/security/teams/{name}/members", "admin"),
    (
        "POST",
        "/security/teams/{name}/members/{user}/remove",
        "admin",
    ),
    ("POST", "/security/teams/{name}/delete", "admin"),
    ("POST", "/api/v1/projects", "admin"),
    ("PATCH", "/api/v1/projects/{slug}", "project:maintainer"),
    ("DELETE", "/api/v1/projects/{slug}", "admin"),
    ("PUT", "/api/v1/projects/{slug}/isolation", "admin"),
    ("PUT", "/api/v1/projects/{slug}/containers", "admin"),
    ("PUT", "/api/v1/projects/{slug}/status-page", "admin"),
    (
        "PUT",
        "/api/v1/projects/{slug}/members/{subject}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/v1/projects/{slug}/members/{subject}",
        "project:maintainer",
    ),
    ("POST", "/api/v1/projects/{slug}/runs", "project:developer"),
    (
        "POST",
        "/api/v1/projects/{slug}/runs/{number}/cancel",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/runs/{number}/rerun",
        "project:developer",
    ),
    (
        "POST",
        "/projects/{slug}/runs/{number}/rerun",
        "project:developer",
    ),
    ("POST", "/api/v1/hooks/{slug}", "public"),
    (
        "POST",
        "/api/v1/projects/{slug}/deliveries/{id}/redeliver",
        "project:maintainer",
    ),
    (
        "PUT",
        "/api/v1/projects/{slug}/environments/{environment}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/v1/projects/{slug}/environments/{environment}",
        "project:maintainer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/environments/{environment}/promote",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/environments/{environment}/rollback",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/deployments",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/deployments/{number}/approve",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/deployments/{number}/reject",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/deployments/{number}/cancel",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/deployments/{number}/promote",
        "project:developer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/deployments/{number}/abort",
        "project:developer",
    ),
    ("POST", "/api/v1/deployments/callback/{token}", "public"),
    ("PUT", "/api/v1/policies/{name}", "admin"),
    ("DELETE", "/api/v1/policies/{name}", "admin"),
    (
        "PUT",
        "/api/v1/projects/{slug}/policies/{name}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/v1/projects/{slug}/policies/{name}",
        "project:maintainer",
    ),
    ("PUT", "/api/v1/secrets/{name}", "admin"),
    ("DELETE", "/api/v1/secrets/{name}", "admin"),
    ("POST", "/api/v1/secrets/{name}/restore", "admin"),
    (
        "PUT",
        "/api/v1/projects/{slug}/secrets/{name}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/v1/projects/{slug}/secrets/{name}",
        "project:maintainer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/secrets/{name}/restore",
        "project:maintainer",
    ),
    (
        "PUT",
        "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}",
        "project:maintainer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}/restore",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/environments",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/environments/{environment}/promote",
        "project:developer",
    ),
    (
        "POST",
        "/projects/{slug}/environments/{environment}/rollback",
        "project:developer",
    ),
    ("POST", "/projects/{slug}/deployments", "project:developer"),
    (
        "POST",
        "/projects/{slug}/deployments/{number}/decide",
        "project:developer",
    ),
    (
        "POST",
        "/projects/{slug}/deployments/{number}/canary",
        "project:developer",
    ),
    ("POST", "/policies", "admin"),
    ("POST", "/policies/{name}/delete", "admin"),
    ("POST", "/security/secrets", "admin"),
    ("POST", "/security/secrets/{name}/delete", "admin"),
    ("POST", "/security/secrets/{name}/restore", "admin"),
    ("POST", "/projects/{slug}/secrets", "project:maintainer"),
    (
        "POST",
        "/projects/{slug}/secrets/{name}/delete",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/secrets/{name}/restore",
        "project:maintainer",
    ),
    (
        "POST",
        "/api/v1/projects/{slug}/schedules",
        "project:maintainer",
    ),
    (
        "PATCH",
        "/api/v1/projects/{slug}/schedules/{id}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/v1/projects/{slug}/schedules/{id}",
        "project:maintainer",
    ),
    ("POST", "/projects", "admin"),
    ("POST", "/projects/{slug}/runs", "project:developer"),
    (
        "POST",
        "/projects/{slug}/runs/{number}/cancel",
        "project:developer",
    ),
    ("POST", "/projects/{slug}/settings", "project:maintainer"),
    (
        "POST",
        "/projects/{slug}/triggers/webhook-secret",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/triggers/forge",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/triggers/schedules",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/triggers/schedules/{id}/delete",
        "project:maintainer",
    ),
    (
        "POST",
        "/projects/{slug}/triggers/deliveries/{id}/redeliver",
        "project:maintainer",
    ),
    ("POST", "/projects/{slug}/members", "project:maintainer"),
    (
        "POST",
        "/projects/{slug}/members/{subject}/remove",
        "project:maintainer",
    ),
];

/// Every route that only reads, with what it requires; checked against `betcycle routes`
/// like [`CHANGING_ROUTES`].
pub(crate) const READ_ROUTES: &[(&str, &str)] = &[
    ("/healthz", "public"),
    ("/readyz", "public"),
    ("/metrics", "public"),
    ("/static/{*path}", "public"),
    ("/favicon.ico", "public"),
    ("/api/v1/sessions", "user"),
    ("/api/v1/me", "user"),
    ("/api/v1/tokens", "user"),
    ("/api/v1/users", "admin"),
    ("/api/v1/teams", "user"),
    ("/api/v1/audit", "admin"),
    ("/api/v1/backup", "admin"),
    ("/api/v1/projects", "user"),
    ("/api/v1/activity", "user"),
    ("/api/v1/agents", "admin"),
    ("/api/v1/alerts", "admin"),
    ("/api/v1/alert-rules", "admin"),
    ("/api/v1/probes", "admin"),
    ("/api/v1/probes/{name}/results", "admin"),
    ("/api/v1/probes/{name}/summaries", "admin"),
    ("/api/v1/status/{slug}", "public"),
    ("/api/v1/silences", "admin"),
    ("/api/v1/channels", "admin"),
    ("/api/v1/notifications", "admin"),
    ("/api/v1/agent/jobs/{id}/workspace", "agent"),
    ("/api/v1/projects/{slug}", "project:viewer"),
    ("/api/v1/projects/{slug}/members", "project:viewer"),
    ("/api/v1/projects/{slug}/runs", "project:viewer"),
    ("/api/v1/projects/{slug}/tests/flaky", "project:viewer"),
    ("/api/v1/projects/{slug}/trends", "project:viewer"),
    ("/api/v1/projects/{slug}/runs/{number}", "project:viewer"),
    (
        "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log",
        "project:viewer",
    ),
    (
        "/api/v1/projects/{slug}/runs/{number}/steps/{step}/log/stream",
        "project:viewer",
    ),
    (
        "/api/v1/projects/{slug}/runs/{number}/artifacts/{sha256}",
        "project:viewer",
    ),
    ("/api/v1/projects/{slug}/deliveries", "project:viewer"),
    ("/api/v1/projects/{slug}/deliveries/{id}", "project:viewer"),
    ("/api/v1/projects/{slug}/schedules", "project:viewer"),
    ("/api/v1/projects/{slug}/environments", "project:viewer"),
    ("/api/v1/projects/{slug}/releases", "project:viewer"),
    (
        "/api/v1/projects/{slug}/releases/{number}",
        "project:viewer",
    ),
    ("/api/v1/projects/{slug}/deployments", "project:viewer"),
    (
        "/api/v1/projects/{slug}/deployments/{number}",
        "project:viewer",
    ),
    (
        "/api/v1/projects/{slug}/deployments/{number}/log",
        "project:viewer",
    ),
    ("/api/v1/projects/{slug}/dora", "project:viewer"),
    (
        "/api/v1/projects/{slug}/environments/{environment}/service",
        "project:viewer",
    ),
    (
        "/api/v1/projects/{slug}/environments/{environment}/service/log",
        "project:viewer",
    ),
    ("/api/v1/policies", "user"),
    ("/api/v1/policies/{name}", "user"),
    ("/api/v1/projects/{slug}/policies", "project:viewer"),
    ("/api/v1/projects/{slug}/policies/{name}", "project:viewer"),
    ("/api/v1/projects/{slug}/decisions", "project:viewer"),
    ("/api/v1/projects/{slug}/decisions/{id}", "project:viewer"),
    ("/api/v1/secrets", "admin"),
    ("/api/v1/secrets/{name}", "admin"),
    ("/api/v1/projects/{slug}/secrets", "project:maintainer"),
    (
        "/api/v1/projects/{slug}/secrets/{name}",
        "project:maintainer",
    ),
    (
        "/api/v1/projects/{slug}/environments/{environment}/secrets",
        "project:maintainer",
    ),
    (
        "/api/v1/projects/{slug}/environments/{environment}/secrets/{name}",
        "project:maintainer",
    ),
    ("/api/v1/instance", "user"),
    ("/api/v1/events", "user"),
    ("/", "user"),
    ("/dashboard/status", "user"),
    ("/login", "public"),
    ("/setup", "public"),
    ("/account", "user"),
    ("/security/users", "admin"),
    ("/security/teams", "admin"),
    ("/security/audit", "admin"),
    ("/settings/backup", "admin"),
    ("/settings/agents", "admin"),
    ("/policies", "user"),
    ("/security/secrets", "admin"),
    ("/projects/{slug}/secrets", "project:maintainer"),
    ("/projects", "user"),
    ("/projects/{slug}", "project:viewer"),
    ("/projects/{slug}/runs", "project:viewer"),
    ("/projects/{slug}/settings", "project:viewer"),
    ("/projects/{slug}/runs/{number}", "project:viewer"),
    ("/projects/{slug}/runs/{number}/panel", "project:viewer"),
    (
        "/projects/{slug}/runs/{number}/steps/{step}",
        "project:viewer",
    ),
    ("/projects/{slug}/triggers", "project:viewer"),
    ("/projects/{slug}/trends", "project:viewer"),
    ("/status/{slug}", "public"),
    ("/projects/{slug}/environments", "project:viewer"),
    ("/projects/{slug}/deployments/{number}", "project:viewer"),
    (
        "/projects/{slug}/deployments/{number}/panel",
        "project:viewer",
    ),
    ("/runs", "user"),
    ("/environments", "user"),
    ("/catalog", "user"),
    ("/monitoring", "user"),
    ("/security", "user"),
    ("/cost", "user"),
    ("/settings", "user"),
];

pub(crate) const DEV_PASSWORD: &str = "developer password 1";

/// A server with ADMIN and a non-admin `dev`; returns dev's write and read tokens.
pub(crate) fn server_with_dev(root: &std::path::Path) -> (Server, String, String) {
    add_user(root, ADMIN, ADMIN_PASSWORD, true);
    add_user(root, "dev", DEV_PASSWORD, false);
    let write = create_token(root, "dev", "write");
    let read = create_token(root, "dev", "read");
    (Server::start_admin(root, &[]), write, read)
}

pub(crate) async fn send(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> StatusCode {
    let mut request = client()
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", server.url),
        )
        .json(&json!({}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn every_changing_route_is_declared_and_enforced() {
    let dir = tempdir();
    let served: BTreeSet<(String, String, String)> = served_routes(dir.path())
        .into_iter()
        .filter(|(m, _, _)| m != "GET")
        .collect();
    let declared: BTreeSet<(String, String, String)> = CHANGING_ROUTES
        .iter()
        .map(|(m, p, n)| (m.to_string(), p.to_string(), n.to_string()))
        .collect();
    assert_eq!(
        served.difference(&declared).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "routes served but not declared in CHANGING_ROUTES"
    );
    assert_eq!(
        declared.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "routes declared but not served"
    );

    let (server, dev_write, dev_read) = server_with_dev(dir.path());
    // A project on which dev is only a viewer.
    server
        .expect(
            Method::POST,
            "/api/v1/projects",
            &json!({"slug": "demo", "repository": "https://git.example.com/demo.git"}),
            201,
        )
        .await;
    server.grant("demo", "user:dev", "viewer").await;
    for (method, pattern, need) in CHANGING_ROUTES {
        let path = concrete(pattern);
        let anonymous = send(&server, method, &path, None).await;
        match *need {
            // A webhook's credential is its signature, checked by the handler.
            "public" if pattern.starts_with("/api/v1/hooks/") => assert!(
                matches!(anonymous.as_u16(), 400 | 401),
                "{method} {pattern} unsigned: {anonymous}"
            ),
            // A deployment callback's credential is its one-time token.
            "public" if pattern.starts_with("/api/v1/deployments/callback/") => assert!(
                matches!(anonymous.as_u16(), 400 | 404 | 415 | 422),
                "{method} {pattern} with a made-up token: {anonymous}"
            ),
            "public" => assert_ne!(anonymous, 401, "{method} {pattern} is public"),
            // An agent's credential is its own token; a user's is none.
            "agent" => {
                assert_eq!(anonymous, 401, "{method} {pattern} anonymous");
                assert_eq!(
                    send(&server, method, &path, Some(&dev_write)).await,
                    401,
                    "{method} {pattern} with a user's token"
                );
            }
            "user" => {
                assert_eq!(anonymous, 401, "{method} {pattern} anonymous");
                assert_eq!(
                    send(&server, method, &path, Some(&dev_read)).await,
                    403,
                    "{method} {pattern} with a read token"
                );
            }
            "project:maintainer" | "project:developer" => {
                assert_eq!(anonymous, 401, "{method} {pattern} anonymous");
                assert_eq!(
                    send(&server, method, &path, Some(&dev_write)).await,
                    403,
                    "{method} {pattern} as a viewer"
                );
                assert_eq!(
                    send(&server, method, &path, Some(&dev_read)).await,
                    403,
                    "{method} {pattern} with a read token"
                );
            }
            "admin" => {
                assert_eq!(anonymous, 401, "{method} {pattern} anonymous");
                assert_eq!(
                    send(&server, method, &path, Some(&dev_write)).await,
                    403,
                    "{method} {pattern} as a non-admin"
                );
                assert_eq!(
                    send(&server, method, &path, Some(&dev_read)).await,
                    403,
                    "{method} {pattern} with a read token"
                );
            }
            other => panic!("unknown need {other}"),
        }
    }
    // Reads need a sign-in too, except the operational endpoints.
    assert_eq!(send(&server, "GET", "/api/v1/instance", None).await, 401);
    assert_eq!(
        send(&server, "GET", "/api/v1/users", Some(&dev_write)).await,
        403
    );
    assert_eq!(
        send(&server, "GET", "/api/v1/me", Some(&dev_read)).await,
        200
    );
    // Denials are audited.
    let denied: Vec<Value> = server
        .get("/api/v1/audit?outcome=denied&limit=500")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        denied
            .iter()
            .any(|e| e["actor"].as_str().unwrap().starts_with("user:dev"))
    );
}

/// The routes `betcycle routes` prints: (method, path, need).
pub(crate) fn served_routes(root: &std::path::Path) -> BTreeSet<(String, String, String)> {
    let (code, stdout, _) = run(betcycle(root).arg("routes"));
    assert_eq!(code, 0);
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// A route pattern with its parameters filled in for project `demo`.
pub(crate) fn concrete(pattern: &str) -> String {
    pattern
        .replace("{id}", "1")
        .replace("{name}", "nobody")
        .replace("{environment}", "staging")
        .replace("{user}", "nobody")
        .replace("{slug}", "demo")
        .replace("{subject}", "user:dev")
        .replace("{number}", "1")
        .replace("{step}", "0")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{token}", "unknown")
        .replace("{*path}", "app.css")
}

#[tokio::test]
async fn every_read_route_is_declared_and_enforced_and_roles_are_told_apart() {
    let dir = tempdir();
    let served: BTreeSet<(String, String)> = served_routes(dir.path())
        .into_iter()
        .filter(|(m, _, _)| m == "GET")
        .map(|(_, p, n)| (p, n))
        .collect();
    let declared: BTreeSet<(String, String)> = READ_ROUTES
        .iter()
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect();
    assert_eq!(served, declared, "GET routes served vs READ_ROUTES");

    add_user(dir.path(), "outsider", DEV_PASSWORD, false);
    let outsider = create_token(dir.path(), "outsider", "write");
    let (server, dev_write, dev_read) = server_with_dev(dir.path());
    let repository = dir.path().join("no-repository");
    let (status, _) = server
        .send_json(
            Method::POST,
            "/api/v1/projects",
            json!({"slug": "demo", "repository": repository.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, 201);
    let grant = |role: &'static str| {
        let server = &server;
        async move {
            let (status, _) = server
                .send_json(
                    Method::PUT,
                    "/api/v1/projects/demo/members/user:dev",
                    json!({"role": role}),
                )
                .await;
            assert_eq!(status, 204, "granting {role}");
        }
    };
    grant("viewer").await;
    for (pattern, need) in READ_ROUTES {
        let path = concrete(pattern);
        let anonymous = send(&server, "GET", &path, None).await;
        let as_dev = send(&server, "GET", &path, Some(&dev_read)).await;
        match *need {
            "public" => assert_ne!(anonymous, 401, "GET {pattern} is public"),
            "agent" => {
                assert_eq!(anonymous, 401, "GET {pattern} anonymous");
                assert_eq!(as_dev, 401, "GET {pattern} with a user's token");
            }
            "user" => {
                assert_eq!(anonymous, 401, "GET {pattern} anonymous");
                assert!(
                    !matches!(as_dev.as_u16(), 401 | 403),
                    "GET {pattern} as dev: {as_dev}"
                );
            }
            "admin" => {
                assert_eq!(anonymous, 401, "GET {pattern} anonymous");
                assert_eq!(as_dev, 403, "GET {pattern} as a non-admin");
            }
            "project:viewer" => {
                assert_eq!(anonymous, 401, "GET {pattern} anonymous");
                assert_eq!(
                    send(&server, "GET", &path, Some(&outsider)).await,
                    403,
                    "GET {pattern} without a role on the project"
                );
                assert!(
                    !matches!(as_dev.as_u16(), 401 | 403),
                    "GET {pattern} as a viewer: {as_dev}"
                );
            }
            "project:maintainer" => {
                assert_eq!(anonymous, 401, "GET {pattern} anonymous");
                assert_eq!(as_dev, 403, "GET {pattern} as a viewer");
            }
            other => panic!("unknown need {other}"),
        }
    }

    // A developer may do what developers do, never what needs a maintainer.
    grant("developer").await;
    for (method, pattern, need) in CHANGING_ROUTES {
        let path = concrete(pattern);
        match *need {
            "project:maintainer" => assert_eq!(
                send(&server, method, &path, Some(&dev_write)).await,
                403,
                "{method} {pattern} as a developer"
            ),
            "project:developer" => {
                let status = send(&server, method, &path, Some(&dev_write)).await;
                assert!(
                    !matches!(status.as_u16(), 401 | 403),
                    "{method} {pattern} as a developer: {status}"
                );
                assert_eq!(
                    send(&server, method, &path, Some(&outsider)).await,
                    403,
                    "{method} {pattern} without a role on the project"
                );
            }
            _ => {}
        }
    }
    // A maintainer may do both (membership changes aside: they would remove dev).
    grant("maintainer").await;
    for (method, pattern, need) in CHANGING_ROUTES {
        if need.starts_with("project:") && !pattern.contains("/members/") {
            let status = send(&server, method, &concrete(pattern), Some(&dev_write)).await;
            assert!(
                !matches!(status.as_u16(), 401 | 403),
                "{method} {pattern} as a maintainer: {status}"
            );
        }
    }
}
