//! Pipelines as code: a repository's `.betcycle.yml`, parsed into a validated
//! [`Pipeline`] — a DAG of steps with matrix steps expanded — or into every problem found,
//! each naming the file, line, column and field path. The format is documented in
//! `docs/pipeline.md`.

mod check;
pub mod deploy;
pub mod model;

use check::*;

use globset::{Glob, GlobMatcher};
use model::{File, OneOrMany};
use serde_saphyr::Location;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// Events a run can be started by; `when.event` accepts these.
pub const EVENTS: &[&str] = &["push", "pull_request", "tag", "manual", "cron", "api"];

/// Most steps one matrix may expand into.
const MAX_MATRIX: usize = 64;

/// Something wrong in a pipeline file, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Field path such as `steps[1].depends_on[0]`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub env: BTreeMap<String, String>,
    /// In file order, matrix steps expanded in place.
    pub steps: Vec<Step>,
    pub services: Vec<Service>,
    pub concurrency: Option<Concurrency>,
    /// The `deploy:` section: how each environment is deployed.
    pub deploy: BTreeMap<String, deploy::DeployDef>,
}

#[derive(Clone, Debug)]
pub struct Step {
    /// Unique; a matrix expansion is named `test (rust=stable, os=linux)`.
    pub name: String,
    pub run: String,
    pub env: BTreeMap<String, String>,
    /// Indices into `Pipeline::steps` of the steps this one waits for.
    pub needs: Vec<usize>,
    pub when: When,
    pub timeout: Option<Duration>,
    pub retry: u32,
    pub allow_failure: bool,
    /// Relative to the workspace.
    pub workdir: Option<String>,
    pub artifacts: Vec<String>,
    pub reports: model::ReportsDef,
    /// `(secret name, environment variable)` pairs.
    pub secrets: Vec<(String, String)>,
    /// This expansion's matrix values (empty for ordinary steps).
    pub matrix: BTreeMap<String, String>,
    /// The container the step runs in (its own `image` or the pipeline's); `None` runs
    /// it as a process on the host.
    pub container: Option<Container>,
    pub cache: Option<Cache>,
    /// Labels an agent must have to run this step; empty: the server runs it.
    pub runs_on: Vec<String>,
}

/// A step's cache: `paths` (inside the workspace) restored before it runs and saved
/// after it succeeds, under `key`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cache {
    /// As written; `{{ hashFiles('…') }}` is replaced when the step runs.
    pub key: String,
    pub paths: Vec<String>,
}

impl Cache {
    /// The key with each `{{ hashFiles('pattern', …) }}` replaced by `hash(patterns)`;
    /// an error names what is not understood.
    pub fn render(key: &str, mut hash: impl FnMut(&[String]) -> String) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = key;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "a {{ without its }}".to_string())?;
            let expr = after[..end].trim();
            let args = expr
                .strip_prefix("hashFiles(")
                .and_then(|a| a.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("unknown expression \"{expr}\": use hashFiles('pattern', …)")
                })?;
            let patterns: Vec<String> = args
                .split(',')
                .map(|a| {
                    let a = a.trim();
                    a.strip_prefix('\'')
                        .and_then(|a| a.strip_suffix('\''))
                        .or_else(|| a.strip_prefix('"').and_then(|a| a.strip_suffix('"')))
                        .map(str::to_string)
                        .ok_or_else(|| format!("hashFiles takes quoted patterns, not {a}"))
                })
                .collect::<Result<_, _>>()?;
            for p in &patterns {
                Glob::new(p).map_err(|e| format!("invalid pattern \"{p}\": {e}"))?;
            }
            out.push_str(&hash(&patterns));
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        let out = out.trim().to_string();
        if out.is_empty() || out.len() > 200 {
            return Err("a cache key is 1 to 200 characters".into());
        }
        Ok(out)
    }
}

/// A step or service that runs in a container.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub image: String,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Privileged mode and host mounts (`/host:/container[:ro]`): only where the
    /// project allows host access.
    pub privileged: bool,
    pub volumes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// Empty for a container service that runs its image's own command.
    pub run: String,
    pub container: Option<Container>,
    pub env: BTreeMap<String, String>,
    pub ready: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Concurrency {
    pub group: String,
    pub cancel_in_progress: bool,
}

