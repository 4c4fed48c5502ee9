//! Backups: `betcycle db backup` while a writer keeps inserting records, `db restore` into a
//! new data directory, `db check`, the admin API download and the console button.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, Server, add_user, betcycle, create_token, run, tempdir,
};
use crate::runs::{demo, trigger, wait_for};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PIPELINE: &str = r#"
steps:
  - name: build
    run: mkdir -p out && echo "backup marker 4711" && printf 'release bits' > out/app.bin
    artifacts: [out/app.bin]
"#;

fn db(root: &Path, data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    run(betcycle(root)
        .arg("db")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir))
}

#[tokio::test]
async fn a_backup_taken_under_writes_restores_every_record_committed_before_it() {
    let dir = tempdir();
    let root = dir.path();
    let (server, _repo) = demo(root, PIPELINE, &[]).await;
    let data = root.join("data");
    // A secret, so the store holds sealed values and the master key matters.
    server
        .set_secret("/api/v1/secrets/DEPLOY_KEY", "kept under seal")
        .await;
    trigger(&server, "demo").await;
    let first = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let artifact = first["steps"][0]["artifacts"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    // A writer creating teams as fast as the server takes them; each acknowledged name is
    // committed.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, token) = (server.url.clone(), server.token.clone().unwrap());
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let client = crate::harness::client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("team-{n:05}");
                let response = client
                    .post(format!("{url}/api/v1/teams"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
                acknowledged.lock().unwrap().push(name);
            }
            n
        })
    };
    while acknowledged.lock().unwrap().len() < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The server is running: the CLI takes the backup through the API.
    let archive = root.join("backup.tar.gz");
    let committed_before: Vec<String> = acknowledged.lock().unwrap().clone();
    let backup = {
        let mut cmd = betcycle(root);
        cmd.args(["db", "backup"])
            .arg(&archive)
            .arg("--data-dir")
            .arg(&data)
            .env("BETCYCLE_TOKEN", server.token.clone().unwrap())
            .env("BETCYCLE_SERVER", &server.url);
        tokio::task::spawn_blocking(move || run(&mut cmd))
    };
    let (code, stdout, stderr) = backup.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert_eq!(code, 0, "db backup: {stdout}{stderr}");
    assert!(stdout.contains("records"), "{stdout}");
    assert!(
        stdout.contains("the master key (id") && stdout.contains("is not in the backup"),
        "{stdout}"
    );
    assert!(
        written as usize > committed_before.len(),
        "the writer kept writing during the backup ({written} teams)"
    );
    // The download was audited.
    let audit = server
        .get_json("/api/v1/audit?action=backup.download")
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit:#}");
    // Refuses to overwrite.
    let (code, _, stderr) = db(root, &data, &["backup", archive.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    // The backup checks out on its own.
    let (code, stdout, stderr) = db(
        root,
        &data,
        &["check", "--backup", archive.to_str().unwrap()],
    );
    assert_eq!(code, 0, "db check --backup: {stdout}{stderr}");
    assert!(stdout.contains("audit chain of"), "{stdout}");
    server.stop();

    // Restore into an empty data directory elsewhere.
    let other = root.join("restored");
    let (code, stdout, stderr) = db(root, &other, &["restore", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "db restore: {stdout}{stderr}");
    assert!(stdout.contains("need the master key with id"), "{stdout}");
    // Without the master key the check names what is missing.
    let (code, stdout, _) = db(root, &other, &["check"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("master.key does not exist"), "{stdout}");
    std::fs::copy(data.join("master.key"), other.join("master.key")).unwrap();
    let (code, stdout, stderr) = db(root, &other, &["check"]);
    assert_eq!(code, 0, "db check: {stdout}{stderr}");
    assert!(stdout.contains("opens its secrets"), "{stdout}");

    // The restored server holds every team acknowledged before the backup began, the run,
    // its log and its artifact.
    let restored_root = root.join("restored-root");
    std::fs::create_dir_all(&restored_root).unwrap();
    std::fs::rename(&other, restored_root.join("data")).unwrap();
    let token = create_token(&restored_root, ADMIN, "admin");
    let mut server = Server::start(&restored_root, &[]);
    server.token = Some(token);
    let teams: Value = server.get_json("/api/v1/teams").await;
    let names = crate::harness::texts(&teams, "name");
    for name in &committed_before {
        assert!(
            names.contains(&name.as_str()),
            "{name} is missing after restore"
        );
    }
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/build/log")
        .await;
    assert!(log.contains("backup marker 4711"), "{log}");
    let bits = server
        .get(&format!(
            "/api/v1/projects/demo/runs/1/artifacts/{artifact}"
        ))
        .await;
    assert_eq!(bits.status(), 200);
    assert_eq!(bits.text().await.unwrap(), "release bits");
    let secrets = server.get_json("/api/v1/secrets").await;
    assert!(secrets.to_string().contains("DEPLOY_KEY"), "{secrets:#}");
    server.stop();
}

#[tokio::test]
async fn offline_backups_carry_the_key_on_request_and_restore_refuses_to_clobber() {
    let dir = tempdir();
    let root = dir.path();
    add_user(root, ADMIN, ADMIN_PASSWORD, true);
    add_user(root, "dev", "developer password 1", false);
    let developer = create_token(root, "dev", "write");
    let server = Server::start_admin(root, &[]);
    server
        .set_secret("/api/v1/secrets/TOKEN", "sealed value")
        .await;
    // The API download needs an administrator.
    let denied = crate::harness::client()
        .get(format!("{}/api/v1/backup", server.url))
        .bearer_auth(developer)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let anonymous = crate::harness::client()
        .get(format!("{}/api/v1/backup", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // The admin download is an archive named for its time.
    let download = server.get("/api/v1/backup").await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "application/gzip");
    assert!(
        download.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("betcycle-backup-")
    );
    let bytes = download.bytes().await.unwrap();
    let fetched = root.join("fetched.tar.gz");
    std::fs::write(&fetched, &bytes).unwrap();
    let data = root.join("data");
    let (code, stdout, stderr) = db(
        root,
        &data,
        &["check", "--backup", fetched.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    // From another machine: --server takes it through the API, no local data directory.
    let remote = root.join("remote.tar.gz");
    let (code, stdout, stderr) = run(betcycle(root)
        .args(["db", "backup"])
        .arg(&remote)
        .args([
            "--server",
            &server.url,
            "--data-dir",
            "/nonexistent/betcycle",
        ])
        .env("BETCYCLE_TOKEN", server.token.clone().unwrap()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(remote.exists());
    // With the server running, a backup carrying the key is refused.
    let (code, _, stderr) = run(betcycle(root)
        .args([
            "db",
            "backup",
            "x.tar.gz",
            "--include-master-key",
            "--data-dir",
        ])
        .arg(&data)
        .env("BETCYCLE_TOKEN", server.token.clone().unwrap()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("never carry the master key"), "{stderr}");
    // `db check` and `db restore` need the server stopped.
    let (code, _, stderr) = db(root, &data, &["check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("needs the server stopped"), "{stderr}");
    server.stop();

    // Stopped: the CLI writes the archive itself, with the key when asked.
    let archive = root.join("with-key.tar.gz");
    let (code, stdout, stderr) = db(
        root,
        &data,
        &["backup", archive.to_str().unwrap(), "--include-master-key"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("and the master key"), "{stdout}");
    let elsewhere = root.join("elsewhere");
    let (code, stdout, stderr) = db(root, &elsewhere, &["restore", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("opens the restored secrets (the backup carried its key"),
        "{stdout}"
    );
    let (code, stdout, stderr) = db(root, &elsewhere, &["check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("opens its secrets"), "{stdout}");

    // A second restore over it is refused without --force, and moves the old data aside
    // with it.
    let (code, _, stderr) = db(root, &elsewhere, &["restore", archive.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already holds a database"), "{stderr}");
    let (code, stdout, stderr) = db(
        root,
        &elsewhere,
        &["restore", archive.to_str().unwrap(), "--force"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("previous contents are in"), "{stdout}");
    let aside: Vec<_> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("before-restore-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(aside[0].path().join("betcycle.redb").exists());

    // A damaged archive is refused and changes nothing.
    let mut broken = std::fs::read(&archive).unwrap();
    let middle = broken.len() / 2;
    broken[middle] ^= 0xff;
    let damaged = root.join("damaged.tar.gz");
    std::fs::write(&damaged, &broken).unwrap();
    let fresh = root.join("fresh");
    let (code, _, stderr) = db(root, &fresh, &["restore", damaged.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not a usable BetCycle backup"), "{stderr}");
    assert!(!fresh.join("betcycle.redb").exists());
}
