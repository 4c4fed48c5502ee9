use super::*;

fn ok(text: &str) -> Pipeline {
    parse(".betcycle.yml", text).unwrap_or_else(|p| {
        panic!(
            "{}",
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn problems(text: &str) -> Vec<String> {
    parse(".betcycle.yml", text)
        .expect_err("the file should be rejected")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_sketch_from_the_product_document_parses() {
    let p = ok(r#"
env: { RUST_BACKTRACE: "1" }
steps:
  - name: lint
    run: cargo fmt --check
  - name: test
    run: cargo nextest run --profile ci
    depends_on: [lint]
    reports: { junit: target/nextest/ci/junit.xml, coverage: lcov.info }
    timeout: 20m
    secrets: [DATABASE_URL]
  - name: build
    run: cargo build --release
    depends_on: [test]
    when: { branch: main }
    artifacts: [target/release/app]
deploy:
  staging:    { target: { kind: exec, run: ./deploy.sh } }
  production:
    target: { kind: service, command: ./app, health: /healthz, host: app.example.com }
    strategy: { kind: canary, steps: [10, 50, 100], interval: 30s, max_error_rate: 1% }
"#);
    assert_eq!(p.env["RUST_BACKTRACE"], "1");
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["lint", "test", "build"]);
    assert_eq!(p.steps[1].needs, [0]);
    assert_eq!(p.steps[2].needs, [1]);
    assert_eq!(p.steps[1].timeout, Some(Duration::from_secs(1200)));
    assert_eq!(
        p.steps[1].secrets,
        [("DATABASE_URL".to_string(), "DATABASE_URL".to_string())]
    );
    assert_eq!(
        p.steps[1].reports.junit.to_vec(),
        ["target/nextest/ci/junit.xml"]
    );
    assert_eq!(p.steps[2].when.branch, ["main"]);
    assert_eq!(p.deploy.len(), 2);
}

#[test]
fn unknown_keys_name_line_column_path_and_a_suggestion() {
    let text = "steps:\n  - name: a\n    run: x\n  - name: b\n    runn: y\n";
    assert_eq!(
        problems(text),
        [
            ".betcycle.yml:5:5: steps[1].runn: unknown field `runn`, expected one of name, run, env, depends_on, when, timeout, retry, allow_failure, workdir, artifacts, reports, secrets, matrix, image, memory, cpus, privileged, volumes, cache, runs_on (did you mean \"run\"?)"
        ]
    );
    let text = "steps:\n  - name: a\n    run: x\n    retry: lots\n";
    let p = problems(text);
    assert!(
        p[0].starts_with(".betcycle.yml:4:12: steps[0].retry: "),
        "{p:?}"
    );
    assert!(problems("steps: [\n")[0].starts_with(".betcycle.yml:1:8: "));
    assert_eq!(
        problems("steps:\n  - name: a\n    run: echo 'x: y'; false\n"),
        [".betcycle.yml:3:17: steps[0]: mapping values are not allowed in this context"]
    );
}

#[test]
fn graph_problems_are_all_reported_with_locations() {
    let text = "\
steps:
  - name: build
    run: make
    depends_on: [tset]
  - name: build
    run: make again
  - name: deploy
    run: ./deploy
    depends_on: [deploy]
";
    assert_eq!(
        problems(text),
        [
            ".betcycle.yml:4:18: steps[0].depends_on[0]: unknown step \"tset\"",
            ".betcycle.yml:5:11: steps[1].name: duplicate step name \"build\"",
            ".betcycle.yml:9:18: steps[2].depends_on[0]: step \"deploy\" depends on itself",
        ]
    );
    let cycle = "\
steps:
  - { name: a, run: x, depends_on: [c] }
  - { name: b, run: x, depends_on: [a] }
  - { name: c, run: x, depends_on: [b] }
";
    let p = problems(cycle);
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("dependency cycle: "), "{p:?}");
    for name in ["a", "b", "c"] {
        assert!(p[0].contains(name));
    }
}

#[test]
fn values_are_checked() {
    let text = "\
steps:
  - name: a
    run: x
    timeout: soon
    workdir: ../elsewhere
    artifacts: [/etc/passwd]
    when: { event: pusj }
";
    let p = problems(text);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p[0].contains("unknown event \"pusj\" (did you mean \"push\"?)"));
    assert!(p[1].contains("steps[0].timeout: invalid timeout \"soon\""));
    assert!(p[2].contains("steps[0].workdir: workdir must be a relative path"));
    assert!(p[3].contains("steps[0].artifacts[0]: artifact patterns are relative"));
}

#[test]
fn matrix_steps_expand_and_dependents_wait_for_all_of_them() {
    let p = ok("\
steps:
  - name: test
    run: cargo test
    matrix: { rust: [stable, beta], os: [linux] }
  - name: ship
    run: ./ship
    depends_on: [test]
");
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test (os=linux, rust=stable)",
            "test (os=linux, rust=beta)",
            "ship"
        ]
    );
    assert_eq!(p.steps[1].env["MATRIX_RUST"], "beta");
    assert_eq!(p.steps[2].needs, [0, 1]);
}

#[test]
fn when_filters_branch_event_and_paths() {
    let p = ok("\
steps:
  - name: a
    run: x
    when: { branch: [main, release/*], event: [push, tag], paths: [src/**] }
");
    let when = &p.steps[0].when;
    let trigger = |branch: &str, event: &str, paths: Option<Vec<&str>>| Trigger {
        branch: Some(branch.into()),
        event: event.into(),
        changed_paths: paths.map(|v| v.into_iter().map(String::from).collect()),
    };
    assert!(when.check(&trigger("main", "push", None)).is_ok());
    assert!(
        when.check(&trigger("release/1.2", "tag", Some(vec!["src/lib.rs"])))
            .is_ok()
    );
    assert!(
        when.check(&trigger("feature", "push", None))
            .unwrap_err()
            .contains("matches none of")
    );
    assert!(
        when.check(&trigger("main", "cron", None))
            .unwrap_err()
            .contains("event cron")
    );
    assert!(
        when.check(&trigger("main", "push", Some(vec!["docs/a.md"])))
            .unwrap_err()
            .contains("no changed file")
    );
}

#[test]
fn concurrency_groups_use_known_variables_only() {
    let p = ok(
        "concurrency: { group: \"deploy-${branch}\", cancel_in_progress: true }\nsteps:\n  - { name: a, run: 'true' }\n",
    );
    let c = p.concurrency.unwrap();
    assert!(c.cancel_in_progress);
    let values = BTreeMap::from([("branch", "main".to_string())]);
    assert_eq!(c.group_for(&values), "deploy-main");
    let bad =
        problems("concurrency: { group: \"x-${brnch}\" }\nsteps:\n  - { name: a, run: 'true' }\n");
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].starts_with(".betcycle.yml:1:") && bad[0].contains("concurrency.group"),
        "{bad:?}"
    );
    assert!(bad[0].contains("did you mean \"branch\""), "{bad:?}");
}

#[test]
fn deploy_problems_point_at_their_field() {
    let got = problems(
        r#"steps:
  - name: build
    run: "true"
deploy:
  production:
    target: { kind: service, command: ./app, host: "app.example.com:80", health: up }
    strategy:
      kind: canary
      steps: [50, 20]
      max_error_rate: 120%
"#,
    );
    assert_eq!(
        got,
        [
            ".betcycle.yml:6:46: deploy.production.target.host: \"app.example.com:80\" is not a host name (letters, digits, - and ., without a port)",
            ".betcycle.yml:6:74: deploy.production.target.health: \"up\" must start with /",
            ".betcycle.yml:10:7: deploy.production.strategy.max_error_rate: expected a share such as 1% or 0.01",
        ]
    );
}

#[test]
fn containers_take_the_pipeline_image_and_their_limits_are_checked() {
    let p = ok(r#"
image: rust:1.95
services:
  - { name: postgres, image: "postgres:16", ready: pg_isready }
  - { name: local-cache, run: redis-server }
steps:
  - { name: test, run: cargo test, memory: 2 GiB, cpus: 1.5 }
  - { name: docs, image: "alpine:3", run: echo }
"#);
    let test = p.steps[0].container.as_ref().unwrap();
    assert_eq!(test.image, "rust:1.95");
    assert_eq!(test.memory, Some(2 * 1024 * 1024 * 1024));
    assert_eq!(test.cpus, Some(1.5));
    assert_eq!(p.steps[1].container.as_ref().unwrap().image, "alpine:3");
    let postgres = &p.services[0];
    assert_eq!(postgres.container.as_ref().unwrap().image, "postgres:16");
    assert_eq!(postgres.run, "", "the image's own command");
    assert!(
        p.services[1].container.is_none(),
        "a service names its own image"
    );

    let found = problems(
        r#"
services:
  - { name: "my db", image: "postgres:16" }
  - { name: nothing }
steps:
  - { name: a, run: x, memory: 1 GiB }
  - { name: b, run: x, image: "bad image", cpus: 0 }
  - { name: c, run: x, image: "alpine:3", memory: lots }
"#,
    );
    let expected = [
        ".betcycle.yml:3:13: services[0].name: a container service's name is its host name",
        ".betcycle.yml:4:13: services[1].run: a service needs run (or an image",
        ".betcycle.yml:6:32: steps[0].memory: memory, cpus, volumes and privileged are a container's: give the step an image",
        ".betcycle.yml:7:31: steps[1].image: invalid image \"bad image\"",
        ".betcycle.yml:7:50: steps[1].cpus: cpus must be more than 0",
        ".betcycle.yml:8:51: steps[2].memory: invalid memory \"lots\"",
    ];
    for e in expected {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "{e}\nnot in\n{found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn caches_need_a_key_that_renders_and_paths_inside_the_workspace() {
    let p = ok(
        "steps:\n  - name: a\n    run: x\n    cache: { key: \"deps-{{ hashFiles('Cargo.lock') }}\", paths: [target, .cargo] }\n",
    );
    let cache = p.steps[0].cache.as_ref().unwrap();
    assert_eq!(cache.paths, ["target", ".cargo"]);
    let found = problems(
        "steps:\n  - name: a\n    run: x\n    cache: { key: \"{{ branch }}\", paths: [~/.cargo/registry, ../up] }\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0]
            .starts_with(".betcycle.yml:4:12: steps[0].cache.key: unknown expression \"branch\""),
        "{found:#?}"
    );
    assert!(found[1].contains("steps[0].cache.paths[0]: cache paths are relative and inside the workspace, not \"~/.cargo/registry\""), "{found:#?}");
    assert!(found[2].contains("steps[0].cache.paths[1]"), "{found:#?}");
}

#[test]
fn runs_on_takes_agent_labels_and_refuses_an_image() {
    let p = ok(
        "steps:\n  - { name: gpu, run: nvidia-smi, runs_on: [linux, gpu] }\n  - { name: here, run: 'true' }\n",
    );
    assert_eq!(p.steps[0].runs_on, vec!["linux", "gpu"]);
    assert!(p.steps[1].runs_on.is_empty());
    assert_eq!(
        problems("steps:\n  - { name: a, run: 'true', runs_on: [linux, 'big box'] }\n"),
        vec![
            ".betcycle.yml:2:46: steps[0].runs_on[1]: \"big box\": a label is 1 to 63 letters, digits, '.', '_' or '-'"
        ]
    );
    assert_eq!(
        problems("image: alpine:3\nsteps:\n  - name: a\n    run: 'true'\n    runs_on: [linux]\n"),
        vec![
            ".betcycle.yml:5:15: steps[0].runs_on: runs_on cannot be combined with an image (the step's or the pipeline's): agents run steps as processes on their own host"
        ]
    );
}

#[test]
fn a_service_targets_limits_are_read_and_checked() {
    let p = ok(r#"steps:
  - { name: build, run: "true" }
deploy:
  web:
    target: { kind: service, command: ./app, host: app.test, memory: 256 MiB, cpus: 0.5 }
"#);
    let crate::ci::pipeline::deploy::Target::Service(t) = &p.deploy["web"].target else {
        panic!("not a service target");
    };
    assert_eq!(t.memory_bytes(), Some(256 << 20));
    assert_eq!(t.cpus, Some(0.5));
    let got = problems(
        r#"steps:
  - { name: build, run: "true" }
deploy:
  web:
    target: { kind: service, command: ./app, host: app.test, memory: 1 MiB, cpus: 0 }
  api:
    target: { kind: service, command: ./app, host: api.test, memory: lots }
"#,
    );
    assert_eq!(
        got,
        [
            ".betcycle.yml:5:62: deploy.web.target.memory: memory must be at least 6 MiB (e.g. 256 MiB)",
            ".betcycle.yml:5:77: deploy.web.target.cpus: cpus must be more than 0 (e.g. 0.5 or 2)",
            ".betcycle.yml:7:62: deploy.api.target.memory: invalid memory \"lots\": expected a size such as 64 MiB, 1 GB or 1048576",
        ]
    );
}
