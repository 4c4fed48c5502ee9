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
    secrets: [API_TOKEN]
    run: |
      echo "build on $BETCYCLE_AGENT: $(cat input.txt)"
      echo "token=$API_TOKEN"
      mkdir -p out && echo "made on $BETCYCLE_AGENT" > out/built.txt
      printf '<testsuite name="s" tests="1"><testcase classname="s" name="t"/></testsuite>' > out/junit.xml
      rm gone.txt
    artifacts: [out/built.txt]
    reports: { junit: out/junit.xml }
  - name: gpu
    runs_on: [linux, gpu]
    run: echo "gpu on $BETCYCLE_AGENT, token=[$API_TOKEN]"
  - name: check
    depends_on: [build, gpu]
    run: cat out/built.txt && test ! -e gone.txt
"#,
    );
    let server = Server::start_admin(dir.path(), &[]);
    project(&server, "demo", &repo).await;
    server
        .set_secret(
            "/api/v1/projects/demo/secrets/API_TOKEN",
            "s3cret-for-the-build",
        )
        .await;
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
    // The secret reached the step that lists it, and came back masked.
    assert!(build.contains("token=***"), "{build}");
    assert!(!build.contains("s3cret"), "{build}");
    assert!(
        gpu.contains("token=[]"),
        "only listed steps get secrets: {gpu}"
    );
    assert_eq!(step(&run, "build")["tests"]["passed"], 1, "{run:#}");
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

    let page = server.get_text("/settings/agents").await;
    assert!(
        page.contains("big") && page.contains("linux, gpu") && page.contains("connected"),
        "{page}"
    );

    // Paused agents take no new job: the next run waits until one is resumed.
    for name in ["plain", "big"] {
        set_state(&server, name, "paused").await;
    }
    trigger(&server, "demo").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = wait_for(&server, "demo", 2, |r| r["status"] == "running").await;
    assert!(step(&waiting, "build")["status"].is_null(), "{waiting:#}");
    let build = log_of(&server, 2, 0).await;
    assert!(
        build.contains("waiting for an agent") && !build.contains("running on agent"),
        "{build}"
    );
    let page = server.get_text("/settings/agents").await;
    assert!(
        page.contains("wait for an agent") && page.contains("paused"),
        "{page}"
    );
    let metrics = server.get_text("/metrics").await;
    for line in [
        "betcycle_agents_connected 2.0",
        "betcycle_agent_jobs_queued 2.0",
        "betcycle_agent_jobs_running 0.0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    for name in ["plain", "big"] {
        set_state(&server, name, "active").await;
    }
    let second = wait_for(&server, "demo", 2, |r| {
        r["status"] == "succeeded" || r["status"] == "failed"
    })
    .await;
    assert_eq!(second["status"], "succeeded", "{second:#}");

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
    // A drained agent finishes its work and exits 0.
    set_state(&server, "plain", "draining").await;
    let exit = wait_exit(&mut agents_running[0], Duration::from_secs(40));
    assert_eq!(exit.code(), Some(0));
    let (status, answer) = server
        .send_json(
            Method::PUT,
            "/api/v1/agents/plain",
            json!({ "state": "asleep" }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["message"],
        "state \"asleep\": use active, paused or draining"
    );
    for mut agent in agents_running {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}

async fn set_state(server: &Server, name: &str, state: &str) {
    let (status, answer) = server
        .send_json(
            Method::PUT,
            &format!("/api/v1/agents/{name}"),
            json!({ "state": state }),
        )
        .await;
    assert_eq!(status, 204, "{answer}");
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

/// A private Docker network and the agent containers on it, removed when dropped.
struct Fleet {
    network: String,
    containers: Vec<String>,
}

impl Fleet {
    fn new() -> Fleet {
        crate::containers::busybox_image();
        let network = format!("betcycle-test-agents-{}", std::process::id());
        let _ = docker(&["network", "rm", &network]);
        docker(&["network", "create", "--driver", "bridge", &network]).unwrap();
        Fleet {
            network,
            containers: Vec::new(),
        }
    }

    /// The host's address on the network: where its containers reach the server.
    fn gateway(&self) -> String {
        docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &self.network,
        ])
        .unwrap()
    }

    /// Starts `betcycle agent` (this build, the host's C library mounted) in a busybox
    /// container on the network.
    fn agent(&mut self, name: &str, server: &str, token: &str, labels: &str) -> String {
        let container = format!("{}-{name}", self.network);
        let _ = docker(&["rm", "-f", &container]);
        let bin = format!("{}:/betcycle:ro", crate::harness::BIN);
        let token = format!("BETCYCLE_AGENT_TOKEN={token}");
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &self.network,
            "-v",
            &bin,
            "-v",
            "/lib64:/lib64:ro",
            "-v",
            "/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro",
            "-e",
            &token,
            crate::containers::IMAGE,
            "/betcycle",
            "agent",
            "--server",
            server,
            "--labels",
            labels,
            "--work-dir",
            "/work",
        ])
        .unwrap();
        self.containers.push(container.clone());
        container
    }

    fn logs(&self) -> String {
        self.containers
            .iter()
            .map(|c| {
                let out = Command::new("docker").args(["logs", c]).output().unwrap();
                format!(
                    "--- {c}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test]
async fn agents_in_containers_share_the_work_and_a_lost_agents_step_finishes_on_the_other() {
    let mut fleet = Fleet::new();
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git_repo(
        &repo,
        r#"steps:
  - name: on-a
    runs_on: [a]
    run: echo "ran on $BETCYCLE_AGENT."
  - name: on-b
    runs_on: [b]
    run: echo "ran on $BETCYCLE_AGENT."
  - name: either-1
    runs_on: [shared]
    run: sleep 2; echo "ran on $BETCYCLE_AGENT."
  - name: either-2
    runs_on: [shared]
    run: sleep 2; echo "ran on $BETCYCLE_AGENT."
  - name: long
    runs_on: [shared]
    depends_on: [on-a, on-b, either-1, either-2]
    run: |
      echo "started on $BETCYCLE_AGENT"
      sleep 6
      echo "finished on $BETCYCLE_AGENT" > finished.txt
      cat finished.txt
  - name: after
    depends_on: [long]
    run: cat finished.txt
"#,
    );
    let gateway = fleet.gateway();
    let listen = format!("{gateway}:0");
    let server = Server::start_admin(dir.path(), &["--listen", &listen, "--agent-lease", "4s"]);
    project(&server, "demo", &repo).await;
    let (a, b) = (
        create_agent(&server, "a").await,
        create_agent(&server, "b").await,
    );
    let container_a = fleet.agent("a", &server.url, &a, "a,shared");
    let container_b = fleet.agent("b", &server.url, &b, "b,shared");
    eventually(Duration::from_secs(30), "both agents connected", || async {
        let listed = agents(&server).await;
        if listed.iter().all(|a| a["connected"] == true) {
            Ok(())
        } else {
            Err(format!("{listed:#?}\n{}", fleet.logs()))
        }
    })
    .await;
    trigger(&server, "demo").await;

    // `long` starts on one agent; that agent is cut off the network mid-step.
    let started = eventually(Duration::from_secs(60), "long started", || async {
        let log = log_of(&server, 1, 4).await;
        match ["a", "b"]
            .into_iter()
            .find(|n| log.contains(&format!("started on {n}")))
        {
            Some(n) => Ok(n),
            None => Err(format!("{log}\n{}", fleet.logs())),
        }
    })
    .await;
    let (lost, other, lost_container) = if started == "a" {
        ("a", "b", &container_a)
    } else {
        ("b", "a", &container_b)
    };
    docker(&[
        "network",
        "disconnect",
        "-f",
        &fleet.network,
        lost_container,
    ])
    .unwrap();

    // While the lease runs, the step is the lost agent's; once it is out, never again.
    eventually(
        Duration::from_secs(20),
        "the job left the lost agent",
        || async {
            let listed = agents(&server).await;
            let view = listed.iter().find(|v| v["name"] == lost).unwrap();
            if view["jobs"] == json!([]) && view["connected"] == false {
                Ok(())
            } else {
                Err(format!("{view:#}"))
            }
        },
    )
    .await;
    let run = wait_for(&server, "demo", 1, |r| {
        r["status"] == "succeeded" || r["status"] == "failed"
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", fleet.logs());
    let logs: Vec<String> =
        futures_util::future::join_all((0..6).map(|i| log_of(&server, 1, i))).await;
    assert!(logs[0].contains("ran on a."), "{}", logs[0]);
    assert!(logs[1].contains("ran on b."), "{}", logs[1]);
    // Capacity 1 each: the two `shared` steps ran side by side, one on each agent.
    let either: Vec<&str> = [&logs[2], &logs[3]]
        .iter()
        .map(|l| if l.contains("ran on a.") { "a" } else { "b" })
        .collect();
    assert_ne!(either[0], either[1], "{logs:#?}");
    let long = &logs[4];
    assert!(
        long.contains(&format!(
            "lost agent {lost} (no word from it within its lease); the step is queued again"
        )),
        "{long}"
    );
    assert!(
        long.contains(&format!("running on agent {other}")),
        "{long}"
    );
    assert!(long.contains(&format!("finished on {other}")), "{long}");
    assert!(
        !long.contains(&format!("finished on {lost}")),
        "the lost agent's output after the cut never counted: {long}"
    );
    assert!(
        logs[5].contains(&format!("finished on {other}")),
        "{}",
        logs[5]
    );
    let listed = agents(&server).await;
    let view = listed.iter().find(|v| v["name"] == lost).unwrap();
    assert_eq!(view["jobs"], json!([]), "{view:#}");
}
