//! Shipping: `betcycle self-update` against a local release server shaped like GitHub's
//! releases API, and the systemd notifications of `betcycle serve` (Type=notify).

use crate::harness::{Server, betcycle_at, run, tempdir};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Assets by name, and every path asked for.
#[derive(Clone, Default)]
struct Releases {
    assets: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    asked: Arc<Mutex<Vec<String>>>,
    /// The server's own URL: asset URLs are absolute, as GitHub's are.
    base: Arc<Mutex<String>>,
}

const NEW_VERSION: &str = "99.0.0";

fn target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

fn archive_name() -> String {
    format!("betcycle-v{NEW_VERSION}-{}.tar.gz", target())
}

/// A release archive holding `betcycle`: here a script that answers like the new version.
fn release_archive() -> Vec<u8> {
    let script = format!("#!/bin/sh\necho \"betcycle {NEW_VERSION}\"\n");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "betcycle", script.as_bytes())
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

async fn release_server(releases: Releases) -> String {
    async fn release(State(r): State<Releases>, uri: axum::http::Uri) -> impl IntoResponse {
        r.asked.lock().unwrap().push(uri.path().to_string());
        let base = r.base.lock().unwrap().clone();
        let assets: Vec<_> = r
            .assets
            .lock()
            .unwrap()
            .keys()
            .map(|name| json!({"name": name, "url": format!("{base}/assets/{name}")}))
            .collect();
        let body = json!({
            "tag_name": format!("v{NEW_VERSION}"),
            "created_at": "2026-11-20T10:00:00Z",
            "name": format!("BetCycle {NEW_VERSION}"),
            "body": "notes",
            "html_url": "https://example.invalid/releases/v99.0.0",
            "assets": assets,
        });
        let listing = uri.path().ends_with("/releases");
        axum::Json(if listing { json!([body]) } else { body })
    }
    async fn asset(
        State(r): State<Releases>,
        UrlPath(name): UrlPath<String>,
    ) -> axum::response::Response {
        r.asked.lock().unwrap().push(format!("/assets/{name}"));
        match r.assets.lock().unwrap().get(&name) {
            Some(bytes) => bytes.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    *releases.base.lock().unwrap() = url.clone();
    let app = axum::Router::new()
        .route(
            "/repos/betcycle/betcycle/releases/latest",
            axum::routing::get(release),
        )
        .route(
            "/repos/betcycle/betcycle/releases",
            axum::routing::get(release),
        )
        .route("/assets/{name}", axum::routing::get(asset))
        .with_state(releases);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn self_update(bin: &Path, dir: &Path, api: &str, args: &[&str]) -> (i32, String, String) {
    run(betcycle_at(bin, dir)
        .arg("self-update")
        .args(args)
        .args(["--api-url", api])
        .env("BETCYCLE_MANAGED_BY", "self"))
}

#[tokio::test]
async fn self_update_checks_then_replaces_the_binary_only_when_the_checksum_matches() {
    let dir = tempdir();
    let root = dir.path();
    let releases = Releases::default();
    let api = release_server(releases.clone()).await;
    // A copy of this build in a directory of its own, as a downloaded binary would be.
    let bin_dir = root.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("betcycle");
    std::fs::copy(crate::harness::BIN, &bin).unwrap();
    let original = std::fs::read(&bin).unwrap();

    let archive = release_archive();
    let wrong = format!("{}  {}\n", sha256_hex(b"something else"), archive_name());
    releases
        .assets
        .lock()
        .unwrap()
        .insert(archive_name(), archive.clone());
    releases
        .assets
        .lock()
        .unwrap()
        .insert("SHA256SUMS".into(), wrong.into_bytes());

    let check = {
        let (bin, root, api) = (bin.clone(), root.to_path_buf(), api.clone());
        tokio::task::spawn_blocking(move || self_update(&bin, &root, &api, &["--check"]))
    };
    let (code, stdout, stderr) = check.await.unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("betcycle {NEW_VERSION} is available")),
        "{stdout}"
    );
    assert!(
        !releases
            .asked
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.starts_with("/assets/")),
        "--check downloaded something"
    );

    // A published checksum that does not match: nothing is replaced.
    let update = {
        let (bin, root, api) = (bin.clone(), root.to_path_buf(), api.clone());
        tokio::task::spawn_blocking(move || self_update(&bin, &root, &api, &[]))
    };
    let (code, stdout, stderr) = update.await.unwrap();
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(stderr.contains("nothing replaced"), "{stderr}");
    assert!(
        std::fs::read(&bin).unwrap() == original,
        "the binary changed"
    );

    // The right checksum: the binary is replaced by the release's.
    let right = format!("{}  {}\n", sha256_hex(&archive), archive_name());
    releases
        .assets
        .lock()
        .unwrap()
        .insert("SHA256SUMS".into(), right.into_bytes());
    let update = {
        let (bin, root, api) = (bin.clone(), root.to_path_buf(), api.clone());
        tokio::task::spawn_blocking(move || self_update(&bin, &root, &api, &[]))
    };
    let (code, stdout, stderr) = update.await.unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("to {NEW_VERSION}")), "{stdout}");
    let (code, stdout, _) = run(&mut std::process::Command::new(&bin));
    assert_eq!((code, stdout.trim()), (0, "betcycle 99.0.0"));
    let asked = releases.asked.lock().unwrap().clone();
    assert!(
        asked.contains(&format!("/assets/{}", archive_name())),
        "{asked:?}"
    );
}

