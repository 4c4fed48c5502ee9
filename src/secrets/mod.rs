//! Secrets: values pipelines and deployments need (tokens, passwords) that nobody should
//! see again once they are set. Each version of each secret is sealed (see [`crate::secrets::seal`])
//! under its own data key, bound to its scope, name and version; values are write-only —
//! nothing here returns a value except [`Secrets::reveal`] (to a run's step, recorded) and
//! [`Secrets::project_value`] (to BetCycle itself: webhook verification, commit statuses).
//!
//! Scopes: the instance, a project, or an environment of a project; a step gets the most
//! specific one (environment, then project, then instance).

pub mod mask;
pub mod seal;
pub mod views;

use crate::core::error::{Error, Result};
use crate::identity::audit::{Context, Record};
use crate::secrets::seal::{MasterKey, Sealed};
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Values shorter than this are refused: masking them would hide too much of the logs.
pub const MIN_LEN: usize = 4;
/// Values longer than this are refused (an environment variable, not a file store).
pub const MAX_LEN: usize = 64 * 1024;
/// How many versions of a secret are kept (the current one included).
pub const KEEP_VERSIONS: usize = 10;

/// Where a secret is defined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    Instance,
    Project { project: u64 },
    Environment { project: u64, environment: String },
}

impl Scope {
    /// The storage key: `instance`, `project:3`, `project:3/environment:staging`.
    pub fn key(&self) -> String {
        match self {
            Scope::Instance => "instance".into(),
            Scope::Project { project } => format!("project:{project}"),
            Scope::Environment {
                project,
                environment,
            } => format!("project:{project}/environment:{environment}"),
        }
    }

    /// How people read it: `instance`, `project`, `environment staging`.
    pub fn label(&self) -> String {
        match self {
            Scope::Instance => "instance".into(),
            Scope::Project { .. } => "project".into(),
            Scope::Environment { environment, .. } => format!("environment {environment}"),
        }
    }

    /// The scopes a project's steps see, most specific first.
    fn chain(project: u64, environment: Option<&str>) -> Vec<Scope> {
        let mut chain = Vec::new();
        if let Some(environment) = environment {
            chain.push(Scope::Environment {
                project,
                environment: environment.to_string(),
            });
        }
        chain.extend([Scope::Project { project }, Scope::Instance]);
        chain
    }
}

/// A secret: its name, scope and the versions kept, oldest first; the last is current.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    pub scope: Scope,
    pub versions: Vec<Version>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    /// Sealed for [`context`] of this scope, name and version.
    pub sealed: Sealed,
    pub created_by: String,
    pub created_at: Timestamp,
    /// Set when this version was made by restoring an older one.
    #[serde(default)]
    pub restored_from: Option<u64>,
}

impl Secret {
    pub fn current(&self) -> &Version {
        self.versions.last().expect("a stored secret has a version")
    }

    /// Adds `value` as the next version, sealed for its own slot, and drops the oldest
    /// beyond [`KEEP_VERSIONS`]. Returns the new version number.
    fn push(
        &mut self,
        key: &MasterKey,
        value: &str,
        created_by: String,
        restored_from: Option<u64>,
    ) -> u64 {
        let version = self.versions.last().map_or(1, |v| v.version + 1);
        self.versions.push(Version {
            version,
            sealed: key.seal(value, &context(&self.scope, &self.name, version)),
            created_by,
            created_at: Timestamp::now(),
            restored_from,
        });
        let excess = self.versions.len().saturating_sub(KEEP_VERSIONS);
        self.versions.drain(..excess);
        version
    }
}

/// What a version's ciphertext is bound to: it opens in no other slot.
pub fn context(scope: &Scope, name: &str, version: u64) -> String {
    format!("secret:{}/{name}@{version}", scope.key())
}

/// A secret read by a run, kept on the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRead {
    pub step: String,
    pub name: String,
    /// The environment variable the step got it as.
    pub env: String,
    /// `instance`, `project` or `environment NAME`.
    pub scope: String,
    pub version: u64,
    pub at: Timestamp,
}

