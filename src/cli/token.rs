//! `betcycle token create`: an API token for a user, printed once.

use super::offline::{runtime_err, with_store};
use super::{ConfigArgs, Failure};
use crate::identity::audit::Context;
use crate::identity::{Scope, accounts};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum TokenVerb {
    /// Create an API token and print it (it is shown only this once).
    Create {
        /// The user the token acts as.
        #[arg(long)]
        user: String,
        /// read, write or admin.
        #[arg(long, value_parser = |s: &str| s.parse::<Scope>())]
        scope: Scope,
        /// Lifetime such as 30d; no expiry when omitted.
        #[arg(long, value_parser = crate::core::config::parse_duration)]
        expires: Option<Duration>,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl TokenVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let TokenVerb::Create {
            user,
            scope,
            expires,
            name,
            config,
        } = self;
        with_store(&config, env, false, |store, _| async move {
            let user = store
                .user_by_name(&user)
                .await
                .map_err(runtime_err)?
                .ok_or_else(|| Failure::Runtime(format!("user \"{user}\" not found")))?;
            let (secret, _) =
                accounts::create_token(&store, &user, &name, scope, expires, &Context::cli())
                    .await
                    .map_err(runtime_err)?;
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        })
    }
}
