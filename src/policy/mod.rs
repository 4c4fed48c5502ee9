//! Policies as code: Rego v1 modules, evaluated in-process by `regorus` at three gates —
//! `pipeline` (before a run starts), `deploy` (when a deployment is requested and when
//! it is about to start) and `infrastructure` (a Terraform/OpenTofu plan a run reports).
//!
//! Conventions follow conftest: a gate's rules live in package `betcycle.<gate>`; rules
//! named `deny`, `violation` (and `deny_*`, `violation_*`) block, `warn` (`warn_*`)
//! informs; each yields strings or objects with `msg`; `exception` yields lists of rule
//! suffixes (`["branch"]` exempts `deny_branch`). Modules from a repository are
//! evaluated on their own, so they can add restrictions but never exempt the server's.

pub mod evaluator;
pub mod service;
pub mod store_model;
pub mod testing;

use regorus::Value;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

pub use service::{Policies, Subject, Verdict};
pub use store_model::*;

/// Where a policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    Pipeline,
    Deploy,
    Infrastructure,
}

pub const GATES: [Gate; 3] = [Gate::Pipeline, Gate::Deploy, Gate::Infrastructure];

impl Gate {
    pub fn as_str(&self) -> &'static str {
        match self {
            Gate::Pipeline => "pipeline",
            Gate::Deploy => "deploy",
            Gate::Infrastructure => "infrastructure",
        }
    }

    pub fn package(&self) -> String {
        format!("betcycle.{}", self.as_str())
    }

    pub fn parse(text: &str) -> Result<Gate, String> {
        GATES
            .into_iter()
            .find(|g| g.as_str() == text)
            .ok_or_else(|| format!("gate \"{text}\": use pipeline, deploy or infrastructure"))
    }
}

/// How long one evaluation may take before it counts as an error.
pub const TIME_LIMIT: Duration = Duration::from_secs(1);

/// A Rego module: a file name and its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Module {
    pub name: String,
    pub source: String,
}

/// Turns regorus's multi-line parse error into `file:line:column: message`.
fn one_line(error: &str) -> String {
    let location = error
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .map(str::trim);
    let message = error
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error: ").to_string())
        .unwrap_or_default();
    match location {
        Some(at) => format!("{at}: {message}"),
        None => error.trim().to_string(),
    }
}

/// Parses a module; returns its package. A module must be in one of the gates' packages.
pub fn check_module(module: &Module) -> Result<Gate, String> {
    let mut engine = regorus::Engine::new();
    let package = engine
        .add_policy(module.name.clone(), module.source.clone())
        .map_err(|e| one_line(&e.to_string()))?;
    let package = package
        .strip_prefix("data.")
        .unwrap_or(&package)
        .to_string();
    GATES
        .into_iter()
        .find(|g| g.package() == package)
        .ok_or_else(|| {
            format!(
                "{}: package {package}: use betcycle.pipeline, betcycle.deploy or betcycle.infrastructure",
                module.name
            )
        })
}

/// A message a rule produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The rule: `deny`, `deny_branch`, `warn`, …
    pub rule: String,
    pub msg: String,
}

/// What a set of modules said about one input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub denies: Vec<Message>,
    pub warnings: Vec<Message>,
    /// Evaluation errors (a builtin failing, the time limit).
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.denies.extend(other.denies);
        self.warnings.extend(other.warnings);
        self.errors.extend(other.errors);
    }
}

/// Loaded modules, ready to evaluate. One engine per set, used by one evaluation at a
/// time (an evaluation takes microseconds); cloning shares it.
#[derive(Clone)]
pub struct PolicySet {
    engine: std::sync::Arc<std::sync::Mutex<regorus::Engine>>,
    pub modules: Vec<String>,
    /// Per gate, the rules that decide (`deny`, `warn_x`, `exception`, …): evaluated one
    /// by one, which is cheaper than evaluating the whole package as a query.
    rules: std::collections::BTreeMap<&'static str, std::collections::BTreeSet<String>>,
}

/// The deciding rules a module defines: rule heads at the start of a line.
fn deciding_rules(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("default ").unwrap_or(l);
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let kind = name.split('_').next().unwrap_or_default();
            matches!(kind, "deny" | "violation" | "warn" | "exception").then_some(name)
        })
        .collect()
}

