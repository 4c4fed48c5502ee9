//! Webhook deliveries: every signed delivery a project receives is recorded — the forge's
//! delivery id, the event, what BetCycle made of it and the runs it started — and its
//! payload is kept (as a file) so it can be delivered again from the console or the API.

use crate::ci::runner::{Runner, TriggerSpec};
use crate::core::error::{Error, Result};
use crate::identity::audit::{Context, Record};
use crate::projects::forge::Forge;
use crate::projects::forge::webhook::{self, Headers, Hook};
use crate::projects::{Project, WEBHOOK_SECRET};
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Being processed.
    Received,
    /// Started one or more runs.
    Triggered,
    /// Understood, nothing to run (ping, an event or action that starts no runs).
    Ignored,
    /// Could not be acted on (malformed payload, repository unreachable).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Received => "received",
            Outcome::Triggered => "triggered",
            Outcome::Ignored => "ignored",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub id: u64,
    pub project: String,
    pub forge: Forge,
    /// The forge's id for the delivery (`X-GitHub-Delivery`, …).
    pub delivery_id: String,
    /// The event as the forge named it (`push`, `pull_request`, `Push Hook`).
    pub event: String,
    pub received_at: Timestamp,
    pub outcome: Outcome,
    /// What was done, or why not.
    pub message: String,
    /// Numbers of the runs it started.
    #[serde(default)]
    pub runs: Vec<u64>,
    /// SHA-256 of the payload: its file is `<data-dir>/deliveries/<sha256>.json`.
    pub payload: String,
    /// Set on a delivery repeated from the console or API: the delivery it repeats.
    #[serde(default)]
    pub redelivery_of: Option<u64>,
    /// Who sent it: the client address, or the user who re-delivered it.
    #[serde(default)]
    pub source: String,
    /// The ref and commit it asked to build, once understood: a replay of the same
    /// forge's event, ref and commit within [`REPLAY_WINDOW`] under a new delivery id starts
    /// nothing (forges' signatures carry no nonce or time).
    #[serde(default)]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
}

/// How long a delivery's (event, ref, commit) is remembered against replays.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// What became of a delivery.
#[derive(Debug)]
pub enum Receipt {
    /// Runs were started.
    Triggered(Delivery),
    /// Nothing to run (a ping, an event or action that starts no runs).
    Ignored(Delivery),
    /// The forge sent this delivery id before: nothing new was done.
    Duplicate(u64),
}

/// What receiving a delivery needs.
pub struct Inbox<'a> {
    pub store: &'a Store,
    pub runner: &'a Runner,
    pub secrets: &'a crate::secrets::Secrets,
    pub data_dir: &'a Path,
}

