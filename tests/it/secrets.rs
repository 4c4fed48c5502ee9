//! Secrets: set through the API at each scope, injected only into the steps that list
//! them, masked (with their encodings) in live and stored logs, recorded on the run,
//! never answered by the API nor written anywhere in plaintext; the master key: refused
//! when wrong or missing, named with BETCYCLE_MASTER_KEY_FILE, rotated by the CLI.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, Server, add_user, betcycle, create_token, run as run_cmd, tempdir,
};
use crate::run::git;
use crate::runs::{demo, read_log_stream, trigger, wait_for};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;

const PIPELINE: &str = r#"
steps:
  - name: show
    secrets: [API_TOKEN, { name: DB_PASSWORD, as: PGPASSWORD }, SHARED]
    run: |
      sleep 1
      echo "token=$API_TOKEN"
      printf %s "$API_TOKEN" | base64
      echo "$API_TOKEN" | base64
      printf 'x%s' "$API_TOKEN" | base64
      printf %s "$PGPASSWORD" | base64 | tr '+/' '-_' | tr -d '='
      printf 'url=%s\n' "$(printf %s "$PGPASSWORD" | sed 's/ /%20/g; s#/#%2F#g; s/@/%40/g')"
      printf %s "${API_TOKEN%????}"; sleep 0.3; printf '%s\n' "${API_TOKEN#"${API_TOKEN%????}"}"
      printf 'shared=%s\n' "$(printf %s "$SHARED" | sha256sum | cut -c1-64)"
  - name: plain
    run: echo "plain sees token=${API_TOKEN:-unset}"
"#;