/// Secret names are environment variable names; `BETCYCLE_*` belongs to BetCycle.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if !valid {
        return Err(Error::Invalid(format!(
            "secret name \"{name}\": use letters, digits and _ (not starting with a digit, at most 128)"
        )));
    }
    if name.starts_with("BETCYCLE_") {
        return Err(Error::Invalid(format!(
            "secret name \"{name}\": BETCYCLE_* names are reserved for BetCycle's own variables"
        )));
    }
    Ok(())
}

pub fn check_value(name: &str, value: &str) -> Result<()> {
    if value.chars().count() < MIN_LEN {
        return Err(Error::Invalid(format!(
            "the value of {name} is shorter than {MIN_LEN} characters; \
             masking it in logs would hide too much"
        )));
    }
    if value.len() > MAX_LEN {
        return Err(Error::Invalid(format!(
            "the value of {name} is longer than {} KiB",
            MAX_LEN / 1024
        )));
    }
    if value.contains('\0') {
        return Err(Error::Invalid(format!(
            "the value of {name} contains a NUL byte, which no environment variable can hold"
        )));
    }
    Ok(())
}

/// Opens the master key for this store. With `create`, a missing key file is created —
/// unless the store already holds values sealed under some key: then the key file was
/// lost, and making a new one would only hide that. A key that is not the one the store
/// was sealed with is refused before anything is written. Finishes a key rotation that
/// was interrupted between its commit and its rename.
pub async fn open_master_key(path: &Path, create: bool, store: &Store) -> Result<MasterKey> {
    let check = store.master_key_check().await?;
    let next = next_key_path(path);
    if let Some(key) = MasterKey::read(&next)? {
        if check.as_ref().is_some_and(|c| key.verifies(c)) {
            // The rotation committed; only the rename was missing.
            std::fs::rename(&next, path).map_err(Error::io(format!(
                "cannot finish the master key rotation: rename {} to {}",
                next.display(),
                path.display()
            )))?;
            tracing::warn!(path = %path.display(), "finished an interrupted master key rotation");
        } else {
            // The rotation never committed: the old key is still the one.
            let _ = std::fs::remove_file(&next);
        }
    }
    let key = match (MasterKey::read(path)?, &check) {
        (Some(key), _) => key,
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "the master key file {} is missing, but this database holds values sealed with a \
                 master key; restore the key file from your backup (or set master_key_file to where it is)",
                path.display()
            )));
        }
        (None, None) if create => {
            let key = MasterKey::generate();
            key.write(path)?;
            tracing::info!(path = %path.display(), "created the master key; back it up with the database");
            key
        }
        (None, None) => {
            return Err(Error::Invalid(format!(
                "the master key file {} does not exist",
                path.display()
            )));
        }
    };
    match check {
        Some(check) if !key.verifies(&check) => Err(Error::Invalid(format!(
            "the master key in {} (key id {}) is not the key this database's secrets were sealed \
             with; start with the right master_key_file, or restore the key from your backup. \
             Nothing was changed",
            path.display(),
            key.id()
        ))),
        Some(_) => Ok(key),
        None => {
            store.set_master_key_check(key.check_value()).await?;
            Ok(key)
        }
    }
}

/// Where a rotation writes the new key before it commits.
fn next_key_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

/// Re-wraps every data key (secrets and the key check) under a new master key, in one
/// transaction, and replaces the key file. The new key is written next to the old one
/// first; [`open_master_key`] completes or discards a rotation a crash interrupted.
pub async fn rotate_master_key(
    path: &Path,
    old: &MasterKey,
    store: &Store,
    audit: &Context,
) -> Result<(MasterKey, usize)> {
    let new = MasterKey::generate();
    let next = next_key_path(path);
    new.write(&next)?;
    let (from, to) = (old.clone(), new.clone());
    let rewrapped = store
        .rewrap_secrets(
            move |sealed, context| from.rewrap(sealed, context, &to),
            new.check_value(),
            Record::new(audit, "master_key.rotate", "instance").detail(format!(
                "key {} replaced by key {}",
                old.id(),
                new.id()
            )),
        )
        .await;
    let count = match rewrapped {
        Ok(count) => count,
        Err(e) => {
            let _ = std::fs::remove_file(&next);
            return Err(e);
        }
    };
    std::fs::rename(&next, path).map_err(Error::io(format!(
        "the database now uses the key in {}, but it could not be renamed to {}",
        next.display(),
        path.display()
    )))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok((new, count))
}

