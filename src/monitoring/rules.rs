//! Alert rules: the built-in ones (each with settings an administrator may change) and
//! rules on BetCycle's own metrics (a metric, a comparison, a threshold and a `for`
//! duration, as in Prometheus' alerting rules). Every rule has a severity, a `for`
//! duration, a re-notify interval and whether its resolution is sent.

use crate::core::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    fn parse(text: &str) -> std::result::Result<Severity, String> {
        match text {
            "critical" => Ok(Severity::Critical),
            "warning" => Ok(Severity::Warning),
            "info" => Ok(Severity::Info),
            other => Err(format!(
                "severity \"{other}\": use critical, warning or info"
            )),
        }
    }
}

/// How a metric rule compares a sample with its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    fn parse(text: &str) -> std::result::Result<Op, String> {
        [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Eq, Op::Ne]
            .into_iter()
            .find(|op| op.as_str() == text)
            .ok_or_else(|| format!("op \"{text}\": use >, >=, <, <=, == or !="))
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

/// A rule and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    /// Built in (its condition is BetCycle's) or a metric rule (an administrator's).
    pub builtin: bool,
    pub description: String,
    pub enabled: bool,
    pub severity: Severity,
    /// Records in a row that fire it (`pipeline_failed`: failed runs; `deployment_failed`:
    /// failed deployments).
    pub failure_threshold: u32,
    /// Records in a row that resolve it once firing.
    pub success_threshold: u32,
    /// How long the condition must hold before the alert fires.
    pub for_seconds: u64,
    /// While firing (and not silenced), send the notification again this often; 0: never.
    pub renotify_seconds: u64,
    /// Send a notification when it resolves.
    pub send_resolved: bool,
    /// `certificate_expiring`: days; `queue_stuck`: minutes a run may wait; `disk_low`:
    /// free bytes; a metric rule: the value compared with.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// A metric rule's metric, as its samples are named in `/metrics`.
    #[serde(default)]
    pub metric: Option<String>,
    /// A metric rule's label matchers: only samples with these label values count.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub op: Option<Op>,
}

/// Which settings a built-in rule takes besides severity, `for`, renotify and
/// send_resolved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    Streaks,
    Threshold,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A built-in rule: its name, what it watches, its default severity, what settings it
/// takes, its default threshold and `for`.
struct Builtin {
    name: &'static str,
    description: &'static str,
    severity: Severity,
    takes: Takes,
    threshold: Option<f64>,
    for_seconds: u64,
}

const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "pipeline_failed",
        description: "the latest finished runs on a project's default branch failed (failure_threshold in a row; resolved after success_threshold green runs)",
        severity: Severity::Critical,
        takes: Takes::Streaks,
        threshold: None,
        for_seconds: 0,
    },
    Builtin {
        name: "deployment_failed",
        description: "the latest finished deployments to an environment failed or were rolled back (failure_threshold in a row; resolved after success_threshold successes)",
        severity: Severity::Critical,
        takes: Takes::Streaks,
        threshold: None,
        for_seconds: 0,
    },
    Builtin {
        name: "probe_down",
        description: "a probe failed its failure_threshold times in a row (resolved after its success_threshold successes)",
        severity: Severity::Critical,
        takes: Takes::Nothing,
        threshold: None,
        for_seconds: 0,
    },
    Builtin {
        name: "certificate_expiring",
        description: "the certificate an HTTPS probe's server presents expires within threshold days",
        severity: Severity::Warning,
        takes: Takes::Threshold,
        threshold: Some(14.0),
        for_seconds: 0,
    },
    Builtin {
        name: "queue_stuck",
        description: "a run has been queued longer than threshold minutes",
        severity: Severity::Warning,
        takes: Takes::Threshold,
        threshold: Some(30.0),
        for_seconds: 0,
    },
    Builtin {
        name: "runner_saturated",
        description: "every run slot (run_concurrency) is busy and runs are waiting",
        severity: Severity::Warning,
        takes: Takes::Nothing,
        threshold: None,
        for_seconds: 600,
    },
    Builtin {
        name: "disk_low",
        description: "the data directory's disk has less than threshold bytes free",
        severity: Severity::Critical,
        takes: Takes::Threshold,
        threshold: Some(GIB),
        for_seconds: 0,
    },
    Builtin {
        name: "audit_chain_broken",
        description: "the audit log's hash chain does not verify (an entry was changed or removed)",
        severity: Severity::Critical,
        takes: Takes::Nothing,
        threshold: None,
        for_seconds: 0,
    },
];

/// Whether `name` is a built-in rule.
pub fn is_builtin(name: &str) -> bool {
    BUILTIN.iter().any(|b| b.name == name)
}

