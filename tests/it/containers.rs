//! Steps and services in containers, on the machine's real Docker Engine: an image built
//! here `FROM scratch` with Debian's static busybox (no registry can be reached). These
//! tests need the engine and `busybox-static`; without them they fail saying so.

use crate::harness::{Server, betcycle, run, tempdir};
use crate::runs::{demo, trigger, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Command;

/// The test image: busybox's applets in /bin and a marker file no host has.
pub(crate) const IMAGE: &str = "betcycle-test-busybox:1";

/// Builds [`IMAGE`] unless the engine has it; fails clearly without an engine.
pub(crate) fn busybox_image() -> &'static str {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "these tests need a running Docker Engine: `docker info` says {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("these tests need a Docker Engine and its CLI: {e}"),
    }
    let have = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return IMAGE;
    }
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "these tests build an image from Debian's static busybox: apt-get install busybox-static"
    );
    let dir = tempdir();
    std::fs::copy(busybox, dir.path().join("busybox")).unwrap();
    std::fs::write(dir.path().join("marker"), "inside the test image\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN [\"/bin/mkdir\", \"-p\", \"/tmp\", \"/etc\"]\nCOPY marker /etc/betcycle-image\n",
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build of the test image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    IMAGE
}

/// [`IMAGE`] with an entrypoint that fails: a step's `run` must replace it.
pub(crate) fn entrypoint_image() -> &'static str {
    const TOOL: &str = "betcycle-test-entrypoint:1";
    let base = busybox_image();
    let have = Command::new("docker")
        .args(["image", "inspect", TOOL])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let dir = tempdir();
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {base}\nENTRYPOINT [\"/bin/false\"]\n"),
        )
        .unwrap();
        let out = Command::new("docker")
            .args(["build", "-q", "-t", TOOL])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    TOOL
}

/// The label BetCycle puts on what `server` creates on the engine (it says so at start).
fn owner_filter(server: &Server) -> String {
    let owner = server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "container engine")
        .and_then(|v| v["fields"]["owner"].as_str().map(str::to_string))
        .expect("the server names its container owner label at start");
    format!("label=io.betcycle.owner={owner}")
}

