//! Remote agents: `betcycle agent` processes (on this host, and in containers on a
//! private Docker network) take the steps their labels and capacity allow, send their
//! output and files back, lose their jobs to another agent when they go quiet, and are
//! refused once revoked.

use crate::harness::{Server, betcycle, eventually, message_of, tempdir};
use crate::run::git_repo;
use crate::runs::{project, trigger, wait_for};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Creates agent `name` through the API; returns its token.
pub(crate) async fn create_agent(server: &Server, name: &str) -> String {
    let (status, created) = server
        .send_json(Method::POST, "/api/v1/agents", json!({ "name": name }))
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("bca_"), "{token}");
    token
}

/// A `betcycle agent` on this host, its logs in `dir/<name>.log`.
fn host_agent(dir: &Path, server: &Server, token: &str, name: &str, labels: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    betcycle(dir)
        .args(["agent", "--server", &server.url, "--labels", labels])
        .arg("--work-dir")
        .arg(dir.join(format!("work-{name}")))
        .env("BETCYCLE_AGENT_TOKEN", token)
        .env("BETCYCLE_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn betcycle agent")
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run:#}"))
}

async fn log_of(server: &Server, number: u64, step: usize) -> String {
    server
        .get_text(&format!(
            "/api/v1/projects/demo/runs/{number}/steps/{step}/log"
        ))
        .await
}

async fn agents(server: &Server) -> Vec<Value> {
    let (status, list) = server
        .send_json(Method::GET, "/api/v1/agents", json!(null))
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array().unwrap().clone()
}

#[tokio::test]
async fn steps_run_on_the_agents_their_labels_choose_and_what_they_change_comes_back() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("gone.txt"), "deleted by the build\n").unwrap();
    std::fs::write(repo.join("input.txt"), "from the repository\n").unwrap();
    git_repo(
        &repo,
        r#"steps:
  - name: build
    runs_on: [linux]
    run: |
      echo "build on $BETCYCLE_AGENT: $(cat input.txt)"
      mkdir -p out && echo "made on $BETCYCLE_AGENT" > out/built.txt
      rm gone.txt
    artifacts: [out/built.txt]
  - name: gpu
    runs_on: [linux, gpu]
    run: echo "gpu on $BETCYCLE_AGENT"
  - name: check
    depends_on: [build, gpu]
    run: cat out/built.txt && test ! -e gone.txt
"#,
    );
    let server = Server::start_admin(dir.path(), &[]);
    project(&server, "demo", &repo).await;
    let (plain, big) = (
        create_agent(&server, "plain").await,
        create_agent(&server, "big").await,
    );
    // A run queued before any agent is connected waits for one.
    trigger(&server, "demo").await;
    let mut agents_running = vec![
        host_agent(dir.path(), &server, &plain, "plain", "linux"),
        host_agent(dir.path(), &server, &big, "big", "linux,gpu"),
    ];
    let run = wait_for(&server, "demo", 1, |r| {
        r["status"] == "succeeded" || r["status"] == "failed"
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let build = log_of(&server, 1, 0).await;
    let gpu = log_of(&server, 1, 1).await;
    let check = log_of(&server, 1, 2).await;
    assert!(
        build.contains("waiting for an agent with labels [linux]"),
        "{build}"
    );
    assert!(build.contains("from the repository"), "{build}");
    assert!(
        gpu.contains("gpu on big") && gpu.contains("running on agent big"),
        "only big has the gpu label: {gpu}"
    );
    // What the agent made and deleted is so in the server's workspace.
    assert!(check.contains("made on "), "{check}");
    assert_eq!(
        step(&run, "build")["artifacts"][0]["path"],
        "out/built.txt",
        "{run:#}"
    );

    let listed = agents(&server).await;
    let big_view = listed.iter().find(|a| a["name"] == "big").unwrap();
    assert_eq!(big_view["connected"], true, "{big_view}");
    assert_eq!(big_view["labels"], json!(["linux", "gpu"]));
    assert_eq!(big_view["capacity"], 1);
    assert!(big_view.get("token_digest").is_none(), "{big_view}");

    // Bad input: a made-up token, a report for a job the agent does not hold.
    let client = crate::harness::client();
    let made_up = client
        .post(format!("{}/api/v1/agent/poll", server.url))
        .bearer_auth(format!("bca_{}", "0".repeat(64)))
        .json(&json!({"labels": [], "capacity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), 401);
    assert_eq!(message_of(made_up).await, "unknown agent token");
    let stray = client
        .post(format!("{}/api/v1/agent/jobs/1/done", server.url))
        .bearer_auth(&plain)
        .json(&json!({"exit": {"code": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), 409);
    let message = message_of(stray).await;
    assert!(
        message.contains("job 1 is not held by agent \"plain\""),
        "{message}"
    );

    // A revoked agent is refused, says why, and stops.
    let (status, _) = server
        .send_json(Method::DELETE, "/api/v1/agents/big", json!(null))
        .await;
    assert_eq!(status, 204);
    let exit = wait_exit(&mut agents_running[1], Duration::from_secs(40));
    assert_eq!(exit.code(), Some(1));
    let said = std::fs::read_to_string(dir.path().join("big.log")).unwrap();
    assert!(
        said.contains("the token of agent \\\"big\\\" was revoked")
            || said.contains("the token of agent \"big\" was revoked"),
        "{said}"
    );
    for mut agent in agents_running {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
