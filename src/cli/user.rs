//! `betcycle user add|list|reset-password`: manage users on the data directory while the
//! server is stopped (first admin without the console, lost passwords).

use super::offline::{password_from_stdin, runtime_err, with_store};
use super::{ConfigArgs, Failure};
use crate::identity::accounts;
use crate::identity::audit::Context;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum UserVerb {
    /// Create a user; the password is read from standard input.
    Add {
        name: String,
        /// Make the user an instance administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input (required: passwords never go in argv).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Set a new password (read from standard input) and end the user's sessions.
    ResetPassword {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl UserVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        match self {
            UserVerb::Add {
                name,
                admin,
                config,
                ..
            } => {
                let password = password_from_stdin()?;
                with_store(&config, env, true, |store, _| async move {
                    let user =
                        accounts::create_user(&store, &name, &password, admin, &Context::cli())
                            .await
                            .map_err(runtime_err)?;
                    let role = if user.admin { "administrator" } else { "user" };
                    println!("created {role} {}", user.name);
                    Ok(ExitCode::SUCCESS)
                })
            }
            UserVerb::List { config } => with_store(&config, env, false, |store, _| async move {
                let users = store.list_users().await.map_err(runtime_err)?;
                println!(
                    "{:<4} {:<24} {:<14} {:<9} TEAMS",
                    "ID", "NAME", "ROLE", "STATUS"
                );
                for u in users {
                    println!(
                        "{:<4} {:<24} {:<14} {:<9} {}",
                        u.id,
                        u.name,
                        if u.admin { "administrator" } else { "user" },
                        if u.disabled { "disabled" } else { "active" },
                        u.teams.join(",")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }),
            UserVerb::ResetPassword { name, config, .. } => {
                let password = password_from_stdin()?;
                with_store(&config, env, false, |store, _| async move {
                    accounts::set_password(&store, &name, &password, &Context::cli())
                        .await
                        .map_err(runtime_err)?;
                    println!("password of {name} changed; their sessions were signed out");
                    Ok(ExitCode::SUCCESS)
                })
            }
        }
    }
}
