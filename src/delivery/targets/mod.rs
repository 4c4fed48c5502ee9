//! Deploy targets: where a deployment goes. Each kind of `deploy:` target in the
//! pipeline file implements [`Target`]; the worker only asks for `deploy`. `exec` and
//! `webhook` call out; `service` runs the release itself behind the built-in proxy
//! (blue-green or canary); `kubernetes` will plug in the same way.

mod exec;
mod service;
mod webhook;

use super::{Deployer, Deployment, Release};
use crate::ci::pipeline::deploy::Target as TargetDef;
use crate::core::error::{Error, Result};
use crate::projects::Project;
use std::future::Future;
use std::pin::Pin;
use tokio_util::sync::CancellationToken;

/// One deployment, as a target sees it.
pub struct Job<'a> {
    pub deployer: &'a Deployer,
    pub deployment: &'a Deployment,
    pub release: &'a Release,
    pub project: &'a Project,
    /// Cancelled at shutdown; the target stops and the deployment is left for the next
    /// start to mark failed.
    pub shutdown: &'a CancellationToken,
}

/// How a deployment that did not fail ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The release is live there: the deployment succeeded.
    Live,
    /// The release was tried and taken back (a canary that failed its analysis, or
    /// aborted); the previous release still serves. The reason is the deployment's message.
    RolledBack(String),
}

/// A kind of deploy target. `deploy` returns once the release is live there (the
/// deployment then succeeds), taken back, or with why it is not (it fails).
pub trait Target: Send + Sync {
    fn deploy<'a>(
        &'a self,
        job: Job<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Outcome>> + Send + 'a>>;
}

/// The implementation for a target as the pipeline file declares it.
pub fn of(def: &TargetDef) -> Result<&dyn Target> {
    match def {
        TargetDef::Exec(t) => Ok(t),
        TargetDef::Webhook(t) => Ok(t),
        TargetDef::Service(t) => Ok(t.as_ref()),
        TargetDef::Kubernetes(_) => Err(Error::Invalid(
            "the kubernetes target is not built yet in this version of BetCycle".into(),
        )),
    }
}
