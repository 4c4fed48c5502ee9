//! Stored projects. The slug is fixed at creation: role bindings and (later) runs refer
//! to it.

use super::tables::{POLL_STATES, PROJECT_SLUGS, PROJECTS, ROLE_BINDINGS, SCHEDULES};
use super::{Store, codec};
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::identity::{Role, RoleBinding, Team, User};
use crate::projects::{self, Project, ProjectChange};
use redb::{ReadableDatabase, ReadableTable};
use std::collections::BTreeMap;

impl Store {
    pub async fn create_project(&self, change: ProjectChange, audit: Record) -> Result<Project> {
        self.write(move |tx| {
            let slug = change
                .slug
                .clone()
                .ok_or_else(|| Error::Invalid("a project needs a slug".into()))?;
            if change.repository.is_none() {
                return Err(Error::Invalid("a project needs a repository".into()));
            }
            if tx.open_table(PROJECT_SLUGS)?.get(slug.as_str())?.is_some() {
                return Err(Error::Conflict(format!(
                    "project \"{slug}\" already exists"
                )));
            }
            let id = tx
                .open_table(PROJECTS)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            let mut project = Project {
                id,
                slug: slug.clone(),
                name: slug.clone(),
                repository: String::new(),
                default_branch: projects::DEFAULT_BRANCH.into(),
                pipeline_path: projects::DEFAULT_PIPELINE.into(),
                owner_team: None,
                created_at: jiff::Timestamp::now(),
                forge: None,
                poll_interval: None,
                isolation: Default::default(),
                container_host_access: false,
                status_page: false,
            };
            projects::apply(&mut project, change).map_err(Error::Invalid)?;
            tx.open_table(PROJECTS)?
                .insert(id, codec::encode(&project).as_slice())?;
            tx.open_table(PROJECT_SLUGS)?
                .insert(project.slug.as_str(), id)?;
            tx.audit(audit.detail(format!("repository {}", project.repository)))?;
            Ok(project)
        })
        .await
    }

    pub async fn project(&self, slug: &str) -> Result<Option<Project>> {
        let slug = slug.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let Some(id) = tx
                .open_table(PROJECT_SLUGS)?
                .get(slug.as_str())?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            match tx.open_table(PROJECTS)?.get(id)? {
                Some(v) => Ok(Some(codec::decode(PROJECTS, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every project, by slug.
    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(PROJECTS)?;
            let mut out: Vec<Project> = Vec::new();
            for item in t.iter()? {
                out.push(codec::decode(PROJECTS, item?.1.value())?);
            }
            out.sort_by(|a, b| a.slug.cmp(&b.slug));
            Ok(out)
        })
        .await
    }

    pub async fn update_project(
        &self,
        slug: &str,
        change: ProjectChange,
        audit: Record,
    ) -> Result<Project> {
        let slug = slug.to_string();
        self.write(move |tx| {
            if change.slug.as_ref().is_some_and(|s| *s != slug) {
                return Err(Error::Invalid("a project's slug cannot change".into()));
            }
            let id = tx
                .open_table(PROJECT_SLUGS)?
                .get(slug.as_str())?
                .map(|v| v.value())
                .ok_or_else(|| Error::NotFound {
                    what: format!("project \"{slug}\""),
                })?;
            let mut projects = tx.open_table(PROJECTS)?;
            let mut project: Project = match projects.get(id)? {
                Some(v) => codec::decode(PROJECTS, v.value())?,
                None => {
                    return Err(Error::NotFound {
                        what: format!("project \"{slug}\""),
                    });
                }
            };
            projects::apply(&mut project, change).map_err(Error::Invalid)?;
            projects.insert(id, codec::encode(&project).as_slice())?;
            drop(projects);
            tx.audit(audit)?;
            Ok(project)
        })
        .await
    }

    /// Deletes a project and its role bindings.
    pub async fn delete_project(&self, slug: &str, audit: Record) -> Result<()> {
        let slug = slug.to_string();
        self.write(move |tx| {
            let id = tx
                .open_table(PROJECT_SLUGS)?
                .remove(slug.as_str())?
                .map(|v| v.value())
                .ok_or_else(|| Error::NotFound {
                    what: format!("project \"{slug}\""),
                })?;
            tx.open_table(PROJECTS)?.remove(id)?;
            // Its secrets, schedules and poll state go with it.
            super::secrets::remove_project_secrets(tx, id)?;
            super::deploy::remove_project_environments(tx, &slug)?;
            tx.open_table(POLL_STATES)?.remove(id)?;
            let mut schedules = tx.open_table(SCHEDULES)?;
            let mut doomed = Vec::new();
            for item in schedules.iter()? {
                let (k, v) = item?;
                let schedule: crate::projects::schedule::Schedule =
                    codec::decode(SCHEDULES, v.value())?;
                if schedule.project == slug {
                    doomed.push(k.value());
                }
            }
            for key in doomed {
                schedules.remove(key)?;
            }
            drop(schedules);
            let mut bindings = tx.open_table(ROLE_BINDINGS)?;
            let mut keys = Vec::new();
            for item in bindings.range((slug.as_str(), "")..)? {
                let (k, _) = item?;
                let (project, subject) = k.value();
                if project != slug {
                    break;
                }
                keys.push(subject.to_string());
            }
            for subject in keys {
                bindings.remove((slug.as_str(), subject.as_str()))?;
            }
            drop(bindings);
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// A project's role bindings.
    pub async fn project_members(&self, slug: &str) -> Result<Vec<RoleBinding>> {
        let slug = slug.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(ROLE_BINDINGS)?;
            let mut out = Vec::new();
            for item in t.range((slug.as_str(), "")..)? {
                let (k, v) = item?;
                if k.value().0 != slug {
                    break;
                }
                out.push(codec::decode(ROLE_BINDINGS, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// The role `user` holds on every project where they hold one.
    pub async fn project_roles_of(&self, user: &User) -> Result<BTreeMap<String, Role>> {
        let user = user.clone();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let teams: Vec<Team> = {
                let t = tx.open_table(super::tables::TEAMS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    out.push(codec::decode(super::tables::TEAMS, item?.1.value())?);
                }
                out
            };
            let t = tx.open_table(ROLE_BINDINGS)?;
            let mut by_project: BTreeMap<String, Vec<RoleBinding>> = BTreeMap::new();
            for item in t.iter()? {
                let b: RoleBinding = codec::decode(ROLE_BINDINGS, item?.1.value())?;
                by_project.entry(b.project.clone()).or_default().push(b);
            }
            Ok(by_project
                .into_iter()
                .filter_map(|(p, bindings)| {
                    crate::identity::project_role(&user, &teams, &bindings).map(|r| (p, r))
                })
                .collect())
        })
        .await
    }
}
