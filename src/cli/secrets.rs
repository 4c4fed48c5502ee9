//! `betcycle secrets rotate-master-key`: re-wrap every secret's data key under a new
//! master key, with the server stopped.

use super::offline::{runtime_err, with_store};
use super::{ConfigArgs, Failure};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum SecretsVerb {
    /// Replace the master key: every secret version's data key is re-wrapped under a new
    /// key in one transaction, then the key file is replaced. Back up the new key file.
    RotateMasterKey {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl SecretsVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let SecretsVerb::RotateMasterKey { config } = self;
        with_store(&config, env, false, |store, config| async move {
            let path = config.master_key_file;
            let old = crate::secrets::open_master_key(&path, false, &store)
                .await
                .map_err(runtime_err)?;
            let (new, count) = crate::secrets::rotate_master_key(
                &path,
                &old,
                &store,
                &crate::identity::audit::Context::cli(),
            )
            .await
            .map_err(runtime_err)?;
            println!(
                "master key rotated: {count} secret versions re-wrapped; key {} replaced by key {} in {}",
                old.id(),
                new.id(),
                path.display()
            );
            println!("back up the new key file: the old one no longer opens these secrets");
            Ok(ExitCode::SUCCESS)
        })
    }
}
