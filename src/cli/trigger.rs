//! `betcycle trigger`: start a run on a server (token from `BETCYCLE_TOKEN`); with
//! `--wait`, follow it and exit with its result.

use super::Failure;
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
    /// Wait for the run to finish; exit 0 if it succeeded, 1 otherwise.
    #[arg(long)]
    wait: bool,
}

impl Trigger {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let token = env.get("BETCYCLE_TOKEN").cloned().ok_or_else(|| {
            Failure::Usage("set BETCYCLE_TOKEN to an API token with the write scope".into())
        })?;
        let server = self
            .server
            .or_else(|| env.get("BETCYCLE_SERVER").cloned())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let server = server.trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            let url = format!("{server}/api/v1/projects/{}/runs", self.project);
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({ "ref": self.git_ref }))
                .send()
                .await
                .map_err(|e| Failure::Runtime(format!("cannot reach {server}: {e}")))?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                let message = body["message"].as_str().unwrap_or("no message");
                return Err(Failure::Runtime(format!(
                    "the server refused ({status}): {message}"
                )));
            }
            let number = body["number"].as_u64().unwrap_or_default();
            let commit = body["commit"].as_str().unwrap_or_default();
            println!(
                "queued {}#{number} at {} ({server}/projects/{}/runs/{number})",
                self.project,
                &commit[..commit.len().min(12)],
                self.project
            );
            if !self.wait {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let run: serde_json::Value = client
                    .get(format!("{url}/{number}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(|e| Failure::Runtime(format!("cannot reach {server}: {e}")))?
                    .json()
                    .await
                    .map_err(|e| Failure::Runtime(format!("unexpected answer: {e}")))?;
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
