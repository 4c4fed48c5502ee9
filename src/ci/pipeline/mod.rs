//! Pipelines as code: a repository's `.betcycle.yml`, parsed into a validated
//! [`Pipeline`] — a DAG of steps with matrix steps expanded — or into every problem found,
//! each naming the file, line, column and field path. The format is documented in
//! `docs/pipeline.md`.

pub mod deploy;
pub mod model;

use globset::{Glob, GlobMatcher};
use model::{File, OneOrMany, SecretDef, StepDef};
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
}

#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub run: String,
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
    problems: Vec<Problem>,
}

impl Checker<'_> {
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
    check(file, raw)
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

fn check(file: &str, raw: File) -> Result<Pipeline, Vec<Problem>> {
    let mut c = Checker {
        file,
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

/// Which expanded steps (by index) each written step name stands for.
type ByName = HashMap<String, Vec<usize>>;

/// Steps with their matrices expanded, and which expanded steps each written name
/// stands for.
fn expand_steps(c: &mut Checker, raw: &File) -> (Vec<(usize, Step)>, ByName) {
    let mut steps: Vec<(usize, Step)> = Vec::new();
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, def) in raw.steps.iter().enumerate() {
        let here = format!("steps[{i}]");
        let name = def.name.value.trim().to_string();
        if name.is_empty() || name.len() > 100 || name.contains('\n') {
            c.at(
                def.name.referenced,
                format!("{here}.name"),
                "a step name needs 1 to 100 characters on one line",
            );
        }
        if by_name.contains_key(&name) {
            c.at(
                def.name.referenced,
                format!("{here}.name"),
                format!("duplicate step name \"{name}\""),
            );
            continue;
        }
        let mut expanded = Vec::new();
        for values in expand_matrix(c, &here, def) {
            let step_name = if values.is_empty() {
                name.clone()
            } else {
                let label: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name} ({})", label.join(", "))
            };
            expanded.push(steps.len());
            steps.push((i, step(c, &here, def, step_name, values)));
        }
        by_name.insert(name, expanded);
    }

    (steps, by_name)
}

/// Each step's `needs`, from its `depends_on` by written name.
fn link_needs(c: &mut Checker, raw: &File, steps: &mut [(usize, Step)], by_name: &ByName) {
    let names: Vec<String> = raw
        .steps
        .iter()
        .map(|d| d.name.value.trim().to_string())
        .collect();
    for (index, (def_index, step)) in steps.iter_mut().enumerate() {
        let def = &raw.steps[*def_index];
        for (j, dep) in def.depends_on.iter().enumerate() {
            let dep_name = dep.value.trim();
            let path = format!("steps[{def_index}].depends_on[{j}]");
            match by_name.get(dep_name) {
                None => {
                    let hint = did_you_mean(dep_name, names.iter().map(String::as_str));
                    c.at(
                        dep.referenced,
                        path,
                        format!("unknown step \"{dep_name}\"{hint}"),
                    );
                }
                Some(targets) if targets.contains(&index) => {
                    c.at(
                        dep.referenced,
                        path,
                        format!("step \"{dep_name}\" depends on itself"),
                    );
                }
                Some(targets) => step.needs.extend(targets.iter().copied()),
            }
        }
        step.needs.sort_unstable();
        step.needs.dedup();
    }
}

/// A dependency cycle, reported once (only when nothing else is wrong).
fn check_cycle(c: &mut Checker, raw: &File, steps: &[(usize, Step)]) {
    if c.problems.is_empty()
        && let Some(cycle) = find_cycle(
            &steps
                .iter()
                .map(|(_, s)| s.needs.clone())
                .collect::<Vec<_>>(),
        )
    {
        let (def_index, _) = steps[cycle[0]];
        let names: Vec<&str> = cycle.iter().map(|i| steps[*i].1.name.as_str()).collect();
        c.at(
            raw.steps[def_index].name.referenced,
            format!("steps[{def_index}].depends_on"),
            format!("dependency cycle: {} → {}", names.join(" → "), names[0]),
        );
    }
}

fn services_of(c: &mut Checker, raw: &File) -> Vec<Service> {
    let mut services = Vec::new();
    for (i, s) in raw.services.iter().enumerate() {
        let name = s.name.value.trim().to_string();
        if services.iter().any(|o: &Service| o.name == name) {
            c.at(
                s.name.referenced,
                format!("services[{i}].name"),
                format!("duplicate service name \"{name}\""),
            );
        }
        services.push(Service {
            name,
            run: s.run.clone(),
            env: s.env.clone(),
            ready: s.ready.clone(),
        });
    }

    services
}

fn deploy_of(c: &mut Checker, raw: &File) -> BTreeMap<String, deploy::DeployDef> {
    let mut deploy = BTreeMap::new();
    if let Some(section) = &raw.deploy {
        match deploy::parse(&section.value) {
            Ok(parsed) => deploy = parsed,
            Err(problems) => {
                for (path, message) in problems {
                    c.at(section.referenced, path, message);
                }
            }
        }
    }

    deploy
}

