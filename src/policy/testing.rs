//! `betcycle policy test`: runs every `test_*` rule of a folder's modules, like `opa
//! test`: a test passes when its rule is true.

use super::{Module, PolicySet, TIME_LIMIT};
use std::path::Path;
use std::time::Instant;

#[derive(Debug)]
pub struct TestResult {
    /// `data.PACKAGE.test_NAME`.
    pub name: String,
    pub passed: bool,
    /// Why it failed: false, undefined, or an evaluation error.
    pub detail: String,
    pub micros: u128,
}

/// Every `.rego` file in `dir` (not recursive), by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Module>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut modules = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "rego") {
            let source = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            modules.push(Module {
                name: path.display().to_string(),
                source,
            });
        }
    }
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(modules)
}

/// The module's package (`package a.b` → `a.b`).
fn package_of(source: &str) -> Option<String> {
    source.lines().find_map(|l| {
        l.trim()
            .strip_prefix("package ")
            .map(|p| p.trim().to_string())
    })
}

/// The `test_*` rules a module defines (rule heads start a line).
fn tests_in(source: &str) -> Vec<String> {
    let mut names: Vec<String> = source
        .lines()
        .filter_map(|l| {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            name.starts_with("test_").then_some(name)
        })
        .collect();
    names.dedup();
    names
}

pub fn run(modules: &[Module]) -> Result<Vec<TestResult>, String> {
    let set = PolicySet::new(modules, TIME_LIMIT)?;
    let mut results = Vec::new();
    for module in modules {
        let Some(package) = package_of(&module.source) else {
            continue;
        };
        for test in tests_in(&module.source) {
            let name = format!("data.{package}.{test}");
            let started = Instant::now();
            let (passed, detail) = match set.query(&name) {
                Ok(Some(regorus::Value::Bool(true))) => (true, String::new()),
                Ok(Some(other)) => (
                    false,
                    format!("is {}", other.to_json_str().unwrap_or_default()),
                ),
                Ok(None) => (false, "is undefined (a condition failed)".into()),
                Err(e) => (false, e),
            };
            results.push(TestResult {
                name,
                passed,
                detail,
                micros: started.elapsed().as_micros(),
            });
        }
    }
    Ok(results)
}
