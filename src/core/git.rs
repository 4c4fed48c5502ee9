//! git, through the `git` command line: each project's repository is mirrored (bare)
//! under `<data-dir>/repos/<project id>.git`. Triggers fetch into the mirror, resolve refs
//! there, read the pipeline file and the changed paths from it; runs clone their workspace
//! from it (a local clone, hard-linked, so it costs little even for big repositories).
//! Fetches of one project are serialised by a per-project lock.

use crate::core::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a mirror fetches: branches, tags, and the refs forges keep pull (merge) requests
/// under, so a fork's commits are there too.
const REFSPECS: [&str; 4] = [
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+refs/pull/*:refs/pull/*",
    "+refs/merge-requests/*:refs/merge-requests/*",
];

pub fn is_commit(r: &str) -> bool {
    r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Runs git with `args` (in `dir` when given) and returns its trimmed standard output.
pub async fn git(args: &[&str], dir: Option<&Path>) -> Result<String> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(Error::io("cannot run git (is it installed?)"))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "git {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The branches and tags of a remote repository (`refs/heads/main` → commit), without
/// fetching anything. Annotated tags are listed with the commit they point to.
pub async fn ls_remote(repository: &str) -> Result<BTreeMap<String, String>> {
    let listed = git(&["ls-remote", "--heads", "--tags", "--", repository], None).await?;
    let mut refs = BTreeMap::new();
    for (sha, name) in listed.lines().filter_map(|l| l.split_once('\t')) {
        match name.strip_suffix("^{}") {
            Some(tag) => {
                refs.insert(tag.to_string(), sha.to_string());
            }
            None => {
                refs.entry(name.to_string())
                    .or_insert_with(|| sha.to_string());
            }
        }
    }
    Ok(refs)
}

/// The mirrors of every project's repository.
pub struct Mirrors {
    root: PathBuf,
    locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("repos"),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The lock that serialises fetches and triggers of project `id`.
    pub fn lock(&self, id: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("mirror locks")
            .entry(id)
            .or_default()
            .clone()
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.root.join(format!("{id}.git"))
    }

    /// [`Mirrors::fetch`] under the project's lock (triggers fetch under it too).
    pub async fn fetch_locked(&self, id: u64, repository: &str) -> Result<PathBuf> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.fetch(id, repository).await
    }

    /// Brings project `id`'s mirror up to date with `repository` (creating it the first
    /// time) and returns its path. The caller holds [`Mirrors::lock`].
    pub async fn fetch(&self, id: u64, repository: &str) -> Result<PathBuf> {
        let path = self.path(id);
        if !path.join("HEAD").exists() {
            std::fs::create_dir_all(&self.root)
                .map_err(Error::io(format!("cannot create {}", self.root.display())))?;
            let target = path.display().to_string();
            git(&["init", "--quiet", "--bare", &target], None).await?;
        }
        let mut args = vec![
            "fetch",
            "--quiet",
            "--prune",
            "--no-write-fetch-head",
            "--",
            repository,
        ];
        args.extend(REFSPECS);
        git(&args, Some(&path))
            .await
            .map_err(|e| Error::Invalid(format!("cannot fetch {repository}: {e}")))?;
        Ok(path)
    }

    /// Deletes project `id`'s mirror (when the project is deleted).
    pub fn remove(&self, id: u64) {
        let _ = std::fs::remove_dir_all(self.path(id));
        self.locks.lock().expect("mirror locks").remove(&id);
    }
}

/// The commit `rev` (a branch, tag, `refs/…` name or commit) names in `mirror`.
pub async fn resolve(mirror: &Path, rev: &str) -> Result<String> {
    Ok(resolve_commit(mirror, rev).await?.sha)
}

/// A commit as a run shows it: its id, its author's name and the first line of its
/// message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    pub sha: String,
    pub author: String,
    pub subject: String,
}

/// The commit `rev` names in `mirror`, with its author and subject (one `git` process).
pub async fn resolve_commit(mirror: &Path, rev: &str) -> Result<Commit> {
    let candidates: Vec<String> = if rev.starts_with("refs/") || is_commit(rev) {
        vec![rev.to_string()]
    } else {
        vec![format!("refs/heads/{rev}"), format!("refs/tags/{rev}")]
    };
    for candidate in &candidates {
        let spec = format!("{candidate}^{{commit}}");
        let shown = git(
            &[
                "show",
                "--no-patch",
                "--format=%H%x00%an%x00%s",
                &spec,
                "--",
            ],
            Some(mirror),
        )
        .await;
        if let Ok(shown) = shown
            && let [sha, author, subject] = shown.splitn(3, '\0').collect::<Vec<_>>()[..]
            && is_commit(sha)
        {
            return Ok(Commit {
                sha: sha.to_string(),
                author: author.to_string(),
                subject: subject.to_string(),
            });
        }
    }
    Err(Error::Invalid(if is_commit(rev) {
        format!("commit {} is not in the repository", short(rev))
    } else {
        format!("no branch, tag or ref \"{rev}\" in the repository")
    }))
}

/// The contents of `path` at `commit`, or `None` when the file is not there.
pub async fn read_file(mirror: &Path, commit: &str, path: &str) -> Result<Option<String>> {
    let spec = format!("{commit}:{path}");
    match git(&["show", &spec], Some(mirror)).await {
        Ok(text) => Ok(Some(text)),
        Err(Error::Invalid(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Files that differ between `from` and `to` (`from...to` with `merge_base`: since the
/// point where `to` left `from`, as a pull request shows it).
pub async fn changed_paths(
    mirror: &Path,
    from: &str,
    to: &str,
    merge_base: bool,
) -> Result<Vec<String>> {
    let range = if merge_base {
        format!("{from}...{to}")
    } else {
        format!("{from}..{to}")
    };
    let out = git(
        &["diff", "--name-only", "--no-renames", &range],
        Some(mirror),
    )
    .await?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Clones `mirror` into `workspace` (fresh) and checks out `commit`; the workspace's
/// `origin` is `repository`, as if it had been cloned from there.
pub async fn checkout(
    mirror: &Path,
    repository: &str,
    commit: &str,
    workspace: &Path,
) -> Result<()> {
    if workspace.exists() {
        tokio::fs::remove_dir_all(workspace)
            .await
            .map_err(Error::io(format!("cannot clear {}", workspace.display())))?;
    }
    let (source, target) = (
        mirror.display().to_string(),
        workspace.display().to_string(),
    );
    git(
        &["clone", "--quiet", "--no-checkout", "--", &source, &target],
        None,
    )
    .await?;
    git(
        &["checkout", "--quiet", "--detach", commit],
        Some(workspace),
    )
    .await?;
    git(
        &["remote", "set-url", "origin", repository],
        Some(workspace),
    )
    .await?;
    Ok(())
}
