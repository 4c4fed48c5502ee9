//! Alerts and their notifications. Built-in rules look at the store: a project whose
//! latest finished run on its default branch failed (`pipeline_failed`), an environment
//! whose latest finished deployment failed or was rolled back (`deployment_failed`). The
//! `alerts` worker reconciles what the rules say with the stored alerts: a change is one
//! write — the alert's new state, its history entry and one notification per channel in
//! the outbox (none while a silence covers it). The `notifications` worker sends the
//! outbox with retries (`notify.rs`). Because the state is stored and the rules are read
//! from records, a restart neither loses a notification nor sends one twice.

pub mod notify;
pub mod probes;

use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The built-in rules.
pub const RULES: &[(&str, &str)] = &[
    (
        "pipeline_failed",
        "the latest finished run on a project's default branch failed",
    ),
    (
        "deployment_failed",
        "the latest finished deployment to an environment failed or was rolled back",
    ),
    (
        "probe_down",
        "a probe failed failure_threshold times in a row (resolved after success_threshold successes)",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// An alert: one rule about one subject (`demo`, `demo/production`), firing or resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `rule:subject`.
    pub key: String,
    pub rule: String,
    pub subject: String,
    pub severity: String,
    pub state: AlertState,
    /// When it entered this state.
    pub since: Timestamp,
    pub summary: String,
    /// The console page that shows why.
    pub link: String,
}

impl Alert {
    /// A firing alert of `rule` about `subject` (its key is `rule:subject`).
    pub fn firing(
        rule: &str,
        subject: &str,
        since: Timestamp,
        summary: String,
        link: String,
    ) -> Alert {
        Alert {
            key: format!("{rule}:{subject}"),
            rule: rule.to_string(),
            subject: subject.to_string(),
            severity: "critical".into(),
            state: AlertState::Firing,
            since,
            summary,
            link,
        }
    }
}

/// An entry of an alert's history: it fired or resolved, and whether a silence held its
/// notifications back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlertEvent {
    pub id: u64,
    pub key: String,
    pub state: AlertState,
    pub at: Timestamp,
    pub summary: String,
    /// The silence that kept it from being sent, with who made it.
    #[serde(default)]
    pub silenced_by: Option<String>,
}

/// Holds back notifications of the alerts it matches until `until`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Silence {
    pub id: u64,
    /// A rule name, or every rule.
    pub rule: Option<String>,
    /// A subject (`demo`, `demo/production`), or every subject.
    pub subject: Option<String>,
    pub until: Timestamp,
    pub reason: String,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl Silence {
    pub fn covers(&self, alert: &Alert, now: Timestamp) -> bool {
        now < self.until
            && self.rule.as_ref().is_none_or(|r| *r == alert.rule)
            && self.subject.as_ref().is_none_or(|s| *s == alert.subject)
    }
}

/// Where notifications go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// JSON, signed with HMAC-SHA256 when the channel has a signing secret.
    Webhook,
    Slack,
    Discord,
    Teams,
    Ntfy,
    Gotify,
}

impl ChannelKind {
    pub fn parse(text: &str) -> std::result::Result<ChannelKind, String> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
            format!("kind \"{text}\": use webhook, slack, discord, teams, ntfy or gotify")
        })
    }
}

/// A notification channel. Its URL is given as is (`url`) or, when it is itself a
/// credential (a Slack or Discord webhook URL, a Gotify token), as the name of an
/// instance secret holding it (`url_secret`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_secret: Option<String>,
    /// The instance secret whose value signs a webhook channel's bodies.
    #[serde(default)]
    pub signing_secret: Option<String>,
    pub created_at: Timestamp,
    pub created_by: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Pending,
    Sent,
    /// Given up after its attempts.
    Failed,
}

/// One message to one channel, in the outbox until it is sent or given up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    pub channel: String,
    pub alert: String,
    pub state: AlertState,
    pub summary: String,
    pub link: String,
    pub created_at: Timestamp,
    pub status: Delivery,
    pub attempts: u32,
    pub next_at: Timestamp,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub sent_at: Option<Timestamp>,
}

impl Notification {
    /// A notification of `alert` in `state` to `channel`, due now (the store gives it
    /// its id).
    pub fn pending(channel: &str, alert: &Alert, now: Timestamp) -> Notification {
        Notification {
            id: 0,
            channel: channel.to_string(),
            alert: alert.key.clone(),
            state: alert.state,
            summary: alert.summary.clone(),
            link: alert.link.clone(),
            created_at: now,
            status: Delivery::Pending,
            attempts: 0,
            next_at: now,
            last_error: String::new(),
            sent_at: None,
        }
    }
}