#[tokio::test]
async fn self_update_refuses_a_binary_something_else_manages() {
    let dir = tempdir();
    let releases = Releases::default();
    let api = release_server(releases.clone()).await;
    let (code, _, stderr) = run(betcycle_at(crate::harness::BIN, dir.path())
        .args(["self-update", "--check", "--api-url", &api])
        .env("BETCYCLE_MANAGED_BY", "the container image"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the container image manages this binary"),
        "{stderr}"
    );
    assert!(releases.asked.lock().unwrap().is_empty(), "it asked anyway");
}

#[tokio::test]
async fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempdir();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = crate::harness::betcycle(dir.path());
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let server = Server::start_with(cmd, dir.path(), &[]);
    let mut seen = Vec::new();
    let next = || {
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    // READY, then watchdog pings at half the interval.
    while seen
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        seen.push(next());
    }
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "{seen:?}");
    assert!(seen[ready.unwrap()].contains("STATUS=serving"), "{seen:?}");
    server.signal(libc::SIGTERM);
    let stopping = loop {
        let message = next();
        if message.contains("STOPPING=1") {
            break message;
        }
    };
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    assert!(server.stop_after_signal().success());
}

/// What a container runtime does: BetCycle is PID 1 of its own PID namespace, where a
/// signal without a handler is ignored. SIGTERM must still stop it gracefully.
#[tokio::test]
async fn as_pid_1_of_its_own_namespace_sigterm_stops_it_gracefully() {
    let namespaces = ["--user", "--map-root-user", "--pid", "--fork"];
    let probe = std::process::Command::new("unshare")
        .args(namespaces)
        .arg("true")
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("as_pid_1: skipped (this machine cannot create user and PID namespaces)");
        return;
    }
    let dir = tempdir();
    let mut cmd = crate::harness::betcycle_at("unshare", dir.path());
    cmd.args(namespaces).arg(crate::harness::BIN);
    let server = Server::start_with(cmd, dir.path(), &[]);
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid())).unwrap();
    let betcycle: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{betcycle}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "not PID 1 inside: {nspid}"
    );
    assert_eq!(server.get("/healthz").await.status(), 200);
    // SAFETY: a signal to the server process this test started.
    assert_eq!(unsafe { libc::kill(betcycle, libc::SIGTERM) }, 0);
    let logs = {
        let mut server = server;
        let exit = server.wait(Duration::from_secs(20));
        assert!(exit.success(), "{exit:?}");
        server.logs()
    };
    assert!(
        logs.iter().any(|l| l.contains("\"stopped\"")),
        "no clean stop: {logs:?}"
    );
}

/// A `FROM scratch` container has no system CA store. The roots compiled into the binary
/// must stand in: without them no outbound HTTPS client can even be built (the server's
/// deployer would not start; every client verb would fail with "builder error").
#[tokio::test]
async fn outbound_https_works_without_a_system_ca_store() {
    let dir = tempdir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    // No system roots anywhere: rustls-native-certs then reads only these, which do not exist.
    let no_store = [
        ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
        ("SSL_CERT_DIR", "/nonexistent/certs"),
    ];
    let mut cmd = crate::harness::betcycle(dir.path());
    cmd.envs(no_store);
    // The server starts (its deployer and status reporter build HTTPS clients at start).
    let server = Server::start_with(
        cmd,
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // A client verb reaches the TLS handshake and rejects the self-signed certificate on
    // its merits: the verifier was built from the bundled roots.
    let (code, _, stderr) = run(crate::harness::betcycle(dir.path())
        .envs(no_store)
        .args(["project", "list", "--server", &server.url])
        .env("BETCYCLE_TOKEN", "bct_not_a_token"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(!stderr.contains("builder error"), "{stderr}");
    assert!(server.stop().success());
}