/// The containers and networks the engine still holds with `filter`'s label.
fn left_behind(filter: &str) -> Vec<String> {
    let mut left = Vec::new();
    for args in [
        vec!["ps", "-a", "-q", "--filter", filter],
        vec!["network", "ls", "-q", "--filter", filter],
    ] {
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(out.status.success(), "docker {args:?} failed");
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    left
}

async fn step_log(server: &Server, run: u64, step: &str) -> String {
    server
        .get_text(&format!(
            "/api/v1/projects/demo/runs/{run}/steps/{step}/log"
        ))
        .await
}

#[tokio::test]
async fn container_steps_see_their_image_share_the_workspace_and_reach_services_by_name() {
    let image = busybox_image();
    let tool = entrypoint_image();
    let dir = tempdir();
    let pipeline = format!(
        r#"image: {image}
services:
  - name: web
    image: {image}
    run: mkdir -p /srv && echo hello-from-web > /srv/index.html && exec httpd -f -p 8080 -h /srv
    ready: wget -qO- http://127.0.0.1:8080/
steps:
  - name: look
    run: cat /etc/betcycle-image && test ! -e /usr/bin/git && echo "made by look" > shared.txt && echo "token $TOKEN" && echo "home=$HOME"
    secrets: [TOKEN]
  - name: shared
    run: cat shared.txt && wget -qO- http://web:8080/
    depends_on: [look]
    memory: 64 MiB
    cpus: 0.5
  - name: tool
    image: {tool}
    run: echo the script ran, not the entrypoint
  - name: three
    run: echo failing && exit 3
    allow_failure: true
  - name: slow
    run: sleep 30
    timeout: 3s
  - name: on-host
    image: ""
    run: "true"
"#
    );
    // An empty image is a mistake the parser names; take that step out once seen.
    let (code, _, stderr) = {
        let repo = dir.path().join("check");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join(".betcycle.yml"), &pipeline).unwrap();
        run(betcycle(dir.path())
            .arg("validate")
            .arg(repo.join(".betcycle.yml")))
    };
    assert_ne!(code, 0);
    assert!(
        stderr.contains("steps[5].image") && stderr.contains("invalid image"),
        "{stderr}"
    );
    let pipeline = pipeline.replace(
        "  - name: on-host\n    image: \"\"\n    run: \"true\"\n",
        "",
    );

    let (server, _) = demo(dir.path(), &pipeline, &[]).await;
    let (status, _) = server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/secrets/TOKEN",
            json!({"value": "s3cr3t-value-42"}),
        )
        .await;
    assert_eq!(status, 201);
    trigger(&server, "demo").await;
    // While a step runs its container carries the server's label.
    container_running(&owner_filter(&server)).await;
    let run = wait_for(&server, "demo", 1, |r| {
        r["status"] != "queued" && r["status"] != "running"
    })
    .await;
    // Only the step that timed out failed the run.
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["steps"][0]["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][1]["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][2]["status"], "succeeded", "{run:#}");
    // A container's exit code is the step's.
    assert_eq!(run["steps"][3]["status"], "failed_allowed", "{run:#}");
    assert_eq!(run["steps"][3]["exit_code"], 3, "{run:#}");

    // The image's files, not the host's; its own HOME, not BetCycle's.
    let look = step_log(&server, 1, "look").await;
    assert!(look.contains("inside the test image"), "{look}");
    assert!(look.contains("token ***"), "the secret is masked: {look}");
    assert!(!look.contains("s3cr3t-value-42"), "{look}");
    assert!(
        !look.contains(&format!("home={}", std::env::var("HOME").unwrap())),
        "{look}"
    );
    // The workspace is shared; the service answers by its name.
    let shared = step_log(&server, 1, "shared").await;
    assert!(shared.contains("made by look"), "{shared}");
    assert!(shared.contains("hello-from-web"), "{shared}");
    // A `run` replaces the image's entrypoint.
    let tool_log = step_log(&server, 1, "tool").await;
    assert!(
        tool_log.contains("the script ran, not the entrypoint"),
        "{tool_log}"
    );
    // The timed-out step was stopped and its container removed.
    let slow = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "slow")
        .unwrap();
    assert_eq!(slow["status"], "timed_out", "{slow:#}");

    // Nothing is left on the engine: no container (so no secret for `docker inspect`
    // to show), no network.
    let left = left_behind(&owner_filter(&server));
    for id in &left {
        let out = Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("s3cr3t-value-42"), "a secret left in {text}");
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_missing_image_and_an_engine_that_is_down_fail_the_step_with_the_reason_unless_it_may_fall_back()
 {
    let image = busybox_image();
    let dir = tempdir();
    let pipeline = format!(
        "steps:\n  - {{ name: missing, image: \"betcycle-test-no-such-image:0\", run: \"true\" }}\n  - {{ name: fine, image: {image}, run: \"echo ran\" }}\n"
    );
    let (server, _) = demo(dir.path(), &pipeline, &[]).await;
    trigger(&server, "demo").await;
    let run: Value = wait_for(&server, "demo", 1, |r| r["status"] == "failed").await;
    let missing = &run["steps"][0];
    assert_eq!(missing["status"], "failed", "{run:#}");
    let reason = missing["reason"].as_str().unwrap();
    assert!(
        reason.contains("betcycle-test-no-such-image:0") && reason.contains("cannot be pulled"),
        "{reason}"
    );
    assert_eq!(run["steps"][1]["status"], "succeeded", "{run:#}");
    drop(server);

    // The engine's socket names nothing: a clear message, the server keeps serving.
    let dir = tempdir();
    let socket = dir.path().join("no-engine.sock");
    let (server, _) = demo(
        dir.path(),
        &pipeline,
        &["--container-socket", socket.to_str().unwrap()],
    )
    .await;
    trigger(&server, "demo").await;
    let run: Value = wait_for(&server, "demo", 1, |r| r["status"] == "failed").await;
    let reason = run["steps"][1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot reach the container engine")
            && reason.contains(socket.to_str().unwrap()),
        "{reason}"
    );
    assert_eq!(server.get("/healthz").await.status(), 200);
    drop(server);

    // An administrator lets image steps fall back to the host: they run, and say so.
    let dir = tempdir();
    let (server, _) = demo(
        dir.path(),
        &pipeline,
        &[
            "--container-socket",
            socket.to_str().unwrap(),
            "--container-fallback",
            "local",
        ],
    )
    .await;
    trigger(&server, "demo").await;
    let run: Value = wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    assert_eq!(run["steps"][1]["status"], "succeeded", "{run:#}");
    let log = server
        .get_text("/api/v1/projects/demo/runs/1/steps/1/log")
        .await;
    assert!(
        log.contains("warning: cannot reach the container engine")
            && log.contains("container.fallback is local, so the step runs on this host")
            && log.contains(" o ran"),
        "{log}"
    );
}

