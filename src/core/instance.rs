//! The instance: this installation's identity and the history of its `serve` processes.
//! Each start is recorded before the server reports ready and marked stopped on a
//! graceful shutdown, so a start without a stop means the process was killed or crashed.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Created once, by the first migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    /// Random id, stable for the life of the data directory.
    pub id: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub created_by_version: String,
}

/// One `serve` process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Start {
    pub seq: u64,
    pub started_at: Timestamp,
    pub version: String,
    #[serde(default)]
    pub pid: u32,
    /// Set on a graceful shutdown; `None` for the running process or one that was killed.
    #[serde(default)]
    pub stopped_at: Option<Timestamp>,
}

/// What the dashboard and `/api/v1/instance` show.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    pub instance: Instance,
    pub starts_total: u64,
    /// Most recent first.
    pub recent_starts: Vec<Start>,
}

impl InstanceInfo {
    /// Whether the process before the current one stopped without a graceful shutdown.
    pub fn previous_shutdown_unclean(&self) -> bool {
        self.recent_starts
            .get(1)
            .is_some_and(|previous| previous.stopped_at.is_none())
    }
}

#[derive(Serialize)]
pub struct InstanceView {
    pub version: &'static str,
    pub instance: Instance,
    pub started_at: Timestamp,
    pub uptime_seconds: u64,
    pub public_url: String,
    pub store: StoreView,
    pub starts_total: u64,
    pub previous_shutdown_unclean: bool,
    pub recent_starts: Vec<Start>,
}

#[derive(Serialize)]
pub struct StoreView {
    pub path: String,
    pub size_bytes: u64,
    pub schema_version: u64,
}
