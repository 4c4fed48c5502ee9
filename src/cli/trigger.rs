//! `betcycle trigger`: start a run on a server (token from `BETCYCLE_TOKEN`); with
//! `--wait`, follow it and exit with its result.

use super::Failure;
use super::project::{Api, block_on};
use reqwest::Method;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Trigger {
    /// The server's URL [default: $BETCYCLE_SERVER or http://127.0.0.1:8080].
    #[arg(long)]
    server: Option<String>,
    /// The project's slug.
    #[arg(long)]
    project: String,
    /// Branch, tag or commit [default: the project's default branch].
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// An exact commit to run (40 hex digits); with --ref, the branch it belongs to.
    #[arg(long)]
    commit: Option<String>,
    /// An environment override for the run, NAME=value (repeatable); it wins over the
    /// pipeline file's env.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Wait for the run to finish; exit 0 if it succeeded, 1 otherwise.
    #[arg(long)]
    wait: bool,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("\"{text}\" is not NAME=value"))
}

impl Trigger {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let api = Api::new(self.server.clone(), &env)?;
        block_on(async {
            let runs = format!("/api/v1/projects/{}/runs", self.project);
            let run = api
                .send(
                    Method::POST,
                    &runs,
                    Some(serde_json::json!({
                        "ref": self.git_ref,
                        "commit": self.commit,
                        "env": self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
                    })),
                )
                .await?;
            let number = run["number"].as_u64().unwrap_or_default();
            let commit = run["commit"].as_str().unwrap_or_default();
            println!(
                "queued {}#{number} at {} ({}/projects/{}/runs/{number})",
                self.project,
                &commit[..commit.len().min(12)],
                api.server(),
                self.project
            );
            if !self.wait {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let run = api
                    .send(Method::GET, &format!("{runs}/{number}"), None)
                    .await?;
                let status = run["status"].as_str().unwrap_or_default();
                if !matches!(status, "queued" | "running") {
                    println!("{}#{number} {status}", self.project);
                    return if status == "succeeded" {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        Err(Failure::Runtime(format!(
                            "run {}#{number} {status}",
                            self.project
                        )))
                    };
                }
            }
        })
    }
}
