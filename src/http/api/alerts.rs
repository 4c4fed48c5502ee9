//! Alerts, their rules, silences, notification channels, the outbox and probes
//! (administrators): `GET /api/v1/alerts`, `GET /api/v1/alert-rules`,
//! `PUT|DELETE /api/v1/alert-rules/{name}`, `GET|POST /api/v1/silences`, `DELETE /api/v1/silences/{id}`,
//! `GET|POST /api/v1/channels`, `DELETE /api/v1/channels/{name}`,
//! `POST /api/v1/channels/{name}/test`, `GET /api/v1/notifications`,
//! `GET|POST /api/v1/probes`, `DELETE /api/v1/probes/{name}`,
//! `GET /api/v1/probes/{name}/results`, `GET /api/v1/probes/{name}/summaries`; and a
//! project's public status page, `GET /api/v1/status/{slug}` (anyone, once turned on).

use crate::app::App;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::error::ServerError;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use crate::monitoring::probes::{self, NewProbe, Period, ProbeResult, ProbeView, SummaryView};
use crate::monitoring::rules::{Rule, RuleChange};
use crate::monitoring::status::{self, StatusPage};
use crate::monitoring::{self, Channel, NewChannel, NewSilence, Notification, Silence, notify};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::Serialize;

pub async fn alerts(State(app): State<App>) -> ServerResult<Json<monitoring::AlertsView>> {
    Ok(Json(monitoring::alerts_view(&app.store).await?))
}

pub async fn alert_rules(State(app): State<App>) -> ServerResult<Json<Vec<Rule>>> {
    Ok(Json(monitoring::all_rules(&app.store).await?))
}

/// Changes a built-in rule's settings, or makes or replaces a metric rule.
pub async fn update_alert_rule(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
    Json(change): Json<RuleChange>,
) -> ServerResult<Json<Rule>> {
    let metrics = app.metrics.clone();
    let text = tokio::task::spawn_blocking(move || metrics.render_text())
        .await
        .unwrap_or_default();
    let rule = monitoring::update_rule(&app.store, &text, &name, change, &signed.audit).await?;
    Ok(Json(rule))
}

/// Removes a metric rule, or puts a built-in rule back to its defaults.
pub async fn delete_alert_rule(
    State(app): State<App>,
    signed: Signed,
    Path(name): Path<String>,
) -> ServerResult<StatusCode> {
    monitoring::delete_rule(&app.store, &name, &signed.audit).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn silences(State(app): State<App>) -> ServerResult<Json<Vec<Silence>>> {
    Ok(Json(app.store.silences().await?))
}

pub async fn create_silence(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewSilence>,
) -> ServerResult<(StatusCode, Json<Silence>)> {
    let silence = monitoring::create_silence(&app.store, req, &signed.audit).await?;
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

pub async fn channels(State(app): State<App>) -> ServerResult<Json<Vec<Channel>>> {
    Ok(Json(app.store.channels().await?))
}

pub async fn create_channel(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewChannel>,
) -> ServerResult<(StatusCode, Json<Channel>)> {
    let channel = monitoring::create_channel(&app.store, req, &signed.audit).await?;
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

/// Sends a test notification through the channel now: the notification, or 502 with why
/// the channel did not take it.
pub async fn test_channel(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ServerResult<Json<Notification>> {
    match notify::test(&app.store, &app.secrets, &name, &app.config.public_url).await? {
        Ok(n) => Ok(Json(n)),
        Err(e) => Err(ServerError::BadGateway(e)),
    }
}

pub async fn notifications(State(app): State<App>) -> ServerResult<Json<Vec<Notification>>> {
    Ok(Json(app.store.notifications(None, 200).await?))
}

pub async fn list_probes(State(app): State<App>) -> ServerResult<Json<Vec<ProbeView>>> {
    Ok(Json(probes::views(&app.store).await?))
}

pub async fn create_probe(
    State(app): State<App>,
    signed: Signed,
    Json(req): Json<NewProbe>,
) -> ServerResult<(StatusCode, Json<ProbeView>)> {
    let probe = probes::create(&app.store, req, &signed.audit).await?;
    let view = probes::view_of(&app.store, probe, &[]).await?;
    Ok((StatusCode::CREATED, Json(view)))
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
    pub results: Vec<ProbeResult>,
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
    let results = app
        .store
        .probe_results(&name, since, probes::RESULTS_READ)
        .await?;
    Ok(Json(ProbeResults { name, results }))
}

pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/alerts" ADMIN => alerts,
        GET "/api/v1/alert-rules" ADMIN => alert_rules,
        PUT "/api/v1/alert-rules/{name}" ADMIN => update_alert_rule,
        DELETE "/api/v1/alert-rules/{name}" ADMIN => delete_alert_rule,
        GET "/api/v1/silences" ADMIN => silences,
        POST "/api/v1/silences" ADMIN => create_silence,
        DELETE "/api/v1/silences/{id}" ADMIN => delete_silence,
        GET "/api/v1/channels" ADMIN => channels,
        POST "/api/v1/channels" ADMIN => create_channel,
        DELETE "/api/v1/channels/{name}" ADMIN => delete_channel,
        POST "/api/v1/channels/{name}/test" ADMIN => test_channel,
        GET "/api/v1/notifications" ADMIN => notifications,
        GET "/api/v1/probes" ADMIN => list_probes,
        POST "/api/v1/probes" ADMIN => create_probe,
        DELETE "/api/v1/probes/{name}" ADMIN => delete_probe,
        GET "/api/v1/probes/{name}/results" ADMIN => probe_results,
        GET "/api/v1/probes/{name}/summaries" ADMIN => probe_summaries,
        GET "/api/v1/status/{slug}" PUBLIC => status_page,
    ]
}

#[derive(serde::Deserialize)]
pub struct SummariesQuery {
    /// `hour` (the default) or `day`.
    pub per: Option<String>,
}

#[derive(Serialize)]
pub struct ProbeSummaries {
    pub name: String,
    pub per: Period,
    pub summaries: Vec<SummaryView>,
}

/// A probe's hourly (last 7 days) or daily (last 90 days) summaries, oldest first.
pub async fn probe_summaries(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<SummariesQuery>,
) -> ServerResult<Json<ProbeSummaries>> {
    let per = Period::parse(q.per.as_deref().unwrap_or("hour")).map_err(ServerError::BadRequest)?;
    if !app.store.probes().await?.iter().any(|p| p.name == name) {
        return Err(ServerError::NotFound(format!("probe \"{name}\"")));
    }
    let days = match per {
        Period::Hour => 7,
        Period::Day => status::DAYS as u64,
    };
    let since = Timestamp::now() - std::time::Duration::from_secs(days * 24 * 3600);
    let summaries = app.store.probe_summaries(&name, per, since).await?;
    Ok(Json(ProbeSummaries {
        name,
        per,
        summaries: summaries.into_iter().map(SummaryView::from).collect(),
    }))
}

/// A project's status page, when an administrator turned it on (404 otherwise, as for a
/// project that does not exist).
pub async fn status_page(
    State(app): State<App>,
    Path(slug): Path<String>,
) -> ServerResult<Json<StatusPage>> {
    status::shown(&app.store, &slug)
        .await?
        .map(Json)
        .ok_or_else(|| ServerError::NotFound(format!("status page \"{slug}\"")))
}
