//! `betcycle deploy`, `promote`, `approve`, `rollback` and `canary`: delivery from the command line,
//! through a server's API (token from `BETCYCLE_TOKEN`). With `--wait`, each follows the
//! deployment and exits with its result.

use super::Failure;
use super::project::{Api, block_on};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The server's URL [default: $BETCYCLE_SERVER or http://127.0.0.1:8080].
    #[arg(long)]
    server: Option<String>,
    /// The project's slug.
    #[arg(long)]
    project: String,
    /// Wait until the deployment finishes (or waits for approval); exit 0 if it
    /// succeeded.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct Deploy {
    #[command(flatten)]
    target: Target,
    /// The environment to deploy to.
    #[arg(long)]
    environment: String,
    /// The release number [default: the newest release].
    #[arg(long)]
    release: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct Promote {
    #[command(flatten)]
    target: Target,
    /// The environment whose live release moves on to the next one.
    #[arg(long)]
    from: String,
}

#[derive(Debug, clap::Args)]
pub struct Approve {
    #[command(flatten)]
    target: Target,
    /// The deployment's number.
    deployment: u64,
    #[arg(long, default_value = "")]
    comment: String,
    /// Reject it instead.
    #[arg(long)]
    reject: bool,
}

#[derive(Debug, clap::Args)]
pub struct Rollback {
    #[command(flatten)]
    target: Target,
    /// The environment to roll back.
    #[arg(long)]
    environment: String,
}

#[derive(Debug, clap::Args)]
pub struct Canary {
    #[command(flatten)]
    target: Target,
    /// `promote` sends every request to the canary now; `abort` stops it (the
    /// deployment ends rolled back).
    action: CanaryAction,
    /// The canary deployment's number.
    deployment: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CanaryAction {
    Promote,
    Abort,
}

impl Canary {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let path = format!(
            "/api/v1/projects/{}/deployments/{}/{}",
            self.target.project,
            self.deployment,
            match self.action {
                CanaryAction::Promote => "promote",
                CanaryAction::Abort => "abort",
            }
        );
        self.target.act(env, &path, json!({}))
    }
}

impl Deploy {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let path = format!("/api/v1/projects/{}/deployments", self.target.project);
        let body = json!({"environment": self.environment, "release": self.release});
        self.target.act(env, &path, body)
    }
}

impl Promote {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let path = format!(
            "/api/v1/projects/{}/environments/{}/promote",
            self.target.project, self.from
        );
        self.target.act(env, &path, json!({}))
    }
}

impl Approve {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let path = format!(
            "/api/v1/projects/{}/deployments/{}/{}",
            self.target.project,
            self.deployment,
            if self.reject { "reject" } else { "approve" }
        );
        self.target
            .act(env, &path, json!({"comment": self.comment}))
    }
}

impl Rollback {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let path = format!(
            "/api/v1/projects/{}/environments/{}/rollback",
            self.target.project, self.environment
        );
        self.target.act(env, &path, json!({}))
    }
}

impl Target {
    /// POSTs `body` to `path`, prints the deployment it answers with and, with `--wait`,
    /// follows it.
    fn act(
        self,
        env: BTreeMap<String, String>,
        path: &str,
        body: Value,
    ) -> Result<ExitCode, Failure> {
        let api = Api::new(self.server.clone(), &env)?;
        block_on(async {
            let mut d = api.send(Method::POST, path, Some(body)).await?;
            let number = d["number"].as_u64().unwrap_or_default();
            println!(
                "deployment {}#{number}: release {} to {} — {} ({}/projects/{}/deployments/{number})",
                self.project,
                d["release_number"],
                d["environment"].as_str().unwrap_or_default(),
                d["status"].as_str().unwrap_or_default(),
                api.server(),
                self.project
            );
            if !self.wait {
                return Ok(ExitCode::SUCCESS);
            }
            let url = format!("/api/v1/projects/{}/deployments/{number}", self.project);
            loop {
                let status = d["status"].as_str().unwrap_or_default().to_string();
                if !matches!(
                    status.as_str(),
                    "pending" | "queued" | "deploying" | "verifying"
                ) {
                    println!("{}#{number} {status}", self.project);
                    return match status.as_str() {
                        "succeeded" | "awaiting_approval" => Ok(ExitCode::SUCCESS),
                        _ => Err(Failure::Runtime(format!(
                            "deployment {}#{number} {status}: {}",
                            self.project,
                            d["message"].as_str().unwrap_or_default()
                        ))),
                    };
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                d = api.send(Method::GET, &url, None).await?;
            }
        })
    }
}
