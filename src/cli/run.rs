//! `betcycle run`: run a repository's pipeline locally, with the same executor and report
//! parsing as the server, printing output live; the exit code is the result (0 passed,
//! 1 failed). The working copy itself is the workspace.

use super::Failure;
use crate::ci::pipeline::Trigger;
use crate::exec::local::process::{PASSTHROUGH_ENV, Stream};
use crate::exec::{self, Observer, RunSpec, StepResult, StepStatus};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Run {
    /// The repository to run in (its working copy is the workspace).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The pipeline file, relative to --dir.
    #[arg(long, default_value = ".betcycle.yml")]
    file: PathBuf,
    /// Run only this step (a matrix step's name runs all its combinations).
    #[arg(long)]
    step: Option<String>,
    /// The branch `when` filters see [default: the checked-out branch].
    #[arg(long)]
    branch: Option<String>,
    /// The event `when` filters see.
    #[arg(long, default_value = "push")]
    event: String,
    /// How many steps may run at once [default: the number of cores].
    #[arg(long)]
    jobs: Option<usize>,
    /// Also write the results (statuses, timings, tests, coverage, artifacts) as JSON.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The container engine's socket for steps with an `image` [default: `DOCKER_HOST`
    /// when it is a unix:// socket, else /var/run/docker.sock].
    #[arg(long, value_name = "PATH")]
    container_socket: Option<String>,
}

/// Prints step output as `[step] line` and a line per step start and end.
struct Terminal;

impl Observer for Terminal {
    fn step_started(&self, step: &str) {
        println!("▶ {step}");
    }

    fn lines(&self, step: &str, _stream: Stream, lines: &[&str]) {
        let mut out = std::io::stdout().lock();
        for text in lines {
            let _ = writeln!(out, "[{step}] {text}");
        }
    }

