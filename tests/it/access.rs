//! Accounts, sessions, API tokens, roles, CSRF, sign-in throttling, the audit log and TLS.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, Server, add_user, betcycle, client, create_token, run, tempdir,
};
use redb::ReadableTable;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Every route that changes something, with what it requires. The server's own table
/// (`betcycle routes`) must match it exactly: a new route without a line here fails.
const CHANGING_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/setup", "public"),
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
const READ_ROUTES: &[(&str, &str)] = &[
    ("/healthz", "public"),
    ("/readyz", "public"),
    ("/metrics", "public"),
    ("/static/{*path}", "public"),
    ("/api/v1/sessions", "user"),
    ("/api/v1/me", "user"),
    ("/api/v1/tokens", "user"),
    ("/api/v1/users", "admin"),
    ("/api/v1/teams", "user"),
    ("/api/v1/audit", "admin"),
    ("/api/v1/backup", "admin"),
    ("/api/v1/projects", "user"),
    ("/api/v1/projects/{slug}", "project:viewer"),
    ("/api/v1/projects/{slug}/members", "project:viewer"),
    ("/api/v1/projects/{slug}/runs", "project:viewer"),
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
    ("/policies", "user"),
    ("/security/secrets", "admin"),
    ("/projects/{slug}/secrets", "project:maintainer"),
    ("/projects", "user"),
    ("/projects/{slug}", "project:viewer"),
    ("/projects/{slug}/runs/{number}", "project:viewer"),
    ("/projects/{slug}/runs/{number}/panel", "project:viewer"),
    (
        "/projects/{slug}/runs/{number}/steps/{step}",
        "project:viewer",
    ),
    ("/projects/{slug}/triggers", "project:viewer"),
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

const DEV_PASSWORD: &str = "developer password 1";

/// A server with ADMIN and a non-admin `dev`; returns dev's write and read tokens.
fn server_with_dev(root: &std::path::Path) -> (Server, String, String) {
    add_user(root, ADMIN, ADMIN_PASSWORD, true);
    add_user(root, "dev", DEV_PASSWORD, false);
    let write = create_token(root, "dev", "write");
    let read = create_token(root, "dev", "read");
    (Server::start_admin(root, &[]), write, read)
}

async fn send(server: &Server, method: &str, path: &str, token: Option<&str>) -> StatusCode {
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
    let created = server
        .request(Method::POST, "/api/v1/projects")
        .json(&json!({"slug": "demo", "repository": "https://git.example.com/demo.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let granted = server
        .request(Method::PUT, "/api/v1/projects/demo/members/user:dev")
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 204);
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
fn served_routes(root: &std::path::Path) -> BTreeSet<(String, String, String)> {
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
fn concrete(pattern: &str) -> String {
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

fn setup_token(server: &Server) -> String {
    let url = server.setup_url();
    url.split("token=")
        .nth(1)
        .expect("a token parameter")
        .to_string()
}

async fn sign_in(server: &Server, name: &str, password: &str) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/sessions", server.url))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn first_admin_needs_the_set_up_token_then_signs_in_with_a_safe_cookie() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let token = setup_token(&server);
    let setup = |token: String| {
        client()
            .post(format!("{}/api/v1/setup", server.url))
            .json(&json!({"setup_token": token, "name": "root", "password": "a long enough password"}))
            .send()
    };
    assert_eq!(setup("0".repeat(32)).await.unwrap().status(), 403);
    let created = setup(token.clone()).await.unwrap();
    assert_eq!(created.status(), 201);
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["admin"], true);
    assert_eq!(
        setup(token).await.unwrap().status(),
        409,
        "set-up works once"
    );

    let response = sign_in(&server, "root", "a long enough password").await;
    assert_eq!(response.status(), 201);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: no Secure flag"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let me: Value = client()
        .get(format!("{}/api/v1/me", server.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["name"], "root");
    assert_eq!(me["via"], "session");
}

#[tokio::test]
async fn cookie_changes_need_the_csrf_token_and_sign_out_ends_the_session() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let response = sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let session = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_string();
    assert!(
        body["session"].get("csrf_token").is_none(),
        "session views never carry secrets"
    );

    let create = |csrf: Option<String>| {
        let mut request = client()
            .post(format!("{}/api/v1/tokens", server.url))
            .header("cookie", &session)
            .json(&json!({"name": "ci", "scope": "read"}));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    let refused = create(None).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("CSRF"), "{body}");
    assert_eq!(create(Some("0".repeat(64))).await.unwrap().status(), 403);
    assert_eq!(create(Some(csrf.clone())).await.unwrap().status(), 201);

    // A plain form posts the token as the _csrf field.
    let form = |fields: &[(&str, &str)]| {
        client()
            .post(format!("{}/account/tokens", server.url))
            .header("cookie", &session)
            .form(fields)
            .send()
    };
    assert_eq!(
        form(&[("name", "form"), ("scope", "read")])
            .await
            .unwrap()
            .status(),
        403
    );
    let page = form(&[("name", "form"), ("scope", "read"), ("_csrf", &csrf)])
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("data-token>bct_"));

    let out = client()
        .delete(format!("{}/api/v1/sessions/current", server.url))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = client()
        .get(format!("{}/api/v1/me", server.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[tokio::test]
async fn wrong_password_looks_like_an_unknown_user_and_repeated_failures_are_throttled() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let wrong = sign_in(&server, ADMIN, "not the password").await;
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown = sign_in(&server, "no-such-user", "not the password").await;
    assert_eq!(unknown.status(), 401);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(wrong["message"], unknown["message"]);
    assert_eq!(wrong["message"], "wrong user name or password");

    for _ in 2..10 {
        assert_eq!(sign_in(&server, ADMIN, "still wrong").await.status(), 401);
    }
    // Ten failures from this address: even the right password waits now.
    let throttled = sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(throttled.status(), 429);
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 300, "{retry}");
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["code"], "too_many_requests");

    let failures: Vec<Value> = server
        .get("/api/v1/audit?action=session.create&outcome=failure&limit=50")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failures.len(), 10);
}

#[tokio::test]
async fn api_tokens_are_stored_hashed_listed_by_prefix_and_revocable() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let created: Value = server
        .request(Method::POST, "/api/v1/tokens")
        .json(&json!({"name": "deploy", "scope": "write", "expires_in": "30d"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("bct_"));
    assert!(created.get("secret_hash").is_none());
    assert!(created["expires_at"].is_string());

    let me = client()
        .get(format!("{}/api/v1/me", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let listed: Vec<Value> = client()
        .get(format!("{}/api/v1/tokens", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deploy = listed.iter().find(|t| t["name"] == "deploy").unwrap();
    assert!(secret.starts_with(deploy["prefix"].as_str().unwrap()));
    assert!(deploy["last_used_at"].is_string());
    let listing = serde_json::to_string(&listed).unwrap();
    assert!(
        !listing.contains(&secret[4..]),
        "the listing reveals the secret"
    );

    // Neither the token nor any password is in the database file.
    let db = std::fs::read(server.data_dir.join("betcycle.redb")).unwrap();
    for plain in [secret.as_bytes(), ADMIN_PASSWORD.as_bytes()] {
        assert!(
            !db.windows(plain.len()).any(|w| w == plain),
            "plaintext secret in the store"
        );
    }

    let id = deploy["id"].as_u64().unwrap();
    let revoked = server
        .request(Method::DELETE, &format!("/api/v1/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let me = client()
        .get(format!("{}/api/v1/me", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);
    let body: Value = me.json().await.unwrap();
    assert_eq!(
        body["message"],
        "the API token is invalid, expired or revoked"
    );
}

#[tokio::test]
async fn admins_manage_users_and_teams_but_never_remove_the_last_admin() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let post = |path: &str, body: Value| server.request(Method::POST, path).json(&body).send();
    assert_eq!(
        post(
            "/api/v1/users",
            json!({"name": "bob", "password": "bob password 12"})
        )
        .await
        .unwrap()
        .status(),
        201
    );
    assert_eq!(
        post(
            "/api/v1/users",
            json!({"name": "bob", "password": "bob password 12"})
        )
        .await
        .unwrap()
        .status(),
        409
    );
    let short = post("/api/v1/users", json!({"name": "eve", "password": "short"}))
        .await
        .unwrap();
    assert_eq!(short.status(), 400);
    assert!(
        short
            .text()
            .await
            .unwrap()
            .contains("at least 10 characters")
    );
    assert_eq!(
        post("/api/v1/teams", json!({"name": "ops"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let added = server
        .request(Method::PUT, "/api/v1/teams/ops/members/bob")
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 204);
    let users: Vec<Value> = server.get("/api/v1/users").await.json().await.unwrap();
    let bob = users.iter().find(|u| u["name"] == "bob").unwrap();
    assert_eq!(bob["teams"], json!(["ops"]));

    // Disabling bob ends his sign-ins.
    assert_eq!(
        sign_in(&server, "bob", "bob password 12").await.status(),
        201
    );
    let disabled = server
        .request(Method::PATCH, "/api/v1/users/bob")
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    assert_eq!(
        sign_in(&server, "bob", "bob password 12").await.status(),
        401
    );

    let last = server
        .request(Method::PATCH, &format!("/api/v1/users/{ADMIN}"))
        .json(&json!({"admin": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 400);
    assert!(
        last.text()
            .await
            .unwrap()
            .contains("no enabled administrator")
    );
}

#[tokio::test]
async fn audit_log_records_changes_and_verify_names_an_altered_or_removed_entry() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let post = |path: &str, body: Value| server.request(Method::POST, path).json(&body).send();
    post(
        "/api/v1/users",
        json!({"name": "carol", "password": "carol password 1"}),
    )
    .await
    .unwrap();
    post("/api/v1/teams", json!({"name": "web"})).await.unwrap();
    sign_in(&server, "carol", "wrong password!!").await;

    let entries: Vec<Value> = server
        .get("/api/v1/audit?action=user.")
        .await
        .json()
        .await
        .unwrap();
    let create = entries
        .iter()
        .find(|e| e["target"] == "user:carol")
        .expect("user.create audited");
    assert_eq!(create["action"], "user.create");
    assert_eq!(create["outcome"], "success");
    assert_eq!(create["source"], "127.0.0.1");
    assert!(
        create["actor"]
            .as_str()
            .unwrap()
            .starts_with("user:admin (token bct_")
    );
    assert_eq!(create["request_id"].as_str().unwrap().len(), 32);
    let all: Vec<Value> = server.get("/api/v1/audit").await.json().await.unwrap();
    assert!(
        all.iter()
            .any(|e| e["action"] == "session.create" && e["outcome"] == "failure")
    );
    assert!(all.iter().any(|e| e["action"] == "team.create"));
    let page = server
        .get("/security/audit?action=team.")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("team:web") && !page.contains("user:carol"));

    let data = server.data_dir.clone();
    assert!(server.stop().success());
    let verify = |data: &std::path::Path| {
        run(betcycle(dir.path())
            .args(["audit", "verify", "--data-dir"])
            .arg(data))
    };
    let (code, stdout, stderr) = verify(&data);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("audit log intact: "), "{stdout}");

    // Copy the store, then alter entry 2 in one copy and remove entry 3 in the other.
    let removed = dir.path().join("removed");
    std::fs::create_dir_all(&removed).unwrap();
    std::fs::copy(data.join("betcycle.redb"), removed.join("betcycle.redb")).unwrap();
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit-1");
    {
        let db = redb::Database::open(data.join("betcycle.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(table).unwrap();
            let value = t.get(2).unwrap().unwrap().value().to_vec();
            let altered = String::from_utf8(value)
                .unwrap()
                .replace("\"outcome\":\"success\"", "\"outcome\":\"failure\"");
            t.insert(2, altered.as_bytes()).unwrap();
        }
        tx.commit().unwrap();
    }
    let (code, _, stderr) = verify(&data);
    assert_eq!(code, 1);
    assert!(stderr.contains("audit entry 2 was altered"), "{stderr}");

    {
        let db = redb::Database::open(removed.join("betcycle.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(table).unwrap().remove(3).unwrap();
        tx.commit().unwrap();
    }
    let (code, _, stderr) = verify(&removed);
    assert_eq!(code, 1);
    assert!(stderr.contains("audit entry 3 is missing"), "{stderr}");
}

#[tokio::test]
async fn responses_carry_security_headers() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let page = server.get("/").await;
    let h = page.headers();
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "same-origin");
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );

    // Signed out, a browser is sent to the sign-in page; an API client gets 401.
    let redirect = client()
        .get(format!("{}/runs", server.url))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.url().path(), "/login");
    assert_eq!(redirect.url().query(), Some("next=%2Fruns"));
}

#[tokio::test]
async fn https_with_a_certificate_made_here_and_reloaded_when_it_changes() {
    let dir = tempdir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let make = || {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let (first_pem, first_key) = make();
    std::fs::write(&cert, &first_pem).unwrap();
    std::fs::write(&key, &first_key).unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let trusting = |pem: &str| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
            .build()
            .unwrap()
    };
    let response = trusting(&first_pem)
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    // The container health check finds the TLS server from the same configuration.
    let listen = server.url.trim_start_matches("https://").to_string();
    let (code, stdout, stderr) = run(betcycle(dir.path())
        .args(["healthcheck", "--listen", &listen])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ready: https://"), "{stdout}");
    // A client that does not trust this certificate is refused.
    let (other_pem, _) = make();
    assert!(
        trusting(&other_pem)
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err()
    );

    // Renew the certificate on disk: new connections get it without a restart.
    let (second_pem, second_key) = make();
    std::fs::write(&key, &second_key).unwrap();
    std::fs::write(&cert, &second_pem).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if trusting(&second_pem)
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.contains("TLS certificate reloaded"))
    );
}