impl Inbox<'_> {
    fn payload_path(&self, digest: &str) -> PathBuf {
        self.data_dir
            .join("deliveries")
            .join(format!("{digest}.json"))
    }

    /// Checks a delivery's signature and acts on it. Nothing is recorded for a delivery
    /// that fails the check. An unknown project and one without a webhook secret are
    /// checked against a random secret, so they answer exactly as a wrong signature
    /// does: an anonymous caller learns nothing about which projects exist.
    pub async fn receive(
        &self,
        project: Option<&Project>,
        headers: &Headers,
        body: &[u8],
        source: &str,
    ) -> Result<Receipt> {
        let forge = webhook::detect(headers).ok_or_else(|| {
            Error::Invalid(
                "not a webhook delivery from GitHub, Gitea, Forgejo or GitLab: no X-GitHub-Event, \
                 X-Gitea-Event, X-Forgejo-Event or X-Gitlab-Event header"
                    .into(),
            )
        })?;
        let secret = match project {
            Some(p) => self.secrets.project_value(p.id, WEBHOOK_SECRET).await?,
            None => None,
        };
        let (Some(project), Some(secret)) = (project, secret) else {
            let why = match project {
                None => "no such project".to_string(),
                Some(p) => format!("project \"{}\" has no webhook secret yet", p.slug),
            };
            tracing::warn!(
                reason = why,
                "webhook delivery to a hook that cannot verify it"
            );
            let unguessable = crate::identity::secret::random_hex(32);
            webhook::verify(forge, headers, body, &unguessable).map_err(Error::Unauthorized)?;
            return Err(Error::Unauthorized("the signature does not match".into()));
        };
        webhook::verify(forge, headers, body, &secret).map_err(Error::Unauthorized)?;

        let digest = crate::identity::secret::digest_bytes(body);
        self.keep_payload(&digest, body).await?;
        let delivery = Delivery {
            id: 0,
            project: project.slug.clone(),
            forge,
            delivery_id: webhook::delivery_id(forge, headers, body),
            event: webhook::event_name(forge, headers),
            received_at: Timestamp::now(),
            outcome: Outcome::Received,
            message: String::new(),
            runs: Vec::new(),
            payload: digest,
            redelivery_of: None,
            source: source.to_string(),
            git_ref: None,
            commit: None,
        };
        match self.store.create_delivery(delivery).await? {
            Ok(delivery) => self.act(project, delivery, body, source).await,
            Err(first) => Ok(Receipt::Duplicate(first)),
        }
    }

    /// Acts on a recorded delivery's payload again, as a new delivery.
    pub async fn redeliver(&self, project: &Project, id: u64, ctx: &Context) -> Result<Receipt> {
        let original = self
            .store
            .delivery(id)
            .await?
            .filter(|d| d.project == project.slug)
            .ok_or_else(|| Error::NotFound {
                what: format!("delivery {id} of project \"{}\"", project.slug),
            })?;
        let body = tokio::fs::read(self.payload_path(&original.payload))
            .await
            .map_err(|_| {
                Error::Conflict(format!("the payload of delivery {id} is no longer kept"))
            })?;
        self.store
            .audit(
                Record::new(
                    ctx,
                    "delivery.redeliver",
                    format!("project:{}", project.slug),
                )
                .detail(format!("delivery {id} ({})", original.delivery_id)),
            )
            .await?;
        let delivery = Delivery {
            id: 0,
            received_at: Timestamp::now(),
            outcome: Outcome::Received,
            message: String::new(),
            runs: Vec::new(),
            redelivery_of: Some(original.id),
            source: ctx.actor.clone(),
            ..original
        };
        match self.store.create_delivery(delivery).await? {
            Ok(delivery) => self.act(project, delivery, &body, &ctx.actor).await,
            Err(first) => Ok(Receipt::Duplicate(first)),
        }
    }

    /// Writes the payload under its digest (once).
    async fn keep_payload(&self, digest: &str, body: &[u8]) -> Result<()> {
        let path = self.payload_path(digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let dir = path.parent().expect("payloads live in a directory");
        let failed = || {
            Error::io(format!(
                "cannot keep a webhook payload in {}",
                dir.display()
            ))
        };
        tokio::fs::create_dir_all(dir).await.map_err(failed())?;
        let partial = path.with_extension("partial");
        tokio::fs::write(&partial, body).await.map_err(failed())?;
        tokio::fs::rename(&partial, &path).await.map_err(failed())
    }

    async fn act(
        &self,
        project: &Project,
        delivery: Delivery,
        body: &[u8],
        source: &str,
    ) -> Result<Receipt> {
        let id = delivery.id;
        let finish = |outcome: Outcome, message: String, runs: Vec<u64>| {
            self.store.update_delivery(id, move |d| {
                d.outcome = outcome;
                d.message = message;
                d.runs = runs;
            })
        };
        let hook = match webhook::parse(delivery.forge, &delivery.event, body) {
            Ok(hook) => hook,
            Err(problem) => {
                finish(Outcome::Failed, problem.clone(), Vec::new()).await?;
                return Err(Error::Invalid(problem));
            }
        };
        let (spec, who) = match trigger_of(hook, id) {
            Ok(trigger) => trigger,
            Err(reason) => {
                let d = finish(Outcome::Ignored, reason, Vec::new()).await?;
                return Ok(Receipt::Ignored(d));
            }
        };
        let (git_ref, commit) = (spec.git_ref.clone(), spec.commit.clone());
        if delivery.redelivery_of.is_none()
            && let Some(first) = self
                .replayed(&delivery, git_ref.as_deref(), commit.as_deref())
                .await?
        {
            finish(
                Outcome::Ignored,
                format!(
                    "the same {} of {} at {} as delivery {first}, received less than {} min ago: a replay",
                    delivery.event,
                    git_ref.as_deref().unwrap_or_default(),
                    commit.as_deref().map(|c| &c[..c.len().min(12)]).unwrap_or_default(),
                    REPLAY_WINDOW.as_secs() / 60
                ),
                Vec::new(),
            )
            .await?;
            return Ok(Receipt::Duplicate(first));
        }
        self.store
            .update_delivery(id, move |d| {
                d.git_ref = git_ref;
                d.commit = commit;
            })
            .await?;
        let ctx = Context {
            actor: format!(
                "{}:{}",
                delivery.forge.as_str(),
                if who.is_empty() { "webhook" } else { &who }
            ),
            source: source.to_string(),
            request_id: String::new(),
        };
        match self.runner.trigger(project, spec, &ctx).await {
            Ok(run) => {
                let d = finish(
                    Outcome::Triggered,
                    format!("started run #{}", run.number),
                    vec![run.number],
                )
                .await?;
                Ok(Receipt::Triggered(d))
            }
            Err(e) => {
                finish(Outcome::Failed, e.to_string(), Vec::new()).await?;
                // The payload was fine: the failure is ours (the repository could not be
                // fetched, the commit is not there yet). A 5xx makes the forge retry, and
                // a failed delivery's id is not a duplicate.
                Err(match e {
                    Error::Invalid(message) => Error::Unavailable(message),
                    other => other,
                })
            }
        }
    }

    /// The delivery that already started a run for the same forge, event, ref and commit
    /// within the replay window, if any.
    async fn replayed(
        &self,
        delivery: &Delivery,
        git_ref: Option<&str>,
        commit: Option<&str>,
    ) -> Result<Option<u64>> {
        let Some(commit) = commit else {
            return Ok(None);
        };
        let since = delivery.received_at
            - jiff::SignedDuration::try_from(REPLAY_WINDOW).expect("a small window");
        Ok(self
            .store
            .project_deliveries(&delivery.project, 200)
            .await?
            .into_iter()
            .take_while(|d| d.received_at >= since)
            .find(|d| {
                d.id != delivery.id
                    && d.outcome == Outcome::Triggered
                    && d.forge == delivery.forge
                    && d.event == delivery.event
                    && d.commit.as_deref() == Some(commit)
                    && d.git_ref.as_deref() == git_ref
            })
            .map(|d| d.id))
    }
}

