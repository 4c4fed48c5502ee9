//! Remote agents: build machines that run steps with `runs_on:` (`betcycle agent`, the
//! same binary). An administrator creates an agent and gets its token once; the server
//! keeps only the token's digest. `mod.rs` the record and the service functions the API
//! and the console share; `agent.rs` the agent process itself. The queue the agents
//! take jobs from is the executor's (`exec::remote`).

pub mod agent;

use crate::core::error::{Error, Result};
use crate::exec::remote::{Contact, Dispatcher, HeldJob};
use crate::identity::audit::Record;
use crate::identity::secret;
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Agent tokens start with this, API tokens with `bct_`.
pub const TOKEN_PREFIX: &str = "bca_";

/// Whether an agent takes new jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    #[default]
    Active,
    /// Takes no new job; keeps polling.
    Paused,
    /// Takes no new job and exits once its jobs are done.
    Draining,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Paused => "paused",
            AgentState::Draining => "draining",
        }
    }

    pub fn parse(text: &str) -> std::result::Result<AgentState, String> {
        match text {
            "active" => Ok(AgentState::Active),
            "paused" => Ok(AgentState::Paused),
            "draining" => Ok(AgentState::Draining),
            other => Err(format!("state \"{other}\": use active, paused or draining")),
        }
    }
}

/// A stored agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agent {
    pub name: String,
    /// SHA-256 of its token; the token itself is shown once, at creation.
    pub token_digest: String,
    pub state: AgentState,
    pub created_at: Timestamp,
    pub created_by: String,
    /// Set when its token is revoked: it can no longer poll or report.
    pub revoked_at: Option<Timestamp>,
}

/// What clients see of an agent: the record (never the digest) and, once it has polled
/// since the server started, what it said and the jobs it holds.
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    pub name: String,
    pub state: AgentState,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
    /// Heard from within the lease.
    pub connected: bool,
    pub labels: Vec<String>,
    pub capacity: u32,
    pub version: String,
    pub last_contact: Option<Timestamp>,
    pub jobs: Vec<HeldJob>,
}

/// Letters, digits, `.`, `_` and `-`, 1 to 63 characters: an agent's name or a label.
pub fn check_label(label: &str) -> std::result::Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{label}\": a label is 1 to 63 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Every agent, with what the dispatcher knows of it.
pub async fn views(store: &Store, dispatcher: &Dispatcher) -> Result<Vec<AgentView>> {
    let contacts = dispatcher.contacts();
    Ok(store
        .agents()
        .await?
        .into_iter()
        .map(|a| {
            let (contact, jobs) = match contacts.get(&a.name) {
                Some((c, jobs)) if a.revoked_at.is_none() => (Some(c), jobs.clone()),
                _ => (None, Vec::new()),
            };
            AgentView {
                connected: contact.is_some_and(|c| dispatcher.connected(c)),
                labels: contact.map(|c| c.labels.clone()).unwrap_or_default(),
                capacity: contact.map_or(0, |c: &Contact| c.capacity),
                version: contact.map(|c| c.version.clone()).unwrap_or_default(),
                last_contact: contact.map(|c| c.last_contact),
                jobs,
                name: a.name,
                state: a.state,
                created_at: a.created_at,
                created_by: a.created_by,
                revoked_at: a.revoked_at,
            }
        })
        .collect())
}

/// Creates agent `name`; returns it and its token (shown this once).
pub async fn create(store: &Store, name: &str, audit: Record) -> Result<(Agent, String)> {
    check_label(name).map_err(|e| Error::Invalid(format!("agent name {e}")))?;
    let token = format!("{TOKEN_PREFIX}{}", secret::random_hex(32));
    let agent = Agent {
        name: name.to_string(),
        token_digest: secret::digest(&token),
        state: AgentState::Active,
        created_at: Timestamp::now(),
        created_by: audit.context.actor.clone(),
        revoked_at: None,
    };
    store.create_agent(agent.clone(), audit).await?;
    Ok((agent, token))
}

/// The agent whose token this is, unless it is unknown or revoked.
pub async fn authenticate(store: &Store, token: &str) -> std::result::Result<Agent, String> {
    let digest = secret::digest(token);
    let found = store
        .agents()
        .await
        .map_err(|e| format!("cannot read the agents: {e}"))?
        .into_iter()
        .find(|a| secret::constant_time_eq(&a.token_digest, &digest));
    match found {
        Some(agent) if agent.revoked_at.is_some() => {
            Err(format!("the token of agent \"{}\" was revoked", agent.name))
        }
        Some(agent) => Ok(agent),
        None => Err("unknown agent token".into()),
    }
}

/// Pauses, drains or resumes agent `name`.
pub async fn set_state(
    store: &Store,
    dispatcher: &Dispatcher,
    name: &str,
    state: AgentState,
    audit: Record,
) -> Result<Agent> {
    let agent = store
        .update_agent(name, audit.detail(state.as_str()), move |a| {
            if a.revoked_at.is_some() {
                return Err(Error::Conflict(format!(
                    "agent \"{}\" is revoked; create a new one",
                    a.name
                )));
            }
            a.state = state;
            Ok(())
        })
        .await?;
    dispatcher.hold_back(name, state != AgentState::Active);
    Ok(agent)
}

/// Revokes agent `name`'s token; the jobs it holds go back to the queue.
pub async fn revoke(
    store: &Store,
    dispatcher: &Dispatcher,
    name: &str,
    audit: Record,
) -> Result<()> {
    store
        .update_agent(name, audit, |a| {
            a.revoked_at.get_or_insert_with(Timestamp::now);
            Ok(())
        })
        .await?;
    dispatcher.forget_agent(name);
    Ok(())
}
