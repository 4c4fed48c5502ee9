//! What every capability stands on: the error type, the event bus, configuration,
//! logging, metrics, health, systemd, outbound HTTP, git, the instance record and
//! backup archives.

pub mod backup;
pub mod config;
pub mod error;
pub mod events;
pub mod git;
pub mod health;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod systemd;
pub mod telemetry;
pub mod workers;