/// Every combination of a step's matrix values (one empty combination without a matrix).
fn expand_matrix(c: &mut Checker, here: &str, def: &StepDef) -> Vec<BTreeMap<String, String>> {
    let Some(matrix) = &def.matrix else {
        return vec![BTreeMap::new()];
    };
    let mut combos = vec![BTreeMap::new()];
    for (key, values) in &matrix.value {
        if values.is_empty() {
            c.at(
                matrix.referenced,
                format!("{here}.matrix.{key}"),
                "a matrix variable needs at least one value",
            );
            return Vec::new();
        }
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut next = combo.clone();
                    next.insert(key.clone(), v.clone());
                    next
                })
            })
            .collect();
        if combos.len() > MAX_MATRIX {
            c.at(
                matrix.referenced,
                format!("{here}.matrix"),
                format!("a matrix may expand to at most {MAX_MATRIX} steps"),
            );
            return Vec::new();
        }
    }
    combos
}

fn step(
    c: &mut Checker,
    here: &str,
    def: &StepDef,
    name: String,
    matrix: BTreeMap<String, String>,
) -> Step {
    if def.run.trim().is_empty() {
        c.at(
            def.name.referenced,
            format!("{here}.run"),
            "run must not be empty",
        );
    }
    let timeout = timeout_of(c, here, def);
    check_paths(c, here, def);
    let when = def
        .when
        .as_ref()
        .map(|w| check_when(c, here, def, w))
        .unwrap_or_default();
    let mut env = def.env.clone();
    for (k, v) in &matrix {
        env.insert(format!("MATRIX_{}", k.to_uppercase()), v.clone());
    }
    Step {
        name,
        run: def.run.clone(),
        env,
        needs: Vec::new(),
        when,
        timeout,
        retry: def.retry,
        allow_failure: def.allow_failure,
        workdir: def.workdir.as_ref().map(|w| w.value.clone()),
        artifacts: def.artifacts.iter().map(|a| a.value.clone()).collect(),
        reports: def.reports.clone(),
        secrets: def.secrets.iter().map(SecretDef::pair).collect(),
        matrix,
    }
}

/// The step's `timeout`, checked (more than zero, a duration).
fn timeout_of(c: &mut Checker, here: &str, def: &StepDef) -> Option<Duration> {
    def.timeout
        .as_ref()
        .and_then(|t| match crate::core::config::parse_duration(&t.value) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                c.at(
                    t.referenced,
                    format!("{here}.timeout"),
                    "timeout must be more than zero",
                );
                None
            }
            Err(e) => {
                c.at(
                    t.referenced,
                    format!("{here}.timeout"),
                    format!("invalid timeout \"{}\": {e}", t.value),
                );
                None
            }
        })
}

/// The step's paths — `workdir`, `artifacts`, `reports` — are relative and inside the
/// workspace, and its patterns are valid globs.
fn check_paths(c: &mut Checker, here: &str, def: &StepDef) {
    if let Some(w) = &def.workdir
        && !inside_workspace(&w.value)
    {
        c.at(
            w.referenced,
            format!("{here}.workdir"),
            "workdir must be a relative path inside the workspace",
        );
    }
    for (j, a) in def.artifacts.iter().enumerate() {
        if !inside_workspace(&a.value) {
            c.at(
                a.referenced,
                format!("{here}.artifacts[{j}]"),
                "artifact patterns are relative to the workspace",
            );
        } else if let Err(e) = Glob::new(&a.value) {
            c.at(
                a.referenced,
                format!("{here}.artifacts[{j}]"),
                format!("invalid pattern: {e}"),
            );
        }
    }
    for (kind, patterns) in [
        ("junit", def.reports.junit.to_vec()),
        ("coverage", def.reports.coverage.to_vec()),
    ] {
        for (j, p) in patterns.iter().enumerate() {
            let problem = if !inside_workspace(p) {
                Some("report paths are relative to the workspace".to_string())
            } else {
                Glob::new(p).err().map(|e| format!("invalid pattern: {e}"))
            };
            if let Some(problem) = problem {
                c.at(
                    def.name.referenced,
                    format!("{here}.reports.{kind}[{j}]"),
                    problem,
                );
            }
        }
    }
}

fn check_when(c: &mut Checker, here: &str, def: &StepDef, w: &model::WhenDef) -> When {
    let at = def.name.referenced;
    let event = w.event.to_vec();
    for e in &event {
        if !EVENTS.contains(&e.as_str()) {
            let hint = did_you_mean(e, EVENTS.iter().copied());
            c.at(
                at,
                format!("{here}.when.event"),
                format!(
                    "unknown event \"{e}\"{hint}; events are {}",
                    EVENTS.join(", ")
                ),
            );
        }
    }
    let globs = |c: &mut Checker, field: &str, list: &OneOrMany| {
        let list = list.to_vec();
        for p in &list {
            if let Err(e) = Glob::new(p) {
                c.at(
                    at,
                    format!("{here}.when.{field}"),
                    format!("invalid pattern \"{p}\": {e}"),
                );
            }
        }
        list
    };
    When {
        branch: globs(c, "branch", &w.branch),
        event,
        paths: globs(c, "paths", &w.paths),
    }
}

/// A cycle in the dependency graph, as step indices, if there is one.
fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the current path, 2 done.
    fn visit(
        n: usize,
        needs: &[Vec<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[n] = 1;
        path.push(n);
        for &m in &needs[n] {
            match state[m] {
                1 => {
                    let start = path.iter().position(|&p| p == m).expect("on path");
                    let mut cycle = path[start..].to_vec();
                    cycle.reverse();
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(m, needs, state, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state[n] = 2;
        None
    }
    let mut state = vec![0u8; needs.len()];
    (0..needs.len()).find_map(|n| {
        if state[n] == 0 {
            visit(n, needs, &mut state, &mut Vec::new())
        } else {
            None
        }
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
