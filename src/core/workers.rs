//! The background-worker registry: every long-lived task of `serve` is started here by
//! name, so start-up lists its workers and shutdown knows which ones to wait for.

use std::future::Future;
use tokio::task::JoinHandle;

/// What shutdown does with a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtShutdown {
    /// Waited for: it stops its own work on the shutdown token (runs, deployments).
    Wait,
    /// Left to end with the runtime (followers, pollers, timers).
    Detach,
}

#[derive(Default)]
pub struct Workers {
    started: Vec<(&'static str, AtShutdown, JoinHandle<()>)>,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `work` as the worker `name`.
    pub fn start<F>(&mut self, name: &'static str, at_shutdown: AtShutdown, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tracing::debug!(worker = name, "starting worker");
        self.started.push((name, at_shutdown, tokio::spawn(work)));
    }

    /// The names of the workers started, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.started.iter().map(|(name, _, _)| *name).collect()
    }

    /// Waits for every [`AtShutdown::Wait`] worker to finish (after the shutdown token
    /// was cancelled); a worker that panicked is logged.
    pub async fn stopped(self) {
        for (name, at_shutdown, handle) in self.started {
            if at_shutdown == AtShutdown::Wait
                && let Err(e) = handle.await
            {
                tracing::error!(worker = name, error = %e, "worker ended abnormally");
            }
        }
    }
}
