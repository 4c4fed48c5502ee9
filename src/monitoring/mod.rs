//! Alerts and their notifications. Rules (`rules.rs`: built-in ones and rules on
//! BetCycle's own metrics, each with its settings) read the store and what `Sources`
//! adds: failed runs and deployments, stuck queues, busy run slots, probe states, the
//! disk, the audit chain, `/metrics`. The `alerts` worker reconciles what the rules say
//! with the stored alerts: a change is one write — the alert's new state, its history
//! entry and one notification per channel in the outbox (none while a silence covers
//! it). The `notifications` worker sends the outbox with retries (`notify.rs`). Because
//! the state is stored and the rules are read from records, a restart neither loses a
//! notification nor sends one twice. `trends.rs` is a project's weeks, for charts.

pub mod notify;
pub mod probes;
pub mod rules;
pub mod status;
pub mod trends;

use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// When its notification was last queued (firing, or sent again by renotify).
    #[serde(default)]
    pub notified_at: Option<Timestamp>,
    /// The project it is about (a slug), whose channels it also goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
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
            notified_at: None,
            project: None,
        }
    }

    /// The same alert, about `project`.
    pub fn in_project(mut self, project: Option<&str>) -> Alert {
        self.project = project.map(str::to_string);
        self
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
    /// Email over SMTP: the URL is `smtp://` (STARTTLS) or `smtps://` (TLS from the start).
    Email,
}

impl ChannelKind {
    pub fn parse(text: &str) -> std::result::Result<ChannelKind, String> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
            format!("kind \"{text}\": use webhook, slack, discord, teams, ntfy, gotify or email")
        })
    }
}

/// A notification channel. Its URL is given as is (`url`) or, when it is itself a
/// credential (a Slack or Discord webhook URL, a Gotify token, an SMTP URL with a
/// password), as the name of an instance secret holding it (`url_secret`).
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
    /// An email channel's recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// An email channel's sender (default `BetCycle <betcycle@SMTP host>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A project's channel (a slug) takes only that project's alerts; an instance
    /// channel (none) takes every alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub created_at: Timestamp,
    pub created_by: String,
}

