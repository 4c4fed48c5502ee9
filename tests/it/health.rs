//! `/healthz`, `/readyz`, `betcycle healthcheck`, and the error shape.

use crate::harness::{Server, betcycle, content_type, run, tempdir};

#[tokio::test]
async fn healthz_and_readyz_report_ok() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let health = server.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["ready"], true);
    let names = crate::harness::texts(&ready["checks"], "name");
    assert_eq!(names, ["store", "data_dir", "disk"]);

    let (code, _, stderr) = run(betcycle(dir.path()).args(["healthcheck", "--url", &server.url]));
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn readyz_is_503_naming_the_failing_check_when_disk_is_short() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &["--health-min-free-disk", "1000 PiB"]);
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ready"], false);
    let failing: Vec<_> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "disk");
    assert!(
        failing[0].1.ends_with("1000.0 PiB required"),
        "{}",
        failing[0].1
    );
    // Liveness is unaffected.
    assert_eq!(server.get("/healthz").await.status(), 200);

    let (code, _, stderr) = run(betcycle(dir.path()).args(["healthcheck", "--url", &server.url]));
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: not ready: "), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
}

#[tokio::test]
async fn healthcheck_finds_the_server_from_the_same_config() {
    let dir = tempdir();
    // Pick a free port, then give the same `--listen` to both verbs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = betcycle(dir.path());
    cmd.env("BETCYCLE_LISTEN", &listen);
    let server = Server::start_with(cmd, dir.path(), &["--listen", &listen]);
    assert!(server.url.ends_with(&format!(":{port}")));
    let (code, _, stderr) = run(betcycle(dir.path())
        .arg("healthcheck")
        .env("BETCYCLE_LISTEN", &listen));
    assert_eq!(code, 0, "{stderr}");
    drop(server);
    // Nothing listening: exit 1 with the reason.
    let (code, _, stderr) = run(betcycle(dir.path()).args(["healthcheck", "--listen", &listen]));
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: not ready: "), "{stderr}");
}

#[tokio::test]
async fn errors_have_one_shape_with_the_request_id() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let client = crate::harness::client();

    // Table of (method, path, accept, status, code).
    let cases = [
        ("GET", "/api/v1/nope", "application/json", 404, "not_found"),
        ("GET", "/nope", "*/*", 404, "not_found"),
        ("POST", "/healthz", "*/*", 405, "method_not_allowed"),
        (
            "DELETE",
            "/api/v1/instance",
            "application/json",
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, accept, status, code) in cases {
        let response = client
            .request(method.parse().unwrap(), format!("{}{path}", server.url))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let header_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{method} {path}");
        assert_eq!(body["request_id"], header_id.as_str());
        assert!(!body["message"].as_str().unwrap().is_empty());
    }

    // A browser gets an HTML page that shows the request id it can quote.
    let response = client
        .get(format!("{}/nope", server.url))
        .header("accept", "text/html,application/xhtml+xml")
        .header("x-request-id", "quote-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "quote-me-123");
    assert!(content_type(&response).starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("404 Not Found"), "{page}");
    assert!(page.contains("no page or endpoint at /nope"));
    assert!(page.contains("quote-me-123"));

    // An unsafe incoming id is replaced, not echoed.
    let response = client
        .get(format!("{}/healthz", server.url))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    // The id is on the log line of the request it belongs to.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logs = server.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"request_id\":\"quote-me-123\"") && l.contains("\"status\":404")),
        "no log line carries the request id"
    );
}
