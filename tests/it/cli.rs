//! The command line: usage errors, configuration layering and the example file.

use crate::harness::{betcycle, run, tempdir};

#[test]
fn bad_listen_address_is_one_clear_line_exit_2_and_creates_nothing() {
    let dir = tempdir();
    let (code, stdout, stderr) = run(betcycle(dir.path()).args(["serve", "--listen", "nonsense"]));
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: invalid value \"nonsense\" for listen (from --listen): expected HOST:PORT such as 127.0.0.1:8080\n"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "serve created files"
    );
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempdir();
    let (code, _, stderr) = run(betcycle(dir.path()).args(["serve", "--no-such-flag"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let (code, _, _) = run(betcycle(dir.path()).arg("frobnicate"));
    assert_eq!(code, 2);
}

#[test]
fn version_verb_and_flag_agree() {
    let dir = tempdir();
    let (code, verb, _) = run(betcycle(dir.path()).arg("version"));
    assert_eq!(code, 0);
    let (code, flag, _) = run(betcycle(dir.path()).arg("--version"));
    assert_eq!(code, 0);
    assert_eq!(verb, format!("betcycle {}\n", env!("CARGO_PKG_VERSION")));
    assert_eq!(verb, flag);
}

#[test]
fn layering_flags_then_env_then_file_then_defaults() {
    let dir = tempdir();
    let file = dir.path().join("betcycle.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7001\"\nshutdown_timeout = \"5s\"\n\n[log]\nlevel = \"warn\"\nformat = \"json\"\n",
    )
    .unwrap();
    let secret = dir.path().join("public-url");
    std::fs::write(&secret, "https://ci.example.com\n").unwrap();

    let (code, stdout, stderr) = run(betcycle(dir.path())
        .args(["config", "show", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:7003"])
        .env("BETCYCLE_LISTEN", "127.0.0.1:7002")
        .env("BETCYCLE_LOG_LEVEL", "debug")
        .env("BETCYCLE_PUBLIC_URL_FILE", &secret)
        .env("BETCYCLE_LISTNE", "typo"));
    assert_eq!(code, 0, "{stderr}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing from:\n{stdout}"))
            .to_string()
    };
    assert_eq!(line("listen"), "listen = \"127.0.0.1:7003\"  # --listen");
    assert_eq!(
        line("log.level"),
        "log.level = \"debug\"  # BETCYCLE_LOG_LEVEL"
    );
    assert_eq!(
        line("public_url"),
        format!(
            "public_url = \"https://ci.example.com\"  # BETCYCLE_PUBLIC_URL_FILE={}",
            secret.display()
        )
    );
    assert_eq!(
        line("log.format"),
        format!("log.format = \"json\"  # {}:6", file.display())
    );
    assert_eq!(
        line("shutdown_timeout"),
        format!("shutdown_timeout = \"5s\"  # {}:2", file.display())
    );
    assert_eq!(
        line("store.cache_size"),
        "store.cache_size = \"1 MiB\"  # default"
    );
    assert_eq!(
        line("log.dir"),
        format!(
            "log.dir = \"{}\"  # derived",
            dir.path().join("betcycle-data/logs").display()
        )
    );
    assert_eq!(
        stderr,
        "warning: unknown environment variable BETCYCLE_LISTNE ignored\n"
    );
}

#[test]
fn config_file_errors_name_file_line_and_key() {
    let dir = tempdir();
    let file = dir.path().join("betcycle.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[store]\ncache = \"1 GiB\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(betcycle(dir.path()).args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        format!(
            "error: unknown key \"store.cache\" in {}:3 (did you mean \"store.cache_size\"?)\n",
            file.display()
        )
    );
    std::fs::write(&file, "[log]\nformat = \"yaml\"\n").unwrap();
    let (code, _, stderr) = run(betcycle(dir.path()).args(["serve", "--config"]).arg(&file));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        format!(
            "error: invalid value \"yaml\" for log.format (from {}:2): expected auto, text or json\n",
            file.display()
        )
    );
    assert!(!dir.path().join("betcycle-data").exists());
}