impl Channel {
    /// Whether `alert` is sent through this channel.
    pub fn takes(&self, alert: &Alert) -> bool {
        self.project.is_none() || self.project == alert.project
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Pending,
    Sent,
    /// Given up after its attempts.
    Failed,
}

fn critical() -> String {
    "critical".into()
}

/// One message to one channel, in the outbox until it is sent or given up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    pub channel: String,
    pub alert: String,
    pub state: AlertState,
    /// The alert's severity (critical, warning, info).
    #[serde(default = "critical")]
    pub severity: String,
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
            severity: alert.severity.clone(),
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

/// What the rules look at besides the store.
#[derive(Clone)]
pub struct Sources {
    pub store: Store,
    pub metrics: std::sync::Arc<crate::core::metrics::Metrics>,
    pub runner: std::sync::Arc<crate::ci::runner::Runner>,
    pub data_dir: std::path::PathBuf,
    pub public_url: String,
}

/// How often the `audit_chain_broken` rule walks the audit log's chain.
const AUDIT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The `alerts` worker's memory: since when each condition has held (for `for`
/// durations; a restart starts them again, as Prometheus' pending alerts do without
/// its state file) and the last walk of the audit chain.
#[derive(Default)]
pub struct Evaluator {
    pending: BTreeMap<String, Timestamp>,
    audit: Option<(std::time::Instant, Option<String>)>,
}

/// Whether a streak rule's condition holds: `failed` says, newest first, whether each
/// finished run (or deployment) went wrong; `firing`, whether its alert fires now.
fn streak_holds(failed: &[bool], firing: bool, rule: &rules::Rule) -> bool {
    let (need, want_failed) = if firing {
        (rule.success_threshold as usize, false)
    } else {
        (rule.failure_threshold as usize, true)
    };
    let streak = failed.len() >= need && failed[..need].iter().all(|f| *f == want_failed);
    // Firing, it holds until `need` successes in a row; else it holds after `need`
    // failures in a row.
    if firing { !streak } else { streak }
}

impl Evaluator {
    /// What the rules say now: the alerts whose condition holds, by key (before `for`).
    async fn conditions(
        &mut self,
        src: &Sources,
        rules: &[rules::Rule],
        stored: &BTreeMap<String, Alert>,
    ) -> Result<BTreeMap<String, Alert>> {
        let store = &src.store;
        let public_url = &src.public_url;
        let rule = |name: &str| rules.iter().find(|r| r.name == name && r.enabled);
        let firing = |key: &str| {
            stored
                .get(key)
                .is_some_and(|a| a.state == AlertState::Firing)
        };
        let mut out = BTreeMap::new();
        let now = Timestamp::now();
        let mut queued_anywhere = false;
        for project in store.list_projects().await? {
            if let Some(rule) = rule("pipeline_failed") {
                let filter = crate::store::RunFilter {
                    status: None,
                    branch: Some(project.default_branch.clone()),
                };
                let limit = (rule.failure_threshold + rule.success_threshold).max(20) as usize;
                let runs = store.project_runs(&project.slug, filter, limit).await?;
                let finished: Vec<_> = runs.iter().filter(|r| r.status.is_finished()).collect();
                let failed: Vec<bool> = finished
                    .iter()
                    .map(|r| r.status != crate::ci::run::RunStatus::Succeeded)
                    .collect();
                let key = format!("pipeline_failed:{}", project.slug);
                let latest_failed = finished
                    .iter()
                    .find(|r| r.status != crate::ci::run::RunStatus::Succeeded);
                if streak_holds(&failed, firing(&key), rule)
                    && let Some(run) = latest_failed
                {
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
                    )
                    .in_project(Some(&project.slug));
                    out.insert(alert.key.clone(), alert);
                }
            }
            if let Some(rule) = rule("deployment_failed") {
                use crate::delivery::DeploymentStatus as S;
                let mut by_env: BTreeMap<String, Vec<crate::delivery::Deployment>> =
                    BTreeMap::new();
                for d in store.deployments(&project.slug, 100).await? {
                    if matches!(d.status, S::Succeeded | S::Failed | S::RolledBack) {
                        by_env.entry(d.environment.clone()).or_default().push(d);
                    }
                }
                for (environment, mut ds) in by_env {
                    ds.sort_by_key(|d| std::cmp::Reverse(d.number));
                    let subject = format!("{}/{environment}", project.slug);
                    let failed: Vec<bool> = ds.iter().map(|d| d.status != S::Succeeded).collect();
                    let key = format!("deployment_failed:{subject}");
                    let Some(d) = ds.iter().find(|d| d.status != S::Succeeded) else {
                        continue;
                    };
                    if !streak_holds(&failed, firing(&key), rule) {
                        continue;
                    }
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
                    )
                    .in_project(Some(&project.slug));
                    out.insert(alert.key.clone(), alert);
                }
            }
            // Only the queue rules look at queued runs.
            let queued = if rule("queue_stuck").is_some() || rule("runner_saturated").is_some() {
                let queued_filter = crate::store::RunFilter {
                    status: Some(crate::ci::run::RunStatus::Queued),
                    branch: None,
                };
                store
                    .project_runs(&project.slug, queued_filter, 100)
                    .await?
            } else {
                Vec::new()
            };
            queued_anywhere |= !queued.is_empty();
            if let Some(rule) = rule("queue_stuck")
                && let Some(oldest) = queued.iter().min_by_key(|r| r.created_at)
            {
                let minutes = rule.threshold.unwrap_or(30.0);
                let waited = (now - oldest.created_at)
                    .total(jiff::Unit::Second)
                    .unwrap_or(0.0);
                if waited >= minutes * 60.0 {
                    let alert = Alert::firing(
                        "queue_stuck",
                        &project.slug,
                        oldest.created_at,
                        format!(
                            "{} #{} has been queued for {} (threshold {minutes} min); {} run(s) queued",
                            project.slug,
                            oldest.number,
                            if waited < 120.0 {
                                format!("{waited:.0} s")
                            } else {
                                format!("{:.0} min", waited / 60.0)
                            },
                            queued.len()
                        ),
                        format!(
                            "{public_url}/projects/{}/runs/{}",
                            project.slug, oldest.number
                        ),
                    )
                    .in_project(Some(&project.slug));
                    out.insert(alert.key.clone(), alert);
                }
            }
        }
        if rule("runner_saturated").is_some() {
            let (busy, limit) = src.runner.slots();
            if busy >= limit && queued_anywhere {
                let alert = Alert::firing(
                    "runner_saturated",
                    "runner",
                    now,
                    format!(
                        "all {limit} run slot(s) are busy and runs are waiting (run_concurrency = {limit})"
                    ),
                    format!("{public_url}/runs"),
                );
                out.insert(alert.key.clone(), alert);
            }
        }
        let probe_states = store.probe_states().await?;
        let probes = store.probes().await?;
        let project_of = |name: &str| {
            probes
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.project.as_deref())
        };
        if rule("probe_down").is_some() {
            for state in &probe_states {
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
                )
                .in_project(probe.project.as_deref());
                out.insert(alert.key.clone(), alert);
            }
        }
        if let Some(rule) = rule("certificate_expiring") {
            let days = rule.threshold.unwrap_or(14.0);
            for state in &probe_states {
                let Some(expires) = state.last.as_ref().and_then(|r| r.cert_expires_at) else {
                    continue;
                };
                let left = (expires - now).total(jiff::Unit::Second).unwrap_or(0.0) / 86_400.0;
                if left < days {
                    let when = if left <= 0.0 {
                        "has expired".to_string()
                    } else {
                        format!("expires in {left:.1} days")
                    };
                    let alert = Alert::firing(
                        "certificate_expiring",
                        &state.name,
                        now,
                        format!(
                            "the certificate of probe {} {when} ({}; threshold {days} days)",
                            state.name,
                            expires.strftime("%Y-%m-%d %H:%M UTC")
                        ),
                        format!("{public_url}/monitoring"),
                    )
                    .in_project(project_of(&state.name));
                    out.insert(alert.key.clone(), alert);
                }
            }
        }
        if let Some(rule) = rule("disk_low") {
            let threshold = rule.threshold.unwrap_or(1024.0 * 1024.0 * 1024.0);
            if let Some(free) = crate::core::health::free_disk_bytes(&src.data_dir)
                && (free as f64) < threshold
            {
                let alert = Alert::firing(
                    "disk_low",
                    "data_dir",
                    now,
                    format!(
                        "the data directory {} has {} free (threshold {})",
                        src.data_dir.display(),
                        crate::core::config::format_size(free),
                        crate::core::config::format_size(threshold as u64)
                    ),
                    format!("{public_url}/settings"),
                );
                out.insert(alert.key.clone(), alert);
            }
        }
        if rule("audit_chain_broken").is_some() {
            let due = self
                .audit
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= AUDIT_CHECK_EVERY);
            if due {
                let broken = store
                    .verify_audit()
                    .await?
                    .err()
                    .map(|b| format!("audit entry {} {}", b.seq, b.problem));
                self.audit = Some((std::time::Instant::now(), broken));
            }
            if let Some((_, Some(problem))) = &self.audit {
                let alert = Alert::firing(
                    "audit_chain_broken",
                    "audit",
                    now,
                    format!(
                        "the audit log's hash chain is broken: {problem} (betcycle audit verify)"
                    ),
                    format!("{public_url}/settings/audit"),
                );
                out.insert(alert.key.clone(), alert);
            }
        }
        let metric_rules: Vec<&rules::Rule> =
            rules.iter().filter(|r| !r.builtin && r.enabled).collect();
        if !metric_rules.is_empty() {
            let metrics = src.metrics.clone();
            let text = tokio::task::spawn_blocking(move || metrics.render_text())
                .await
                .unwrap_or_default();
            let samples = rules::samples(&text);
            for rule in metric_rules {
                let (Some(metric), Some(op), Some(threshold)) =
                    (&rule.metric, rule.op, rule.threshold)
                else {
                    continue;
                };
                for s in samples.iter().filter(|s| {
                    s.name == *metric && rule.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                }) {
                    if !op.holds(s.value, threshold) {
                        continue;
                    }
                    let labels: Vec<String> = s
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{v}\""))
                        .collect();
                    let series = if labels.is_empty() {
                        metric.clone()
                    } else {
                        format!("{metric}{{{}}}", labels.join(","))
                    };
                    let alert = Alert::firing(
                        &rule.name,
                        &series,
                        now,
                        format!(
                            "{}: {series} = {} ({} {threshold})",
                            rule.name,
                            s.value,
                            op.as_str()
                        ),
                        format!("{public_url}/monitoring"),
                    );
                    out.insert(alert.key.clone(), alert);
                }
            }
        }
        Ok(out)
    }

    /// One pass of the `alerts` worker: every alert whose state the rules changed is
    /// stored with its history entry and its notifications, in one write each; a firing
    /// alert whose rule renotifies is sent again when due. How many alerts changed.
    pub async fn reconcile(&mut self, src: &Sources) -> Result<usize> {
        let store = &src.store;
        let rules = rules::merge(store.alert_rules().await?);
        let stored: BTreeMap<String, Alert> = store
            .alerts()
            .await?
            .into_iter()
            .map(|a| (a.key.clone(), a))
            .collect();
        let holding = self.conditions(src, &rules, &stored).await?;
        let now = Timestamp::now();
        self.pending.retain(|key, _| holding.contains_key(key));
        let rule_of = |name: &str| rules.iter().find(|r| r.name == name);
        let mut firing = BTreeMap::new();
        for (key, mut alert) in holding {
            let Some(rule) = rule_of(&alert.rule) else {
                continue;
            };
            let since = *self.pending.entry(key.clone()).or_insert(now);
            let already = stored
                .get(&key)
                .is_some_and(|a| a.state == AlertState::Firing);
            let held = (now - since).total(jiff::Unit::Second).unwrap_or(0.0);
            if already || held >= rule.for_seconds as f64 {
                alert.severity = rule.severity.as_str().to_string();
                firing.insert(key, alert);
            }
        }
        let mut changes = Vec::new();
        for (key, alert) in &firing {
            match stored.get(key) {
                Some(s) if s.state == AlertState::Firing => {
                    let rule = rule_of(&s.rule);
                    let every = rule.map_or(0, |r| r.renotify_seconds);
                    let last = s.notified_at.unwrap_or(s.since);
                    if every > 0
                        && (now - last).total(jiff::Unit::Second).unwrap_or(0.0) >= every as f64
                    {
                        tracing::info!(alert = %s.key, "alert: notified again (renotify)");
                        store.renotify_alert(s.clone()).await?;
                    }
                }
                _ => changes.push((alert.clone(), true)),
            }
        }
        for (key, alert) in &stored {
            if alert.state == AlertState::Firing && !firing.contains_key(key) {
                let send = rule_of(&alert.rule).is_none_or(|r| r.send_resolved);
                changes.push((
                    Alert {
                        state: AlertState::Resolved,
                        since: now,
                        ..alert.clone()
                    },
                    send,
                ));
            }
        }
        let n = changes.len();
        for (alert, send) in changes {
            tracing::info!(alert = %alert.key, state = alert.state.as_str(), summary = %alert.summary, "alert");
            store.transition_alert(alert, send).await?;
        }
        Ok(n)
    }
}

