//! Continuous delivery: environments with server-side protections, immutable releases
//! made from green runs, and deployments — a recorded state machine (pending → awaiting
//! approval → queued → deploying → verifying → succeeded | failed | rolled back |
//! cancelled) with approvals and a timeline; promotion, rollback and DORA metrics.

pub mod dora;
pub mod engine;
pub mod model;

pub use engine::{CallbackResult, Deployer};
pub use model::*;
