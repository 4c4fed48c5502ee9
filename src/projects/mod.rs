//! Projects: a git repository with a pipeline file, and who may do what with it.

pub mod forge;
pub mod inbox;
pub mod poll;
pub mod schedule;
pub mod schedules;
mod views;

pub use views::{
    Member, ProjectDetail, ProjectView, bind_member, detail, find, member_views, visible,
    webhook_url,
};

use crate::projects::forge::ForgeLink;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Project {
    pub id: u64,
    /// URL-safe identifier, unique: `a-z 0-9 . _ -`.
    pub slug: String,
    pub name: String,
    /// A remote git URL (https://, ssh://, git@host:path, file://) or a local path.
    pub repository: String,
    pub default_branch: String,
    pub pipeline_path: String,
    /// The team that owns the project, if any.
    #[serde(default)]
    pub owner_team: Option<String>,
    pub created_at: Timestamp,
    /// Where the repository lives on its forge (for commit statuses and commit links).
    #[serde(default)]
    pub forge: Option<ForgeLink>,
    /// How often the repository's branches and tags are checked for changes (`5m`); no
    /// polling when absent (webhooks then trigger runs).
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// How far its local steps are confined (see `exec::local::sandbox`); only an
    /// administrator changes it.
    #[serde(default)]
    pub isolation: crate::exec::local::sandbox::Isolation,
    /// Whether its container steps may be privileged and mount host paths; only an
    /// administrator turns it on.
    #[serde(default)]
    pub container_host_access: bool,
    /// Whether its public status page (`/status/{slug}`) is shown; only an administrator
    /// turns it on.
    #[serde(default)]
    pub status_page: bool,
}

/// The project secret webhook deliveries are verified with.
pub const WEBHOOK_SECRET: &str = "WEBHOOK_SECRET";

/// The shortest polling interval.
pub const MIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Project {
    /// The polling interval, when polling is on.
    pub fn poll_every(&self) -> Option<std::time::Duration> {
        self.poll_interval
            .as_deref()
            .and_then(|p| crate::core::config::parse_duration(p).ok())
    }
}

/// What a caller sends to create or change a project; absent fields keep their value
/// (or take the default on creation).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProjectChange {
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub pipeline_path: Option<String>,
    #[serde(default)]
    pub owner_team: Option<String>,
    /// `github`, `gitea`, `forgejo` or `gitlab`; empty removes the forge link.
    #[serde(default)]
    pub forge_kind: Option<String>,
    /// The repository's web page on the forge.
    #[serde(default)]
    pub forge_url: Option<String>,
    /// The forge's API root, when it is not the usual one for `forge_url`.
    #[serde(default)]
    pub forge_api_url: Option<String>,
    /// A duration (`30s`, `5m`); empty or `off` turns polling off.
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// Set only through the administrators' isolation route, never from a request body.
    #[serde(skip)]
    pub isolation: Option<crate::exec::local::sandbox::Isolation>,
    /// Set only through the administrators' containers route.
    #[serde(skip)]
    pub container_host_access: Option<bool>,
    /// Set only through the administrators' status page route.
    #[serde(skip)]
    pub status_page: Option<bool>,
}

impl ProjectChange {
    /// Treats empty form fields as not given.
    pub fn without_empty(self) -> Self {
        let keep = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        Self {
            slug: keep(self.slug),
            name: keep(self.name),
            repository: keep(self.repository),
            default_branch: keep(self.default_branch),
            pipeline_path: keep(self.pipeline_path),
            owner_team: self.owner_team,
            forge_kind: self.forge_kind,
            forge_url: self.forge_url,
            forge_api_url: self.forge_api_url,
            poll_interval: self.poll_interval,
            isolation: self.isolation,
            container_host_access: self.container_host_access,
            status_page: self.status_page,
        }
    }
}

pub const DEFAULT_BRANCH: &str = "main";
pub const DEFAULT_PIPELINE: &str = ".betcycle.yml";

