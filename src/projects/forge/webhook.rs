//! Webhook deliveries from GitHub, Gitea/Forgejo and GitLab: which forge sent one, whether
//! its signature is right, and what it asks for. Pure functions over headers and body; the
//! HTTP layer and the runner do the rest.
//!
//! Signatures: GitHub `X-Hub-Signature-256: sha256=<HMAC-SHA256 hex>`, Gitea
//! `X-Gitea-Signature: <hex>`, Forgejo `X-Forgejo-Signature: <hex>` (same HMAC), GitLab
//! `X-Gitlab-Token: <the secret itself>`. All compared in constant time.

use super::Forge;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Request headers with lower-case names.
pub type Headers = BTreeMap<String, String>;

/// The forge that sent a delivery, from its event header. Forgejo also sends Gitea's
/// headers and Gitea also sends GitHub's, so the most specific one wins.
pub fn detect(headers: &Headers) -> Option<Forge> {
    [
        ("x-forgejo-event", Forge::Forgejo),
        ("x-gitea-event", Forge::Gitea),
        ("x-gitlab-event", Forge::Gitlab),
        ("x-github-event", Forge::Github),
    ]
    .into_iter()
    .find(|(h, _)| headers.contains_key(*h))
    .map(|(_, f)| f)
}

/// The event name the forge put in its header (`push`, `pull_request`, `Push Hook`, …).
pub fn event_name(forge: Forge, headers: &Headers) -> String {
    let header = match forge {
        Forge::Github => "x-github-event",
        Forge::Gitea => "x-gitea-event",
        Forge::Forgejo => "x-forgejo-event",
        Forge::Gitlab => "x-gitlab-event",
    };
    headers.get(header).cloned().unwrap_or_default()
}

/// The forge's id for this delivery; without one, the body's SHA-256 stands in, so a
/// repeated body is still recognised.
pub fn delivery_id(forge: Forge, headers: &Headers, body: &[u8]) -> String {
    let header = match forge {
        Forge::Github => "x-github-delivery",
        Forge::Gitea => "x-gitea-delivery",
        Forge::Forgejo => "x-forgejo-delivery",
        Forge::Gitlab => "x-gitlab-event-uuid",
    };
    match headers
        .get(header)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        Some(id) => id.chars().take(200).collect(),
        None => format!("sha256:{}", crate::identity::secret::digest_bytes(body)),
    }
}

/// Checks the delivery's signature (or token) against `secret`. The error says what was
/// missing or wrong, without revealing anything about the secret.
pub fn verify(forge: Forge, headers: &Headers, body: &[u8], secret: &str) -> Result<(), String> {
    let get = |name: &str| headers.get(name).map(|v| v.trim().to_string());
    match forge {
        Forge::Gitlab => {
            let token = get("x-gitlab-token").ok_or("missing X-Gitlab-Token header")?;
            if crate::identity::secret::constant_time_eq(&token, secret) {
                Ok(())
            } else {
                Err("X-Gitlab-Token does not match this project's webhook secret".into())
            }
        }
        Forge::Github | Forge::Gitea | Forge::Forgejo => {
            let (name, value) = match forge {
                Forge::Github => (
                    "X-Hub-Signature-256",
                    get("x-hub-signature-256")
                        .map(|v| v.strip_prefix("sha256=").map(str::to_string).unwrap_or(v)),
                ),
                Forge::Forgejo => (
                    "X-Forgejo-Signature",
                    get("x-forgejo-signature").or_else(|| get("x-gitea-signature")),
                ),
                _ => ("X-Gitea-Signature", get("x-gitea-signature")),
            };
            let value = value.ok_or_else(|| format!("missing {name} header"))?;
            let signature =
                hex::decode(&value).map_err(|_| format!("{name} is not a hex HMAC-SHA256"))?;
            if crate::identity::secret::verify_hmac_sha256(secret.as_bytes(), body, &signature) {
                Ok(())
            } else {
                Err(format!(
                    "{name} does not match this project's webhook secret"
                ))
            }
        }
    }
}

