//! The checks `parse` runs on a pipeline file, part by part: steps with their matrices,
//! dependencies and cycles, paths and patterns, `when` filters, services, `deploy:`.
//! Each problem is reported with its line, column and field path.

use super::model::{File, SecretDef, StepDef};
use super::*;
use serde_saphyr::Spanned;

/// Which expanded steps (by index) each written step name stands for.
pub(super) type ByName = HashMap<String, Vec<usize>>;

/// Steps with their matrices expanded, and which expanded steps each written name
/// stands for.
pub(super) fn expand_steps(c: &mut Checker, raw: &File) -> (Vec<(usize, Step)>, ByName) {
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
            steps.push((
                i,
                step(c, &here, def, raw.image.as_ref(), step_name, values),
            ));
        }
        by_name.insert(name, expanded);
    }

    (steps, by_name)
}

/// Each step's `needs`, from its `depends_on` by written name.
pub(super) fn link_needs(
    c: &mut Checker,
    raw: &File,
    steps: &mut [(usize, Step)],
    by_name: &ByName,
) {
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
pub(super) fn check_cycle(c: &mut Checker, raw: &File, steps: &[(usize, Step)]) {
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

pub(super) fn services_of(c: &mut Checker, raw: &File) -> Vec<Service> {
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
        let here = format!("services[{i}]");
        let container = s.image.as_ref().and_then(|image| {
            let image = image_of(c, &here, image)?;
            if !is_network_alias(&name) {
                c.at(
                    s.name.referenced,
                    format!("{here}.name"),
                    "a container service's name is its host name on the run's network: \
                     use letters, digits and - (e.g. postgres)",
                );
            }
            Some(Container {
                image,
                memory: None,
                cpus: None,
                privileged: false,
                volumes: Vec::new(),
            })
        });
        let run = s.run.clone().unwrap_or_default();
        if run.trim().is_empty() && container.is_none() {
            c.at(
                s.name.referenced,
                format!("{here}.run"),
                "a service needs run (or an image whose own command it runs)",
            );
        }
        services.push(Service {
            name,
            run,
            container,
            env: s.env.clone(),
            ready: s.ready.clone(),
        });
    }

    services
}

pub(super) fn deploy_of(c: &mut Checker, raw: &File) -> BTreeMap<String, deploy::DeployDef> {
    let mut deploy = BTreeMap::new();
    if let Some(section) = &raw.deploy {
        match deploy::parse(&section.value) {
            Ok(parsed) => deploy = parsed,
            Err(problems) => {
                for (path, message) in problems {
                    c.at_key(section.referenced, path, 1, message);
                }
            }
        }
    }

    deploy
}

/// Every combination of a step's matrix values (one empty combination without a matrix).
pub(super) fn expand_matrix(
    c: &mut Checker,
    here: &str,
    def: &StepDef,
) -> Vec<BTreeMap<String, String>> {
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

/// An image reference, checked: not empty, no spaces.
fn image_of(c: &mut Checker, here: &str, image: &Spanned<String>) -> Option<String> {
    let value = image.value.trim();
    if value.is_empty() || value.contains(char::is_whitespace) {
        c.at(
            image.referenced,
            format!("{here}.image"),
            format!(
                "invalid image \"{}\": expected a reference such as rust:1.95",
                image.value
            ),
        );
        return None;
    }
    Some(value.to_string())
}

/// Letters, digits and `-`, not at either end: usable as a host name.
fn is_network_alias(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The step's container: its image (or the pipeline's) and its limits, checked.
fn container_of(
    c: &mut Checker,
    here: &str,
    def: &StepDef,
    default_image: Option<&Spanned<String>>,
) -> Option<Container> {
    let memory =
        def.memory
            .as_ref()
            .and_then(|m| match crate::core::config::parse_size(&m.value) {
                Ok(bytes) if bytes >= 6 * 1024 * 1024 => Some(bytes),
                Ok(_) => {
                    c.at(
                        m.referenced,
                        format!("{here}.memory"),
                        "memory must be at least 6 MiB (the container engine's minimum)",
                    );
                    None
                }
                Err(e) => {
                    c.at(
                        m.referenced,
                        format!("{here}.memory"),
                        format!("invalid memory \"{}\": {e}", m.value),
                    );
                    None
                }
            });
    let cpus = def.cpus.as_ref().and_then(|n| {
        if n.value > 0.0 && n.value <= 1024.0 {
            Some(n.value)
        } else {
            c.at(
                n.referenced,
                format!("{here}.cpus"),
                "cpus must be more than 0 (e.g. 0.5 or 2)",
            );
            None
        }
    });
    for (j, v) in def.volumes.iter().enumerate() {
        let parts: Vec<&str> = v.value.split(':').collect();
        let valid = matches!(parts.len(), 2 | 3)
            && parts[0].starts_with('/')
            && parts[1].starts_with('/')
            && parts.get(2).is_none_or(|m| matches!(*m, "ro" | "rw"));
        if !valid {
            c.at(
                v.referenced,
                format!("{here}.volumes[{j}]"),
                format!(
                    "invalid volume \"{}\": expected /host/path:/container/path, optionally :ro",
                    v.value
                ),
            );
        }
    }
    let Some(image) = def.image.as_ref().or(default_image) else {
        let asked = [
            def.memory.as_ref().map(|m| (m.referenced, "memory")),
            def.cpus.as_ref().map(|n| (n.referenced, "cpus")),
            def.volumes.first().map(|v| (v.referenced, "volumes")),
            def.privileged
                .then_some((def.name.referenced, "privileged")),
        ];
        if let Some((at, field)) = asked.into_iter().flatten().next() {
            c.at(
                at,
                format!("{here}.{field}"),
                "memory, cpus, volumes and privileged are a container's: give the step an image",
            );
        }
        return None;
    };
    let image = image_of(c, here, image)?;
    Some(Container {
        image,
        memory,
        cpus,
        privileged: def.privileged,
        volumes: def.volumes.iter().map(|v| v.value.clone()).collect(),
    })
}

pub(super) fn step(
    c: &mut Checker,
    here: &str,
    def: &StepDef,
    default_image: Option<&Spanned<String>>,
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
        container: container_of(c, here, def, default_image),
        cache: cache_of(c, here, def),
        runs_on: runs_on_of(c, here, def, default_image),
    }
}

/// The step's `runs_on` labels, checked: agent labels, and not with an image (agents
/// run steps as processes on their own host).
fn runs_on_of(
    c: &mut Checker,
    here: &str,
    def: &StepDef,
    default_image: Option<&Spanned<String>>,
) -> Vec<String> {
    for (j, label) in def.runs_on.iter().enumerate() {
        if let Err(e) = crate::agents::check_label(&label.value) {
            c.at(label.referenced, format!("{here}.runs_on[{j}]"), e);
        }
    }
    if let Some(first) = def.runs_on.first()
        && def.image.as_ref().or(default_image).is_some()
    {
        c.at(
            first.referenced,
            format!("{here}.runs_on"),
            "runs_on cannot be combined with an image (the step's or the pipeline's): \
             agents run steps as processes on their own host",
        );
    }
    def.runs_on.iter().map(|l| l.value.clone()).collect()
}

/// The step's `cache`, checked: a key that renders (its patterns valid), paths inside
/// the workspace.
fn cache_of(c: &mut Checker, here: &str, def: &StepDef) -> Option<Cache> {
    let cache = def.cache.as_ref()?;
    let at = cache.referenced;
    let mut ok = true;
    if let Err(e) = Cache::render(&cache.value.key, |_| "0".repeat(64)) {
        c.at(at, format!("{here}.cache.key"), e);
        ok = false;
    }
    if cache.value.paths.is_empty() {
        c.at(
            at,
            format!("{here}.cache.paths"),
            "a cache needs at least one path",
        );
        ok = false;
    }
    for (j, p) in cache.value.paths.iter().enumerate() {
        if !inside_workspace(p) || p.trim().is_empty() || p.starts_with('~') {
            c.at(
                at,
                format!("{here}.cache.paths[{j}]"),
                format!(
                    "cache paths are relative and inside the workspace, not \"{p}\" \
                     (for a tool's own cache, point it there: CARGO_HOME=.cargo)"
                ),
            );
            ok = false;
        }
    }
    ok.then(|| Cache {
        key: cache.value.key.clone(),
        paths: cache.value.paths.clone(),
    })
}

/// The step's `timeout`, checked (more than zero, a duration).
pub(super) fn timeout_of(c: &mut Checker, here: &str, def: &StepDef) -> Option<Duration> {
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
pub(super) fn check_paths(c: &mut Checker, here: &str, def: &StepDef) {
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

pub(super) fn check_when(c: &mut Checker, here: &str, def: &StepDef, w: &model::WhenDef) -> When {
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
pub(super) fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
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
