//! Continuous delivery: environments with server-side protections, immutable releases
//! made from green runs, and deployments — a recorded state machine (pending → awaiting
//! approval → queued → deploying → verifying → succeeded | failed | rolled back |
//! cancelled) with approvals and a timeline; promotion, rollback and DORA metrics.
//!
//! `model.rs` holds the records and the pure checks; the [`Deployer`] is split by what it
//! does: `request.rs`, `approval.rs`, `worker.rs`, and `targets/` behind the `Target`
//! trait. `board.rs` is what the API and the console show; `dora.rs` the four metrics.

pub mod approval;
pub mod board;
mod deployer;
pub mod dora;
pub mod model;
mod request;
pub mod targets;
mod worker;

pub use deployer::{CallbackResult, Deployer, reveal, variables};
pub use model::*;
