//! The `deploy:` section of `.betcycle.yml`: per environment, the target a release is
//! deployed with. The repository says *how* to deploy; whether and when is decided by
//! the environment's protections on the server.
//!
//! ```yaml
//! deploy:
//!   staging:    { target: { kind: exec, run: ./deploy.sh, secrets: [DEPLOY_KEY] } }
//!   production:
//!     target: { kind: webhook, url: "https://deploy.example.com/hook", secret: HOOK_KEY, callback: true, timeout: 10m }
//!   live:
//!     target: { kind: service, command: ./app, health: /healthz, host: app.example.com }
//!     strategy: { kind: canary, steps: [10, 50, 100], interval: 30s, max_error_rate: 1% }
//! ```

use super::model::SecretDef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How one environment is deployed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployDef {
    pub target: Target,
    /// Rollout strategy, as written: checked by [`parse`] into a [`Strategy`] (only a
    /// `service` target has one), kept as JSON in the release so a record written by an
    /// older version still reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<serde_json::Value>,
}

impl DeployDef {
    /// The rollout strategy; blue-green when none is written.
    pub fn strategy(&self) -> Result<Strategy, String> {
        self.strategy_at().map_err(|(field, message)| match field {
            Some(field) => format!("{field}: {message}"),
            None => message,
        })
    }