/// That a probe's or channel's `project`, when given, exists.
pub async fn check_project(store: &Store, project: Option<&str>) -> Result<()> {
    match project {
        Some(slug) if store.project(slug).await?.is_none() => Err(Error::Invalid(format!(
            "project \"{slug}\": no such project"
        ))),
        _ => Ok(()),
    }
}

/// An http(s) URL with a host, or why not.
pub fn check_url(url: &str) -> Result<()> {
    crate::core::outbound::check_http_url(url)
        .map_err(|e| Error::Invalid(format!("url \"{url}\": {e}")))
}

/// The `alerts` worker: reconciles when a run or deployment ends, when a probe changes
/// state or a rule is changed, and every 10 s.
pub async fn work(
    src: Sources,
    events: crate::core::events::EventBus,
    probes_changed: std::sync::Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::core::events::Event;
    let mut changes = events.subscribe();
    let mut evaluator = Evaluator::default();
    loop {
        if let Err(e) = evaluator.reconcile(&src).await {
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
                        || matches!(&e.event, Event::DeploymentUpdated { .. } | Event::AlertRulesChanged) => break,
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
    let known: Vec<String> = rules::merge(store.alert_rules().await?)
        .into_iter()
        .map(|r| r.name)
        .collect();
    if let Some(rule) = &rule
        && !known.contains(rule)
    {
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
    /// An email channel's recipients: a list, or one string of addresses separated by
    /// commas (a console form's field).
    pub to: Option<Addresses>,
    pub from: Option<String>,
    /// The project whose alerts it takes (all alerts when absent).
    pub project: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Addresses {
    Text(String),
    List(Vec<String>),
}

impl Addresses {
    fn into_list(self) -> Vec<String> {
        let list = match self {
            Addresses::Text(text) => text.split(',').map(str::to_string).collect(),
            Addresses::List(list) => list,
        };
        list.into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }
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
        to: req.to.map(Addresses::into_list).unwrap_or_default(),
        from: blank(req.from),
        project: blank(req.project),
        created_at: Timestamp::now(),
        created_by: by.actor.clone(),
    };
    crate::agents::check_label(&channel.name)
        .map_err(|e| Error::Invalid(format!("channel name {e}")))?;
    match (&channel.url, &channel.url_secret) {
        (Some(url), None) if channel.kind == ChannelKind::Email => {
            notify::email::check_url(url).map_err(|e| Error::Invalid(format!("url: {e}")))?;
        }
        (Some(url), None) => check_url(url)?,
        (None, Some(_)) => {}
        _ => {
            return Err(Error::Invalid(
                "give the channel either url or url_secret (an instance secret holding the URL)"
                    .into(),
            ));
        }
    }
    if channel.kind == ChannelKind::Email {
        notify::email::check_addresses(&channel).map_err(Error::Invalid)?;
    } else if !channel.to.is_empty() || channel.from.is_some() {
        return Err(Error::Invalid("to and from are for email channels".into()));
    }
    if channel.signing_secret.is_some() && channel.kind != ChannelKind::Webhook {
        return Err(Error::Invalid(
            "signing_secret signs webhook channels only".into(),
        ));
    }
    check_project(store, channel.project.as_deref()).await?;
    let audit = Record::new(by, "channel.create", format!("channel:{}", channel.name));
    store.create_channel(channel.clone(), audit).await?;
    Ok(channel)
}

/// The rules, the alerts (firing first) and the newest history: `GET /api/v1/alerts`
/// and the Monitoring page.
#[derive(Serialize)]
pub struct AlertsView {
    pub rules: Vec<rules::Rule>,
    pub alerts: Vec<Alert>,
    pub history: Vec<AlertEvent>,
}

pub async fn alerts_view(store: &Store) -> Result<AlertsView> {
    let mut alerts = store.alerts().await?;
    alerts.sort_by(|a, b| {
        (a.state != AlertState::Firing, &a.key).cmp(&(b.state != AlertState::Firing, &b.key))
    });
    Ok(AlertsView {
        rules: all_rules(store).await?,
        alerts,
        history: store.alert_history(200).await?,
    })
}

/// Every rule with its settings.
pub async fn all_rules(store: &Store) -> Result<Vec<rules::Rule>> {
    Ok(rules::merge(store.alert_rules().await?))
}

/// Changes a rule's settings, or makes or replaces a metric rule (audited as
/// `alert_rule.update`). `metrics` is the `/metrics` text the metric must appear in.
pub async fn update_rule(
    store: &Store,
    metrics: &str,
    name: &str,
    change: rules::RuleChange,
    by: &crate::identity::audit::Context,
) -> Result<rules::Rule> {
    let current = all_rules(store).await?.into_iter().find(|r| r.name == name);
    let rule = rules::apply(name, current, change, &rules::metric_names(metrics))?;
    let audit = Record::new(by, "alert_rule.update", format!("alert_rule:{name}"));
    store.put_alert_rule(rule.clone(), audit).await?;
    Ok(rule)
}

/// Removes a metric rule, or puts a built-in rule back to its defaults (audited as
/// `alert_rule.delete`).
pub async fn delete_rule(
    store: &Store,
    name: &str,
    by: &crate::identity::audit::Context,
) -> Result<()> {
    let audit = Record::new(by, "alert_rule.delete", format!("alert_rule:{name}"));
    if !store.delete_alert_rule(name, audit).await? && !rules::is_builtin(name) {
        return Err(Error::NotFound {
            what: format!("alert rule \"{name}\""),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{rules, streak_holds};

    #[test]
    fn a_streak_fires_after_its_failures_and_resolves_after_its_successes() {
        let mut rule = rules::default_of("pipeline_failed").unwrap();
        rule.failure_threshold = 2;
        rule.success_threshold = 3;
        // Newest first. Not firing: two failures in a row are needed.
        assert!(!streak_holds(&[true], false, &rule));
        assert!(!streak_holds(&[true, false, true], false, &rule));
        assert!(streak_holds(&[true, true, false], false, &rule));
        // Firing: it holds until three successes in a row.
        assert!(streak_holds(&[false, false, true], true, &rule));
        assert!(streak_holds(&[false, false], true, &rule));
        assert!(!streak_holds(&[false, false, false, true], true, &rule));
    }
}
