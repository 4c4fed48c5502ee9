//! Uptime probes: an HTTP(S) request (status, optionally a body substring) or a TCP
//! connect, on an interval. Every result is stored (kept 30 days); a probe is `down`
//! after `failure_threshold` failures in a row and `up` again after `success_threshold`
//! successes in a row — that state is stored too, and the `probe_down` rule reads it.

use crate::core::error::{Error, Result};
use crate::store::Store;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the worker reads the probe definitions again (a new probe's first check
/// runs within this).
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// How long results are kept.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Http,
    Tcp,
}

/// A probe, as an administrator defines it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub kind: ProbeKind,
    /// `http(s)://…` for `http`, `host:port` for `tcp`.
    pub target: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// For `http`: the status codes that count as up (default 200–399).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// For `http`: text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeResult {
    pub at: Timestamp,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(default)]
    pub error: String,
    /// An HTTPS probe's: when the certificate the server presented stops being valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    Unknown,
    Up,
    Down,
}

/// A probe's state: what it is, and the streak that decides when that changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeState {
    pub name: String,
    pub status: ProbeStatus,
    pub since: Timestamp,
    /// Results in a row that disagree with `status` (or agree, while unknown).
    pub streak: u32,
    pub last: Option<ProbeResult>,
}

impl ProbeState {
    pub fn new(name: &str) -> ProbeState {
        ProbeState {
            name: name.to_string(),
            status: ProbeStatus::Unknown,
            since: Timestamp::now(),
            streak: 0,
            last: None,
        }
    }

    /// Takes `result` into account; whether the status changed.
    pub fn observe(&mut self, probe: &Probe, result: ProbeResult) -> bool {
        let wanted = if result.ok {
            ProbeStatus::Up
        } else {
            ProbeStatus::Down
        };
        let at = result.at;
        self.last = Some(result);
        if wanted == self.status {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = match wanted {
            ProbeStatus::Down => probe.failure_threshold,
            _ => probe.success_threshold,
        };
        if self.streak >= needed.max(1) {
            self.status = wanted;
            self.since = at;
            self.streak = 0;
            return true;
        }
        false
    }
}

/// Checks a probe definition; the error names the field.
pub fn check(probe: &Probe) -> Result<()> {
    crate::agents::check_label(&probe.name).map_err(|e| Error::Invalid(format!("name {e}")))?;
    match probe.kind {
        ProbeKind::Http => super::check_url(&probe.target)?,
        ProbeKind::Tcp => {
            let ok = probe
                .target
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::Invalid(format!(
                    "target \"{}\": a tcp probe's target is host:port",
                    probe.target
                )));
            }
        }
    }
    if probe.interval_ms < 1000 {
        return Err(Error::Invalid("interval: at least 1s".into()));
    }
    if probe.timeout_ms == 0 || probe.timeout_ms > probe.interval_ms {
        return Err(Error::Invalid(
            "timeout: more than 0 and at most the interval".into(),
        ));
    }
    if probe.failure_threshold == 0 || probe.success_threshold == 0 {
        return Err(Error::Invalid(
            "failure_threshold and success_threshold are at least 1".into(),
        ));
    }
    Ok(())
}

/// Runs one check of `probe`.
pub async fn run_once(client: &reqwest::Client, probe: &Probe) -> ProbeResult {
    let started = Instant::now();
    let timeout = Duration::from_millis(probe.timeout_ms);
    let mut cert_expires_at = None;
    let outcome: std::result::Result<(), String> = match probe.kind {
        ProbeKind::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&probe.target)).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect: {e}")),
                Err(_) => Err(format!("no connection within {} ms", probe.timeout_ms)),
            }
        }
        ProbeKind::Http => http_check(client, probe, timeout, &mut cert_expires_at).await,
    };
    ProbeResult {
        at: Timestamp::now(),
        ok: outcome.is_ok(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        error: outcome.err().unwrap_or_default(),
        cert_expires_at,
    }
}

/// When the certificate `der` stops being valid (its notAfter), if it parses.
pub fn not_after(der: &[u8]) -> Option<Timestamp> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let seconds = cert
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs();
    Timestamp::from_second(i64::try_from(seconds).ok()?).ok()
}

async fn http_check(
    client: &reqwest::Client,
    probe: &Probe,
    timeout: Duration,
    cert_expires_at: &mut Option<Timestamp>,
) -> std::result::Result<(), String> {
    let response = client
        .get(&probe.target)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| crate::core::outbound::describe(&e))?;
    *cert_expires_at = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .and_then(not_after);
    let status = response.status().as_u16();
    let expected = if probe.expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        probe.expect_status.contains(&status)
    };
    if !expected {
        return Err(format!("status {status}"));
    }
    if let Some(needle) = &probe.body_contains {
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !body.contains(needle.as_str()) {
            return Err(format!("the body does not contain \"{needle}\""));
        }
    }
    Ok(())
}

/// Uptime over the results since `since`: the share that were up, as a percentage
/// (`None` without results).
pub fn uptime(results: &[ProbeResult], since: Timestamp) -> Option<f64> {
    let window: Vec<&ProbeResult> = results.iter().filter(|r| r.at >= since).collect();
    if window.is_empty() {
        return None;
    }
    let up = window.iter().filter(|r| r.ok).count();
    Some(up as f64 * 100.0 / window.len() as f64)
}

