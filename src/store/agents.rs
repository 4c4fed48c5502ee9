//! Stored remote agents (their tokens as digests). Every change appends its audit entry
//! in the same transaction.

use super::tables::AGENTS;
use super::{Store, codec, quarantine};
use crate::agents::Agent;
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use redb::{ReadableDatabase, ReadableTable};

impl Store {
    /// Adds `agent`; a name already taken (revoked or not) is a conflict.
    pub async fn create_agent(&self, agent: Agent, audit: Record) -> Result<()> {
        self.write(move |tx| {
            let mut table = tx.open_table(AGENTS)?;
            if table.get(agent.name.as_str())?.is_some() {
                return Err(Error::Conflict(format!(
                    "agent \"{}\" already exists",
                    agent.name
                )));
            }
            table.insert(agent.name.as_str(), codec::encode(&agent).as_slice())?;
            drop(table);
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// Every agent, by name; one that does not decode is left out (and logged).
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(AGENTS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (name, v) = item?;
                if let Some(a) = quarantine::decode_listed(AGENTS, name.value(), v.value()) {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Changes agent `name` with `change` (which may refuse) and records `audit`.
    pub async fn update_agent(
        &self,
        name: &str,
        audit: Record,
        change: impl FnOnce(&mut Agent) -> Result<()> + Send + 'static,
    ) -> Result<Agent> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut table = tx.open_table(AGENTS)?;
            let mut agent: Agent = match table.get(name.as_str())? {
                Some(v) => codec::decode(AGENTS, v.value())?,
                None => {
                    return Err(Error::NotFound {
                        what: format!("agent \"{name}\""),
                    });
                }
            };
            change(&mut agent)?;
            table.insert(name.as_str(), codec::encode(&agent).as_slice())?;
            drop(table);
            tx.audit(audit)?;
            Ok(agent)
        })
        .await
    }
}