/// The secret store: sets, restores, deletes, lists and reveals secrets.
#[derive(Clone)]
pub struct Secrets {
    store: Store,
    key: MasterKey,
}

impl Secrets {
    pub fn new(store: Store, key: MasterKey) -> Self {
        Self { store, key }
    }

    /// The public id of the master key sealing these secrets.
    pub fn master_key_id(&self) -> String {
        self.key.id()
    }

    /// Sets a new version of `name` in `scope`.
    pub async fn set(
        &self,
        scope: Scope,
        name: &str,
        value: String,
        audit: &Context,
    ) -> Result<Secret> {
        check_name(name)?;
        check_value(name, &value)?;
        let (key, actor, name_owned, scope_for) = (
            self.key.clone(),
            audit.actor.clone(),
            name.to_string(),
            scope.clone(),
        );
        self.store
            .update_secret(
                scope.clone(),
                name.to_string(),
                move |current| {
                    let mut secret = current.unwrap_or(Secret {
                        name: name_owned,
                        scope: scope_for,
                        versions: Vec::new(),
                    });
                    let version = secret.push(&key, &value, actor, None);
                    Ok((Some(secret), format!("version {version}")))
                },
                Record::new(audit, "secret.set", target(&scope, name)),
            )
            .await
            .map(|s| s.expect("set keeps the secret"))
    }

