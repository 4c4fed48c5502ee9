//! Alerts, silences, notification channels and the outbox (administrators):
//! `GET /api/v1/alerts`, `GET|POST /api/v1/silences`, `DELETE /api/v1/silences/{id}`,
//! `GET|POST /api/v1/channels`, `DELETE /api/v1/channels/{name}`,
//! `POST /api/v1/channels/{name}/test`, `GET /api/v1/notifications`, and probes:
//! `GET|POST /api/v1/probes`, `DELETE /api/v1/probes/{name}`,
//! `GET /api/v1/probes/{name}/results`.

use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use crate::monitoring::{
    self, Alert, AlertEvent, AlertState, Channel, ChannelKind, Delivery, Notification, Silence,
    notify,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub struct Alerts {
    pub rules: Vec<RuleView>,
    pub alerts: Vec<Alert>,
    pub history: Vec<AlertEvent>,
}

#[derive(Serialize)]
pub struct RuleView {
    pub name: &'static str,
    pub description: &'static str,
}

pub async fn alerts(State(app): State<App>) -> ServerResult<Json<Alerts>> {
    let mut alerts = app.store.alerts().await?;
    alerts.sort_by(|a, b| {
        (a.state != AlertState::Firing, &a.key).cmp(&(b.state != AlertState::Firing, &b.key))
    });
    Ok(Json(Alerts {
        rules: monitoring::RULES
            .iter()
            .map(|(name, description)| RuleView { name, description })
            .collect(),
        alerts,
        history: app.store.alert_history(200).await?,
    }))
}

#[derive(Deserialize)]
pub struct NewSilence {
    pub rule: Option<String>,
    pub subject: Option<String>,
    /// How long from now (`2h`), or
    pub duration: Option<String>,
    /// until when (RFC 3339).
    pub until: Option<String>,
    pub reason: String,
}

pub async fn silences(State(app): State<App>) -> ServerResult<Json<Vec<Silence>>> {
    Ok(Json(app.store.silences().await?))
}

pub async fn create_silence(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewSilence>,
) -> ServerResult<(StatusCode, Json<Silence>)> {
    let bad = ServerError::BadRequest;
    if let Some(rule) = &req.rule
        && !monitoring::RULES.iter().any(|(name, _)| name == rule)
    {
        let known: Vec<&str> = monitoring::RULES.iter().map(|(n, _)| *n).collect();
        return Err(bad(format!(
            "unknown rule \"{rule}\": the rules are {}",
            known.join(", ")
        )));
    }
    if req.reason.trim().is_empty() {
        return Err(bad("a silence needs a reason".into()));
    }
    let now = Timestamp::now();
    let until = match (&req.duration, &req.until) {
        (Some(d), None) => {
            let d = crate::core::config::parse_duration(d)
                .map_err(|e| bad(format!("duration \"{d}\": {e}")))?;
            now + d
        }
        (None, Some(u)) => u
            .parse::<Timestamp>()
            .map_err(|e| bad(format!("until \"{u}\": {e}")))?,
        _ => return Err(bad("give duration (such as 2h) or until (RFC 3339)".into())),
    };
    if until <= now {
        return Err(bad("a silence must end in the future".into()));
    }
    let silence = Silence {
        id: 0,
        rule: req.rule.clone(),
        subject: req.subject.clone(),
        until,
        reason: req.reason.trim().to_string(),
        created_by: signed.audit.actor.clone(),
        created_at: now,
    };
    let target = format!(
        "silence:{}:{}",
        req.rule.as_deref().unwrap_or("*"),
        req.subject.as_deref().unwrap_or("*")
    );
    let audit = Record::new(&signed.audit, "silence.create", target).detail(&silence.reason);
    let silence = app.store.create_silence(silence, audit).await?;
    Ok((StatusCode::CREATED, Json(silence)))
}

pub async fn delete_silence(
    State(app): State<App>,
    signed: Signed,
    Path(id): Path<u64>,
) -> ServerResult<StatusCode> {
    let audit = Record::new(&signed.audit, "silence.delete", format!("silence:{id}"));
    app.store.delete_silence(id, audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct NewChannel {
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub url_secret: Option<String>,
    pub signing_secret: Option<String>,
}

pub async fn channels(State(app): State<App>) -> ServerResult<Json<Vec<Channel>>> {
    Ok(Json(app.store.channels().await?))
}

pub async fn create_channel(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewChannel>,
) -> ServerResult<(StatusCode, Json<Channel>)> {
    let kind = ChannelKind::parse(req.kind.trim()).map_err(ServerError::BadRequest)?;
    let channel = Channel {
        name: req.name.trim().to_string(),
        kind,
        url: req.url.map(|u| u.trim().to_string()),
        url_secret: req.url_secret,
        signing_secret: req.signing_secret,
        created_at: Timestamp::now(),
        created_by: signed.audit.actor.clone(),
    };
    let audit = Record::new(
        &signed.audit,
        "channel.create",
        format!("channel:{}", channel.name),
    );
    let channel = monitoring::create_channel(&app.store, channel, audit).await?;
    Ok((StatusCode::CREATED, Json(channel)))
}

pub async fn delete_channel(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
) -> ServerResult<StatusCode> {
    let audit = Record::new(&signed.audit, "channel.delete", format!("channel:{name}"));
    app.store.delete_channel(&name, audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a test notification through the channel now and says how it went; the attempt
/// is kept in the outbox like any other.
pub async fn test_channel(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ServerResult<Json<Notification>> {
    let channels = app.store.channels().await?;
    let channel = channels
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ServerError::NotFound(format!("channel \"{name}\"")))?;
    let now = Timestamp::now();
    let mut n = Notification {
        id: 0,
        channel: name.clone(),
        alert: "test".into(),
        state: AlertState::Firing,
        summary: format!("a test notification from BetCycle to channel {name}"),
        link: app.config.public_url.clone(),
        created_at: now,
        status: Delivery::Pending,
        attempts: 0,
        next_at: now,
        last_error: String::new(),
        sent_at: None,
    };
    let client = crate::core::outbound::client_builder()
        .build()
        .map_err(|e| ServerError::Unavailable(e.to_string()))?;
    let outcome = notify::send_once(&client, &app.secrets, channel, &n).await;
    notify::after_attempt(&mut n, outcome.clone());
    // A test is tried once: it is not retried from the outbox.
    if n.status == Delivery::Pending {
        n.status = Delivery::Failed;
    }
    let n = app.store.add_notification(n).await?;
    match outcome {
        Ok(()) => Ok(Json(n)),
        Err(e) => Err(ServerError::BadGateway(format!(
            "channel \"{name}\" did not take the test notification: {e}"
        ))),
    }
}

pub async fn notifications(State(app): State<App>) -> ServerResult<Json<Vec<Notification>>> {
    Ok(Json(app.store.notifications(None, 200).await?))
}

#[derive(Deserialize)]
pub struct NewProbe {
    pub name: String,
    pub kind: monitoring::probes::ProbeKind,
    pub target: String,
    #[serde(default = "ten_seconds")]
    pub interval: String,
    #[serde(default = "five_seconds")]
    pub timeout: String,
    #[serde(default)]
    pub expect_status: Vec<u16>,
    pub body_contains: Option<String>,
    #[serde(default = "three")]
    pub failure_threshold: u32,
    #[serde(default = "one")]
    pub success_threshold: u32,
}

fn ten_seconds() -> String {
    "10s".into()
}
fn five_seconds() -> String {
    "5s".into()
}
fn three() -> u32 {
    3
}
fn one() -> u32 {
    1
}

/// A probe with its state and uptime.
#[derive(Serialize)]
pub struct ProbeView {
    #[serde(flatten)]
    pub probe: monitoring::probes::Probe,
    pub status: monitoring::probes::ProbeStatus,
    pub since: Option<Timestamp>,
    pub last: Option<monitoring::probes::ProbeResult>,
    /// Percent of results that were up over the last 24 hours, 7 days and 30 days.
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub uptime_30d: Option<f64>,
    /// Median latency over the last 24 hours, in milliseconds.
    pub latency_p50_24h_ms: Option<f64>,
}

/// Most results read for one probe's figures (30 days at a 30 s interval).
const RESULTS_READ: usize = 90_000;

async fn view_of(
    app: &App,
    probe: monitoring::probes::Probe,
    states: &[monitoring::probes::ProbeState],
) -> ServerResult<ProbeView> {
    use monitoring::probes::{ProbeStatus, uptime};
    let now = Timestamp::now();
    let day = std::time::Duration::from_secs(24 * 3600);
    let results = app
        .store
        .probe_results(&probe.name, now - day * 30, RESULTS_READ)
        .await?;
    let state = states.iter().find(|s| s.name == probe.name);
    let mut latencies: Vec<f64> = results
        .iter()
        .filter(|r| r.at >= now - day)
        .map(|r| r.latency_ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(ProbeView {
        status: state.map_or(ProbeStatus::Unknown, |s| s.status),
        since: state.map(|s| s.since),
        last: state.and_then(|s| s.last.clone()),
        uptime_24h: uptime(&results, now - day),
        uptime_7d: uptime(&results, now - day * 7),
        uptime_30d: uptime(&results, now - day * 30),
        latency_p50_24h_ms: latencies.get(latencies.len() / 2).copied(),
        probe,
    })
}

pub async fn probes(State(app): State<App>) -> ServerResult<Json<Vec<ProbeView>>> {
    let states = app.store.probe_states().await?;
    let mut out = Vec::new();
    for probe in app.store.probes().await? {
        out.push(view_of(&app, probe, &states).await?);
    }
    Ok(Json(out))
}

pub async fn create_probe(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewProbe>,
) -> ServerResult<(StatusCode, Json<ProbeView>)> {
    let duration = |field: &str, text: &str| {
        crate::core::config::parse_duration(text)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| ServerError::BadRequest(format!("{field} \"{text}\": {e}")))
    };
    let probe = monitoring::probes::Probe {
        name: req.name.trim().to_string(),
        kind: req.kind,
        target: req.target.trim().to_string(),
        interval_ms: duration("interval", &req.interval)?,
        timeout_ms: duration("timeout", &req.timeout)?,
        expect_status: req.expect_status,
        body_contains: req.body_contains,
        failure_threshold: req.failure_threshold,
        success_threshold: req.success_threshold,
        created_at: Timestamp::now(),
        created_by: signed.audit.actor.clone(),
    };
    monitoring::probes::check(&probe)?;
    let audit = Record::new(
        &signed.audit,
        "probe.create",
        format!("probe:{}", probe.name),
    )
    .detail(&probe.target);
    app.store.create_probe(probe.clone(), audit).await?;
    Ok((StatusCode::CREATED, Json(view_of(&app, probe, &[]).await?)))
}

pub async fn delete_probe(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
) -> ServerResult<StatusCode> {
    let audit = Record::new(&signed.audit, "probe.delete", format!("probe:{name}"));
    app.store.delete_probe(&name, audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct ProbeResults {
    pub name: String,
    pub results: Vec<monitoring::probes::ProbeResult>,
}

/// The last 24 hours of a probe's results, oldest first.
pub async fn probe_results(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ServerResult<Json<ProbeResults>> {
    if !app.store.probes().await?.iter().any(|p| p.name == name) {
        return Err(ServerError::NotFound(format!("probe \"{name}\"")));
    }
    let since = Timestamp::now() - std::time::Duration::from_secs(24 * 3600);
    let results = app.store.probe_results(&name, since, RESULTS_READ).await?;
    Ok(Json(ProbeResults { name, results }))
}

pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/alerts" ADMIN => alerts,
        GET "/api/v1/silences" ADMIN => silences,
        POST "/api/v1/silences" ADMIN => create_silence,
        DELETE "/api/v1/silences/{id}" ADMIN => delete_silence,
        GET "/api/v1/channels" ADMIN => channels,
        POST "/api/v1/channels" ADMIN => create_channel,
        DELETE "/api/v1/channels/{name}" ADMIN => delete_channel,
        POST "/api/v1/channels/{name}/test" ADMIN => test_channel,
        GET "/api/v1/notifications" ADMIN => notifications,
        GET "/api/v1/probes" ADMIN => probes,
        POST "/api/v1/probes" ADMIN => create_probe,
        DELETE "/api/v1/probes/{name}" ADMIN => delete_probe,
        GET "/api/v1/probes/{name}/results" ADMIN => probe_results,
    ]
}
