//! `betcycle agent`: run steps for a server on this machine (see `agents::agent`).

use super::Failure;
use crate::agents::agent::{self, Options};
use crate::core::config::{LogConfig, LogFormat};
use crate::exec::local::sandbox::Isolation;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Agent {
    /// The server's URL.
    #[arg(long, env = "BETCYCLE_SERVER", value_name = "URL")]
    server: String,
    /// The agent's token, from `POST /api/v1/agents` or the console's Agents page.
    #[arg(
        long,
        env = "BETCYCLE_AGENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// Labels steps choose this agent by (`runs_on:`), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LABELS")]
    labels: Vec<String>,
    /// How many steps it runs at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    capacity: u32,
    /// Where jobs' workspaces go.
    #[arg(long, default_value = "./betcycle-agent", value_name = "DIR")]
    work_dir: PathBuf,
    /// How far steps are confined: standard (not the work directory's other jobs),
    /// strict (only system directories, the workspace and a temp directory) or off.
    #[arg(long, default_value = "standard", value_parser = Isolation::parse)]
    isolation: Isolation,
    /// Log level (tracing filter syntax).
    #[arg(long, env = "BETCYCLE_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

impl Agent {
    pub fn run(self, _env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        crate::core::outbound::check_http_url(&self.server)
            .map_err(|e| Failure::Usage(format!("--server {}: {e}", self.server)))?;
        if !self.token.starts_with(crate::agents::TOKEN_PREFIX) {
            return Err(Failure::Usage(
                "--token: an agent token starts with bca_ (an administrator creates one)".into(),
            ));
        }
        if self.capacity == 0 {
            return Err(Failure::Usage("--capacity must be at least 1".into()));
        }
        for label in &self.labels {
            crate::agents::check_label(label)
                .map_err(|e| Failure::Usage(format!("--labels {e}")))?;
        }
        let _logs = crate::core::logging::init(&LogConfig {
            level: self.log_level.clone(),
            format: LogFormat::Auto,
            dir: self.work_dir.join("logs"),
            max_files: 0,
            step_max_size: 0,
            otlp_endpoint: None,
        })
        .map_err(Failure::Runtime)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
        let options = Options {
            server: self.server,
            token: self.token,
            labels: self.labels,
            capacity: self.capacity,
            work_dir: std::path::absolute(&self.work_dir).unwrap_or(self.work_dir),
            isolation: self.isolation,
        };
        runtime.block_on(async move {
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("a SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("stopping: running jobs are killed and go to another agent");
                on_signal.cancel();
            });
            agent::run(options, stop).await.map_err(Failure::Runtime)
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
