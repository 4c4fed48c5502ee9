//! Stored secrets (every version sealed), the master key check, and the reads recorded on
//! runs.

use super::tables::{META, PROJECT_CREDENTIALS, SECRETS};
use super::{Store, WriteTx, codec};
use crate::core::error::Result;
use crate::identity::audit::Record;
use crate::secrets::seal::Sealed;
use crate::secrets::{Scope, Secret, SecretRead};
use redb::{ReadableDatabase, ReadableTable};

/// Key in `META` of the value that proves which master key the store was sealed with.
pub(super) const KEY_CHECK: &str = "master_key_check";

impl Store {
    pub async fn master_key_check(&self) -> Result<Option<Sealed>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            match tx.open_table(META)?.get(KEY_CHECK)? {
                Some(v) => Ok(Some(codec::decode(META, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn set_master_key_check(&self, check: Sealed) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(META)?
                .insert(KEY_CHECK, codec::encode(&check).as_slice())?;
            Ok(())
        })
        .await
    }

    pub async fn secret(&self, scope: String, name: String) -> Result<Option<Secret>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            match tx
                .open_table(SECRETS)?
                .get((scope.as_str(), name.as_str()))?
            {
                Some(v) => Ok(Some(codec::decode(SECRETS, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// The secrets of one scope, by name.
    pub async fn secrets_in(&self, scope: String) -> Result<Vec<Secret>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SECRETS)?;
            let mut out = Vec::new();
            for item in table.range((scope.as_str(), "")..=(scope.as_str(), "\u{10ffff}"))? {
                out.push(codec::decode(SECRETS, item?.1.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// Changes one secret: `change` gets the stored one (if any) and returns what to keep
    /// (`None` removes it) and a detail for the audit entry, written in the same
    /// transaction.
    pub async fn update_secret(
        &self,
        scope: Scope,
        name: String,
        change: impl FnOnce(Option<Secret>) -> Result<(Option<Secret>, String)> + Send + 'static,
        audit: Record,
    ) -> Result<Option<Secret>> {
        self.write(move |tx| {
            let key = scope.key();
            let mut table = tx.open_table(SECRETS)?;
            let current = match table.get((key.as_str(), name.as_str()))? {
                Some(v) => Some(codec::decode(SECRETS, v.value())?),
                None => None,
            };
            let (next, detail) = change(current)?;
            match &next {
                Some(secret) => {
                    table.insert(
                        (key.as_str(), name.as_str()),
                        codec::encode(secret).as_slice(),
                    )?;
                }
                None => {
                    table.remove((key.as_str(), name.as_str()))?;
                }
            }
            drop(table);
            tx.audit(audit.detail(detail))?;
            Ok(next)
        })
        .await
    }

    /// Re-wraps every sealed secret version and replaces the key check, in one
    /// transaction. Returns how many versions were re-wrapped.
    pub async fn rewrap_secrets(
        &self,
        rewrap: impl Fn(&Sealed, &str) -> Result<Sealed> + Send + 'static,
        check: Sealed,
        audit: Record,
    ) -> Result<usize> {
        self.write(move |tx| {
            let mut table = tx.open_table(SECRETS)?;
            let mut secrets: Vec<Secret> = Vec::new();
            for item in table.iter()? {
                secrets.push(codec::decode(SECRETS, item?.1.value())?);
            }
            let mut count = 0;
            for secret in &mut secrets {
                for v in &mut secret.versions {
                    let context = crate::secrets::context(&secret.scope, &secret.name, v.version);
                    v.sealed = rewrap(&v.sealed, &context)?;
                    count += 1;
                }
                table.insert(
                    (secret.scope.key().as_str(), secret.name.as_str()),
                    codec::encode(secret).as_slice(),
                )?;
            }
            drop(table);
            tx.open_table(META)?
                .insert(KEY_CHECK, codec::encode(&check).as_slice())?;
            tx.audit(audit.detail(format!("{count} secret versions re-wrapped")))?;
            Ok(count)
        })
        .await
    }

    /// Moves credentials kept by BetCycle 0.5's triggers (`project-credentials-1`) into
    /// the secret store; `adopt` turns one into a secret. Returns how many moved.
    pub async fn adopt_project_credentials(
        &self,
        adopt: impl Fn(u64, &str, Sealed) -> Result<Secret> + Send + 'static,
    ) -> Result<usize> {
        self.write(move |tx| {
            let mut old = tx.open_table(PROJECT_CREDENTIALS)?;
            let mut found = Vec::new();
            for item in old.iter()? {
                let (k, v) = item?;
                let (project, name) = k.value();
                found.push((
                    project,
                    name.to_string(),
                    codec::decode::<Sealed>(PROJECT_CREDENTIALS, v.value())?,
                ));
            }
            if found.is_empty() {
                return Ok(0);
            }
            let mut secrets = tx.open_table(SECRETS)?;
            for (project, name, sealed) in &found {
                let secret = adopt(*project, name, sealed.clone())?;
                let key = secret.scope.key();
                if secrets.get((key.as_str(), secret.name.as_str()))?.is_none() {
                    secrets.insert(
                        (key.as_str(), secret.name.as_str()),
                        codec::encode(&secret).as_slice(),
                    )?;
                }
                old.remove((*project, name.as_str()))?;
            }
            Ok(found.len())
        })
        .await
    }

    /// Records the secrets a step was given on its run, with the audit entry.
    pub async fn record_secret_reads(
        &self,
        run_id: u64,
        reads: Vec<SecretRead>,
        audit: Record,
    ) -> Result<()> {
        self.write(move |tx| {
            let mut run = super::run::load(tx, run_id)?;
            run.secrets.extend(reads);
            super::run::save(tx, &run)?;
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }
}

/// Removes every secret of a project and its environments (the project is deleted).
pub(super) fn remove_project_secrets(tx: &WriteTx, project: u64) -> Result<()> {
    let scope = Scope::Project { project }.key();
    let nested = format!("{scope}/");
    let mut table = tx.open_table(SECRETS)?;
    let mut doomed = Vec::new();
    for item in table.range((scope.as_str(), "")..)? {
        let (k, _) = item?;
        let (s, name) = k.value();
        if s == scope || s.starts_with(&nested) {
            doomed.push((s.to_string(), name.to_string()));
        } else if !s.starts_with(&scope) {
            break;
        }
    }
    for (s, name) in doomed {
        table.remove((s.as_str(), name.as_str()))?;
    }
    Ok(())
}

impl Store {
    /// The environments of a project that have secrets of their own.
    pub async fn secret_environments(&self, project: u64) -> Result<Vec<String>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SECRETS)?;
            let nested = format!("{}/environment:", Scope::Project { project }.key());
            let mut out: Vec<String> = Vec::new();
            for item in table.range((nested.as_str(), "")..)? {
                let (k, _) = item?;
                let Some(environment) = k.value().0.strip_prefix(&nested) else {
                    break;
                };
                if out.last().map(String::as_str) != Some(environment) {
                    out.push(environment.to_string());
                }
            }
            Ok(out)
        })
        .await
    }
}