impl PolicySet {
    /// Loads modules (each must parse); `limit` bounds each evaluation.
    pub fn new(modules: &[Module], limit: Duration) -> Result<Self, String> {
        let mut engine = regorus::Engine::new();
        let mut rules: std::collections::BTreeMap<
            &'static str,
            std::collections::BTreeSet<String>,
        > = Default::default();
        for m in modules {
            let package = engine
                .add_policy(m.name.clone(), m.source.clone())
                .map_err(|e| one_line(&e.to_string()))?;
            let package = package.strip_prefix("data.").unwrap_or(&package);
            if let Some(gate) = GATES.into_iter().find(|g| g.package() == package) {
                rules
                    .entry(gate.as_str())
                    .or_default()
                    .extend(deciding_rules(&m.source));
            }
        }
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(64).expect("non-zero"),
        });
        Ok(Self {
            engine: std::sync::Arc::new(std::sync::Mutex::new(engine)),
            modules: modules.iter().map(|m| m.name.clone()).collect(),
            rules,
        })
    }

    /// The value of one rule or query with an empty input; `None` when undefined.
    pub fn query(&self, query: &str) -> Result<Option<Value>, String> {
        let mut engine = self.engine.lock().expect("policy engine lock");
        engine.set_input(Value::new_object());
        let results = engine
            .eval_query(query.to_string(), false)
            .map_err(|e| one_line(&e.to_string()))?;
        Ok(results
            .result
            .into_iter()
            .next()
            .and_then(|r| r.expressions.into_iter().next())
            .map(|e| e.value)
            .filter(|v| *v != Value::Undefined))
    }

    /// Evaluates `gate` on `input`.
    pub fn evaluate(&self, gate: Gate, input: Value) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(names) = self.rules.get(gate.as_str()) else {
            return outcome;
        };
        let mut engine = self.engine.lock().expect("policy engine lock");
        engine.set_input(input);
        let mut rules = std::collections::BTreeMap::new();
        for name in names {
            match engine.eval_rule(format!("data.{}.{name}", gate.package())) {
                Ok(Value::Undefined) => {}
                Ok(value) => {
                    rules.insert(Value::from(name.as_str()), value);
                }
                Err(e) => outcome.errors.push(one_line(&e.to_string())),
            }
        }
        let mut exempt = std::collections::BTreeSet::new();
        if let Some(exceptions) = rules.get(&Value::from("exception")) {
            for list in values(exceptions) {
                for suffix in values(&list) {
                    if let Ok(s) = suffix.as_string() {
                        exempt.insert(s.to_string());
                    }
                }
            }
        }
        for (name, value) in rules.iter() {
            let Ok(name) = name.as_string() else { continue };
            let name = name.to_string();
            let (kind, suffix) = match name.split_once('_') {
                Some((kind, suffix)) => (kind, suffix),
                None => (name.as_str(), ""),
            };
            if !suffix.is_empty() && exempt.contains(suffix) {
                continue;
            }
            let into = match kind {
                "deny" | "violation" => &mut outcome.denies,
                "warn" => &mut outcome.warnings,
                _ => continue,
            };
            for item in values(value) {
                let msg = match &item {
                    Value::String(s) => s.to_string(),
                    Value::Object(o) => match o.get(&Value::from("msg")) {
                        Some(Value::String(s)) => s.to_string(),
                        _ => item.to_json_str().unwrap_or_default(),
                    },
                    Value::Bool(true) => name.clone(),
                    Value::Bool(false) => continue,
                    other => other.to_json_str().unwrap_or_default(),
                };
                into.push(Message {
                    rule: name.clone(),
                    msg,
                });
            }
        }
        outcome
    }
}

/// The members of a set or array, or the value itself.
fn values(v: &Value) -> Vec<Value> {
    match v {
        Value::Set(s) => s.iter().cloned().collect(),
        Value::Array(a) => a.iter().cloned().collect(),
        Value::Undefined | Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// The starter policies shipped with BetCycle.
pub fn starter() -> Vec<Module> {
    vec![
        Module {
            name: "starter-deploy.rego".into(),
            source: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/policies/starter/deploy.rego"
            ))
            .into(),
        },
        Module {
            name: "starter-terraform.rego".into(),
            source: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/policies/starter/terraform.rego"
            ))
            .into(),
        },
    ]
}

