//! `betcycle audit verify`: walk the hash chain of the audit log.

use super::offline::{runtime_err, with_store};
use super::{ConfigArgs, Failure};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum AuditVerb {
    /// Check that no audit entry was altered or removed; names the first one that was.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl AuditVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let AuditVerb::Verify { config } = self;
        with_store(&config, env, false, |store, _| async move {
            match store.verify_audit().await.map_err(runtime_err)? {
                Ok(count) => {
                    println!("audit log intact: {count} entries verified");
                    Ok(ExitCode::SUCCESS)
                }
                Err(broken) => Err(Failure::Runtime(format!("audit log broken: {broken}"))),
            }
        })
    }
}
