//! The stored records: policies with their versions, and decisions.

use super::{Gate, Message};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A Rego module stored on the server, with its versions (oldest first; the last is
/// current).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// `instance`, or `project:SLUG`.
    pub scope: String,
    /// A file name such as `branches.rego`.
    pub name: String,
    pub gate: Gate,
    pub versions: Vec<PolicyVersion>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub source: String,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl Policy {
    pub fn current(&self) -> &PolicyVersion {
        self.versions.last().expect("a stored policy has a version")
    }

    /// `instance/branches.rego@3`, as decisions name the policies they used.
    pub fn label(&self) -> String {
        format!("{}/{}@{}", self.scope, self.name, self.current().version)
    }
}

/// Policy names: a file name ending in `.rego`.
pub fn check_name(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix(".rego").unwrap_or_default();
    let valid = !stem.is_empty()
        && name.len() <= 100
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "policy name \"{name}\": use letters, digits, - _ . and end with .rego"
        ))
    }
}

/// One evaluation, as the decision log keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: u64,
    pub project: String,
    pub gate: Gate,
    /// What was decided on: `run:12`, `deployment:4`, `deployment request: release 3 to production`.
    pub subject: String,
    /// `request` or `start` for the deploy gate; the step for infrastructure.
    #[serde(default)]
    pub stage: String,
    pub at: Timestamp,
    /// The policies consulted (`scope/name@version`, `repository/NAME`).
    pub policies: Vec<String>,
    pub input: serde_json::Value,
    pub allowed: bool,
    pub denies: Vec<Message>,
    pub warnings: Vec<Message>,
    pub errors: Vec<String>,
    pub duration_us: u64,
}