/// The `probes` worker: each probe runs on its interval; results and state changes are
/// stored; old results are pruned hourly.
pub async fn work(
    store: Store,
    changed: std::sync::Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    // With the server's certificate on each HTTPS response, for its expiry.
    let client = match crate::core::outbound::client_builder()
        .tls_info(true)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "probes: cannot build the HTTP client");
            return;
        }
    };
    let mut next: HashMap<String, Instant> = HashMap::new();
    let mut states: HashMap<String, ProbeState> = store
        .probe_states()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let mut running = tokio::task::JoinSet::new();
    let mut pruned = Instant::now();
    let (mut probes, mut loaded): (Vec<Probe>, Option<Instant>) = (Vec::new(), None);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // The definitions change rarely: read them once a second, not every tick.
        if loaded.is_none_or(|at| at.elapsed() >= RELOAD_EVERY) {
            match store.probes().await {
                Ok(p) => {
                    probes = p;
                    loaded = Some(Instant::now());
                    next.retain(|name, _| probes.iter().any(|p| p.name == *name));
                    states.retain(|name, _| probes.iter().any(|p| p.name == *name));
                }
                Err(e) => tracing::warn!(error = %e, "probes: cannot read the probes"),
            }
        }
        let now = Instant::now();
        for probe in &probes {
            let due = next.get(&probe.name).is_none_or(|at| *at <= now);
            if !due {
                continue;
            }
            next.insert(
                probe.name.clone(),
                now + Duration::from_millis(probe.interval_ms),
            );
            let (client, probe) = (client.clone(), probe.clone());
            running.spawn(async move {
                let result = run_once(&client, &probe).await;
                (probe, result)
            });
        }
        // The results in so far, stored in one write.
        let mut batch = Vec::new();
        let mut any_changed = false;
        while let Some(done) = running.try_join_next() {
            let Ok((probe, result)) = done else { continue };
            let state = states
                .entry(probe.name.clone())
                .or_insert_with(|| ProbeState::new(&probe.name));
            if state.observe(&probe, result.clone()) {
                tracing::info!(probe = %probe.name, status = ?state.status, error = %result.error, "probe");
                any_changed = true;
            }
            batch.push((result, state.clone()));
        }
        if !batch.is_empty() {
            if let Err(e) = store.record_probes(batch).await {
                tracing::warn!(error = %e, "probes: results could not be stored");
            }
            if any_changed {
                changed.notify_one();
            }
        }
        if pruned.elapsed() > Duration::from_secs(3600) {
            pruned = Instant::now();
            let before = Timestamp::now() - RETENTION;
            if let Err(e) = store.prune_probe_results(before).await {
                tracing::warn!(error = %e, "probes: old results could not be pruned");
            }
        }
    }
}

/// A probe as asked for (durations as text: `10s`).
#[derive(Debug, Deserialize)]
pub struct NewProbe {
    pub name: String,
    pub kind: ProbeKind,
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

/// Checks and stores a probe (audited as `probe.create`); the `probes` worker picks it
/// up within a second.
pub async fn create(
    store: &Store,
    req: NewProbe,
    by: &crate::identity::audit::Context,
) -> Result<Probe> {
    let duration = |field: &str, text: &str| {
        crate::core::config::parse_duration(text)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| Error::Invalid(format!("{field} \"{text}\": {e}")))
    };
    let probe = Probe {
        name: req.name.trim().to_string(),
        kind: req.kind,
        target: req.target.trim().to_string(),
        interval_ms: duration("interval", &req.interval)?,
        timeout_ms: duration("timeout", &req.timeout)?,
        expect_status: req.expect_status,
        body_contains: req.body_contains.filter(|b| !b.is_empty()),
        failure_threshold: req.failure_threshold,
        success_threshold: req.success_threshold,
        created_at: Timestamp::now(),
        created_by: by.actor.clone(),
    };
    check(&probe)?;
    let audit =
        crate::identity::audit::Record::new(by, "probe.create", format!("probe:{}", probe.name))
            .detail(&probe.target);
    store.create_probe(probe.clone(), audit).await?;
    Ok(probe)
}

/// A probe with its state and uptime, as the API and the console show it.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeView {
    #[serde(flatten)]
    pub probe: Probe,
    pub status: ProbeStatus,
    pub since: Option<Timestamp>,
    pub last: Option<ProbeResult>,
    /// Percent of results that were up over the last 24 hours, 7 days and 30 days.
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub uptime_30d: Option<f64>,
    /// Median latency over the last 24 hours, in milliseconds.
    pub latency_p50_24h_ms: Option<f64>,
}

impl ProbeView {
    pub fn status_str(&self) -> &'static str {
        match self.status {
            ProbeStatus::Unknown => "unknown",
            ProbeStatus::Up => "up",
            ProbeStatus::Down => "down",
        }
    }

    /// An uptime figure as the console shows it.
    pub fn percent(value: &Option<f64>) -> String {
        value.map_or("–".into(), |p| format!("{p:.2} %"))
    }
}

/// Most results read for one probe's figures (30 days at a 30 s interval).
pub const RESULTS_READ: usize = 90_000;

/// Every probe, with its figures.
pub async fn views(store: &Store) -> Result<Vec<ProbeView>> {
    let states = store.probe_states().await?;
    let mut out = Vec::new();
    for probe in store.probes().await? {
        out.push(view_of(store, probe, &states).await?);
    }
    Ok(out)
}

pub async fn view_of(store: &Store, probe: Probe, states: &[ProbeState]) -> Result<ProbeView> {
    let now = Timestamp::now();
    let day = Duration::from_secs(24 * 3600);
    let results = store
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
