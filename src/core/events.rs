//! The event bus: in-process notifications of committed changes, for live pages (SSE).
//! Only the store publishes, and only after the transaction that made the change has
//! committed, so a subscriber never sees an event whose data is not yet readable — or,
//! for what is observed rather than stored (a service's health), through
//! `Store::announce`.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// Something that changed. Serialised with a `type` tag for SSE clients.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A `serve` process started and recorded itself.
    InstanceStarted { seq: u64, version: String },
    /// A run was created or changed (status, a step started or finished).
    RunUpdated {
        id: u64,
        project: String,
        status: crate::ci::run::RunStatus,
    },
    /// A deployment was requested or changed (approval, status).
    DeploymentUpdated {
        id: u64,
        project: String,
        environment: String,
        status: crate::delivery::DeploymentStatus,
    },
    /// A service instance turned healthy or unhealthy (its health check).
    ServiceHealth {
        project: String,
        environment: String,
        release: u64,
        instance: u32,
        healthy: bool,
        detail: String,
    },
    /// An alert rule was changed, added or removed.
    AlertRulesChanged,
}

impl Event {
    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::InstanceStarted { .. } => "instance_started",
            Event::RunUpdated { .. } => "run_updated",
            Event::DeploymentUpdated { .. } => "deployment_updated",
            Event::ServiceHealth { .. } => "service_health",
            Event::AlertRulesChanged => "alert_rules_changed",
        }
    }
}

/// An event with its position in this process's stream (the SSE `id:`; the JSON sent is
/// the event alone, whose own `id` is the run's or deployment's).
#[derive(Clone, Debug)]
pub struct Envelope {
    pub id: u64,
    pub event: Event,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Envelope>>,
    next_id: Arc<AtomicU64>,
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(1024);
        Self {
            sender,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.sender.subscribe()
    }

    /// Sends to current subscribers; with none, the event is dropped (nothing is lost:
    /// the change itself is in the store).
    pub(crate) fn publish(&self, event: Event) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.sender.send(Arc::new(Envelope { id, event }));
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}