    /// [`DeployDef::strategy`], a problem with the field under `strategy` it is in.
    fn strategy_at(&self) -> Result<Strategy, (Option<String>, String)> {
        let Some(value) = &self.strategy else {
            return Ok(Strategy::BlueGreen(BlueGreen::default()));
        };
        let mut fields = value.as_object().cloned().ok_or((
            None,
            "expected a map such as { kind: canary, steps: [10, 100] }".to_string(),
        ))?;
        let kind = fields.remove("kind");
        let rest = serde_json::Value::Object(fields);
        fn typed<T: serde::de::DeserializeOwned>(
            v: &serde_json::Value,
        ) -> Result<T, (Option<String>, String)> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                ((path != ".").then_some(path), message)
            })
        }
        match kind.as_ref().and_then(|k| k.as_str()) {
            Some("blue_green") => typed(&rest).map(Strategy::BlueGreen),
            Some("canary") => typed(&rest).map(Strategy::Canary),
            Some(other) => Err((
                Some("kind".into()),
                format!("unknown strategy \"{other}\", expected blue_green or canary"),
            )),
            None => Err((Some("kind".into()), "missing (blue_green or canary)".into())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A command run in a checkout of the release's commit, with the release's
    /// variables, artifacts and secrets.
    Exec(ExecTarget),
    /// A signed POST; success on 2xx, or on a call to a one-time callback URL.
    Webhook(WebhookTarget),
    /// BetCycle runs the release's command on this node, behind its reverse proxy.
    Service(Box<ServiceTarget>),
    /// Apply manifests to a cluster (not built yet).
    Kubernetes(serde_json::Value),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecTarget {
    pub run: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets, resolved in the environment's scope first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretDef>,
    /// Default 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// The name of the secret the body is signed with (HMAC-SHA256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Wait for a call to the deployment's one-time callback URL after the 2xx.
    #[serde(default)]
    pub callback: bool,
    /// How long to wait for the answer or the callback. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `kind: service`: the release's `command`, run by BetCycle's supervisor from a checkout
/// of the release's commit (with its artifacts), `instances` times, each with its own
/// `PORT`; the built-in proxy sends requests for `host` (and `path`) to the instances of
/// the live release that pass the `health` probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTarget {
    pub command: String,
    /// The Host header (without port) the proxy routes to this service.
    pub host: String,
    /// Only requests whose path starts with this prefix (default: all of `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The readiness probe: a path, or the probe in full. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthDef>,
    /// How many processes run the release (1–16, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets, resolved in the environment's scope first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretDef>,
    /// How long a new release may take to become healthy. Default 2m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Between SIGTERM and SIGKILL when an instance is stopped. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<String>,
    /// Each instance's memory limit, swap included (`256 MiB`): past it the kernel ends
    /// the process and the supervisor restarts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Each instance's CPU limit in CPUs (`0.5` is half of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

/// The smallest memory limit a service instance may have.
const MIN_MEMORY: u64 = 6 << 20;

/// The health probe: `GET path` on each instance every `interval`; an instance is
/// healthy after `success_threshold` answers in 2xx/3xx in a row and unhealthy after
/// `failure_threshold` failures in a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HealthDef {
    Path(String),
    Probe(Probe),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// The probe with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A problem for each of `fields` (name, value as written) that is not a duration.
fn durations<const N: usize>(
    out: &mut Vec<(&'static str, String)>,
    fields: [(&'static str, Option<&str>); N],
) {
    for (field, value) in fields {
        if let Some(value) = value
            && let Err(message) = crate::core::config::parse_duration(value)
        {
            out.push((field, message));
        }
    }
}

fn duration_or(value: Option<&str>, default: Duration) -> Duration {
    value
        .and_then(|t| crate::core::config::parse_duration(t).ok())
        .unwrap_or(default)
}

impl ServiceTarget {
    pub fn instances(&self) -> u32 {
        self.instances.unwrap_or(1)
    }

    pub fn timeout(&self) -> Duration {
        duration_or(self.timeout.as_deref(), Duration::from_secs(120))
    }

    pub fn stop_grace(&self) -> Duration {
        duration_or(self.stop_grace.as_deref(), Duration::from_secs(10))
    }

    /// The memory limit in bytes (`None` when unset or not valid, which [`parse`]
    /// reports).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
            .as_deref()
            .and_then(|m| crate::core::config::parse_size(m).ok())
    }

    pub fn health(&self) -> Health {
        let probe = match &self.health {
            None => None,
            Some(HealthDef::Path(path)) => Some(Probe {
                path: path.clone(),
                interval: None,
                timeout: None,
                success_threshold: None,
                failure_threshold: None,
            }),
            Some(HealthDef::Probe(p)) => Some(p.clone()),
        };
        let probe = probe.as_ref();
        Health {
            path: probe.map_or("/".into(), |p| p.path.clone()),
            interval: duration_or(
                probe.and_then(|p| p.interval.as_deref()),
                Duration::from_secs(1),
            ),
            timeout: duration_or(
                probe.and_then(|p| p.timeout.as_deref()),
                Duration::from_secs(2),
            ),
            success_threshold: probe.and_then(|p| p.success_threshold).unwrap_or(1),
            failure_threshold: probe.and_then(|p| p.failure_threshold).unwrap_or(3),
        }
    }

    /// `(secret name, environment variable)` pairs.
    pub fn secret_pairs(&self) -> Vec<(String, String)> {
        self.secrets.iter().map(SecretDef::pair).collect()
    }

    /// Problems as `(field under the target, message)`.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.command.trim().is_empty() {
            out.push(("command", "the command is empty".to_string()));
        }
        let host_ok = !self.host.is_empty()
            && self.host.len() <= 253
            && self
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !host_ok {
            out.push((
                "host",
                format!(
                    "\"{}\" is not a host name (letters, digits, - and ., without a port)",
                    self.host
                ),
            ));
        }
        if let Some(path) = &self.path
            && !path.starts_with('/')
        {
            out.push(("path", format!("\"{path}\" must start with /")));
        }
        if !(1..=16).contains(&self.instances()) {
            out.push(("instances", "use 1 to 16 instances".to_string()));
        }
        if let Some(memory) = &self.memory {
            match crate::core::config::parse_size(memory) {
                Ok(bytes) if bytes < MIN_MEMORY => out.push((
                    "memory",
                    "memory must be at least 6 MiB (e.g. 256 MiB)".to_string(),
                )),
                Ok(_) => {}
                Err(e) => out.push(("memory", format!("invalid memory \"{memory}\": {e}"))),
            }
        }
        if let Some(cpus) = self.cpus
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            out.push((
                "cpus",
                "cpus must be more than 0 (e.g. 0.5 or 2)".to_string(),
            ));
        }
        durations(
            &mut out,
            [
                ("timeout", self.timeout.as_deref()),
                ("stop_grace", self.stop_grace.as_deref()),
            ],
        );
        match &self.health {
            Some(HealthDef::Path(path)) | Some(HealthDef::Probe(Probe { path, .. }))
                if !path.starts_with('/') =>
            {
                out.push(("health", format!("\"{path}\" must start with /")));
            }
            Some(HealthDef::Probe(p)) => {
                durations(
                    &mut out,
                    [
                        ("health.interval", p.interval.as_deref()),
                        ("health.timeout", p.timeout.as_deref()),
                    ],
                );
                for (field, value) in [
                    ("health.success_threshold", p.success_threshold),
                    ("health.failure_threshold", p.failure_threshold),
                ] {
                    if value == Some(0) {
                        out.push((field, "use 1 or more".to_string()));
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// How a `service` target moves traffic to a new release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Start the new release, wait until it is healthy, switch every request to it at
    /// once, drain and stop the old one. The default.
    BlueGreen(BlueGreen),
    /// Send a growing share of requests to the new release, checking at each step what
    /// the proxy measured for it against the stable release.
    Canary(Canary),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// How long requests still in flight on the old release may take after the switch.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The canary's share of requests at each step, in percent, rising; 100 promotes it.
    pub steps: Vec<u32>,
    /// How long each step lasts before its analysis. Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// The canary fails when more than this share of its answers are 5xx or upstream
    /// errors ("1%" or 0.01). Default 1%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Rate>,
    /// The canary fails when its p95 latency is over this (e.g. 300ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95: Option<String>,
    /// Fewer requests than this in a step: the analysis is inconclusive and the step
    /// is held for another interval, up to three times, then the canary fails. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Keep a client on the release it was first sent to (a cookie).
    #[serde(default)]
    pub sticky: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
    /// A query against the Prometheus server BetCycle is configured with
    /// (`prometheus.url`), checked at the end of every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
}

/// A Prometheus query and the condition its result must meet, in the spirit of Argo
/// Rollouts' AnalysisTemplate. `{{release}}`, `{{stable}}`, `{{project}}` and
/// `{{environment}}` in the query are replaced (the release labels `project-N`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheck {
    pub query: String,
    /// `result < 0.01`: `result`, a comparison (`<`, `<=`, `>`, `>=`, `==`, `!=`), a number.
    pub success_condition: String,
    /// How many checks may fail (or not answer) before the canary fails. Default 0.
    #[serde(default)]
    pub failure_limit: u32,
}

/// A parsed `success_condition`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Condition {
    pub op: &'static str,
    pub value: f64,
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, String> {
        let bad = || {
            format!(
                "\"{text}\": expected result, a comparison (<, <=, >, >=, ==, !=) and a number, such as result < 0.01"
            )
        };
        let rest = text
            .trim()
            .strip_prefix("result")
            .ok_or_else(bad)?
            .trim_start();
        let op = ["<=", ">=", "==", "!=", "<", ">"]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(bad)?;
        let value: f64 = rest[op.len()..].trim().parse().map_err(|_| bad())?;
        if !value.is_finite() {
            return Err(bad());
        }
        Ok(Condition { op, value })
    }

    pub fn holds(&self, result: f64) -> bool {
        match self.op {
            "<" => result < self.value,
            "<=" => result <= self.value,
            ">" => result > self.value,
            ">=" => result >= self.value,
            "==" => result == self.value,
            _ => result != self.value,
        }
    }
}

impl BlueGreen {
    pub fn drain(&self) -> Duration {
        duration_or(self.drain.as_deref(), Duration::from_secs(30))
    }
}

impl Canary {
    pub fn interval(&self) -> Duration {
        duration_or(self.interval.as_deref(), Duration::from_secs(60))
    }

    pub fn max_error_rate(&self) -> f64 {
        self.max_error_rate.map_or(0.01, |r| r.0)
    }

    pub fn max_p95(&self) -> Option<Duration> {
        self.max_p95
            .as_deref()
            .and_then(|t| crate::core::config::parse_duration(t).ok())
    }

    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(10)
    }

    pub fn drain(&self) -> Duration {
        duration_or(self.drain.as_deref(), Duration::from_secs(30))
    }

    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let rising = self.steps.windows(2).all(|w| w[0] < w[1]);
        if self.steps.is_empty()
            || !rising
            || self.steps.iter().any(|&s| s == 0 || s > 100)
            || self.steps.last() != Some(&100)
        {
            out.push((
                "steps",
                "use rising percentages from 1 to 100 that end at 100, such as [10, 50, 100]"
                    .to_string(),
            ));
        }
        if let Some(p) = &self.prometheus {
            if p.query.trim().is_empty() {
                out.push(("prometheus.query", "the query is empty".to_string()));
            }
            if let Err(message) = Condition::parse(&p.success_condition) {
                out.push(("prometheus.success_condition", message));
            }
        }
        durations(
            &mut out,
            [
                ("interval", self.interval.as_deref()),
                ("max_p95", self.max_p95.as_deref()),
                ("drain", self.drain.as_deref()),
            ],
        );
        out
    }
}

/// A share: `1%`, `0.5%` or a fraction such as `0.01`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Rate(pub f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let bad = || serde::de::Error::custom("expected a share such as 1% or 0.01");
        let value = match Raw::deserialize(d)? {
            Raw::Number(n) => n,
            Raw::Text(t) => match t.trim().strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
                None => t.trim().parse::<f64>().map_err(|_| bad())?,
            },
        };
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            Ok(Rate(value))
        } else {
            Err(bad())
        }
    }
}

