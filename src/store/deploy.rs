//! Stored environments, releases and deployments, the deploy queue and the per-environment
//! lock. Every deployment change publishes `DeploymentUpdated` after it commits.

use super::records;
use super::tables::{
    DEPLOY_CALLBACKS, DEPLOY_QUEUE, DEPLOYMENTS, DEPLOYS_ACTIVE, ENVIRONMENTS, PROJECT_DEPLOYMENTS,
    PROJECT_RELEASES, RELEASES,
};
use super::{Store, WriteTx, codec, quarantine};
use crate::core::error::{Error, Result};
use crate::core::events::Event;
use crate::delivery::{Deployment, DeploymentStatus, Environment, Release};
use crate::identity::audit::Record;
use redb::{ReadableDatabase, ReadableTable};

fn load(tx: &WriteTx, id: u64) -> Result<Deployment> {
    match tx.open_table(DEPLOYMENTS)?.get(id)? {
        Some(v) => codec::decode(DEPLOYMENTS, v.value()),
        None => Err(Error::NotFound {
            what: format!("deployment {id}"),
        }),
    }
}

/// Deployment `id`, met in the queue or the active set: one that does not decode is set
/// aside and taken out of both (`None`), so it cannot stop the deploy worker or start-up.
fn load_or_set_aside(tx: &WriteTx, id: u64) -> Result<Option<Deployment>> {
    match load(tx, id) {
        Ok(d) => Ok(Some(d)),
        Err(Error::Corrupt { reason, .. }) => {
            quarantine::set_aside(tx, DEPLOYMENTS, id, &reason)?;
            tx.open_table(DEPLOY_QUEUE)?.remove(id)?;
            let mut active = tx.open_table(DEPLOYS_ACTIVE)?;
            let keys: Vec<(String, String)> = active
                .iter()?
                .filter_map(|item| item.ok())
                .filter(|(_, v)| v.value() == id)
                .map(|(k, _)| {
                    let (p, e) = k.value();
                    (p.to_string(), e.to_string())
                })
                .collect();
            for (p, e) in keys {
                active.remove((p.as_str(), e.as_str()))?;
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Saves a deployment and keeps the queue and the active set in step with its status.
fn save(tx: &WriteTx, d: &Deployment) -> Result<()> {
    tx.open_table(DEPLOYMENTS)?
        .insert(d.id, codec::encode(d).as_slice())?;
    let mut queue = tx.open_table(DEPLOY_QUEUE)?;
    if d.status == DeploymentStatus::Queued {
        queue.insert(d.id, ())?;
    } else {
        queue.remove(d.id)?;
    }
    let mut active = tx.open_table(DEPLOYS_ACTIVE)?;
    let key = (d.project.as_str(), d.environment.as_str());
    if matches!(
        d.status,
        DeploymentStatus::Deploying | DeploymentStatus::Verifying
    ) {
        active.insert(key, d.id)?;
    } else if active.get(key)?.map(|v| v.value()) == Some(d.id) {
        active.remove(key)?;
    }
    tx.publish(Event::DeploymentUpdated {
        id: d.id,
        project: d.project.clone(),
        environment: d.environment.clone(),
        status: d.status,
    });
    Ok(())
}

/// The next number in a per-project index.
fn next_number(
    tx: &WriteTx,
    index: redb::TableDefinition<(&str, u64), u64>,
    project: &str,
) -> Result<u64> {
    let table = tx.open_table(index)?;
    let last = table
        .range((project, 0)..=(project, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(k, _)| k.value().1);
    Ok(last.map_or(1, |n| n + 1))
}

impl Store {
    /// A project's environments, in their order.
    pub async fn environments(&self, project: &str) -> Result<Vec<Environment>> {
        let project = project.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(ENVIRONMENTS)?;
            let mut out: Vec<Environment> = Vec::new();
            for item in table.range((project.as_str(), "")..=(project.as_str(), "\u{10ffff}"))? {
                out.push(codec::decode(ENVIRONMENTS, item?.1.value())?);
            }
            out.sort_by_key(|e| (e.position, e.name.clone()));
            Ok(out)
        })
        .await
    }

    /// Creates or replaces an environment.
    pub async fn put_environment(&self, environment: Environment, audit: Record) -> Result<()> {
        self.write(move |tx| {
            let key = (environment.project.as_str(), environment.name.as_str());
            let existed = tx
                .open_table(ENVIRONMENTS)?
                .insert(key, codec::encode(&environment).as_slice())?
                .is_some();
            tx.audit(audit.detail(format!(
                "{} environment {} (position {})",
                if existed { "updated" } else { "created" },
                environment.name,
                environment.position
            )))?;
            Ok(())
        })
        .await
    }

    pub async fn delete_environment(&self, project: &str, name: &str, audit: Record) -> Result<()> {
        let (project, name) = (project.to_string(), name.to_string());
        self.write(move |tx| {
            tx.open_table(ENVIRONMENTS)?
                .remove((project.as_str(), name.as_str()))?
                .ok_or_else(|| Error::NotFound {
                    what: format!("environment {name} of project \"{project}\""),
                })?;
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// Stores a new release (its `id` and `number` are assigned here).
    pub async fn create_release(&self, mut release: Release) -> Result<Release> {
        self.write(move |tx| {
            release.id = tx
                .open_table(RELEASES)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            release.number = next_number(tx, PROJECT_RELEASES, &release.project)?;
            tx.open_table(RELEASES)?
                .insert(release.id, codec::encode(&release).as_slice())?;
            tx.open_table(PROJECT_RELEASES)?
                .insert((release.project.as_str(), release.number), release.id)?;
            Ok(release)
        })
        .await
    }

    pub async fn release(&self, project: &str, number: u64) -> Result<Option<Release>> {
        let project = project.to_string();
        self.read(move |db| {
            records::by_number(
                &db.begin_read()?,
                PROJECT_RELEASES,
                RELEASES,
                &project,
                number,
            )
        })
        .await
    }

    /// A project's releases, newest first.
    pub async fn releases(&self, project: &str, limit: usize) -> Result<Vec<Release>> {
        let project = project.to_string();
        self.read(move |db| {
            records::newest(
                &db.begin_read()?,
                PROJECT_RELEASES,
                RELEASES,
                &project,
                limit,
            )
        })
        .await
    }

    /// Stores a new deployment (`id` and `number` assigned here), queued if its status
    /// says so.
    pub async fn create_deployment(
        &self,
        mut deployment: Deployment,
        audit: Record,
    ) -> Result<Deployment> {
        self.write(move |tx| {
            deployment.id = tx
                .open_table(DEPLOYMENTS)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            deployment.number = next_number(tx, PROJECT_DEPLOYMENTS, &deployment.project)?;
            save(tx, &deployment)?;
            tx.open_table(PROJECT_DEPLOYMENTS)?.insert(
                (deployment.project.as_str(), deployment.number),
                deployment.id,
            )?;
            tx.audit(audit.detail(format!(
                "deployment #{} of release {} to {}: {}",
                deployment.number,
                deployment.release_number,
                deployment.environment,
                deployment.status.as_str()
            )))?;
            Ok(deployment)
        })
        .await
    }

    /// Changes a deployment; `change` may refuse with an error (nothing is written). With
    /// `audit`, the change is recorded in the same transaction.
    pub async fn update_deployment(
        &self,
        id: u64,
        change: impl FnOnce(&mut Deployment) -> Result<()> + Send + 'static,
        audit: Option<Record>,
    ) -> Result<Deployment> {
        self.write(move |tx| {
            let mut d = load(tx, id)?;
            change(&mut d)?;
            if d.status.is_finished() && d.finished_at.is_none() {
                d.finished_at = Some(jiff::Timestamp::now());
            }
            save(tx, &d)?;
            if let Some(audit) = audit {
                tx.audit(audit)?;
            }
            Ok(d)
        })
        .await
    }

    pub async fn deployment(&self, project: &str, number: u64) -> Result<Option<Deployment>> {
        let project = project.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            records::by_number(&tx, PROJECT_DEPLOYMENTS, DEPLOYMENTS, &project, number)
        })
        .await
    }

    pub async fn deployment_by_id(&self, id: u64) -> Result<Option<Deployment>> {
        self.read(move |db| records::by_id(&db.begin_read()?, DEPLOYMENTS, id))
            .await
    }

    /// A project's deployments, newest first.
    pub async fn deployments(&self, project: &str, limit: usize) -> Result<Vec<Deployment>> {
        let project = project.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            records::newest(&tx, PROJECT_DEPLOYMENTS, DEPLOYMENTS, &project, limit)
        })
        .await
    }

    /// Takes the oldest queued deployment whose environment has none in progress and
    /// marks it deploying, in one transaction.
    pub async fn claim_next_deployment(&self) -> Result<Option<Deployment>> {
        self.write(|tx| {
            let queued: Vec<u64> = tx
                .open_table(DEPLOY_QUEUE)?
                .iter()?
                .map(|item| item.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()?;
            for id in queued {
                let Some(mut d) = load_or_set_aside(tx, id)? else {
                    continue;
                };
                let busy = tx
                    .open_table(DEPLOYS_ACTIVE)?
                    .get((d.project.as_str(), d.environment.as_str()))?
                    .is_some();
                if busy {
                    continue;
                }
                d.status = DeploymentStatus::Deploying;
                d.started_at = Some(jiff::Timestamp::now());
                d.note("betcycle", "deploying");
                save(tx, &d)?;
                return Ok(Some(d));
            }
            Ok(None)
        })
        .await
    }

    /// Deployments a previous process left in progress: failed, since nobody knows how far
    /// their target got. Returns how many.
    pub async fn fail_interrupted_deployments(&self) -> Result<usize> {
        self.write(|tx| {
            let ids: Vec<u64> = tx
                .open_table(DEPLOYS_ACTIVE)?
                .iter()?
                .map(|item| item.map(|(_, v)| v.value()))
                .collect::<std::result::Result<_, _>>()?;
            for id in &ids {
                let Some(mut d) = load_or_set_aside(tx, *id)? else {
                    continue;
                };
                d.status = DeploymentStatus::Failed;
                d.finished_at = Some(jiff::Timestamp::now());
                d.message =
                    "interrupted by a server restart; check the target and deploy again".into();
                d.note("betcycle", "failed: interrupted by a restart");
                save(tx, &d)?;
            }
            Ok(ids.len())
        })
        .await
    }

    /// Remembers a one-time callback token (its digest) for a deployment.
    pub async fn set_deploy_callback(&self, digest: String, id: u64) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(DEPLOY_CALLBACKS)?
                .insert(digest.as_str(), id)?;
            Ok(())
        })
        .await
    }

    /// Uses up a callback token: the deployment it was for, once.
    pub async fn take_deploy_callback(&self, digest: String) -> Result<Option<u64>> {
        self.write(move |tx| {
            Ok(tx
                .open_table(DEPLOY_CALLBACKS)?
                .remove(digest.as_str())?
                .map(|v| v.value()))
        })
        .await
    }
}

/// Removes a project's environments (the project is deleted); its releases and
/// deployments stay as history.
pub(super) fn remove_project_environments(tx: &WriteTx, project: &str) -> Result<()> {
    let mut table = tx.open_table(ENVIRONMENTS)?;
    let names: Vec<String> = table
        .range((project, "")..=(project, "\u{10ffff}"))?
        .map(|item| item.map(|(k, _)| k.value().1.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    for name in names {
        table.remove((project, name.as_str()))?;
    }
    Ok(())
}