/// The HMAC-SHA256 signature (hex) of `body` under `secret`, as GitHub and Gitea send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    hex::encode(crate::identity::secret::hmac_sha256(
        secret.as_bytes(),
        body,
    ))
}

/// What a delivery asks BetCycle to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Hook {
    /// The forge checks the hook works (GitHub `ping`).
    Ping,
    Push(Push),
    PullRequest(PullRequest),
    /// A delivery BetCycle does not act on, and why.
    Ignored(String),
}

/// Commits pushed to a branch, or a tag pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// `refs/heads/main` or `refs/tags/v1.0`.
    pub git_ref: String,
    /// The previous commit of the ref (absent for a new branch).
    pub before: Option<String>,
    pub after: String,
    /// Files the pushed commits touched, from the payload; `None` when it does not list
    /// them all (forges cap the commits they include).
    pub changed_paths: Option<Vec<String>>,
    /// Who pushed (forge user name).
    pub pusher: String,
}

impl Push {
    pub fn is_tag(&self) -> bool {
        self.git_ref.starts_with("refs/tags/")
    }
}

/// A pull request (GitLab: merge request) opened, updated with new commits, or reopened.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PullRequest {
    pub number: u64,
    /// `opened`, `synchronize`, `reopened` (as the forge said it).
    pub action: String,
    pub title: String,
    /// The branch the change comes from and the commit at its tip.
    pub head_branch: String,
    pub head_commit: String,
    /// The branch it asks to be merged into.
    pub base_branch: String,
    /// The change comes from another repository (a fork): it gets no secrets.
    pub fork: bool,
    /// The ref the forge keeps the change under (`refs/pull/2/head`).
    pub head_ref: String,
    #[serde(default)]
    pub url: String,
    /// Who opened or updated it (forge user name).
    #[serde(default)]
    pub author: String,
}

const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("payload: {}", e.inner())
        } else {
            format!("payload: {path}: {}", e.inner())
        }
    })
}

/// Reads the payload of a delivery. `Err` names the field that is missing or malformed.
pub fn parse(forge: Forge, event: &str, body: &[u8]) -> Result<Hook, String> {
    match (forge, event) {
        (Forge::Github, "ping") => Ok(Hook::Ping),
        (Forge::Github | Forge::Gitea | Forge::Forgejo, "push") => push(decode(body)?),
        (Forge::Github | Forge::Gitea | Forge::Forgejo, "pull_request") => {
            pull_request(decode(body)?)
        }
        (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => gitlab_push(decode(body)?),
        (Forge::Gitlab, "Merge Request Hook") => gitlab_merge_request(decode(body)?),
        (_, other) => Ok(Hook::Ignored(format!(
            "{} event \"{other}\" does not start runs (push, tag and pull request events do)",
            forge.title()
        ))),
    }
}

#[derive(Deserialize)]
struct Commit {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

fn paths_of(commits: &[Commit]) -> Vec<String> {
    let mut paths: Vec<String> = commits
        .iter()
        .flat_map(|c| c.added.iter().chain(&c.removed).chain(&c.modified))
        .cloned()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    login: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    username: String,
}

impl User {
    fn name(&self) -> String {
        [&self.login, &self.username, &self.name]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_default()
    }
}

/// GitHub's and Gitea's push payload (same shape).
#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    commits: Vec<Commit>,
    /// Gitea: how many commits were pushed (the payload may list fewer).
    #[serde(default)]
    total_commits: Option<usize>,
    #[serde(default)]
    pusher: Option<User>,
    #[serde(default)]
    sender: Option<User>,
}

/// GitHub lists at most this many commits in a push payload.
const GITHUB_PUSH_COMMITS: usize = 20;

fn push(p: PushPayload) -> Result<Hook, String> {
    if p.deleted || p.after == ZERO_COMMIT {
        return Ok(Hook::Ignored(format!("{} was deleted", p.git_ref)));
    }
    if !p.git_ref.starts_with("refs/heads/") && !p.git_ref.starts_with("refs/tags/") {
        return Ok(Hook::Ignored(format!(
            "{} is not a branch or tag",
            p.git_ref
        )));
    }
    let complete = match p.total_commits {
        Some(total) => total <= p.commits.len(),
        None => p.commits.len() < GITHUB_PUSH_COMMITS,
    };
    Ok(Hook::Push(Push {
        before: Some(p.before).filter(|b| !b.is_empty() && b != ZERO_COMMIT),
        after: p.after,
        changed_paths: (complete && !p.commits.is_empty()).then(|| paths_of(&p.commits)),
        pusher: p.pusher.or(p.sender).map(|u| u.name()).unwrap_or_default(),
        git_ref: p.git_ref,
    }))
}

#[derive(Deserialize)]
struct Repo {
    #[serde(default)]
    full_name: String,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    #[serde(default)]
    repo: Option<Repo>,
}

#[derive(Deserialize)]
struct PullRequestBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    html_url: String,
    head: Branch,
    base: Branch,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    number: u64,
    pull_request: PullRequestBody,
}