/// The built-in rules' names.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|b| b.name).collect()
}

/// A built-in rule with its default settings.
pub fn default_of(name: &str) -> Option<Rule> {
    let b = BUILTIN.iter().find(|b| b.name == name)?;
    Some(Rule {
        name: b.name.to_string(),
        builtin: true,
        description: b.description.to_string(),
        enabled: true,
        severity: b.severity,
        failure_threshold: 1,
        success_threshold: 1,
        for_seconds: b.for_seconds,
        renotify_seconds: 0,
        send_resolved: true,
        threshold: b.threshold,
        metric: None,
        labels: BTreeMap::new(),
        op: None,
    })
}

/// Every rule: the built-in ones (with their stored settings where changed), then the
/// metric rules, by name.
pub fn merge(stored: Vec<Rule>) -> Vec<Rule> {
    let mut by_name: BTreeMap<String, Rule> =
        stored.into_iter().map(|r| (r.name.clone(), r)).collect();
    let mut out: Vec<Rule> = BUILTIN
        .iter()
        .filter_map(|b| {
            by_name
                .remove(b.name)
                .map(|mut r| {
                    // The description is the code's, not what was stored.
                    r.description = b.description.to_string();
                    r
                })
                .or_else(|| default_of(b.name))
        })
        .collect();
    out.extend(by_name.into_values().filter(|r| !r.builtin));
    out
}

/// A change to a rule as asked for (`PUT /api/v1/alert-rules/{name}`): only what is given
/// changes. For a name that is not built in, it makes or replaces a metric rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleChange {
    pub enabled: Option<bool>,
    pub severity: Option<String>,
    pub failure_threshold: Option<u32>,
    pub success_threshold: Option<u32>,
    /// A duration such as `5m`.
    #[serde(rename = "for")]
    pub for_: Option<String>,
    /// A duration such as `1h`; `0s` turns it off.
    pub renotify: Option<String>,
    pub send_resolved: Option<bool>,
    pub threshold: Option<f64>,
    pub metric: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub op: Option<String>,
    pub description: Option<String>,
}

/// Applies `change` to `current` (the rule as it is; `None` for a new metric rule named
/// `name`). `metrics` are the metric names `/metrics` has now, which a metric rule's
/// metric must be one of.
pub fn apply(
    name: &str,
    current: Option<Rule>,
    change: RuleChange,
    metrics: &[String],
) -> Result<Rule> {
    let invalid = |m: String| Error::Invalid(m);
    let builtin = is_builtin(name);
    let mut rule = match current {
        Some(rule) => rule,
        None if builtin => default_of(name).expect("a built-in rule"),
        None => {
            crate::agents::check_label(name).map_err(|e| invalid(format!("rule name {e}")))?;
            Rule {
                name: name.to_string(),
                builtin: false,
                description: String::new(),
                enabled: true,
                severity: Severity::Warning,
                failure_threshold: 1,
                success_threshold: 1,
                for_seconds: 0,
                renotify_seconds: 0,
                send_resolved: true,
                threshold: None,
                metric: None,
                labels: BTreeMap::new(),
                op: None,
            }
        }
    };
    let takes = if builtin {
        BUILTIN.iter().find(|b| b.name == name).map(|b| b.takes)
    } else {
        None
    };
    if let Some(v) = change.enabled {
        rule.enabled = v;
    }
    if let Some(s) = &change.severity {
        rule.severity = Severity::parse(s.trim()).map_err(invalid)?;
    }
    if change.failure_threshold.is_some() || change.success_threshold.is_some() {
        if takes != Some(Takes::Streaks) {
            return Err(invalid(format!(
                "failure_threshold and success_threshold are for pipeline_failed and deployment_failed (a probe has its own); rule {name} takes for"
            )));
        }
        for (field, value) in [
            ("failure_threshold", change.failure_threshold),
            ("success_threshold", change.success_threshold),
        ] {
            if value == Some(0) {
                return Err(invalid(format!("{field} must be at least 1")));
            }
        }
        rule.failure_threshold = change.failure_threshold.unwrap_or(rule.failure_threshold);
        rule.success_threshold = change.success_threshold.unwrap_or(rule.success_threshold);
    }
    let seconds = |field: &str, text: &str| -> Result<u64> {
        crate::core::config::parse_duration(text)
            .map(|d| d.as_secs())
            .map_err(|e| invalid(format!("{field} \"{text}\": {e}")))
    };
    if let Some(text) = &change.for_ {
        rule.for_seconds = seconds("for", text)?;
    }
    if let Some(text) = &change.renotify {
        rule.renotify_seconds = seconds("renotify", text)?;
        if rule.renotify_seconds != 0 && rule.renotify_seconds < 10 {
            return Err(invalid(format!(
                "renotify \"{text}\": at least 10s (or 0s: never)"
            )));
        }
    }
    if let Some(v) = change.send_resolved {
        rule.send_resolved = v;
    }
    if let Some(v) = change.threshold {
        if builtin && takes != Some(Takes::Threshold) {
            return Err(invalid(format!(
                "threshold is for certificate_expiring, queue_stuck, disk_low and metric rules, not {name}"
            )));
        }
        if !v.is_finite() || (builtin && v <= 0.0) {
            return Err(invalid(format!(
                "threshold {v}: expected a positive number"
            )));
        }
        rule.threshold = Some(v);
    }
    if builtin {
        if change.metric.is_some() || change.labels.is_some() || change.op.is_some() {
            return Err(invalid(format!(
                "{name} is a built-in rule: metric, labels and op are for metric rules (give the rule another name)"
            )));
        }
        if change.description.is_some() {
            return Err(invalid(format!(
                "{name} is a built-in rule: its description is fixed"
            )));
        }
        return Ok(rule);
    }
    if let Some(metric) = &change.metric {
        let metric = metric.trim();
        if !metrics.iter().any(|m| m == metric) {
            return Err(invalid(format!(
                "unknown metric \"{metric}\": /metrics has {}",
                metrics.join(", ")
            )));
        }
        rule.metric = Some(metric.to_string());
    }
    if let Some(labels) = change.labels {
        rule.labels = labels;
    }
    if let Some(op) = &change.op {
        rule.op = Some(Op::parse(op.trim()).map_err(invalid)?);
    }
    if let Some(d) = change.description {
        rule.description = d.trim().to_string();
    }
    let (Some(metric), Some(op), Some(threshold)) = (&rule.metric, rule.op, rule.threshold) else {
        return Err(invalid(format!(
            "\"{name}\" is not a built-in rule ({}): a metric rule needs metric, op and threshold",
            builtin_names().join(", ")
        )));
    };
    if rule.description.is_empty() {
        rule.description = format!("{metric} {} {threshold}", op.as_str());
    }
    Ok(rule)
}