    /// Makes an older version current again, as a new version with the same value.
    pub async fn restore(
        &self,
        scope: Scope,
        name: &str,
        version: u64,
        audit: &Context,
    ) -> Result<Secret> {
        let (key, actor, name_owned, scope_for) = (
            self.key.clone(),
            audit.actor.clone(),
            name.to_string(),
            scope.clone(),
        );
        self.store
            .update_secret(
                scope.clone(),
                name.to_string(),
                move |current| {
                    let mut secret = current.ok_or_else(|| not_found(&scope_for, &name_owned))?;
                    let old = secret
                        .versions
                        .iter()
                        .find(|v| v.version == version)
                        .ok_or_else(|| Error::NotFound {
                            what: format!(
                                "version {version} of secret {name_owned} (versions kept: {})",
                                secret
                                    .versions
                                    .iter()
                                    .map(|v| v.version.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })?;
                    let value =
                        key.open(&old.sealed, &context(&scope_for, &name_owned, version))?;
                    let new = secret.push(&key, &value, actor, Some(version));
                    Ok((
                        Some(secret),
                        format!("version {new} from version {version}"),
                    ))
                },
                Record::new(audit, "secret.restore", target(&scope, name)),
            )
            .await
            .map(|s| s.expect("restore keeps the secret"))
    }

    /// Deletes a secret with every version it has.
    pub async fn delete(&self, scope: Scope, name: &str, audit: &Context) -> Result<()> {
        let (name_owned, scope_for) = (name.to_string(), scope.clone());
        self.store
            .update_secret(
                scope.clone(),
                name.to_string(),
                move |current| {
                    let secret = current.ok_or_else(|| not_found(&scope_for, &name_owned))?;
                    Ok((None, format!("{} versions", secret.versions.len())))
                },
                Record::new(audit, "secret.delete", target(&scope, name)),
            )
            .await
            .map(|_| ())
    }

    pub async fn get(&self, scope: &Scope, name: &str) -> Result<Option<Secret>> {
        self.store.secret(scope.key(), name.to_string()).await
    }

    pub async fn list(&self, scope: &Scope) -> Result<Vec<Secret>> {
        self.store.secrets_in(scope.key()).await
    }

    /// The current value of a project secret, for BetCycle's own use (webhook
    /// verification, commit statuses); never for a client.
    /// An instance secret's current value, for BetCycle's own use (a notification
    /// channel's URL or signing key).
    pub async fn instance_value(&self, name: &str) -> Result<Option<String>> {
        self.value_of(Scope::Instance, name).await
    }

    pub async fn project_value(&self, project: u64, name: &str) -> Result<Option<String>> {
        self.value_of(Scope::Project { project }, name).await
    }

    /// The current value of secret `name` in `scope`, opened.
    async fn value_of(&self, scope: Scope, name: &str) -> Result<Option<String>> {
        match self.get(&scope, name).await? {
            None => Ok(None),
            Some(secret) => {
                let v = secret.current();
                self.key
                    .open(&v.sealed, &context(&scope, name, v.version))
                    .map(Some)
            }
        }
    }

    /// The values asked for: each `(name, env)` resolved in the project's scope chain,
    /// with what was read. A missing secret fails the whole lookup, naming every missing
    /// one. Callers record the reads before they hand a value on ([`Secrets::reveal`]).
    pub async fn resolve(
        &self,
        project: u64,
        environment: Option<&str>,
        step: &str,
        wanted: &[(String, String)],
    ) -> Result<(Vec<(String, String)>, Vec<SecretRead>)> {
        let chain = Scope::chain(project, environment);
        let mut values = Vec::new();
        let mut reads = Vec::new();
        let mut missing = Vec::new();
        for (name, env) in wanted {
            let mut found = None;
            for scope in &chain {
                if let Some(secret) = self.get(scope, name).await? {
                    found = Some((scope.clone(), secret));
                    break;
                }
            }
            let Some((scope, secret)) = found else {
                missing.push(name.clone());
                continue;
            };
            let v = secret.current();
            values.push((
                env.clone(),
                self.key
                    .open(&v.sealed, &context(&scope, name, v.version))?,
            ));
            reads.push(SecretRead {
                step: step.to_string(),
                name: name.clone(),
                env: env.clone(),
                scope: scope.label(),
                version: v.version,
                at: Timestamp::now(),
            });
        }
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "secret {} {} not set (not for the {}project, nor for the instance)",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                environment
                    .map(|e| format!("environment {e}, the "))
                    .unwrap_or_default()
            )));
        }
        Ok((values, reads))
    }

    /// The values a run's step asked for; every read is recorded on the run and in the
    /// audit log before a value is returned.
    pub async fn reveal(
        &self,
        run: &crate::ci::run::Run,
        project: u64,
        environment: Option<&str>,
        step: &str,
        wanted: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        let (values, reads) = self.resolve(project, environment, step, wanted).await?;
        let detail = describe_reads(&reads);
        self.store
            .record_secret_reads(
                run.id,
                reads,
                Record::new(
                    &Context::system(format!("run:{}#{}", run.project, run.number)),
                    "secret.read",
                    format!("run:{}#{}", run.project, run.number),
                )
                .detail(format!("step {step}: {detail}")),
            )
            .await?;
        Ok(values)
    }
}

impl Secrets {
    /// Moves the project credentials of BetCycle 0.5 (`webhook_secret`, `forge_token`,
    /// sealed for `project:ID/NAME`) into the store as project secrets.
    pub async fn adopt_project_credentials(&self) -> Result<usize> {
        let key = self.key.clone();
        self.store
            .adopt_project_credentials(move |project, old_name, sealed| {
                let value = key.open(&sealed, &format!("project:{project}/{old_name}"))?;
                let name = old_name.to_ascii_uppercase();
                let scope = Scope::Project { project };
                Ok(Secret {
                    versions: vec![Version {
                        version: 1,
                        sealed: key.seal(&value, &context(&scope, &name, 1)),
                        created_by: "system".into(),
                        created_at: Timestamp::now(),
                        restored_from: None,
                    }],
                    name,
                    scope,
                })
            })
            .await
    }
}

/// `A (project v2), B (instance v1)`, for audit entries.
pub fn describe_reads(reads: &[SecretRead]) -> String {
    reads
        .iter()
        .map(|r| format!("{} ({} v{})", r.name, r.scope, r.version))
        .collect::<Vec<_>>()
        .join(", ")
}

fn target(scope: &Scope, name: &str) -> String {
    format!("secret:{}/{name}", scope.key())
}

fn not_found(scope: &Scope, name: &str) -> Error {
    Error::NotFound {
        what: format!("secret {name} ({})", scope.label()),
    }
}

#[cfg(test)]
mod tests;