async fn put(server: &Server, path: &str, value: &str) -> reqwest::Response {
    server
        .call(Method::PUT, path, &json!({ "value": value }))
        .await
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// No 8-character stretch of `form` appears in `log`.
fn assert_hidden(log: &str, form: &str, what: &str) {
    let chars: Vec<char> = form.chars().collect();
    for window in chars.windows(8) {
        let piece: String = window.iter().collect();
        assert!(
            !log.contains(&piece),
            "{what}: `{piece}` of `{form}` is in the log:\n{log}"
        );
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path())
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[tokio::test]
async fn secrets_are_injected_masked_recorded_and_never_kept_in_plaintext() {
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "dev", "developer password 1", false);
    let dev = create_token(dir.path(), "dev", "write");
    let (server, repo) = demo(dir.path(), PIPELINE, &[]).await;
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let api_token = format!("tok-{unique}");
    let db_password = format!("pa ss/w0rd@db-{}", &unique[..8]);
    let shared = [
        format!("shared-instance-{}", &unique[..6]),
        format!("shared-project-v1-{}", &unique[..6]),
        format!("shared-project-v2-{}", &unique[..6]),
    ];

    // Instance secrets (admins), project secrets (maintainers); a second PUT is a new
    // version; an older version restored becomes the newest.
    assert_eq!(
        put(&server, "/api/v1/secrets/API_TOKEN", &api_token)
            .await
            .status(),
        201
    );
    assert_eq!(
        put(&server, "/api/v1/secrets/SHARED", &shared[0])
            .await
            .status(),
        201
    );
    let db = put(
        &server,
        "/api/v1/projects/demo/secrets/DB_PASSWORD",
        &db_password,
    )
    .await;
    assert_eq!(db.status(), 201);
    let db: Value = db.json().await.unwrap();
    assert_eq!(db["scope"], "project");
    assert_eq!(db["version"], 1);
    assert_eq!(
        put(&server, "/api/v1/projects/demo/secrets/SHARED", &shared[1])
            .await
            .status(),
        201
    );
    let v2 = put(&server, "/api/v1/projects/demo/secrets/SHARED", &shared[2]).await;
    assert_eq!(v2.status(), 200);
    let restored = server
        .call(
            Method::POST,
            "/api/v1/projects/demo/secrets/SHARED/restore",
            &json!({"version": 1}),
        )
        .await;
    assert_eq!(restored.status(), 200);
    let restored: Value = restored.json().await.unwrap();
    assert_eq!(restored["version"], 3);
    assert_eq!(restored["versions"][0]["restored_from"], 1);
    assert!(
        restored["updated_by"]
            .as_str()
            .unwrap()
            .starts_with("user:admin (token ")
    );
    let env = put(
        &server,
        "/api/v1/projects/demo/environments/staging/secrets/API_TOKEN",
        "staging-only-token",
    )
    .await;
    assert_eq!(env.status(), 201);
    let env: Value = env.json().await.unwrap();
    assert_eq!(
        (env["scope"].as_str(), env["environment"].as_str()),
        (Some("environment"), Some("staging"))
    );

    // Bad input: clear 4xx, nothing stored.
    let short = put(&server, "/api/v1/projects/demo/secrets/PIN", "123").await;
    assert_eq!(short.status(), 400);
    assert!(
        short
            .text()
            .await
            .unwrap()
            .contains("shorter than 4 characters")
    );
    let reserved = put(
        &server,
        "/api/v1/projects/demo/secrets/BETCYCLE_X",
        "abcdef",
    )
    .await;
    assert_eq!(reserved.status(), 400);
    let bad_env = put(
        &server,
        "/api/v1/projects/demo/environments/Prod!/secrets/A",
        "abcdef",
    )
    .await;
    assert_eq!(bad_env.status(), 400);
    server
        .expect(
            Method::POST,
            "/api/v1/projects/demo/secrets/SHARED/restore",
            &json!({"version": 99}),
            404,
        )
        .await;

    // Listing names scope, version and who — never a value.
    let mut answers = String::new();
    for path in [
        "/api/v1/secrets",
        "/api/v1/secrets/API_TOKEN",
        "/api/v1/projects/demo/secrets",
        "/api/v1/projects/demo/secrets/SHARED",
        "/api/v1/projects/demo/environments/staging/secrets",
        "/api/v1/projects/demo",
    ] {
        let answer = server.get_json(path).await;
        answers.push_str(&answer.to_string());
    }
    let names: Vec<Value> = server
        .get_json("/api/v1/projects/demo/secrets")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("DB_PASSWORD"), json!("SHARED")]);
    for value in [&api_token, &db_password, &shared[0], &shared[1], &shared[2]] {
        assert!(
            !answers.contains(value.as_str()),
            "a value in an API answer"
        );
    }

    // The run: live log followed while the step runs.
    let run = trigger(&server, "demo").await;
    assert_eq!(run["number"], 1);
    wait_for(&server, "demo", 1, |r| r["steps"][0]["running"] == true).await;
    let stream = server
        .get("/api/v1/projects/demo/runs/1/steps/show/log/stream")
        .await;
    let live: Vec<String> = read_log_stream(stream)
        .await
        .into_iter()
        .map(|(_, line)| line["html"].as_str().unwrap().to_string())
        .collect();
    let run = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let stored = server
        .get_text("/api/v1/projects/demo/runs/1/steps/show/log")
        .await;
    let live = live.join("\n");
    for log in [&stored, &live] {
        assert!(log.contains("token=***"), "{log}");
        assert!(
            log.contains(&format!("shared={}", sha256_hex(&shared[1]))),
            "project v3 (= v1) wins over the instance: {log}"
        );
        assert!(
            log.lines().any(|l| l.ends_with(" o ***") || l == "***"),
            "the value written in two pieces: {log}"
        );
        assert!(log.contains("url=***"), "{log}");
        for (form, what) in [
            (api_token.clone(), "plain"),
            (STANDARD.encode(&api_token), "base64"),
            (
                STANDARD.encode(format!("{api_token}\n")),
                "base64 with a newline",
            ),
            (
                STANDARD.encode(format!("x{api_token}")),
                "base64 shifted by one byte",
            ),
            (URL_SAFE_NO_PAD.encode(&db_password), "base64url"),
            (
                db_password
                    .replace(' ', "%20")
                    .replace('/', "%2F")
                    .replace('@', "%40"),
                "URL-encoded",
            ),
        ] {
            assert_hidden(log, &form, what);
        }
    }
    let plain = server
        .get_text("/api/v1/projects/demo/runs/1/steps/plain/log")
        .await;
    assert!(
        plain.contains("plain sees token=unset"),
        "only listed steps get secrets: {plain}"
    );

    // Every read is on the run (name, scope, version — no value) and in the audit log.
    let reads: Vec<(String, String, String, u64)> = run["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["step"], "show");
            (
                r["name"].as_str().unwrap().to_string(),
                r["env"].as_str().unwrap().to_string(),
                r["scope"].as_str().unwrap().to_string(),
                r["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reads,
        vec![
            ("API_TOKEN".into(), "API_TOKEN".into(), "instance".into(), 1),
            (
                "DB_PASSWORD".into(),
                "PGPASSWORD".into(),
                "project".into(),
                1
            ),
            ("SHARED".into(), "SHARED".into(), "project".into(), 3),
        ]
    );
    let audit = server.get_json("/api/v1/audit?action=secret.").await;
    let actions = crate::harness::texts(&audit, "action");
    assert!(
        actions.contains(&"secret.read")
            && actions.contains(&"secret.restore")
            && actions.contains(&"secret.set"),
        "{actions:?}"
    );
    let read = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "secret.read")
        .unwrap();
    assert!(
        read["detail"]
            .as_str()
            .unwrap()
            .contains("step show: API_TOKEN (instance v1)"),
        "{read}"
    );
    let page = server.get_text("/projects/demo/runs/1").await;
    assert!(
        page.contains("data-run-secrets") && page.contains("PGPASSWORD"),
        "the run page lists them"
    );

    // A step asking for a secret nobody set fails before it starts, saying which.
    std::fs::write(
        repo.join(".betcycle.yml"),
        "steps:\n  - name: needs\n    secrets: [NOPE]\n    run: echo never\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "needs a missing secret"]);
    trigger(&server, "demo").await;
    let failed = wait_for(&server, "demo", 2, |r| r["status"] == "failed").await;
    assert!(
        failed["steps"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("secret NOPE is not set (not for the project, nor for the instance)"),
        "{failed}"
    );

    // A developer may use secrets in pipelines but not list or set them.
    server.grant("demo", "user:dev", "developer").await;
    let listed = crate::harness::client()
        .get(format!("{}/api/v1/projects/demo/secrets", server.url))
        .bearer_auth(&dev)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 403);
    let set = crate::harness::client()
        .put(format!(
            "{}/api/v1/projects/demo/secrets/API_TOKEN",
            server.url
        ))
        .bearer_auth(&dev)
        .json(&json!({"value": "from-a-developer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 403);

    // Nothing in the data directory holds a value in plaintext: not the store, not the
    // logs, not the server's own log files.
    server.stop();
    let data = dir.path().join("data");
    for value in [
        &api_token,
        &db_password,
        &shared[0],
        &shared[1],
        &shared[2],
        &"staging-only-token".to_string(),
    ] {
        assert_eq!(
            files_containing(&data, value),
            Vec::<String>::new(),
            "plaintext found"
        );
    }
}

/// `betcycle serve` that is expected to refuse to start: its exit code and log.
fn refused_start(root: &Path, extra: &[&str]) -> (i32, String) {
    let mut cmd = betcycle(root);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("data"))
        .args(extra);
    let (code, stdout, stderr) = run_cmd(&mut cmd);
    (code, format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn a_wrong_or_missing_master_key_is_refused_and_rotation_keeps_every_secret() {
    let dir = tempdir();
    let pipeline = "steps:\n  - name: show\n    secrets: [KEPT]\n    run: printf 'kept=%s\\n' \"$(printf %s \"$KEPT\" | sha256sum | cut -c1-64)\"\n";
    let (server, _) = demo(dir.path(), pipeline, &[]).await;
    let value = format!("kept-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        put(&server, "/api/v1/projects/demo/secrets/KEPT", &value)
            .await
            .status(),
        201
    );
    assert_eq!(
        put(
            &server,
            "/api/v1/projects/demo/secrets/KEPT",
            &format!("{value}-2")
        )
        .await
        .status(),
        200
    );
    server.stop();
    let data = dir.path().join("data");
    let key_file = data.join("master.key");
    let original = std::fs::read_to_string(&key_file).unwrap();

    // Another key: refused, clearly, and the store is not touched.
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    let (code, log) = refused_start(dir.path(), &[]);
    assert_ne!(code, 0);
    assert!(
        log.contains("is not the key this database's secrets were sealed with"),
        "{log}"
    );

    // No key file at all: refused, not replaced by a new key.
    std::fs::remove_file(&key_file).unwrap();
    let (code, log) = refused_start(dir.path(), &[]);
    assert_ne!(code, 0);
    assert!(log.contains("is missing"), "{log}");
    assert!(!key_file.exists(), "no new key was made");

    // The key kept elsewhere and named with BETCYCLE_MASTER_KEY_FILE (or the flag).
    let elsewhere = dir.path().join("keys");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let named = elsewhere.join("betcycle.key");
    std::fs::write(&named, &original).unwrap();
    let absent = elsewhere.join("absent.key");
    let (code, log) = refused_start(dir.path(), &["--master-key-file", absent.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(log.contains("absent.key is missing"), "{log}");
    assert!(!absent.exists(), "a named key file is never created");

    // Rotation through the CLI (server stopped), with the key named in the environment.
    let (code, stdout, stderr) = run_cmd(
        betcycle(dir.path())
            .args(["secrets", "rotate-master-key", "--data-dir"])
            .arg(&data)
            .env("BETCYCLE_MASTER_KEY_FILE", &named),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 secret versions re-wrapped"), "{stdout}");
    let rotated = std::fs::read_to_string(&named).unwrap();
    assert_ne!(rotated.trim(), original.trim());
    assert!(!elsewhere.join("betcycle.key.next").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&named).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The old key no longer opens the store…
    std::fs::write(&key_file, &original).unwrap();
    let (code, log) = refused_start(dir.path(), &[]);
    assert_ne!(code, 0, "{log}");
    std::fs::remove_file(&key_file).unwrap();

    // …the new one does, and every secret still decrypts into a run.
    let token = create_token(dir.path(), ADMIN, "admin");
    let mut cmd = betcycle(dir.path());
    cmd.env("BETCYCLE_MASTER_KEY_FILE", &named);
    let mut server = Server::start_with(cmd, dir.path(), &[]);
    server.token = Some(token);
    assert!(
        !key_file.exists(),
        "the named key is used; none is created in the data directory"
    );
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/show/log")
        .await;
    assert!(
        log.contains(&format!("kept={}", sha256_hex(&format!("{value}-2")))),
        "{log}"
    );
    let restored = server
        .call(
            Method::POST,
            "/api/v1/projects/demo/secrets/KEPT/restore",
            &json!({"version": 1}),
        )
        .await;
    assert_eq!(
        restored.status(),
        200,
        "version 1 opens under the new key too"
    );
    // The refused starts left no trace: two starts recorded, the first and this one.
    let instance = server.get_json("/api/v1/instance").await;
    assert_eq!(instance["starts_total"], 2, "{instance}");
    let audit = server
        .get_json("/api/v1/audit?action=master_key.rotate")
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 1);
    assert_eq!(
        audit[0]["actor"].as_str().unwrap().split(':').next(),
        Some("cli")
    );
    server.stop();
}