/// One sample of a `/metrics` text: its name, labels and value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (the classic format `/metrics` serves).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.find('{') {
            Some(_) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => match line.split_once(' ') {
                Some((name, rest)) => (name, rest.trim()),
                None => continue,
            },
        };
        let value = value.split_whitespace().next().unwrap_or("");
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (head, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y"` → {a: x, b: y} (label values as the exposition escapes them).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(match next {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// The metric names a text exposition has: every sample's name and every family's, so a
/// family with no samples yet can have a rule.
pub fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = samples(text).into_iter().map(|s| s.name).collect();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.split_whitespace().next()
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{route=\"/a\",method=\"GET\",note=\"say \\\"hi\\\"\"} 3\nup 1\n";
        let got = samples(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "x_total");
        assert_eq!(got[0].labels["route"], "/a");
        assert_eq!(got[0].labels["method"], "GET");
        assert_eq!(got[0].labels["note"], "say \"hi\"");
        assert_eq!(got[0].value, 3.0);
        assert_eq!(got[1].name, "up");
        assert!(got[1].labels.is_empty());
        assert_eq!(metric_names(text), vec!["up", "x_total"]);
    }

    #[test]
    fn a_metric_rule_needs_a_known_metric_an_op_and_a_threshold() {
        let metrics = vec!["betcycle_store_size_bytes".to_string()];
        let change = |metric: &str| RuleChange {
            metric: Some(metric.into()),
            op: Some(">".into()),
            threshold: Some(10.0),
            ..RuleChange::default()
        };
        let rule = apply(
            "big_db",
            None,
            change("betcycle_store_size_bytes"),
            &metrics,
        )
        .unwrap();
        assert_eq!(rule.description, "betcycle_store_size_bytes > 10");
        let err = apply("big_db", None, change("nope"), &metrics).unwrap_err();
        assert!(err.to_string().contains("unknown metric \"nope\""), "{err}");
        let err = apply("x", None, RuleChange::default(), &metrics).unwrap_err();
        assert!(
            err.to_string().contains("needs metric, op and threshold"),
            "{err}"
        );
        let err = apply(
            "pipeline_failed",
            None,
            RuleChange {
                threshold: Some(3.0),
                ..RuleChange::default()
            },
            &metrics,
        )
        .unwrap_err();
        assert!(err.to_string().contains("threshold is for"), "{err}");
    }
}
