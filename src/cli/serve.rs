//! `betcycle serve`: the appliance.

use super::{ConfigArgs, Failure};
use crate::core::config::Config;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Serve {
    #[command(flatten)]
    config: ConfigArgs,
}

impl Serve {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        // Validate everything before touching the disk: a bad value creates nothing.
        let (config, warnings) =
            Config::load(&self.config.inputs(env)).map_err(|e| Failure::Usage(e.to_string()))?;
        let _guard = crate::core::logging::init(&config.log).map_err(Failure::Runtime)?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(crate::app::serve(config)).map_err(|e| {
            tracing::error!(error = %e, "server failed");
            Failure::Runtime(e.to_string())
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
