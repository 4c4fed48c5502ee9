//! `betcycle policy eval` and `betcycle policy test`: the policy engine on files, without
//! a server — to write and check policies before uploading them.

use super::Failure;
use crate::policy::{self, Gate, Module, PolicySet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyVerb {
    /// Evaluate a gate on an input document; print the decision as JSON. Exit 0 when
    /// allowed, 1 when denied.
    Eval {
        /// pipeline, deploy or infrastructure.
        #[arg(long)]
        gate: String,
        /// The input document (JSON), e.g. a `terraform show -json` plan.
        #[arg(long)]
        input: PathBuf,
        /// A folder of .rego modules [default: the starter policies].
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Evaluate this many times and report the rate on standard error (benchmarks).
        #[arg(long, default_value_t = 1, hide = true)]
        repeat: u32,
    },
    /// Run every test_* rule in a folder's .rego files, like `opa test`; exit 1 when one
    /// fails.
    Test {
        /// The folder.
        dir: PathBuf,
        /// Print every test, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
}

fn modules(policy: Option<PathBuf>) -> Result<Vec<Module>, Failure> {
    match policy {
        Some(dir) => policy::testing::load_dir(&dir).map_err(Failure::Runtime),
        None => Ok(policy::starter()),
    }
}

impl PolicyVerb {
    pub fn run(self) -> Result<ExitCode, Failure> {
        match self {
            PolicyVerb::Eval {
                gate,
                input,
                policy,
                repeat,
            } => {
                let gate = Gate::parse(&gate).map_err(Failure::Usage)?;
                let text = std::fs::read_to_string(&input).map_err(|e| {
                    Failure::Runtime(format!("cannot read {}: {e}", input.display()))
                })?;
                let input: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Failure::Runtime(format!("{}: not JSON: {e}", input.display())))?;
                let modules = modules(policy)?;
                let set = PolicySet::new(&modules, policy::TIME_LIMIT).map_err(Failure::Runtime)?;
                let started = Instant::now();
                let mut decided = policy::decide(&set, None, gate, &input);
                for _ in 1..repeat {
                    decided = policy::decide(&set, None, gate, &input);
                }
                if repeat > 1 {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "{repeat} evaluations in {:.1} ms: {:.0} per second",
                        secs * 1000.0,
                        f64::from(repeat) / secs
                    );
                }
                let (outcome, took) = decided;
                let allowed = outcome.denies.is_empty() && outcome.errors.is_empty();
                let decision = serde_json::json!({
                    "gate": gate,
                    "allowed": allowed,
                    "denies": outcome.denies,
                    "warnings": outcome.warnings,
                    "errors": outcome.errors,
                    "policies": set.modules,
                    "duration_us": took.as_micros() as u64,
                });
                println!("{}", serde_json::to_string_pretty(&decision).expect("JSON"));
                Ok(if allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            PolicyVerb::Test { dir, verbose } => {
                let modules = policy::testing::load_dir(&dir).map_err(Failure::Runtime)?;
                let results = policy::testing::run(&modules).map_err(Failure::Runtime)?;
                let failed = results.iter().filter(|r| !r.passed).count();
                for r in &results {
                    if !r.passed {
                        println!("FAIL: {} ({}µs): {}", r.name, r.micros, r.detail);
                    } else if verbose {
                        println!("PASS: {} ({}µs)", r.name, r.micros);
                    }
                }
                println!(
                    "--------------------------------------------------------------------------------"
                );
                println!("PASS: {}/{}", results.len() - failed, results.len());
                if failed > 0 {
                    println!("FAIL: {failed}/{}", results.len());
                    return Ok(ExitCode::FAILURE);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