    fn step_finished(&self, r: &StepResult) {
        let took = match (r.started_at, r.finished_at) {
            (Some(a), Some(b)) => format!(
                " in {:.1} s",
                (b.as_millisecond() - a.as_millisecond()) as f64 / 1000.0
            ),
            _ => String::new(),
        };
        let mark = match r.status {
            StepStatus::Succeeded => "✓",
            StepStatus::Skipped => "-",
            StepStatus::FailedAllowed => "!",
            _ => "✗",
        };
        let reason = if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        };
        println!("{mark} {} {}{took}{reason}", r.name, r.status.label());
        for w in &r.warnings {
            println!("  warning: {w}");
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Run {
    /// The pipeline file, parsed; `--step` must name one of its steps.
    fn pipeline(&self, dir: &std::path::Path) -> Result<crate::ci::pipeline::Pipeline, Failure> {
        let file = dir.join(&self.file);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", file.display())))?;
        let pipeline = crate::ci::pipeline::parse(&self.file.display().to_string(), &text)
            .map_err(|problems| {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                Failure::Runtime(format!(
                    "the pipeline file has problems:\n{}",
                    lines.join("\n")
                ))
            })?;
        if let Some(only) = &self.step
            && !pipeline
                .steps
                .iter()
                .any(|s| s.name == *only || s.name.starts_with(&format!("{only} (")))
        {
            let names: Vec<&str> = pipeline.steps.iter().map(|s| s.name.as_str()).collect();
            return Err(Failure::Usage(format!(
                "no step \"{only}\"; steps are {}",
                names.join(", ")
            )));
        }

        Ok(pipeline)
    }

    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let dir = std::path::absolute(&self.dir)
            .map_err(|e| Failure::Usage(format!("invalid --dir {}: {e}", self.dir.display())))?;
        let pipeline = self.pipeline(&dir)?;

        let self_report = self.report.clone();
        let branch = self
            .branch
            .clone()
            .or_else(|| git(&dir, &["rev-parse", "--abbrev-ref", "HEAD"]));
        let context = context(&dir, branch.as_deref(), &self.event);
        let env_for_socket = env.clone();
        let workspace_for_cache = dir.clone();
        let passthrough = env
            .iter()
            .filter(|(k, _)| PASSTHROUGH_ENV.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec = RunSpec {
            pipeline,
            workspace: dir,
            trigger: Trigger {
                branch,
                event: self.event,
                changed_paths: None,
            },
            context,
            passthrough,
            parallelism: self
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            only: self.step,
            reuse: BTreeMap::new(),
            secrets: std::sync::Arc::new(crate::exec::EnvSecrets(env)),
            // The developer's own machine and repository: nothing to hide.
            executor: crate::exec::local::Local::unconfined(),
            containers: Some(std::sync::Arc::new(
                crate::exec::container::RunContainers::new(
                    crate::exec::container::Engine::new(
                        crate::exec::container::socket_of(
                            self.container_socket.as_deref(),
                            &env_for_socket,
                        ),
                        format!("betcycle-run-{}", std::process::id()),
                    ),
                    "local",
                    // A developer's own machine: their own call.
                    true,
                ),
            )),
            // This machine's own cache directory, one namespace per repository.
            cache: local_cache(&env_for_socket, &workspace_for_cache),
            agents: None,
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
        let results = runtime.block_on(async {
            let cancel = CancellationToken::new();
            let on_interrupt = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_interrupt.cancel();
                }
            });
            exec::run(spec, Arc::new(Terminal), cancel).await
        });
        summary(&results);
        if let Some(path) = &self_report {
            let json = serde_json::to_vec_pretty(&results).expect("results serialise");
            std::fs::write(path, json)
                .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))?;
        }
        if results.iter().any(|r| r.status.fails_run()) {
            Err(Failure::Runtime("the run failed".into()))
        } else {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `BETCYCLE_*` variables of a local run.
fn context(dir: &std::path::Path, branch: Option<&str>, event: &str) -> BTreeMap<String, String> {
    let commit = git(dir, &["rev-parse", "HEAD"]).unwrap_or_default();
    let project = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    BTreeMap::from([
        ("BETCYCLE_RUN_ID".to_string(), "local".to_string()),
        ("BETCYCLE_PROJECT".to_string(), project),
        ("BETCYCLE_COMMIT".to_string(), commit),
        (
            "BETCYCLE_BRANCH".to_string(),
            branch.unwrap_or_default().to_string(),
        ),
        ("BETCYCLE_EVENT".to_string(), event.to_string()),
        ("BETCYCLE_WORKSPACE".to_string(), dir.display().to_string()),
    ])
}

fn summary(results: &[StepResult]) {
    println!();
    println!("{:<40} {:<17} {:>9}", "STEP", "STATUS", "TIME");
    for r in results {
        let took = match (r.started_at, r.finished_at) {
            (Some(a), Some(b)) => format!(
                "{:.1} s",
                (b.as_millisecond() - a.as_millisecond()) as f64 / 1000.0
            ),
            _ => "-".into(),
        };
        println!("{:<40} {:<17} {:>9}", r.name, r.status.label(), took);
    }
    for r in results {
        if let Some(t) = &r.tests {
            println!(
                "tests ({}): {} passed, {} failed, {} skipped of {}",
                r.name, t.passed, t.failed, t.skipped, t.total
            );
            for case in t
                .cases
                .iter()
                .filter(|c| c.outcome == crate::ci::reports::junit::TestOutcome::Failed)
            {
                println!("  failed: {} {}", case.name, case.message);
            }
        }
        if let Some(c) = &r.coverage {
            println!(
                "coverage ({}): {:.1}% of lines ({}/{})",
                r.name, c.percent, c.lines_covered, c.lines_total
            );
        }
        for a in &r.artifacts {
            println!(
                "artifact ({}): {} {} bytes sha256:{}",
                r.name, a.path, a.size, a.sha256
            );
        }
    }
}

/// `betcycle run`'s caches: `$XDG_CACHE_HOME/betcycle` (or `~/.cache/betcycle`), one
/// namespace per repository directory, at most 5 GiB in all.
fn local_cache(
    env: &BTreeMap<String, String>,
    dir: &std::path::Path,
) -> Option<crate::exec::cache::CacheSpace> {
    use sha2::Digest;
    let root = env
        .get("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("betcycle");
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let namespace = format!("dir-{}", &crate::identity::secret::hex(&digest)[..16]);
    Some(crate::exec::cache::Caches::new(root, 5 * 1024 * 1024 * 1024).space(&namespace))
}