#[test]
fn printed_example_is_accepted_by_the_binary() {
    let dir = tempdir();
    let (code, example, _) = run(betcycle(dir.path()).args(["config", "example"]));
    assert_eq!(code, 0);
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &example).unwrap();
    let (code, stdout, stderr) = run(betcycle(dir.path())
        .args(["config", "show", "--config"])
        .arg(&file));
    assert_eq!(code, 0, "{stderr}");
    // Every option appears in the example, set or (for derived ones) as a commented sample.
    for line in stdout.lines() {
        let key = line.split(" = ").next().unwrap();
        let name = key.rsplit('.').next().unwrap();
        assert!(
            example.lines().any(|l| l
                .trim_start_matches("# ")
                .starts_with(&format!("{name} = "))),
            "{key} is not in the example"
        );
    }
}

#[test]
fn validate_names_the_line_and_the_field_of_each_problem() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join(".betcycle.yml"),
        "steps:\n  - name: test\n    run: cargo test\n  - name: build\n    run: cargo build\n    depends_on: [tset]\n    timeout: soon\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(betcycle(dir.path()).arg("validate"));
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        ".betcycle.yml:6:18: steps[1].depends_on[0]: unknown step \"tset\" (did you mean \"test\"?)\n\
         .betcycle.yml:7:14: steps[1].timeout: invalid timeout \"soon\": expected a duration such as 30s, 5m, 1h 30m or 7d\n\
         error: .betcycle.yml has 2 problems\n"
    );

    std::fs::write(
        dir.path().join("ok.yml"),
        "steps:\n  - { name: a, run: 'true' }\n  - { name: b, run: 'true', depends_on: [a] }\n",
    )
    .unwrap();
    let (code, stdout, _) = run(betcycle(dir.path()).args(["validate", "ok.yml"]));
    assert_eq!(code, 0);
    assert_eq!(stdout, "ok.yml: ok, 2 steps: a, b\n");
}

/// `dev seed` (the benchmarks' history) leaves a store the server reads as its own: runs
/// numbered per project, newest first, with steps and tests; the audit chain and the
/// database check hold.
#[tokio::test]
async fn dev_seed_fills_a_store_the_server_and_db_check_accept() {
    use crate::harness::{ADMIN, ADMIN_PASSWORD, Server, add_user};
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    let data = dir.path().join("data");
    let cli = |args: &[&str]| run(betcycle(dir.path()).args(args).arg("--data-dir").arg(&data));
    let seed = ["dev", "seed", "--runs", "30", "--projects", "3"];
    let (code, stdout, stderr) = cli(&seed);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("seeded 30 runs over 3 projects"),
        "{stdout}"
    );
    // A second seed adds after what is there.
    let (code, _, stderr) = cli(&seed);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("entries verified"), "{stdout}");
    let (code, stdout, stderr) = cli(&["dev", "list-runs", "--repeat", "5"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("p99"), "{stdout}");

    let server = Server::start_admin(dir.path(), &[]);
    let numbers = |query: &'static str| crate::runs::run_numbers(&server, "seed-2", query);
    assert_eq!(
        numbers("?limit=50").await,
        (1..=20).rev().collect::<Vec<_>>()
    );
    let runs = server.get_json("/api/v1/projects/seed-2/runs").await;
    assert_eq!(runs[0]["steps"][1]["tests"]["total"], 20);
    // Each seed gives every project the same mix: its 4th run failed, its 2nd is on feature-1.
    assert_eq!(numbers("?status=failed").await, [14, 4]);
    assert_eq!(numbers("?branch=feature-1").await, [12, 2]);
    let (code, stdout, stderr) = cli(&["dev", "list-runs", "--repeat", "5", "--status", "sunny"]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains("unknown run status"), "{stderr}");
    let page = server.get_text("/projects/seed-1/runs/4").await;
    assert!(page.contains("data-step=\"test\""), "{page}");
    server.stop();
    let (code, stdout, stderr) = cli(&["db", "check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
