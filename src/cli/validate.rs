//! `betcycle validate [FILE]`: check a pipeline file; every problem is printed with its
//! file, line, column and field path, and the exit code is 1 when there is any.

use super::Failure;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Validate {
    /// The pipeline file.
    #[arg(default_value = ".betcycle.yml")]
    file: PathBuf,
}

impl Validate {
    pub fn run(self) -> Result<ExitCode, Failure> {
        let text = std::fs::read_to_string(&self.file)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", self.file.display())))?;
        match crate::ci::pipeline::parse(&self.file.display().to_string(), &text) {
            Ok(pipeline) => {
                let names: Vec<&str> = pipeline.steps.iter().map(|s| s.name.as_str()).collect();
                println!(
                    "{}: ok, {} steps: {}",
                    self.file.display(),
                    names.len(),
                    names.join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                for problem in &problems {
                    eprintln!("{problem}");
                }
                let count = problems.len();
                Err(Failure::Runtime(format!(
                    "{} has {count} problem{}",
                    self.file.display(),
                    if count == 1 { "" } else { "s" }
                )))
            }
        }
    }
}