/// What the rules say now: the alerts that should be firing, by key.
pub async fn desired(store: &Store, public_url: &str) -> Result<BTreeMap<String, Alert>> {
    let mut firing = BTreeMap::new();
    let now = Timestamp::now();
    for project in store.list_projects().await? {
        let filter = crate::store::RunFilter {
            status: None,
            branch: Some(project.default_branch.clone()),
        };
        let runs = store.project_runs(&project.slug, filter, 20).await?;
        let latest = runs.iter().find(|r| {
            matches!(
                r.status,
                crate::ci::run::RunStatus::Succeeded
                    | crate::ci::run::RunStatus::Failed
                    | crate::ci::run::RunStatus::Error
            )
        });
        if let Some(run) = latest.filter(|r| r.status != crate::ci::run::RunStatus::Succeeded) {
            let alert = Alert::firing(
                "pipeline_failed",
                &project.slug,
                run.finished_at.unwrap_or(now),
                format!(
                    "{} #{} on {} {}: {}",
                    project.slug,
                    run.number,
                    project.default_branch,
                    run.status.as_str(),
                    run.commit_subject
                ),
                format!("{public_url}/projects/{}/runs/{}", project.slug, run.number),
            );
            firing.insert(alert.key.clone(), alert);
        }
        let mut latest_by_env: BTreeMap<String, crate::delivery::Deployment> = BTreeMap::new();
        for d in store.deployments(&project.slug, 100).await? {
            use crate::delivery::DeploymentStatus as S;
            if matches!(d.status, S::Succeeded | S::Failed | S::RolledBack) {
                latest_by_env
                    .entry(d.environment.clone())
                    .and_modify(|kept| {
                        if d.number > kept.number {
                            *kept = d.clone();
                        }
                    })
                    .or_insert(d);
            }
        }
        for (environment, d) in latest_by_env {
            if d.status == crate::delivery::DeploymentStatus::Succeeded {
                continue;
            }
            let subject = format!("{}/{environment}", project.slug);
            let alert = Alert::firing(
                "deployment_failed",
                &subject,
                d.finished_at.unwrap_or(now),
                format!(
                    "{subject}: deployment #{} of release {} {}{}",
                    d.number,
                    d.release_number,
                    d.status.as_str().replace('_', " "),
                    if d.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", d.message)
                    }
                ),
                format!(
                    "{public_url}/projects/{}/deployments/{}",
                    project.slug, d.number
                ),
            );
            firing.insert(alert.key.clone(), alert);
        }
    }
    let probes = store.probes().await?;
    for state in store.probe_states().await? {
        let Some(probe) = probes.iter().find(|p| p.name == state.name) else {
            continue;
        };
        if state.status != probes::ProbeStatus::Down {
            continue;
        }
        let error = state
            .last
            .as_ref()
            .map(|r| r.error.clone())
            .unwrap_or_default();
        let alert = Alert::firing(
            "probe_down",
            &probe.name,
            state.since,
            format!("probe {} ({}) is down: {error}", probe.name, probe.target),
            format!("{public_url}/monitoring"),
        );
        firing.insert(alert.key.clone(), alert);
    }
    Ok(firing)
}

/// One pass of the `alerts` worker: every alert whose state the rules changed is stored
/// with its history entry and its notifications, in one write each.
pub async fn reconcile(store: &Store, public_url: &str) -> Result<usize> {
    let firing = desired(store, public_url).await?;
    let stored: BTreeMap<String, Alert> = store
        .alerts()
        .await?
        .into_iter()
        .map(|a| (a.key.clone(), a))
        .collect();
    let now = Timestamp::now();
    let mut changes = Vec::new();
    for (key, alert) in &firing {
        if stored
            .get(key)
            .is_none_or(|s| s.state != AlertState::Firing)
        {
            changes.push(alert.clone());
        }
    }
    for (key, alert) in &stored {
        if alert.state == AlertState::Firing && !firing.contains_key(key) {
            changes.push(Alert {
                state: AlertState::Resolved,
                since: now,
                ..alert.clone()
            });
        }
    }
    let n = changes.len();
    for alert in changes {
        tracing::info!(alert = %alert.key, state = alert.state.as_str(), summary = %alert.summary, "alert");
        store.transition_alert(alert).await?;
    }
    Ok(n)
}

/// An http(s) URL with a host, or why not.
pub fn check_url(url: &str) -> Result<()> {
    crate::core::outbound::check_http_url(url)
        .map_err(|e| Error::Invalid(format!("url \"{url}\": {e}")))
}

