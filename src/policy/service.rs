//! The server's policies: stored modules per scope, the repository's own modules at a
//! commit, evaluation at a gate, and the decision log.

use super::{Decision, Gate, Module, Policy, check_module, check_name};
use crate::core::error::{Error, Result};
use crate::identity::audit::{Context, Record};
use crate::store::Store;
use std::path::Path;

/// Where a repository keeps policies that add to the server's.
pub const REPOSITORY_DIR: &str = ".betcycle/policies";

#[derive(Clone)]
pub struct Policies {
    store: Store,
    /// Evaluates off the server process, with time and memory limits.
    evaluator: std::sync::Arc<super::evaluator::Evaluator>,
}

/// What to decide on, for the log.
pub struct Subject<'a> {
    pub project: &'a str,
    pub gate: Gate,
    pub subject: String,
    pub stage: &'a str,
}

impl Policies {
    pub fn new(store: Store) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| "betcycle".into());
        Self {
            store,
            evaluator: std::sync::Arc::new(super::evaluator::Evaluator::new(exe)),
        }
    }

    /// Installs the starter policies once per database.
    pub async fn seed(&self) -> Result<bool> {
        let modules = super::starter()
            .into_iter()
            .map(|m| {
                let gate = check_module(&m).expect("starter policies parse");
                (m.name, gate, m.source)
            })
            .collect();
        self.store.seed_starter_policies(modules).await
    }

    /// Checks and stores a new version; a module that does not parse is refused with its
    /// line and column.
    pub async fn set(
        &self,
        scope: &str,
        name: &str,
        source: String,
        audit: &Context,
    ) -> Result<Policy> {
        check_name(name).map_err(Error::Invalid)?;
        let gate = check_module(&Module {
            name: name.to_string(),
            source: source.clone(),
        })
        .map_err(Error::Invalid)?;
        self.store
            .put_policy(
                scope,
                name,
                gate,
                source,
                Record::new(audit, "policy.set", format!("policy:{scope}/{name}")),
            )
            .await
    }

    /// The instance's policies and the project's, current versions.
    async fn server_modules(&self, project: &str) -> Result<(Vec<Module>, Vec<String>)> {
        let mut modules = Vec::new();
        let mut labels = Vec::new();
        for scope in ["instance".to_string(), format!("project:{project}")] {
            for p in self.store.policies(&scope).await? {
                labels.push(p.label());
                modules.push(Module {
                    name: format!("{}/{}", p.scope, p.name),
                    source: p.current().source.clone(),
                });
            }
        }
        Ok((modules, labels))
    }

    /// The repository's modules under `.betcycle/policies/` at `commit`; an error when the
    /// mirror cannot say (the gate then stays closed, never open).
    pub async fn repository_modules(mirror: &Path, commit: &str) -> Result<Vec<Module>> {
        let listing = crate::core::git::git(
            &[
                "ls-tree",
                "--name-only",
                commit,
                &format!("{REPOSITORY_DIR}/"),
            ],
            Some(mirror),
        )
        .await
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot list {REPOSITORY_DIR} at {commit} in the repository's mirror: {e}"
            ))
        })?;
        let mut modules = Vec::new();
        for path in listing.lines().filter(|p| p.ends_with(".rego")) {
            if let Some(source) = crate::core::git::read_file(mirror, commit, path).await? {
                modules.push(Module {
                    name: format!("repository/{path}"),
                    source,
                });
            }
        }
        Ok(modules)
    }

    /// Evaluates a gate with the server's policies and the repository's `repository`
    /// modules, and records the decision.
    pub async fn evaluate(
        &self,
        what: Subject<'_>,
        input: serde_json::Value,
        repository: Vec<Module>,
    ) -> Result<Decision> {
        let (modules, mut labels) = self.server_modules(what.project).await?;
        labels.extend(repository.iter().map(|m| m.name.clone()));
        let gate = what.gate;
        // The server's modules and the repository's are evaluated apart: the repository's
        // denies add to the server's, its exceptions only touch its own rules.
        let started = std::time::Instant::now();
        let mut outcome = self.evaluator.evaluate(&modules, gate, &input).await;
        let mut theirs = self.evaluator.evaluate(&repository, gate, &input).await;
        for m in theirs.denies.iter_mut().chain(theirs.warnings.iter_mut()) {
            m.rule = format!("repository:{}", m.rule);
        }
        outcome.merge(theirs);
        let took = started.elapsed();
        self.store
            .record_decision(Decision {
                id: 0,
                project: what.project.to_string(),
                gate,
                subject: what.subject,
                stage: what.stage.to_string(),
                at: jiff::Timestamp::now(),
                policies: labels,
                input,
                allowed: outcome.denies.is_empty() && outcome.errors.is_empty(),
                denies: outcome.denies,
                warnings: outcome.warnings,
                errors: outcome.errors,
                duration_us: took.as_micros() as u64,
            })
            .await
    }
}

/// A gate's answer: the recorded decision, why it refuses (if it does) and its warnings.
pub struct Verdict {
    pub decision: u64,
    pub refusal: Option<String>,
    pub warnings: Vec<String>,
}

impl Policies {
    /// The one way a gate is passed: evaluates `what` with the server's policies and the
    /// repository's `repository` modules, records the decision, and says whether the gate
    /// refuses (denies always; evaluation errors unless `fail_open`).
    pub async fn gate(
        &self,
        what: Subject<'_>,
        input: serde_json::Value,
        repository: Vec<Module>,
        fail_open: bool,
    ) -> Result<Verdict> {
        let decision = self.evaluate(what, input, repository).await?;
        Ok(Verdict {
            decision: decision.id,
            refusal: decision.refusal(fail_open),
            warnings: decision.warnings.into_iter().map(|w| w.msg).collect(),
        })
    }

    /// The repository's own policies at `commit`, read from its mirror. A commit that was
    /// built is there: read it, fetching only when it is missing (a mirror removed
    /// meanwhile). When they cannot be read the gate stays closed (`Unavailable`) — a forge
    /// outage must not loosen it.
    pub async fn repository_modules_of(
        mirrors: &crate::core::git::Mirrors,
        project: &crate::projects::Project,
        commit: &str,
        gate: Gate,
    ) -> Result<Vec<Module>> {
        let mirror = mirrors.path(project.id);
        if let Ok(modules) = Self::repository_modules(&mirror, commit).await {
            return Ok(modules);
        }
        let read = match mirrors.fetch_locked(project.id, &project.repository).await {
            Ok(mirror) => Self::repository_modules(&mirror, commit).await,
            Err(e) => Err(e),
        };
        read.map_err(|e| {
            Error::Unavailable(format!(
                "the {} gate cannot read the repository's policies at {}, so it stays closed: {e}",
                gate.as_str(),
                &commit[..commit.len().min(12)]
            ))
        })
    }
}

impl Decision {
    /// Why it is refused, or `None`: denies always, errors unless `fail_open`.
    pub fn refusal(&self, fail_open: bool) -> Option<String> {
        if !self.denies.is_empty() {
            let msgs: Vec<&str> = self.denies.iter().map(|m| m.msg.as_str()).collect();
            return Some(format!("denied by policy: {}", msgs.join("; ")));
        }
        if !self.errors.is_empty() && !fail_open {
            return Some(format!(
                "a policy failed to evaluate, so the gate stays closed: {}",
                self.errors.join("; ")
            ));
        }
        None
    }
}
