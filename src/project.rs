//! Projects: a git repository with a pipeline file, and who may do what with it.

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

/// Applies `change` to `project`, validating every field it sets.
pub fn apply(project: &mut Project, change: ProjectChange) -> Result<(), String> {
    if let Some(slug) = change.slug {
        crate::auth::validate_name("project", &slug)?;
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
    Ok(())
}
