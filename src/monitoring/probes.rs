//! Uptime probes: an HTTP(S) request (status, optionally a body substring or a JSONPath
//! check), a TCP connect, a DNS query, or — kept by BetCycle for every environment a
//! `service` target serves — the service's health check on each instance, on an
//! interval. Every result is stored (kept 30 days) and summed into hourly and daily
//! summaries (kept longer, for status pages); a probe is `down` after `failure_threshold`
//! failures in a row and `up` again after `success_threshold` successes in a row — that
//! state is stored too, and the `probe_down` rule reads it.

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
    Dns,
    /// A `service` target's health check on every instance serving its environment; made,
    /// kept up to date and removed by BetCycle.
    Service,
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
    /// For `http`: a JSONPath (RFC 9535, `$.status`) that must find something in the JSON
    /// body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// With `json_path`: what one of the values it finds must be (a string's text, or the
    /// JSON of anything else: `true`, `3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_equals: Option<String>,
    /// For `dns`: the name asked for (the target is the DNS server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_name: Option<String>,
    /// For `dns`: the record type asked for (`A` unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_type: Option<String>,
    /// For `dns`: an answer one of the records must be (`192.0.2.7`, `mail.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_answer: Option<String>,
    /// For `service` (whose target is `project/environment`): the health check's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// The project it belongs to (a slug): its status page shows it and its alerts also
    /// go to the project's channels. Instance-wide when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The project's environment it watches (`production`), if it watches one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
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

/// What a probe's summaries sum up: an hour or a day (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Hour, Period::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    pub fn parse(text: &str) -> std::result::Result<Period, String> {
        match text {
            "hour" => Ok(Period::Hour),
            "day" => Ok(Period::Day),
            other => Err(format!("per \"{other}\": hour or day")),
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Period::Hour => 3600,
            Period::Day => 24 * 3600,
        }
    }

    /// The start of the hour or day that holds `at`, in Unix seconds.
    pub fn start_of(self, at: Timestamp) -> i64 {
        at.as_second().div_euclid(self.seconds()) * self.seconds()
    }

    /// How long its summaries are kept: hours 90 days, days 400 days (a status page
    /// shows 90 days; the raw results go after 30).
    pub fn retention(self) -> Duration {
        let day = Duration::from_secs(24 * 3600);
        match self {
            Period::Hour => day * 90,
            Period::Day => day * 400,
        }
    }
}

/// One hour's or one day's results of a probe, summed as they are recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// The start of the hour or day.
    pub start: Timestamp,
    pub checks: u64,
    /// How many of them were up.
    pub ok: u64,
    pub latency_total_ms: f64,
    pub latency_max_ms: f64,
}

impl ProbeSummary {
    pub fn add(&mut self, result: &ProbeResult) {
        self.checks += 1;
        self.ok += u64::from(result.ok);
        self.latency_total_ms += result.latency_ms;
        self.latency_max_ms = self.latency_max_ms.max(result.latency_ms);
    }

    /// The share of checks that were up, as a percentage.
    pub fn uptime(&self) -> Option<f64> {
        (self.checks > 0).then(|| self.ok as f64 * 100.0 / self.checks as f64)
    }

    pub fn latency_avg_ms(&self) -> Option<f64> {
        (self.checks > 0).then(|| self.latency_total_ms / self.checks as f64)
    }
}

/// A summary as the API shows it: with its uptime and mean latency.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryView {
    #[serde(flatten)]
    pub summary: ProbeSummary,
    pub uptime: Option<f64>,
    pub latency_avg_ms: Option<f64>,
}