/// What a parsed delivery asks for: the run to trigger and who caused it, or why it is
/// ignored.
fn trigger_of(hook: Hook, delivery: u64) -> std::result::Result<(TriggerSpec, String), String> {
    match hook {
        Hook::Ping => Err("ping: the webhook works".into()),
        Hook::Ignored(reason) => Err(reason),
        Hook::Push(push) => Ok((
            TriggerSpec {
                event: if push.is_tag() { "tag" } else { "push" }.into(),
                git_ref: Some(push.git_ref.clone()),
                commit: Some(push.after.clone()),
                before: push.before.clone(),
                changed_paths: push.changed_paths.clone(),
                delivery: Some(delivery),
                message: format!("{} pushed to {}", push.pusher, push.git_ref),
                ..TriggerSpec::default()
            },
            push.pusher,
        )),
        Hook::PullRequest(pr) => Ok((
            TriggerSpec {
                event: "pull_request".into(),
                git_ref: Some(pr.head_ref.clone()),
                commit: Some(pr.head_commit.clone()),
                delivery: Some(delivery),
                message: format!(
                    "pull request #{} {} ({} → {}){}",
                    pr.number,
                    pr.action,
                    pr.head_branch,
                    pr.base_branch,
                    if pr.fork { ", from a fork" } else { "" }
                ),
                pull_request: Some(pr.clone()),
                ..TriggerSpec::default()
            },
            pr.author,
        )),
    }
}
