//! Forges: GitHub, Gitea/Forgejo and GitLab — the places repositories live. BetCycle
//! receives their webhooks (`webhook.rs`) and reports commit statuses back to them
//! (`status.rs`). A project links to its forge with a [`ForgeLink`]; the token that
//! status reports use is sealed (see `crate::secrets::seal`) and kept apart from the project record.

pub mod status;
pub mod webhook;

use serde::{Deserialize, Serialize};

/// A kind of forge, as settings and delivery records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    Github,
    Gitea,
    Forgejo,
    Gitlab,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
            Forge::Gitlab => "gitlab",
        }
    }

    /// Names for users: "GitHub", "Gitea", "Forgejo", "GitLab".
    pub fn title(self) -> &'static str {
        match self {
            Forge::Github => "GitHub",
            Forge::Gitea => "Gitea",
            Forge::Forgejo => "Forgejo",
            Forge::Gitlab => "GitLab",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "github" => Ok(Forge::Github),
            "gitea" => Ok(Forge::Gitea),
            "forgejo" => Ok(Forge::Forgejo),
            "gitlab" => Ok(Forge::Gitlab),
            other => Err(format!(
                "unknown forge \"{other}\": use github, gitea, forgejo or gitlab"
            )),
        }
    }
}

/// Where a project's repository lives on its forge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeLink {
    pub kind: Forge,
    /// The repository's web page, e.g. `https://github.com/acme/app`.
    pub url: String,
    /// The forge's API root when it is not derived from `url` (GitHub Enterprise, tests):
    /// `https://api.github.com`, `https://git.example.com/api/v1`, `https://gitlab.com/api/v4`.
    #[serde(default)]
    pub api_url: Option<String>,
}

impl ForgeLink {
    /// Checks the URLs: absolute http(s) with a repository path.
    pub fn validate(&self) -> Result<(), String> {
        let url =
            url::Url::parse(&self.url).map_err(|e| format!("forge url \"{}\": {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.path().trim_matches('/').is_empty() {
            return Err(format!(
                "forge url \"{}\": use the repository's web address, e.g. https://github.com/acme/app",
                self.url
            ));
        }
        if let Some(api) = &self.api_url {
            let api = url::Url::parse(api).map_err(|e| format!("forge api_url \"{api}\": {e}"))?;
            if !matches!(api.scheme(), "http" | "https") {
                return Err("forge api_url must be an http(s) URL".into());
            }
        }
        Ok(())
    }

    /// `owner/name` (GitLab: `group/subgroup/name`).
    pub fn repository_path(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| {
                u.path()
                    .trim_matches('/')
                    .trim_end_matches(".git")
                    .to_string()
            })
            .unwrap_or_default()
    }

    fn origin(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }

    /// The API root: `api_url`, or the forge's usual one for `url`'s host.
    pub fn api_root(&self) -> String {
        if let Some(api) = &self.api_url {
            return api.trim_end_matches('/').to_string();
        }
        let origin = self.origin();
        match self.kind {
            Forge::Github if origin == "https://github.com" => "https://api.github.com".into(),
            Forge::Github => format!("{origin}/api/v3"),
            Forge::Gitea | Forge::Forgejo => format!("{origin}/api/v1"),
            Forge::Gitlab => format!("{origin}/api/v4"),
        }
    }

    /// The web page of `commit`.
    pub fn commit_url(&self, commit: &str) -> String {
        let base = self.url.trim_end_matches('/').trim_end_matches(".git");
        match self.kind {
            Forge::Gitlab => format!("{base}/-/commit/{commit}"),
            _ => format!("{base}/commit/{commit}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_derive_api_roots_and_commit_pages() {
        let link = |kind, url: &str| ForgeLink {
            kind,
            url: url.into(),
            api_url: None,
        };
        let gh = link(Forge::Github, "https://github.com/acme/app");
        assert_eq!(gh.api_root(), "https://api.github.com");
        assert_eq!(gh.repository_path(), "acme/app");
        assert_eq!(
            gh.commit_url("abc"),
            "https://github.com/acme/app/commit/abc"
        );
        let ghe = link(Forge::Github, "https://git.corp.example/acme/app");
        assert_eq!(ghe.api_root(), "https://git.corp.example/api/v3");
        let gitea = link(Forge::Gitea, "https://codeberg.org/acme/app.git");
        assert_eq!(gitea.api_root(), "https://codeberg.org/api/v1");
        assert_eq!(gitea.repository_path(), "acme/app");
        let gl = link(Forge::Gitlab, "https://gitlab.com/group/sub/app");
        assert_eq!(gl.api_root(), "https://gitlab.com/api/v4");
        assert_eq!(gl.repository_path(), "group/sub/app");
        assert_eq!(
            gl.commit_url("abc"),
            "https://gitlab.com/group/sub/app/-/commit/abc"
        );
        assert!(link(Forge::Github, "ftp://x/y").validate().is_err());
        assert!(
            link(Forge::Github, "https://github.com/")
                .validate()
                .is_err()
        );
        assert!(gh.validate().is_ok());
    }
}