impl ExecTarget {
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| crate::core::config::parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(30 * 60))
    }

    /// `(secret name, environment variable)` pairs.
    pub fn secret_pairs(&self) -> Vec<(String, String)> {
        self.secrets.iter().map(SecretDef::pair).collect()
    }
}

impl WebhookTarget {
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| crate::core::config::parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(10 * 60))
    }
}

/// Environment names: lower-case letters, digits, `-` and `_`, as in `production`.
pub fn check_environment_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "environment \"{name}\": use lower-case letters, digits, - and _ (at most 63)"
        ))
    }
}

/// Parses the section; problems are `(field path, message)`.
pub fn parse(
    raw: &BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, DeployDef>, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut out = BTreeMap::new();
    for (environment, value) in raw {
        let here = format!("deploy.{environment}");
        if let Err(message) = check_environment_name(environment) {
            problems.push((here.clone(), message));
            continue;
        }
        let def: DeployDef = match serde_path_to_error::deserialize(value) {
            Ok(def) => def,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." {
                    here
                } else {
                    format!("{here}.{path}")
                };
                problems.push((path, e.into_inner().to_string()));
                continue;
            }
        };
        if def.strategy.is_some() {
            match (&def.target, def.strategy_at()) {
                (_, Err((field, message))) => problems.push((
                    match field {
                        Some(field) => format!("{here}.strategy.{field}"),
                        None => format!("{here}.strategy"),
                    },
                    message,
                )),
                (Target::Service(_), Ok(Strategy::Canary(c))) => {
                    for (field, message) in c.problems() {
                        problems.push((format!("{here}.strategy.{field}"), message));
                    }
                }
                (Target::Service(_), Ok(Strategy::BlueGreen(_))) => {}
                (_, Ok(_)) => problems.push((
                    format!("{here}.strategy"),
                    "a rollout strategy needs a service target (kind: service)".to_string(),
                )),
            }
        }
        let timeout = match &def.target {
            Target::Service(t) => {
                for (field, message) in t.problems() {
                    problems.push((format!("{here}.target.{field}"), message));
                }
                None
            }
            Target::Exec(t) => t.timeout.as_deref(),
            Target::Webhook(t) => {
                if !(t.url.starts_with("https://") || t.url.starts_with("http://")) {
                    problems.push((
                        format!("{here}.target.url"),
                        format!("\"{}\" is not an http(s) URL", t.url),
                    ));
                }
                t.timeout.as_deref()
            }
            Target::Kubernetes(_) => None,
        };
        if let Some(timeout) = timeout
            && let Err(message) = crate::core::config::parse_duration(timeout)
        {
            problems.push((format!("{here}.target.timeout"), message));
        }
        out.insert(environment.clone(), def);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn success_conditions_parse_and_hold() {
        let c = Condition::parse("result < 0.01").unwrap();
        assert!(c.holds(0.005) && !c.holds(0.01));
        let c = Condition::parse(" result>=2").unwrap();
        assert!(c.holds(2.0) && !c.holds(1.9));
        assert!(Condition::parse("result != 0").unwrap().holds(1.0));
        for bad in ["res < 1", "result ~ 1", "result < x", "result < inf", ""] {
            assert!(Condition::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_parse_and_problems_name_the_field() {
        let ok = parse(&raw(json!({
            "staging": {"target": {"kind": "exec", "run": "./deploy.sh", "secrets": ["KEY", {"name": "A", "as": "B"}]}},
            "production": {"target": {"kind": "webhook", "url": "https://x.example/hook", "secret": "HOOK", "callback": true, "timeout": "5m"}},
            "edge": {"target": {"kind": "service", "command": "./app", "host": "app.example.com", "health": "/healthz"},
                     "strategy": {"kind": "canary", "steps": [10, 50, 100], "interval": "30s", "max_error_rate": "1%"}},
            "blue": {"target": {"kind": "service", "command": "./app", "host": "blue.example.com",
                     "health": {"path": "/up", "interval": "200ms", "failure_threshold": 2}, "instances": 2}}
        })))
        .unwrap();
        let Target::Exec(exec) = &ok["staging"].target else {
            panic!()
        };
        assert_eq!(
            exec.secret_pairs(),
            vec![("KEY".into(), "KEY".into()), ("A".into(), "B".into())]
        );
        assert_eq!(exec.timeout(), Duration::from_secs(1800));
        let Target::Webhook(hook) = &ok["production"].target else {
            panic!()
        };
        assert_eq!(hook.timeout(), Duration::from_secs(300));
        let Target::Service(edge) = &ok["edge"].target else {
            panic!()
        };
        assert_eq!(edge.health().path, "/healthz");
        let Ok(Strategy::Canary(canary)) = ok["edge"].strategy() else {
            panic!()
        };
        assert_eq!(canary.max_error_rate(), 0.01);
        assert_eq!(canary.interval(), Duration::from_secs(30));
        let Target::Service(blue) = &ok["blue"].target else {
            panic!()
        };
        let health = blue.health();
        assert_eq!(
            (
                health.path.as_str(),
                health.interval,
                health.failure_threshold,
                health.success_threshold
            ),
            ("/up", Duration::from_millis(200), 2, 1)
        );
        assert_eq!(blue.instances(), 2);
        assert!(matches!(ok["blue"].strategy(), Ok(Strategy::BlueGreen(_))));

        let problems = parse(&raw(json!({
            "staging": {"target": {"kind": "exec", "runn": "x"}},
            "Prod": {"target": {"kind": "exec", "run": "x"}},
            "qa": {"target": {"kind": "webhook", "url": "ftp://x", "timeout": "soon"}},
            "dev": {"target": {"kind": "ssh"}},
            "s1": {"target": {"kind": "service", "command": "./app"}},
            "s2": {"target": {"kind": "service", "command": "./app", "host": "a.example:80", "health": "up", "instances": 0},
                   "strategy": {"kind": "canary", "steps": [50, 20], "max_error_rate": "120%"}},
            "s3": {"target": {"kind": "service", "command": "./app", "host": "a.example"},
                   "strategy": {"kind": "canary", "steps": [10, 100], "interval": "often"}},
            "e1": {"target": {"kind": "exec", "run": "x"}, "strategy": {"kind": "blue_green"}}
        })))
        .unwrap_err();
        let text = format!("{problems:?}");
        assert!(
            text.contains("deploy.staging.target") && text.contains("runn"),
            "{text}"
        );
        assert!(text.contains("deploy.Prod"), "{text}");
        assert!(text.contains("deploy.qa.target.url"), "{text}");
        assert!(text.contains("deploy.qa.target.timeout"), "{text}");
        assert!(
            text.contains("deploy.dev.target") && text.contains("ssh"),
            "{text}"
        );
        assert!(
            text.contains("deploy.s1.target") && text.contains("missing field `host`"),
            "{text}"
        );
        for (field, words) in [
            (
                "deploy.s2.strategy.max_error_rate",
                "expected a share such as 1% or 0.01",
            ),
            ("deploy.s3.strategy.interval", "expected a duration"),
            (
                "deploy.e1.strategy",
                "a rollout strategy needs a service target",
            ),
        ] {
            assert!(
                text.contains(&format!("(\"{field}\", \"{words}")),
                "{field}: {text}"
            );
        }
        let problems = parse(&raw(json!({
            "s2": {"target": {"kind": "service", "command": " ", "host": "a.example:80", "health": "up", "instances": 0},
                   "strategy": {"kind": "canary", "steps": [50, 20]}}
        })))
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "deploy.s2.strategy.steps",
                "deploy.s2.target.command",
                "deploy.s2.target.host",
                "deploy.s2.target.instances",
                "deploy.s2.target.health"
            ]
        );
    }
}