/// Evaluates the server's modules and, separately, a repository's: the repository's
/// denies add to the server's, its exceptions only touch its own rules.
pub fn decide(
    server: &PolicySet,
    repository: Option<&PolicySet>,
    gate: Gate,
    input: &serde_json::Value,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let value = Value::from(input.clone());
    let mut outcome = server.evaluate(gate, value.clone());
    if let Some(repo) = repository {
        let mut theirs = repo.evaluate(gate, value);
        for m in theirs.denies.iter_mut().chain(theirs.warnings.iter_mut()) {
            m.rule = format!("repository:{}", m.rule);
        }
        outcome.merge(theirs);
    }
    (outcome, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(sources: &[(&str, &str)]) -> PolicySet {
        let modules: Vec<Module> = sources
            .iter()
            .map(|(n, s)| Module {
                name: n.to_string(),
                source: s.to_string(),
            })
            .collect();
        PolicySet::new(&modules, TIME_LIMIT).unwrap()
    }

    #[test]
    fn conftest_conventions() {
        let p = set(&[(
            "a.rego",
            r#"package betcycle.deploy
import rego.v1
deny contains "plain" if input.x == 1
deny_branch contains {"msg": "from an object"} if input.x == 1
violation contains "a violation" if input.x == 1
warn contains "careful" if input.x == 1
deny_exempted contains "never shown" if input.x == 1
exception contains ["exempted"] if input.x == 1
"#,
        )]);
        let (o, _) = decide(&p, None, Gate::Deploy, &json!({"x": 1}));
        let mut denies: Vec<&str> = o.denies.iter().map(|m| m.msg.as_str()).collect();
        denies.sort();
        assert_eq!(denies, ["a violation", "from an object", "plain"]);
        assert_eq!(o.warnings[0].msg, "careful");
        let (o, _) = decide(&p, None, Gate::Deploy, &json!({"x": 2}));
        assert!(o.denies.is_empty() && o.warnings.is_empty());
        // Another gate's package is not consulted.
        let (o, _) = decide(&p, None, Gate::Pipeline, &json!({"x": 1}));
        assert!(o.denies.is_empty());
    }

    #[test]
    fn a_repository_adds_restrictions_but_cannot_exempt_the_servers() {
        let server = set(&[(
            "s.rego",
            "package betcycle.deploy\nimport rego.v1\ndeny_branch contains \"server says no\" if input.x == 1\n",
        )]);
        let repo = set(&[(
            "r.rego",
            "package betcycle.deploy\nimport rego.v1\nexception contains [\"branch\"] if true\ndeny contains \"repo says no too\" if input.x == 1\n",
        )]);
        let (o, _) = decide(&server, Some(&repo), Gate::Deploy, &json!({"x": 1}));
        let msgs: Vec<&str> = o.denies.iter().map(|m| m.msg.as_str()).collect();
        assert_eq!(msgs, ["server says no", "repo says no too"]);
        assert_eq!(o.denies[1].rule, "repository:deny");
    }

    #[test]
    fn syntax_errors_name_line_and_column_and_packages_are_checked() {
        let e = check_module(&Module {
            name: "bad.rego".into(),
            source:
                "package betcycle.deploy\nimport rego.v1\ndeny contains msg if {\n  msg := \n}\n"
                    .into(),
        })
        .unwrap_err();
        assert!(e.starts_with("bad.rego:"), "{e}");
        let at: Vec<&str> = e.splitn(4, ':').collect();
        assert!(
            at[1].parse::<u32>().is_ok() && at[2].parse::<u32>().is_ok(),
            "{e}"
        );
        let e = check_module(&Module {
            name: "other.rego".into(),
            source: "package main\nimport rego.v1\ndeny contains 1 if true\n".into(),
        })
        .unwrap_err();
        assert!(e.contains("use betcycle.pipeline"), "{e}");
        for m in starter() {
            check_module(&m).unwrap();
        }
    }

    #[test]
    fn runaway_policies_hit_the_time_limit() {
        let modules = [Module {
            name: "slow.rego".into(),
            source: "package betcycle.deploy\nimport rego.v1\ndeny contains \"slow\" if count([1 | some x in numbers.range(1, 3000); some y in numbers.range(1, 3000); x != y]) < 0\n".into(),
        }];
        let p = PolicySet::new(&modules, Duration::from_millis(50)).unwrap();
        let started = Instant::now();
        let o = p.evaluate(Gate::Deploy, Value::new_object());
        assert!(!o.errors.is_empty(), "{o:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
