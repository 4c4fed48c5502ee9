//! Start, restart, crash and shutdown: what was committed stays committed.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, BIN, Server, add_user, betcycle, betcycle_at, create_token, run, tempdir,
};
use std::time::Duration;

#[tokio::test]
async fn graceful_restart_keeps_the_instance_and_records_the_stop() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let first = server.get_json("/api/v1/instance").await;
    assert_eq!(first["starts_total"], 1);
    let status = server.stop();
    assert!(status.success(), "exit {status:?}");

    let server = Server::start_admin(dir.path(), &[]);
    let second = server.get_json("/api/v1/instance").await;
    assert_eq!(second["instance"]["id"], first["instance"]["id"]);
    assert_eq!(second["starts_total"], 2);
    assert_eq!(second["recent_starts"][0]["seq"], 2);
    assert!(
        second["recent_starts"][1]["stopped_at"].is_string(),
        "{second}"
    );
    assert_eq!(second["previous_shutdown_unclean"], false);
}

#[tokio::test]
async fn kill_9_during_writes_loses_no_committed_record() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let id = server.get_json("/api/v1/instance").await["instance"]["id"].clone();

    // Keep the store busy with durable writes — teams created as fast as the server takes
    // them, each name noted once its 201 arrived — while the process is killed.
    let url = server.url.clone();
    let token = server.token.clone().unwrap();
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            let client = crate::harness::client();
            for n in 0.. {
                let name = format!("team-{n:05}");
                let answered = client
                    .post(format!("{url}/api/v1/teams"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"name": name}))
                    .send()
                    .await;
                match answered {
                    Ok(r) if r.status() == 201 => acknowledged.lock().unwrap().push(name),
                    _ => break,
                }
            }
        })
    };
    while acknowledged.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    writer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 20,
        "no writes happened before the kill"
    );

    let server = Server::start_admin(dir.path(), &[]);
    let info = server.get_json("/api/v1/instance").await;
    assert_eq!(info["instance"]["id"], id);
    assert_eq!(info["starts_total"], 2);
    assert!(info["recent_starts"][1]["stopped_at"].is_null());
    assert_eq!(info["previous_shutdown_unclean"], true);
    assert_eq!(server.get_json("/readyz").await["ready"], true);
    // Every write acknowledged before the kill survived it.
    let teams = server.get_json("/api/v1/teams").await;
    let names = crate::harness::texts(&teams, "name");
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !names.contains(&n.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let logs = server.logs().join("\n");
    assert!(logs.contains("did not shut down gracefully"), "{logs}");
}

#[tokio::test]
async fn sigterm_closes_event_streams_and_exits_cleanly() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let mut stream = server.get("/api/v1/events").await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert_eq!(stream.headers()["x-accel-buffering"], "no");
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("event: connected"), "{first}");

    server.signal(libc::SIGTERM);
    // The stream ends (not hangs) once shutdown starts.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "SSE stream still open 10 s after SIGTERM");
    let status = server.stop_after_signal();
    assert!(status.success(), "exit {status:?}");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempdir();
    let _server = Server::start_admin(dir.path(), &[]);
    let (code, _, stderr) = run(betcycle(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data")));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is already open in another BetCycle process"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_copied_alone_serves_the_console_and_assets() {
    let dir = tempdir();
    let bin = dir.path().join("betcycle");
    std::fs::copy(BIN, &bin).unwrap();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    let token = create_token(dir.path(), ADMIN, "read");
    let mut server = Server::start_with(betcycle_at(&bin, dir.path()), dir.path(), &[]);
    server.token = Some(token);
    let page = server.get_text("/").await;
    assert!(page.contains("<h1>Dashboard</h1>"));
    for asset in ["app.css", "htmx.min.js", "favicon.svg"] {
        let response = server.get(&format!("/static/{asset}")).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
}

#[tokio::test]
async fn logs_roll_into_json_files_under_the_data_dir() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    server.get("/healthz").await;
    let data_dir = server.data_dir.clone();
    assert!(server.stop().success());
    let files: Vec<_> = std::fs::read_dir(data_dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("betcycle.") && name.ends_with(".log"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "listening"));
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["path"] == "/healthz" && l["span"]["request_id"].is_string())
    );
    assert!(lines.iter().any(|l| l["fields"]["message"] == "stopped"));
}
