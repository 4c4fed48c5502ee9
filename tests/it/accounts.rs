//! Accounts: set-up, sign-in and sessions with CSRF, throttling, API tokens, users and
//! teams, the audit log, security headers and TLS.

use crate::harness::{ADMIN, ADMIN_PASSWORD, Server, betcycle, client, run, tempdir};
use redb::ReadableTable;
use reqwest::Method;
use serde_json::{Value, json};

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

/// Alters audit entry `seq` in the store of `data` behind the server's back (its
/// outcome turned from success to failure), as an attacker with the file would.
pub(crate) fn alter_audit_entry(data: &std::path::Path, seq: u64) {
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit-1");
    let db = redb::Database::open(data.join("betcycle.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(table).unwrap();
        let value = t.get(seq).unwrap().unwrap().value().to_vec();
        let altered = String::from_utf8(value.clone())
            .unwrap()
            .replace("\"outcome\":\"success\"", "\"outcome\":\"failure\"");
        assert_ne!(
            altered.as_bytes(),
            value.as_slice(),
            "entry {seq} has no success outcome"
        );
        t.insert(seq, altered.as_bytes()).unwrap();
    }
    tx.commit().unwrap();
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
        .call(
            Method::POST,
            "/api/v1/tokens",
            &json!({"name": "deploy", "scope": "write", "expires_in": "30d"}),
        )
        .await
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
    server
        .expect(
            Method::PATCH,
            "/api/v1/users/bob",
            &json!({"disabled": true}),
            200,
        )
        .await;
    assert_eq!(
        sign_in(&server, "bob", "bob password 12").await.status(),
        401
    );

    let last = server
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{ADMIN}"),
            &json!({"admin": false}),
        )
        .await;
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
    let page = server.get_text("/security/audit?action=team.").await;
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
    alter_audit_entry(&data, 2);
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