fn pull_request(p: PullRequestPayload) -> Result<Hook, String> {
    // GitHub says `synchronize`, Gitea and Forgejo `synchronized`.
    if !matches!(
        p.action.as_str(),
        "opened" | "reopened" | "synchronize" | "synchronized"
    ) {
        return Ok(Hook::Ignored(format!(
            "pull request action \"{}\" does not start runs (opened, synchronize and reopened do)",
            p.action
        )));
    }
    let pr = p.pull_request;
    let head_repo = pr.head.repo.as_ref().map(|r| r.full_name.as_str());
    let base_repo = pr.base.repo.as_ref().map(|r| r.full_name.as_str());
    // A head repository that is gone (deleted fork) or differs from the base is a fork.
    let fork = head_repo.is_none() || head_repo != base_repo;
    Ok(Hook::PullRequest(PullRequest {
        number: p.number,
        action: p.action,
        title: pr.title,
        head_branch: pr.head.git_ref,
        head_commit: pr.head.sha,
        base_branch: pr.base.git_ref,
        fork,
        head_ref: format!("refs/pull/{}/head", p.number),
        url: pr.html_url,
        author: pr.user.map(|u| u.name()).unwrap_or_default(),
    }))
}

#[derive(Deserialize)]
struct GitlabPush {
    object_kind: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    total_commits_count: Option<usize>,
    #[serde(default)]
    user_username: String,
}

fn gitlab_push(p: GitlabPush) -> Result<Hook, String> {
    if p.after == ZERO_COMMIT || p.checkout_sha.as_deref() == Some("") {
        return Ok(Hook::Ignored(format!("{} was deleted", p.git_ref)));
    }
    if !matches!(p.object_kind.as_str(), "push" | "tag_push") {
        return Ok(Hook::Ignored(format!(
            "object_kind \"{}\" is not a push",
            p.object_kind
        )));
    }
    let complete = p.total_commits_count.unwrap_or(usize::MAX) <= p.commits.len();
    Ok(Hook::Push(Push {
        before: Some(p.before).filter(|b| !b.is_empty() && b != ZERO_COMMIT),
        after: p.checkout_sha.filter(|s| !s.is_empty()).unwrap_or(p.after),
        changed_paths: (complete && !p.commits.is_empty()).then(|| paths_of(&p.commits)),
        pusher: p.user_username,
        git_ref: p.git_ref,
    }))
}

#[derive(Deserialize)]
struct GitlabCommitRef {
    id: String,
}

#[derive(Deserialize)]
struct GitlabMergeRequestAttributes {
    iid: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    url: String,
    source_branch: String,
    target_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    #[serde(default)]
    action: Option<String>,
    /// Present on `update` when new commits were pushed.
    #[serde(default)]
    oldrev: Option<String>,
    last_commit: GitlabCommitRef,
}

#[derive(Deserialize)]
struct GitlabMergeRequest {
    object_attributes: GitlabMergeRequestAttributes,
    #[serde(default)]
    user: Option<User>,
}

