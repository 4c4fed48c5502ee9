//! `betcycle dev seed` (hidden): fills a data directory with history for benchmarks —
//! projects, and finished runs with steps, test results, coverage and artifacts, each
//! audited as a triggered run is — in batches of one transaction each.

use super::offline::{runtime_err, with_store};
use super::{ConfigArgs, Failure};
use crate::ci::run::{Run, RunStatus};
use crate::identity::audit::{Context, Record};
use crate::projects::ProjectChange;
use crate::store::RunFilter;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum DevVerb {
    /// Add projects and finished runs to the data directory (server stopped).
    Seed {
        /// How many runs to add, spread over the projects.
        #[arg(long, default_value_t = 1000)]
        runs: u64,
        /// How many projects (`seed-1`, `seed-2`, …; created when missing).
        #[arg(long, default_value_t = 10)]
        projects: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Time the store's newest-first listing of a project's runs (the range scan behind
    /// the runs API and the project page) and print p50/p99 (server stopped).
    ListRuns {
        #[arg(long, default_value = "seed-1")]
        project: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only runs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only runs on this branch.
        #[arg(long)]
        branch: Option<String>,
        #[arg(long, default_value_t = 1000)]
        repeat: usize,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Runs written per transaction.
const BATCH: u64 = 5_000;

impl DevVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        match self {
            DevVerb::Seed {
                runs,
                projects,
                config,
            } => seed(runs, projects, &config, env),
            DevVerb::ListRuns {
                project,
                limit,
                status,
                branch,
                repeat,
                config,
            } => {
                let status = status.as_deref().map(RunStatus::parse).transpose();
                let filter = RunFilter {
                    status: status.map_err(|e| Failure::Usage(e.to_string()))?,
                    branch,
                };
                list_runs(project, filter, limit, repeat.max(1), &config, env)
            }
        }
    }
}

fn list_runs(
    project: String,
    filter: RunFilter,
    limit: usize,
    repeat: usize,
    config: &ConfigArgs,
    env: BTreeMap<String, String>,
) -> Result<ExitCode, Failure> {
    with_store(config, env, false, |store, _| async move {
        let mut times = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let t = std::time::Instant::now();
            let runs = store
                .project_runs(&project, filter.clone(), limit)
                .await
                .map_err(runtime_err)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(runs);
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "store.project_runs({project}, {filter:?}, {limit}) x{repeat}: p50 {:.3} ms, p99 {:.3} ms",
            at(0.5),
            at(0.99)
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn seed(
    runs: u64,
    projects: u64,
    config: &ConfigArgs,
    env: BTreeMap<String, String>,
) -> Result<ExitCode, Failure> {
    if projects == 0 {
        return Err(Failure::Usage("--projects must be at least 1".into()));
    }
    with_store(config, env, true, |store, _| async move {
        let started = std::time::Instant::now();
        for p in 1..=projects {
            let slug = format!("seed-{p}");
            if store.project(&slug).await.map_err(runtime_err)?.is_some() {
                continue;
            }
            let change = ProjectChange {
                slug: Some(slug.clone()),
                name: Some(format!("Seeded project {p}")),
                repository: Some(format!("https://git.example.com/seed/{p}.git")),
                ..ProjectChange::default()
            };
            let audit = Record::new(&Context::cli(), "project.create", slug);
            store
                .create_project(change, audit)
                .await
                .map_err(runtime_err)?;
        }
        let mut done = 0;
        while done < runs {
            let batch = (done..runs.min(done + BATCH))
                .map(|i| run(i, runs, projects))
                .collect();
            store.import_runs(batch).await.map_err(runtime_err)?;
            done = runs.min(done + BATCH);
        }
        println!(
            "seeded {runs} runs over {projects} projects in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Commit subjects and authors the seeded history cycles through.
const SUBJECTS: [&str; 6] = [
    "Fix the flaky retry test",
    "Add pagination to the orders API",
    "Bump dependencies",
    "Refactor the config loader",
    "Speed up the release build",
    "Document the deploy window",
];
const AUTHORS: [&str; 4] = [
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Edsger Dijkstra",
];

/// Run `i` of `total`: in project `i % projects`, a minute after run `i - 1`, the last one
/// finished now; in each project one run in ten failed (with its failing test), one in
/// five on one of 97 feature branches, the rest on main.
fn run(i: u64, total: u64, projects: u64) -> Run {
    let ago = jiff::SignedDuration::from_secs(60 * (total - i) as i64);
    let finished = jiff::Timestamp::now() - ago;
    let at = |secs: i64| (finished - jiff::SignedDuration::from_secs(secs)).to_string();
    // The project's own count, so the mix is the same in every project.
    let k = i / projects;
    let failed = k % 10 == 3;
    let branch = if k % 5 == 1 {
        format!("feature-{}", k % 97)
    } else {
        "main".to_string()
    };
    let commit = format!("{:040x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let cases: Vec<_> = (0..20)
        .map(|c| {
            let fails = failed && c == 7;
            serde_json::json!({
                "name": format!("suite::case_{c}"),
                "outcome": if fails { "failed" } else { "passed" },
                "duration_secs": 0.01 * c as f64,
                "message": if fails { "assertion failed: left == right" } else { "" },
            })
        })
        .collect();
    let step = |name: &str, needs: &[&str], start: i64, end: i64, ok: bool| {
        serde_json::json!({
            "name": name, "needs": needs, "attempts": 1,
            "status": if ok { "succeeded" } else { "failed" },
            "exit_code": if ok { 0 } else { 1 },
            "started_at": at(start), "finished_at": at(end),
        })
    };
    let mut test = step("test", &["lint"], 200, 60, !failed);
    test["tests"] = serde_json::json!({
        "total": 20, "passed": if failed { 19 } else { 20 }, "failed": u64::from(failed),
        "skipped": 0, "duration_secs": 1.9, "cases": cases,
    });
    test["coverage"] = serde_json::json!({"lines_total": 4000, "lines_covered": 3100, "percent": 77.5, "format": "lcov"});
    let mut build = step("build", &["test"], 60, 0, true);
    build["artifacts"] = serde_json::json!([{
        "path": "target/release/app", "size": 4_200_000,
        "sha256": format!("{:064x}", u128::from(i) * 0x1000_0000_0000_0001),
    }]);
    let steps = if failed {
        vec![step("lint", &[], 260, 200, true), test]
    } else {
        vec![step("lint", &[], 260, 200, true), test, build]
    };
    serde_json::from_value(serde_json::json!({
        "id": 0, "number": 0,
        "project": format!("seed-{}", i % projects + 1),
        "event": if k % 5 == 1 { "pull_request" } else { "push" },
        "git_ref": branch, "branch": branch, "commit": commit,
        "commit_subject": SUBJECTS[(k % SUBJECTS.len() as u64) as usize],
        "commit_author": AUTHORS[(k % AUTHORS.len() as u64) as usize],
        "actor": "user:seed",
        "status": if failed { "failed" } else { "succeeded" },
        "created_at": at(270), "started_at": at(260), "finished_at": at(0),
        "steps": steps,
        "changed_paths": ["src/lib.rs", "tests/it.rs"],
    }))
    .expect("a seeded run is a valid run")
}