impl From<ProbeSummary> for SummaryView {
    fn from(summary: ProbeSummary) -> SummaryView {
        SummaryView {
            uptime: summary.uptime(),
            latency_avg_ms: summary.latency_avg_ms(),
            summary,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    Unknown,
    Up,
    Down,
}

impl ProbeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Unknown => "unknown",
            ProbeStatus::Up => "up",
            ProbeStatus::Down => "down",
        }
    }
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
    let invalid = |field: &str, message: &str| Err(Error::Invalid(format!("{field}: {message}")));
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
        ProbeKind::Dns => {
            dns_server(&probe.target)
                .map_err(|e| Error::Invalid(format!("target \"{}\": {e}", probe.target)))?;
            let Some(name) = &probe.query_name else {
                return invalid("query_name", "a dns probe asks for a name (example.com)");
            };
            hickory_proto::rr::Name::from_ascii(name)
                .map_err(|e| Error::Invalid(format!("query_name \"{name}\": {e}")))?;
            query_type(probe).map_err(Error::Invalid)?;
        }
        ProbeKind::Service => {
            return invalid(
                "kind",
                "service probes are made by BetCycle for each environment a service target serves",
            );
        }
    }
    let http_only = [
        ("body_contains", probe.body_contains.is_some()),
        ("json_path", probe.json_path.is_some()),
        ("expect_status", !probe.expect_status.is_empty()),
    ];
    let dns_only = [
        ("query_name", probe.query_name.is_some()),
        ("query_type", probe.query_type.is_some()),
        ("expect_answer", probe.expect_answer.is_some()),
    ];
    for (field, given) in http_only {
        if given && probe.kind != ProbeKind::Http {
            return invalid(field, "only http probes check a response");
        }
    }
    for (field, given) in dns_only {
        if given && probe.kind != ProbeKind::Dns {
            return invalid(field, "only dns probes ask a DNS server");
        }
    }
    if let Some(path) = &probe.json_path {
        serde_json_path::JsonPath::parse(path)
            .map_err(|e| Error::Invalid(format!("json_path \"{path}\": {e}")))?;
    } else if probe.json_equals.is_some() {
        return invalid(
            "json_equals",
            "compares what json_path finds: give json_path",
        );
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

/// The probe BetCycle keeps for the service `project/environment` serves, from its
/// health check.
pub fn for_service(
    project: &str,
    environment: &str,
    health: &crate::ci::pipeline::deploy::Health,
) -> Probe {
    let interval_ms = (health.interval.as_millis() as u64).max(1000);
    Probe {
        name: service_probe_name(project, environment),
        kind: ProbeKind::Service,
        target: format!("{project}/{environment}"),
        interval_ms,
        timeout_ms: (health.timeout.as_millis() as u64).clamp(1, interval_ms),
        expect_status: Vec::new(),
        body_contains: None,
        json_path: None,
        json_equals: None,
        query_name: None,
        query_type: None,
        expect_answer: None,
        health_path: Some(health.path.clone()),
        project: Some(project.to_string()),
        environment: Some(environment.to_string()),
        failure_threshold: health.failure_threshold.max(1),
        success_threshold: health.success_threshold.max(1),
        created_at: Timestamp::now(),
        created_by: "betcycle".into(),
    }
}

/// The name of the probe BetCycle keeps for the service `project/environment` serves.
pub fn service_probe_name(project: &str, environment: &str) -> String {
    format!("service.{project}.{environment}")
}

/// Where a service probe looks: each instance serving an environment (slot, port).
pub trait ServingInstances: Send + Sync {
    fn serving(&self, project: &str, environment: &str) -> Vec<(u32, u16)>;
}

/// Runs one check of `probe`.
pub async fn run_once(
    client: &reqwest::Client,
    probe: &Probe,
    services: &dyn ServingInstances,
) -> ProbeResult {
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
        ProbeKind::Dns => match tokio::time::timeout(timeout, dns_check(probe)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {} ms", probe.timeout_ms)),
        },
        ProbeKind::Service => service_check(client, probe, timeout, services).await,
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
    if probe.body_contains.is_none() && probe.json_path.is_none() {
        return Ok(());
    }
    let body = read_body(response).await?;
    if let Some(needle) = &probe.body_contains
        && !String::from_utf8_lossy(&body).contains(needle.as_str())
    {
        return Err(format!("the body does not contain \"{needle}\""));
    }
    if let Some(path) = &probe.json_path {
        json_check(&body, path, probe.json_equals.as_deref())?;
    }
    Ok(())
}

/// Up when every instance serving the environment answers its health check with 2xx or
/// 3xx; the error names each that did not.
async fn service_check(
    client: &reqwest::Client,
    probe: &Probe,
    timeout: Duration,
    services: &dyn ServingInstances,
) -> std::result::Result<(), String> {
    let (project, environment) = probe.target.split_once('/').unwrap_or((&probe.target, ""));
    let instances = services.serving(project, environment);
    if instances.is_empty() {
        return Err(format!("no instance serves {}", probe.target));
    }
    let path = probe.health_path.as_deref().unwrap_or("/");
    let checks = instances.iter().map(|(slot, port)| async move {
        let url = format!("http://127.0.0.1:{port}{path}");
        let answer = client.get(&url).timeout(timeout).send().await;
        match answer {
            Ok(r) if r.status().is_success() || r.status().is_redirection() => None,
            Ok(r) => Some(format!("instance {slot}: status {}", r.status().as_u16())),
            Err(e) => Some(format!(
                "instance {slot}: {}",
                crate::core::outbound::describe(&e)
            )),
        }
    });
    let failed: Vec<String> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// The most of a response body a probe reads.
const BODY_LIMIT: usize = 1 << 20;

async fn read_body(mut response: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(format!("the body is larger than {BODY_LIMIT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether the JSONPath `path` finds something in `body` (equal to `equals`, if given).
pub fn json_check(
    body: &[u8],
    path: &str,
    equals: Option<&str>,
) -> std::result::Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let parsed = serde_json_path::JsonPath::parse(path).map_err(|e| format!("{path}: {e}"))?;
    let found = parsed.query(&value).all();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match equals {
        None if found.is_empty() => Err(format!("{path} finds nothing in the body")),
        None => Ok(()),
        Some(want) if found.iter().any(|v| text(v) == want) => Ok(()),
        Some(want) => {
            let seen: Vec<String> = found.iter().take(3).map(|v| text(v)).collect();
            if seen.is_empty() {
                Err(format!(
                    "{path} finds nothing in the body (wanted \"{want}\")"
                ))
            } else {
                Err(format!("{path} is {}, not \"{want}\"", seen.join(", ")))
            }
        }
    }
}

/// A dns probe's server: `host`, `host:port`, `ip` or `[ipv6]:port` (port 53 unless
/// given).
pub fn dns_server(target: &str) -> std::result::Result<(String, u16), String> {
    let target = target.trim();
    if let Ok(addr) = target.parse::<std::net::SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = target.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), 53));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("port \"{port}\" is not a number"))?,
        ),
        None => (target, 53),
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err("a dns probe's target is its DNS server: host or host:port".into());
    }
    Ok((host.to_string(), port))
}