fn gitlab_merge_request(p: GitlabMergeRequest) -> Result<Hook, String> {
    let mr = p.object_attributes;
    let action = mr.action.clone().unwrap_or_default();
    let runs = match action.as_str() {
        "open" | "reopen" => true,
        // An update without `oldrev` changed the title or labels, not the code.
        "update" => mr.oldrev.is_some(),
        _ => false,
    };
    if !runs {
        return Ok(Hook::Ignored(format!(
            "merge request action \"{action}\" does not start runs (open, reopen and update with new commits do)"
        )));
    }
    Ok(Hook::PullRequest(PullRequest {
        number: mr.iid,
        action,
        title: mr.title,
        head_branch: mr.source_branch,
        head_commit: mr.last_commit.id,
        base_branch: mr.target_branch,
        fork: mr.source_project_id != mr.target_project_id,
        head_ref: format!("refs/merge-requests/{}/head", mr.iid),
        url: mr.url,
        author: p.user.map(|u| u.name()).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    #[test]
    fn signatures_are_checked_per_forge() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let sig = sign("s3cret", body);
        let gh = headers(&[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &format!("sha256={sig}")),
        ]);
        assert_eq!(detect(&gh), Some(Forge::Github));
        assert!(verify(Forge::Github, &gh, body, "s3cret").is_ok());
        assert!(verify(Forge::Github, &gh, body, "other").is_err());
        assert!(verify(Forge::Github, &gh, b"tampered", "s3cret").is_err());
        let missing = headers(&[("X-GitHub-Event", "ping")]);
        assert_eq!(
            verify(Forge::Github, &missing, body, "s3cret").unwrap_err(),
            "missing X-Hub-Signature-256 header"
        );
        // Gitea sends GitHub's event header too; its own wins.
        let gitea = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Gitea-Event", "push"),
            ("X-Gitea-Signature", &sig),
        ]);
        assert_eq!(detect(&gitea), Some(Forge::Gitea));
        assert!(verify(Forge::Gitea, &gitea, body, "s3cret").is_ok());
        let forgejo = headers(&[
            ("X-Gitea-Event", "push"),
            ("X-Forgejo-Event", "push"),
            ("X-Forgejo-Signature", &sig),
        ]);
        assert_eq!(detect(&forgejo), Some(Forge::Forgejo));
        assert!(verify(Forge::Forgejo, &forgejo, body, "s3cret").is_ok());
        let gl = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "s3cret"),
        ]);
        assert_eq!(detect(&gl), Some(Forge::Gitlab));
        assert!(verify(Forge::Gitlab, &gl, body, "s3cret").is_ok());
        assert!(verify(Forge::Gitlab, &gl, body, "s3creT").is_err());
        assert_eq!(detect(&headers(&[("Content-Type", "x")])), None);
    }

    #[test]
    fn payload_errors_name_the_field() {
        let err = parse(Forge::Github, "push", br#"{"ref":"refs/heads/main"}"#).unwrap_err();
        assert!(err.contains("missing field `after`"), "{err}");
        let err = parse(
            Forge::Github,
            "pull_request",
            br#"{"action":"opened","number":1,"pull_request":{"head":{"ref":"x","sha":1},"base":{"ref":"main","sha":"b"}}}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("payload: pull_request.head.sha:"), "{err}");
        assert!(parse(Forge::Github, "push", b"not json").is_err());
    }

    #[test]
    fn deleted_branches_and_unknown_events_are_ignored() {
        let body = format!(
            r#"{{"ref":"refs/heads/gone","before":"{}","after":"{ZERO_COMMIT}","deleted":true,"commits":[]}}"#,
            "a".repeat(40)
        );
        assert!(matches!(
            parse(Forge::Github, "push", body.as_bytes()).unwrap(),
            Hook::Ignored(_)
        ));
        assert!(matches!(
            parse(Forge::Github, "issues", b"{}").unwrap(),
            Hook::Ignored(r) if r.contains("\"issues\"")
        ));
    }
}
