//! BetCycle: a self-hosted software delivery platform in one binary. See ARCHITECTURE.md
//! for the map of this crate.

pub mod app;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod deploy;
pub mod error;
pub mod events;
pub mod executor;
pub mod forge;
pub mod git;
pub mod health;
pub mod http;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod policy;
pub mod poll;
pub mod project;
pub mod reports;
pub mod run;
pub mod runner;
pub mod schedule;
pub mod seal;
pub mod secrets;
pub mod store;
pub mod systemd;

/// This build's version, as `betcycle version`, `/metrics` and the console show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
