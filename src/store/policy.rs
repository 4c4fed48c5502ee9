//! Stored policies (every version kept) and the policy decision log.

use super::tables::{META, POLICIES, POLICY_DECISIONS, PROJECT_DECISIONS};
use super::{Store, codec};
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::policy::{Decision, Gate, Policy, PolicyVersion};
use redb::{ReadableDatabase, ReadableTable};

/// Key in `META` set once the starter policies were installed (deleting them sticks).
const STARTER_SEEDED: &str = "starter_policies_seeded";

impl Store {
    /// The policies of one scope (`instance`, `project:SLUG`), by name.
    pub async fn policies(&self, scope: &str) -> Result<Vec<Policy>> {
        let scope = scope.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(POLICIES)?;
            let mut out = Vec::new();
            for item in table.range((scope.as_str(), "")..=(scope.as_str(), "\u{10ffff}"))? {
                out.push(codec::decode(POLICIES, item?.1.value())?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn policy(&self, scope: &str, name: &str) -> Result<Option<Policy>> {
        let (scope, name) = (scope.to_string(), name.to_string());
        self.read(move |db| {
            let tx = db.begin_read()?;
            match tx
                .open_table(POLICIES)?
                .get((scope.as_str(), name.as_str()))?
            {
                Some(v) => Ok(Some(codec::decode(POLICIES, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Stores `source` as the next version of a policy (checked by the caller).
    pub async fn put_policy(
        &self,
        scope: &str,
        name: &str,
        gate: Gate,
        source: String,
        audit: Record,
    ) -> Result<Policy> {
        let (scope, name) = (scope.to_string(), name.to_string());
        self.write(move |tx| {
            let mut table = tx.open_table(POLICIES)?;
            let mut policy: Policy = match table.get((scope.as_str(), name.as_str()))? {
                Some(v) => codec::decode(POLICIES, v.value())?,
                None => Policy {
                    scope: scope.clone(),
                    name: name.clone(),
                    gate,
                    versions: Vec::new(),
                },
            };
            let version = policy.versions.last().map_or(1, |v| v.version + 1);
            policy.gate = gate;
            policy.versions.push(PolicyVersion {
                version,
                source,
                created_by: audit.context.actor.clone(),
                created_at: jiff::Timestamp::now(),
            });
            table.insert(
                (scope.as_str(), name.as_str()),
                codec::encode(&policy).as_slice(),
            )?;
            drop(table);
            tx.audit(audit.detail(format!(
                "{} version {version} ({} gate)",
                name,
                gate.as_str()
            )))?;
            Ok(policy)
        })
        .await
    }

    pub async fn delete_policy(&self, scope: &str, name: &str, audit: Record) -> Result<()> {
        let (scope, name) = (scope.to_string(), name.to_string());
        self.write(move |tx| {
            tx.open_table(POLICIES)?
                .remove((scope.as_str(), name.as_str()))?
                .ok_or_else(|| Error::NotFound {
                    what: format!("policy {name} ({scope})"),
                })?;
            tx.audit(audit.detail(name.clone()))?;
            Ok(())
        })
        .await
    }

    /// Installs the starter policies as instance policies, once per database.
    pub async fn seed_starter_policies(
        &self,
        modules: Vec<(String, Gate, String)>,
    ) -> Result<bool> {
        self.write(move |tx| {
            if tx.open_table(META)?.get(STARTER_SEEDED)?.is_some() {
                return Ok(false);
            }
            let mut table = tx.open_table(POLICIES)?;
            for (name, gate, source) in modules {
                if table.get(("instance", name.as_str()))?.is_some() {
                    continue;
                }
                let policy = Policy {
                    scope: "instance".into(),
                    name: name.clone(),
                    gate,
                    versions: vec![PolicyVersion {
                        version: 1,
                        source,
                        created_by: "system".into(),
                        created_at: jiff::Timestamp::now(),
                    }],
                };
                table.insert(
                    ("instance", name.as_str()),
                    codec::encode(&policy).as_slice(),
                )?;
            }
            drop(table);
            tx.open_table(META)?
                .insert(STARTER_SEEDED, codec::encode(&true).as_slice())?;
            Ok(true)
        })
        .await
    }

    /// Appends a decision to the log; returns it with its id.
    pub async fn record_decision(&self, mut decision: Decision) -> Result<Decision> {
        self.write(move |tx| {
            decision.id = tx
                .open_table(POLICY_DECISIONS)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            tx.open_table(POLICY_DECISIONS)?
                .insert(decision.id, codec::encode(&decision).as_slice())?;
            tx.open_table(PROJECT_DECISIONS)?
                .insert((decision.project.as_str(), decision.id), ())?;
            Ok(decision)
        })
        .await
    }

    /// A project's decisions, newest first, optionally only those about `subject`.
    pub async fn decisions(
        &self,
        project: &str,
        subject: Option<String>,
        limit: usize,
    ) -> Result<Vec<Decision>> {
        let project = project.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let (index, table) = (
                tx.open_table(PROJECT_DECISIONS)?,
                tx.open_table(POLICY_DECISIONS)?,
            );
            let mut out = Vec::new();
            for item in index
                .range((project.as_str(), 0)..=(project.as_str(), u64::MAX))?
                .rev()
            {
                if out.len() >= limit {
                    break;
                }
                let id = item?.0.value().1;
                if let Some(v) = table.get(id)? {
                    let d: Decision = codec::decode(POLICY_DECISIONS, v.value())?;
                    if subject.as_ref().is_none_or(|s| *s == d.subject) {
                        out.push(d);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn decision(&self, id: u64) -> Result<Option<Decision>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            match tx.open_table(POLICY_DECISIONS)?.get(id)? {
                Some(v) => Ok(Some(codec::decode(POLICY_DECISIONS, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }
}