/// Checks a repository location: a URL git understands or an absolute local path.
pub fn validate_repository(repo: &str) -> Result<(), String> {
    let repo = repo.trim();
    let ok = ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|p| repo.starts_with(p) && repo.len() > p.len())
        || repo.starts_with('/')
        || (repo.contains('@') && repo.contains(':') && !repo.contains(' '));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid repository \"{repo}\": use an https://, ssh://, git://, file:// URL, user@host:path, or an absolute local path"
        ))
    }
}

/// Checks that BetCycle can read `repo` and that it has `branch` (or, when it has no such
/// branch, says which it has): what the console asks before it creates a project, so a
/// typo shows at once rather than at the first run. Gives up after 20 s.
pub async fn check_repository(repo: &str, branch: &str) -> Result<(), String> {
    validate_repository(repo)?;
    let listed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        crate::core::git::ls_remote(repo.trim()),
    )
    .await
    .map_err(|_| format!("cannot reach the repository {repo}: no answer within 20 s"))?
    .map_err(|e| format!("cannot read the repository {repo}: {e}"))?;
    let branches: Vec<&str> = listed
        .keys()
        .filter_map(|r| r.strip_prefix("refs/heads/"))
        .collect();
    if branches.contains(&branch) {
        return Ok(());
    }
    Err(if branches.is_empty() {
        format!("the repository {repo} has no branches yet: push one first")
    } else {
        format!(
            "the repository {repo} has no branch \"{branch}\"; it has {}",
            branches.join(", ")
        )
    })
}

/// Applies `change` to `project`, validating every field it sets.
pub fn apply(project: &mut Project, change: ProjectChange) -> Result<(), String> {
    if let Some(slug) = change.slug {
        crate::identity::validate_name("project", &slug)?;
        project.slug = slug;
    }
    if let Some(name) = change.name {
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 100 {
            return Err("a project name needs 1 to 100 characters".into());
        }
        project.name = name;
    }
    if let Some(repo) = change.repository {
        validate_repository(&repo)?;
        project.repository = repo.trim().to_string();
    }
    if let Some(branch) = change.default_branch {
        let branch = branch.trim().to_string();
        if branch.is_empty() || branch.contains(' ') || branch.contains("..") {
            return Err(format!("invalid branch name \"{branch}\""));
        }
        project.default_branch = branch;
    }
    if let Some(path) = change.pipeline_path {
        let path = path.trim().to_string();
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err("the pipeline path must be relative to the repository root".into());
        }
        project.pipeline_path = path;
    }
    if let Some(team) = change.owner_team {
        project.owner_team = Some(team).filter(|t| !t.trim().is_empty());
    }
    if change.forge_kind.is_some() || change.forge_url.is_some() || change.forge_api_url.is_some() {
        let kind = change
            .forge_kind
            .or_else(|| project.forge.as_ref().map(|f| f.kind.as_str().to_string()))
            .unwrap_or_default();
        if kind.trim().is_empty() {
            project.forge = None;
        } else {
            let link = ForgeLink {
                kind: crate::projects::forge::Forge::parse(&kind)?,
                url: change
                    .forge_url
                    .or_else(|| project.forge.as_ref().map(|f| f.url.clone()))
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                api_url: change
                    .forge_api_url
                    .or_else(|| project.forge.as_ref().and_then(|f| f.api_url.clone()))
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty()),
            };
            link.validate()?;
            project.forge = Some(link);
        }
    }
    if let Some(interval) = change.poll_interval {
        let interval = interval.trim();
        if interval.is_empty() || interval == "off" {
            project.poll_interval = None;
        } else {
            let every = crate::core::config::parse_duration(interval)
                .map_err(|e| format!("poll_interval \"{interval}\": {e}"))?;
            if every < MIN_POLL_INTERVAL {
                return Err(format!(
                    "poll_interval \"{interval}\" is shorter than the minimum of 1s"
                ));
            }
            project.poll_interval = Some(interval.to_string());
        }
    }
    if let Some(isolation) = change.isolation {
        project.isolation = isolation;
    }
    if let Some(allowed) = change.container_host_access {
        project.container_host_access = allowed;
    }
    if let Some(shown) = change.status_page {
        project.status_page = shown;
    }
    Ok(())
}
