//! The JSON API (`/api/v1/…`) and the operational endpoints (`/healthz`, `/readyz`,
//! `/metrics`). One file per resource.

pub mod agents;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod deploy;
pub mod events;
pub mod health;
pub mod hooks;
pub mod instance;
pub mod metrics;
pub mod policies;
pub mod projects;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod users;
