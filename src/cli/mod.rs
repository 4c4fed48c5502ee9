//! The command line: one file per verb. `main` parses, runs the verb and turns its
//! outcome into an exit code: 0 success, 1 failure, 2 bad usage or configuration.

mod agent;
mod alerts;
mod audit;
mod config;
mod db;
mod deploy;
mod dev;
mod healthcheck;
mod offline;
mod policy;
mod project;
mod run;
mod secrets;
mod self_update;
mod serve;
mod token;
mod trigger;
mod user;
mod validate;

use crate::core::config::{Inputs, OPTIONS};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "betcycle",
    version,
    about = "Self-hosted software delivery platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run the server: API, console, workers.
    Serve(serve::Serve),
    /// Exit 0 when the server's /readyz says ready, 1 otherwise (for container health checks).
    Healthcheck(healthcheck::Healthcheck),
    /// Print an example configuration file or the effective configuration.
    #[command(subcommand)]
    Config(config::ConfigVerb),
    /// Manage users on the data directory (server stopped).
    #[command(subcommand)]
    User(user::UserVerb),
    /// Manage API tokens on the data directory (server stopped).
    #[command(subcommand)]
    Token(token::TokenVerb),
    /// Check the audit log (server stopped).
    #[command(subcommand)]
    Audit(audit::AuditVerb),
    /// Evaluate and test Rego policies on files (no server needed).
    #[command(subcommand)]
    Policy(policy::PolicyVerb),
    /// Manage the secret store's master key (server stopped).
    #[command(subcommand)]
    Secrets(secrets::SecretsVerb),
    /// List every HTTP route with what it requires of the caller.
    Routes,
    /// Check a pipeline file (.betcycle.yml) and report every problem with its location.
    Validate(validate::Validate),
    /// Run a repository's pipeline locally; the exit code is the result.
    Run(run::Run),
    /// Run steps for a server on this machine (`runs_on:`), with an agent token.
    Agent(agent::Agent),
    /// Start a run on a server (token from BETCYCLE_TOKEN).
    Trigger(trigger::Trigger),
    /// Deploy a release to an environment on a server (token from BETCYCLE_TOKEN).
    Deploy(deploy::Deploy),
    /// Deploy the release live in an environment to the next one.
    Promote(deploy::Promote),
    /// Approve (or --reject) a deployment waiting for approval.
    Approve(deploy::Approve),
    /// Redeploy the release that was live in an environment before the latest deployment.
    Rollback(deploy::Rollback),
    /// Promote or abort a running canary deployment (`canary promote N`, `canary abort N`).
    Canary(deploy::Canary),
    /// Projects on a server: list, create, show (token from BETCYCLE_TOKEN).
    Project {
        #[command(subcommand)]
        verb: project::ProjectVerb,
        #[command(flatten)]
        server: project::ServerArgs,
    },
    /// Alerts on a server: list, rules, silence (token from BETCYCLE_TOKEN).
    Alerts {
        #[command(subcommand)]
        verb: alerts::AlertsVerb,
        #[command(flatten)]
        server: project::ServerArgs,
    },
    /// Uptime probes on a server: list (token from BETCYCLE_TOKEN).
    Probes {
        #[command(subcommand)]
        verb: alerts::ProbesVerb,
        #[command(flatten)]
        server: project::ServerArgs,
    },
    /// Replace this binary with the newest release (checksum-verified); --check only reports.
    SelfUpdate(self_update::SelfUpdate),
    /// Back up, restore and check the database and the files that go with it.
    #[command(subcommand)]
    Db(db::DbVerb),
    /// Print the version.
    Version,
    /// Evaluate policies for the server, one JSON request per line (started by `serve`).
    #[command(hide = true)]
    PolicyWorker,
    /// Tools for BetCycle's own development: `dev seed` fills a store with history.
    #[command(subcommand, hide = true)]
    Dev(dev::DevVerb),
}

/// How a verb failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(String),
    /// The work failed: exit 1.
    Runtime(String),
}

impl Failure {
    fn report(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Usage(m) => (2, m),
            Failure::Runtime(m) => (1, m),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::http::tls::install_crypto_provider();
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let result = match cli.command {
        Verb::Serve(serve) => serve.run(env),
        Verb::Healthcheck(check) => check.run(env),
        Verb::Config(verb) => verb.run(env),
        Verb::User(verb) => verb.run(env),
        Verb::Token(verb) => verb.run(env),
        Verb::Audit(verb) => verb.run(env),
        Verb::Secrets(verb) => verb.run(env),
        Verb::Dev(verb) => verb.run(env),
        Verb::Policy(verb) => verb.run(),
        Verb::PolicyWorker => crate::policy::evaluator::serve_worker()
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| Failure::Runtime(format!("policy worker: {e}"))),
        Verb::Validate(verb) => verb.run(),
        Verb::Run(verb) => verb.run(env),
        Verb::Agent(verb) => verb.run(env),
        Verb::Trigger(verb) => verb.run(env),
        Verb::Deploy(verb) => verb.run(env),
        Verb::Promote(verb) => verb.run(env),
        Verb::Approve(verb) => verb.run(env),
        Verb::Rollback(verb) => verb.run(env),
        Verb::Canary(verb) => verb.run(env),
        Verb::SelfUpdate(verb) => verb.run(env),
        Verb::Db(verb) => verb.run(env),
        Verb::Project { verb, server } => verb.run(server, env),
        Verb::Alerts { verb, server } => verb.run(server, env),
        Verb::Probes { verb, server } => verb.run(server, env),
        Verb::Routes => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let mut lines = vec![format!("{:<7} {:<48} NEEDS", "METHOD", "PATH")];
            for route in crate::http::routes::table() {
                lines.push(format!(
                    "{:<7} {:<48} {}",
                    route.method.as_str(),
                    route.path,
                    route.need
                ));
            }
            // A closed pipe (`betcycle routes | head`) is not an error.
            let _ = lines.iter().try_for_each(|l| writeln!(out, "{l}"));
            Ok(ExitCode::SUCCESS)
        }
        Verb::Version => {
            println!("betcycle {}", crate::VERSION);
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(Failure::report)
}

/// The configuration flags, generated from [`OPTIONS`], plus `--config FILE`.
#[derive(Clone, Debug, Default)]
pub struct ConfigArgs {
    config_file: Option<PathBuf>,
    flags: BTreeMap<&'static str, String>,
}

impl ConfigArgs {
    pub fn inputs(&self, env: BTreeMap<String, String>) -> Inputs {
        Inputs {
            flags: self.flags.clone(),
            config_file: self.config_file.clone(),
            env,
        }
    }
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ConfigArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(file) = matches.get_one::<String>("config") {
            self.config_file = Some(PathBuf::from(file));
        }
        for opt in OPTIONS {
            if let Some(value) = matches.get_one::<String>(opt.key) {
                self.flags.insert(opt.key, value.clone());
            }
        }
        Ok(())
    }
}

impl Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd =
            cmd.arg(Arg::new("config").long("config").value_name("FILE").help(
                "TOML configuration file (also BETCYCLE_CONFIG); see `betcycle config example`",
            ));
        OPTIONS.iter().fold(cmd, |cmd, opt| {
            cmd.arg(
                Arg::new(opt.key)
                    .long(opt.flag)
                    .value_name(opt.value_name)
                    .help(opt.help),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