fn query_type(probe: &Probe) -> std::result::Result<hickory_proto::rr::RecordType, String> {
    use hickory_proto::rr::RecordType;
    let text = probe
        .query_type
        .as_deref()
        .unwrap_or("A")
        .trim()
        .to_ascii_uppercase();
    let known = [
        "A", "AAAA", "CNAME", "MX", "NS", "TXT", "SRV", "PTR", "SOA", "CAA",
    ];
    match text.parse::<RecordType>() {
        Ok(t) if known.contains(&text.as_str()) => Ok(t),
        _ => Err(format!(
            "query_type \"{text}\": one of {}",
            known.join(", ")
        )),
    }
}

/// Asks the probe's DNS server (UDP) for its name and type: up when the answer is
/// NOERROR with at least one record of that type (and `expect_answer` among them).
async fn dns_check(probe: &Probe) -> std::result::Result<(), String> {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::Name;
    let name_text = probe.query_name.as_deref().unwrap_or_default();
    let name = Name::from_ascii(name_text).map_err(|e| e.to_string())?;
    let rtype = query_type(probe)?;
    let mut id = [0u8; 2];
    getrandom::fill(&mut id).expect("the system's random numbers");
    let mut query = Message::query();
    query.metadata.id = u16::from_be_bytes(id);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, rtype));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let (host, port) = dns_server(&probe.target)?;
    let server = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let local = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    socket
        .send(&bytes)
        .await
        .map_err(|e| format!("send to {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        // Anything that is not the answer to this query is ignored (as resolvers do).
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == query.metadata.id => break m,
            _ => continue,
        }
    };
    if answer.metadata.response_code != ResponseCode::NoError {
        return Err(format!(
            "{name_text} {rtype}: {}",
            answer.metadata.response_code
        ));
    }
    let records: Vec<String> = answer
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.to_string())
        .collect();
    if records.is_empty() {
        return Err(format!("{name_text} has no {rtype} record"));
    }
    if let Some(want) = &probe.expect_answer {
        let same = |a: &str| {
            a.trim_end_matches('.')
                .eq_ignore_ascii_case(want.trim_end_matches('.'))
        };
        if !records.iter().any(|r| same(r)) {
            return Err(format!(
                "{name_text} {rtype} is {}, not {want}",
                records.join(", ")
            ));
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
/// stored (with the summaries they add to); old results and summaries are pruned
/// hourly.
pub async fn work(
    store: Store,
    services: std::sync::Arc<dyn ServingInstances>,
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
            let (client, probe, services) = (client.clone(), probe.clone(), services.clone());
            running.spawn(async move {
                let result = run_once(&client, &probe, services.as_ref()).await;
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
            if let Err(e) = store.prune_probe_results(Timestamp::now()).await {
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
    /// 5 s, or the interval when that is shorter.
    pub timeout: Option<String>,
    #[serde(default)]
    pub expect_status: Vec<u16>,
    pub body_contains: Option<String>,
    pub json_path: Option<String>,
    pub json_equals: Option<String>,
    pub query_name: Option<String>,
    pub query_type: Option<String>,
    pub expect_answer: Option<String>,
    pub project: Option<String>,
    pub environment: Option<String>,
    #[serde(default = "three")]
    pub failure_threshold: u32,
    #[serde(default = "one")]
    pub success_threshold: u32,
}

/// A form field as given: absent when empty (the console's forms send every field).
fn given(field: Option<String>) -> Option<String> {
    field
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
}

fn ten_seconds() -> String {
    "10s".into()
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
        timeout_ms: match given(req.timeout) {
            Some(text) => duration("timeout", &text)?,
            None => duration("interval", &req.interval)?.min(5000),
        },
        expect_status: req.expect_status,
        body_contains: req.body_contains.filter(|b| !b.is_empty()),
        json_path: given(req.json_path),
        json_equals: given(req.json_equals),
        query_name: given(req.query_name),
        query_type: given(req.query_type),
        expect_answer: given(req.expect_answer),
        health_path: None,
        project: given(req.project),
        environment: given(req.environment),
        failure_threshold: req.failure_threshold,
        success_threshold: req.success_threshold,
        created_at: Timestamp::now(),
        created_by: by.actor.clone(),
    };
    check(&probe)?;
    super::check_project(store, probe.project.as_deref()).await?;
    if let Some(environment) = &probe.environment {
        let Some(project) = &probe.project else {
            return Err(Error::Invalid(
                "environment: name the project whose environment it is".into(),
            ));
        };
        if !store
            .environments(project)
            .await?
            .iter()
            .any(|e| e.name == *environment)
        {
            return Err(Error::Invalid(format!(
                "environment \"{environment}\": {project} has no such environment"
            )));
        }
    }
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
        self.status.as_str()
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
