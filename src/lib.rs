//! BetCycle: a self-hosted software delivery platform in one binary. See ARCHITECTURE.md
//! for the map of this crate: one folder per capability.

pub mod agents;
pub mod app;
pub mod ci;
pub mod cli;
pub mod core;
pub mod delivery;
pub mod exec;
pub mod http;
pub mod identity;
pub mod monitoring;
pub mod policy;
pub mod projects;
pub mod secrets;
pub mod service;
pub mod store;

/// This build's version, as `betcycle version`, `/metrics` and the console show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
