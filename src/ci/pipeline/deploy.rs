//! The `deploy:` section of `.betcycle.yml`: per environment, the target a release is
//! deployed with. The repository says *how* to deploy; whether and when is decided by
//! the environment's protections on the server.
//!
//! ```yaml
//! deploy:
//!   staging:    { target: { kind: exec, run: ./deploy.sh, secrets: [DEPLOY_KEY] } }
//!   production:
//!     target: { kind: webhook, url: "https://deploy.example.com/hook", secret: HOOK_KEY, callback: true, timeout: 10m }
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
    /// Rollout strategy (blue-green, canary): accepted as written, used by later targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A command run in a checkout of the release's commit, with the release's
    /// variables, artifacts and secrets.
    Exec(ExecTarget),
    /// A signed POST; success on 2xx, or on a call to a one-time callback URL.
    Webhook(WebhookTarget),
    /// BetCycle supervises the app on this node (not built yet).
    Service(serde_json::Value),
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
        let timeout = match &def.target {
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
            Target::Service(_) | Target::Kubernetes(_) => None,
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
    fn targets_parse_and_problems_name_the_field() {
        let ok = parse(&raw(json!({
            "staging": {"target": {"kind": "exec", "run": "./deploy.sh", "secrets": ["KEY", {"name": "A", "as": "B"}]}},
            "production": {"target": {"kind": "webhook", "url": "https://x.example/hook", "secret": "HOOK", "callback": true, "timeout": "5m"}},
            "edge": {"target": {"kind": "service", "command": "./app"}, "strategy": {"kind": "canary"}}
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
        assert!(matches!(ok["edge"].target, Target::Service(_)));

        let problems = parse(&raw(json!({
            "staging": {"target": {"kind": "exec", "runn": "x"}},
            "Prod": {"target": {"kind": "exec", "run": "x"}},
            "qa": {"target": {"kind": "webhook", "url": "ftp://x", "timeout": "soon"}},
            "dev": {"target": {"kind": "ssh"}}
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
    }
}