/// Cancels run `n` and waits until it is cancelled.
async fn cancel(server: &Server, n: u64) {
    let response = server
        .call(
            Method::POST,
            &format!("/api/v1/projects/demo/runs/{n}/cancel"),
            &json!({}),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    wait_for(server, "demo", n, |r| r["status"] == "cancelled").await;
}

/// Waits until the engine runs a container with `filter`'s label.
async fn container_running(filter: &str) {
    crate::harness::eventually(
        std::time::Duration::from_secs(20),
        "the step's container never showed",
        || async {
            let out = Command::new("docker")
                .args(["ps", "-q", "--filter", filter])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                Err("no container yet".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_cancelled_run_and_a_killed_server_leave_no_container_behind() {
    let image = busybox_image();
    let dir = tempdir();
    let pipeline = format!(
        "steps:\n  - {{ name: wait, image: {image}, run: \"echo started && sleep 60\" }}\n"
    );
    let (server, _) = demo(dir.path(), &pipeline, &[]).await;
    let filter = owner_filter(&server);

    // Cancel: the container goes with the step.
    trigger(&server, "demo").await;
    container_running(&filter).await;
    cancel(&server, 1).await;
    assert!(
        left_behind(&filter).is_empty(),
        "{:?}",
        left_behind(&filter)
    );

    // kill -9 of BetCycle mid-step: the next start sweeps what it left (and the run,
    // re-queued, starts again in a new container).
    trigger(&server, "demo").await;
    container_running(&filter).await;
    let before = left_behind(&filter);
    server.kill();
    let still = |id: &String| {
        Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        before.iter().any(still),
        "the container outlived the server"
    );
    let server = Server::start_admin(dir.path(), &[]);
    assert_eq!(owner_filter(&server), filter, "the owner label is stable");
    crate::harness::eventually(
        std::time::Duration::from_secs(20),
        "the restarted server did not sweep",
        || async {
            let left: Vec<&String> = before.iter().filter(|id| still(id)).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    wait_for(&server, "demo", 2, |r| r["steps"][0]["running"] == true).await;
    cancel(&server, 2).await;
    assert!(
        left_behind(&filter).is_empty(),
        "{:?}",
        left_behind(&filter)
    );
    server.kill();
}

#[tokio::test]
async fn betcycle_run_runs_image_steps_in_containers_too() {
    let image = busybox_image();
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    crate::run::git_repo(
        &repo,
        &format!(
            "steps:\n  - {{ name: inside, image: {image}, run: \"cat /etc/betcycle-image && echo out > made.txt\" }}\n  - {{ name: outside, run: \"cat made.txt\", depends_on: [inside] }}\n"
        ),
    );
    let (code, stdout, stderr) = run(betcycle(dir.path()).arg("run").arg("--dir").arg(&repo));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[inside] inside the test image"),
        "{stdout}"
    );
    assert!(stdout.contains("[outside] out"), "{stdout}");
}

#[tokio::test]
async fn host_volumes_and_privileged_mode_wait_for_an_administrator() {
    let image = busybox_image();
    let dir = tempdir();
    let host = dir.path().join("host-files");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("note.txt"), "from the host\n").unwrap();
    let pipeline = format!(
        "steps:\n  - {{ name: mounted, image: {image}, run: \"cat /mnt/host/note.txt\", volumes: [\"{}:/mnt/host:ro\"] }}\n",
        host.display()
    );
    let (server, _) = demo(dir.path(), &pipeline, &[]).await;
    trigger(&server, "demo").await;
    let run: Value = wait_for(&server, "demo", 1, |r| r["status"] == "failed").await;
    let reason = run["steps"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("host volumes are off for this project")
            && reason.contains("/api/v1/projects/<slug>/containers"),
        "{reason}"
    );

    let (status, project) = server
        .send_json(
            Method::PUT,
            "/api/v1/projects/demo/containers",
            json!({"host_access": true}),
        )
        .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["container_host_access"], true);
    trigger(&server, "demo").await;
    let run: Value = wait_for(&server, "demo", 2, |r| {
        r["status"] != "queued" && r["status"] != "running"
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let log = step_log(&server, 2, "mounted").await;
    assert!(log.contains("from the host"), "{log}");
    let audit = server.get_text("/api/v1/audit").await;
    assert!(audit.contains("project.containers"), "{audit}");
}
