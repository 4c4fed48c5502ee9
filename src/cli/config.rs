//! `betcycle config example|show`.

use super::{ConfigArgs, Failure};
use crate::core::config::{self, Config};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigVerb {
    /// Print a complete, commented configuration file with every option and its default.
    Example,
    /// Print the effective configuration and where each value came from.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl ConfigVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        match self {
            ConfigVerb::Example => print!("{}", config::example()),
            ConfigVerb::Show { config } => {
                let (config, warnings) =
                    Config::load(&config.inputs(env)).map_err(|e| Failure::Usage(e.to_string()))?;
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                for (key, value, source) in &config.sources {
                    println!("{key} = {value:?}  # {source}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