/// The `alerts` worker: reconciles when a run or deployment ends, when a probe changes
/// state, and every 10 s.
pub async fn work(
    store: Store,
    events: crate::core::events::EventBus,
    probes_changed: std::sync::Arc<tokio::sync::Notify>,
    public_url: String,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::core::events::Event;
    let mut changes = events.subscribe();
    loop {
        if let Err(e) = reconcile(&store, &public_url).await {
            tracing::warn!(error = %e, "alerts: the rules could not be evaluated");
        }
        let tick = tokio::time::sleep(std::time::Duration::from_secs(10));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut tick => break,
                () = probes_changed.notified() => break,
                event = changes.recv() => match event {
                    Ok(e) if matches!(&e.event,
                        Event::RunUpdated { status, .. } if status.is_finished())
                        || matches!(&e.event, Event::DeploymentUpdated { .. }) => break,
                    Ok(_) => {}
                    // Missed some: look at everything now.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// A silence as asked for: `duration` from now, or `until`.
#[derive(Debug, Default, Deserialize)]
pub struct NewSilence {
    pub rule: Option<String>,
    pub subject: Option<String>,
    pub duration: Option<String>,
    pub until: Option<String>,
    pub reason: String,
}

/// Checks and stores a silence (audited as `silence.create`).
pub async fn create_silence(
    store: &Store,
    req: NewSilence,
    by: &crate::identity::audit::Context,
) -> Result<Silence> {
    let blank = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let (rule, subject) = (blank(req.rule), blank(req.subject));
    if let Some(rule) = &rule
        && !RULES.iter().any(|(name, _)| name == rule)
    {
        let known: Vec<&str> = RULES.iter().map(|(n, _)| *n).collect();
        return Err(Error::Invalid(format!(
            "unknown rule \"{rule}\": the rules are {}",
            known.join(", ")
        )));
    }
    if req.reason.trim().is_empty() {
        return Err(Error::Invalid("a silence needs a reason".into()));
    }
    let now = Timestamp::now();
    let until = match (blank(req.duration), blank(req.until)) {
        (Some(d), None) => {
            now + crate::core::config::parse_duration(&d)
                .map_err(|e| Error::Invalid(format!("duration \"{d}\": {e}")))?
        }
        (None, Some(u)) => u
            .parse::<Timestamp>()
            .map_err(|e| Error::Invalid(format!("until \"{u}\": {e}")))?,
        _ => {
            return Err(Error::Invalid(
                "give duration (such as 2h) or until (RFC 3339)".into(),
            ));
        }
    };
    if until <= now {
        return Err(Error::Invalid("a silence must end in the future".into()));
    }
    let target = format!(
        "silence:{}:{}",
        rule.as_deref().unwrap_or("*"),
        subject.as_deref().unwrap_or("*")
    );
    let silence = Silence {
        id: 0,
        rule,
        subject,
        until,
        reason: req.reason.trim().to_string(),
        created_by: by.actor.clone(),
        created_at: now,
    };
    let audit = Record::new(by, "silence.create", target).detail(&silence.reason);
    store.create_silence(silence, audit).await
}

/// A channel as asked for.
#[derive(Debug, Default, Deserialize)]
pub struct NewChannel {
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub url_secret: Option<String>,
    pub signing_secret: Option<String>,
}

/// Checks and stores a channel (audited as `channel.create`).
pub async fn create_channel(
    store: &Store,
    req: NewChannel,
    by: &crate::identity::audit::Context,
) -> Result<Channel> {
    let blank = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let channel = Channel {
        name: req.name.trim().to_string(),
        kind: ChannelKind::parse(req.kind.trim()).map_err(Error::Invalid)?,
        url: blank(req.url),
        url_secret: blank(req.url_secret),
        signing_secret: blank(req.signing_secret),
        created_at: Timestamp::now(),
        created_by: by.actor.clone(),
    };
    crate::agents::check_label(&channel.name)
        .map_err(|e| Error::Invalid(format!("channel name {e}")))?;
    match (&channel.url, &channel.url_secret) {
        (Some(url), None) => check_url(url)?,
        (None, Some(_)) => {}
        _ => {
            return Err(Error::Invalid(
                "give the channel either url or url_secret (an instance secret holding the URL)"
                    .into(),
            ));
        }
    }
    if channel.signing_secret.is_some() && channel.kind != ChannelKind::Webhook {
        return Err(Error::Invalid(
            "signing_secret signs webhook channels only".into(),
        ));
    }
    let audit = Record::new(by, "channel.create", format!("channel:{}", channel.name));
    store.create_channel(channel.clone(), audit).await?;
    Ok(channel)
}