/// The `${name}` placeholders a concurrency group may use.
pub const GROUP_VARIABLES: [&str; 6] = [
    "project",
    "branch",
    "ref",
    "event",
    "commit",
    "pull_request",
];

impl Concurrency {
    /// Checks a group template: not empty, only known `${name}` placeholders.
    fn check_group(group: &str) -> Result<(), String> {
        if group.trim().is_empty() {
            return Err("the group must not be empty".into());
        }
        let mut rest = group;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err("unclosed \"${\" in the group".into());
            };
            let name = &after[..end];
            if !GROUP_VARIABLES.contains(&name) {
                return Err(format!(
                    "unknown variable \"${{{name}}}\"{} (known: {})",
                    did_you_mean(name, GROUP_VARIABLES),
                    GROUP_VARIABLES.map(|v| format!("${{{v}}}")).join(", ")
                ));
            }
            rest = &after[end + 1..];
        }
        Ok(())
    }

    /// The group with its placeholders replaced by `values`.
    pub fn group_for(&self, values: &BTreeMap<&'static str, String>) -> String {
        let mut group = self.group.clone();
        for (name, value) in values {
            group = group.replace(&format!("${{{name}}}"), value);
        }
        group
    }
}

/// A step's filters: it runs only when every non-empty list matches.
#[derive(Clone, Debug, Default)]
pub struct When {
    pub branch: Vec<String>,
    pub event: Vec<String>,
    pub paths: Vec<String>,
}

/// What started a run, as `when` sees it.
#[derive(Clone, Debug)]
pub struct Trigger {
    pub branch: Option<String>,
    pub event: String,
    /// Files the change touched; `None` when unknown (then path filters pass).
    pub changed_paths: Option<Vec<String>>,
}

fn matcher(pattern: &str) -> GlobMatcher {
    Glob::new(pattern)
        .expect("patterns are validated at parse time")
        .compile_matcher()
}

impl When {
    /// `Ok` when the step should run for `trigger`, or why it is skipped.
    pub fn check(&self, trigger: &Trigger) -> Result<(), String> {
        if !self.event.is_empty() && !self.event.contains(&trigger.event) {
            return Err(format!(
                "event {} is not one of {}",
                trigger.event,
                self.event.join(", ")
            ));
        }
        if !self.branch.is_empty() {
            let branch = trigger.branch.as_deref().unwrap_or("");
            if !self.branch.iter().any(|p| matcher(p).is_match(branch)) {
                return Err(format!(
                    "branch \"{branch}\" matches none of {}",
                    self.branch.join(", ")
                ));
            }
        }
        if let (false, Some(changed)) = (self.paths.is_empty(), &trigger.changed_paths) {
            let matchers: Vec<GlobMatcher> = self.paths.iter().map(|p| matcher(p)).collect();
            if !changed
                .iter()
                .any(|f| matchers.iter().any(|m| m.is_match(f)))
            {
                return Err(format!("no changed file matches {}", self.paths.join(", ")));
            }
        }
        Ok(())
    }
}

/// Collects problems while checking a parsed file.
struct Checker<'a> {
    file: &'a str,
    /// The file's text, to place problems found below what the parser located.
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    /// Like `at`, for a problem in a value parsed as a whole at `location` (the `deploy:`
    /// section): the line and column are those of the deepest key of `path` (after its
    /// first `skip` parts) found in order in the text from `location` on.
    fn at_key(
        &mut self,
        location: Location,
        path: String,
        skip: usize,
        message: impl Into<String>,
    ) {
        let lines: Vec<&str> = self.text.lines().collect();
        let (mut line, mut column) = (
            (location.line() as usize).max(1),
            (location.column() as usize).max(1),
        );
        // The first `key:` at or after (line, column), as (line, column), 1-based.
        let find = |key: &str, line: usize, column: usize| -> Option<(usize, usize)> {
            let mut from = column.saturating_sub(1);
            for (i, text) in lines.iter().enumerate().skip(line - 1) {
                let mut search = from.min(text.len());
                while let Some(found) = text.get(search..).and_then(|t| t.find(key)) {
                    let at = search + found;
                    let before = text[..at].chars().last();
                    let after = text[at + key.len()..].trim_start();
                    if before.is_none_or(|c| " {,-\t".contains(c)) && after.starts_with(':') {
                        return Some((i + 1, at + 1));
                    }
                    search = at + key.len();
                }
                from = 0;
            }
            None
        };
        for key in path.split('.').skip(skip) {
            if key.is_empty() || key.starts_with('[') {
                continue;
            }
            match find(key, line, column) {
                Some(found) => (line, column) = found,
                None => break,
            }
        }
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: line as u64,
            column: column as u64,
            path,
            message: message.into(),
        });
    }

    fn at(&mut self, location: Location, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: location.line(),
            column: location.column(),
            path: path.into(),
            message: message.into(),
        });
    }
}

fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

/// A relative path inside the workspace: no leading `/`, no `..`.
fn inside_workspace(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && !path.split('/').any(|part| part == "..")
}

/// Parses and validates `text`, the contents of `file` (used in messages).
pub fn parse(file: &str, text: &str) -> Result<Pipeline, Vec<Problem>> {
    let mut path = String::new();
    let parsed: Result<File, _> = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let mut message = e.without_snippet().to_string();
            // The location is reported separately.
            if let Some(rest) = message.strip_prefix("error: ") {
                message = rest.to_string();
            }
            let prefix = format!("line {line} column {column}: ");
            if let Some(rest) = message.strip_prefix(&prefix) {
                message = rest.to_string();
            }
            message = message.lines().next().unwrap_or_default().to_string();
            if let Some(rest) = message.strip_suffix(&format!(" at line {line}, column {column}")) {
                message = rest.to_string();
            }
            if let Some(hint) = unknown_field_hint(&message) {
                message.push_str(&hint);
            }
            return Err(vec![Problem {
                file: file.to_string(),
                line,
                column,
                // serde_path_to_error writes `?` for a position it cannot name.
                path: path
                    .split('.')
                    .filter(|part| *part != "?" && !part.is_empty())
                    .collect::<Vec<_>>()
                    .join("."),
                message,
            }]);
        }
    };
    check(file, text, raw)
}

/// "unknown field `runn`, expected one of name, run, …" → ` (did you mean "run"?)`.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ")?.1;
    let candidates: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split(", ")
        .map(|c| c.trim_matches('`'))
        .collect();
    let hint = did_you_mean(field, candidates.iter().copied());
    (!hint.is_empty()).then_some(hint)
}

fn check(file: &str, text: &str, raw: File) -> Result<Pipeline, Vec<Problem>> {
    let mut c = Checker {
        file,
        text,
        problems: Vec::new(),
    };
    if raw.steps.is_empty() {
        c.at(
            Location::UNKNOWN,
            "steps",
            "a pipeline needs at least one step",
        );
    }

    let (mut steps, by_name) = expand_steps(&mut c, &raw);
    link_needs(&mut c, &raw, &mut steps, &by_name);
    check_cycle(&mut c, &raw, &steps);
    let services = services_of(&mut c, &raw);
    if let Some(concurrency) = &raw.concurrency
        && let Err(message) = Concurrency::check_group(&concurrency.group.value)
    {
        c.at(concurrency.group.referenced, "concurrency.group", message);
    }

    let deploy = deploy_of(&mut c, &raw);

    if !c.problems.is_empty() {
        c.problems.sort_by_key(|p| (p.line, p.column));
        return Err(c.problems);
    }
    Ok(Pipeline {
        env: raw.env,
        steps: steps.into_iter().map(|(_, s)| s).collect(),
        services,
        concurrency: raw.concurrency.map(|c| Concurrency {
            group: c.group.value,
            cancel_in_progress: c.cancel_in_progress,
        }),
        deploy,
    })
}

#[cfg(test)]
mod tests;

/// Checks environment variable names given as trigger parameters: letters, digits and
/// `_`, not starting with a digit, and not `BETCYCLE_*` (BetCycle sets those).
pub fn check_env_names(env: &BTreeMap<String, String>) -> Result<(), String> {
    for name in env.keys() {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid environment variable name \"{name}\": use letters, digits and _"
            ));
        }
        if name.starts_with("BETCYCLE_") {
            return Err(format!(
                "environment variable \"{name}\": BETCYCLE_* variables are set by BetCycle"
            ));
        }
    }
    Ok(())
}
