use super::*;

fn inputs(flags: &[(&'static str, &str)], env: &[(&str, &str)]) -> Inputs {
    Inputs {
        flags: flags.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        config_file: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn every_option_has_consistent_names() {
    for opt in OPTIONS {
        assert_eq!(opt.flag, opt.key.replace(['.', '_'], "-"), "{}", opt.key);
        let env = format!("BETCYCLE_{}", opt.key.replace('.', "_").to_uppercase());
        assert_eq!(opt.env, env, "{}", opt.key);
        assert!(
            opt.default.is_some() == opt.derived.is_empty(),
            "{}",
            opt.key
        );
    }
}

#[test]
fn every_option_is_documented() {
    let docs = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ));
    for opt in OPTIONS {
        let row = format!("| `{}` | `--{}` | `{}` |", opt.key, opt.flag, opt.env);
        assert!(
            docs.contains(&row),
            "docs/configuration.md lacks the row for {}",
            opt.key
        );
    }
}

#[test]
fn defaults_apply_with_no_input() {
    let (config, warnings) = Config::load(&Inputs::default()).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.public_url, "http://127.0.0.1:8080");
    assert!(config.data_dir.is_absolute());
    assert!(config.data_dir.ends_with("betcycle-data"));
    assert_eq!(config.log.dir, config.data_dir.join("logs"));
    assert_eq!(config.store_cache_size, 1024 * 1024);
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert!(warnings.is_empty());
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("betcycle.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7001\"\npublic_url = \"https://ci.example.com/\"\n[log]\nlevel = \"warn\"\nmax_files = 3\n",
    )
    .unwrap();
    let mut inputs = inputs(
        &[("listen", "127.0.0.1:7003")],
        &[
            ("BETCYCLE_LISTEN", "127.0.0.1:7002"),
            ("BETCYCLE_LOG_LEVEL", "debug"),
        ],
    );
    inputs.config_file = Some(file.clone());
    let (config, _) = Config::load(&inputs).unwrap();
    assert_eq!(config.listen.port(), 7003);
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.log.max_files, 3);
    assert_eq!(config.public_url, "https://ci.example.com");
    let source = |key| {
        config
            .sources
            .iter()
            .find(|s| s.0 == key)
            .unwrap()
            .2
            .clone()
    };
    assert_eq!(source("listen"), Source::Flag("listen"));
    assert_eq!(source("log.level"), Source::Env("BETCYCLE_LOG_LEVEL"));
    assert_eq!(
        source("log.max_files"),
        Source::File {
            path: file,
            line: 5
        }
    );
    assert_eq!(source("log.format"), Source::Default);
    assert_eq!(source("log.dir"), Source::Derived);
}

#[test]
fn file_variant_reads_the_value_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("url");
    std::fs::write(&secret, "https://from-file.example.com\n").unwrap();
    let path = secret.to_str().unwrap();
    let (config, _) = Config::load(&inputs(&[], &[("BETCYCLE_PUBLIC_URL_FILE", path)])).unwrap();
    assert_eq!(config.public_url, "https://from-file.example.com");

    let both = inputs(
        &[],
        &[
            ("BETCYCLE_PUBLIC_URL_FILE", path),
            ("BETCYCLE_PUBLIC_URL", "https://x.example.com"),
        ],
    );
    let err = Config::load(&both).unwrap_err().to_string();
    assert_eq!(
        err,
        "both BETCYCLE_PUBLIC_URL and BETCYCLE_PUBLIC_URL_FILE are set; set only one"
    );
}

#[test]
fn bad_values_name_key_value_and_source() {
    type Case<'a> = (
        &'a [(&'static str, &'a str)],
        &'a [(&'a str, &'a str)],
        &'a str,
    );
    let cases: &[Case] = &[
        (
            &[("listen", "nonsense")],
            &[],
            "invalid value \"nonsense\" for listen (from --listen): expected HOST:PORT such as 127.0.0.1:8080",
        ),
        (
            &[],
            &[("BETCYCLE_LOG_FORMAT", "xml")],
            "invalid value \"xml\" for log.format (from BETCYCLE_LOG_FORMAT): expected auto, text or json",
        ),
        (
            &[("store.cache_size", "lots")],
            &[],
            "invalid value \"lots\" for store.cache_size (from --store-cache-size): expected a size such as 64 MiB, 1 GB or 1048576",
        ),
        (
            &[("shutdown_timeout", "soon")],
            &[],
            "invalid value \"soon\" for shutdown_timeout (from --shutdown-timeout): expected a duration such as 30s, 5m, 1h 30m or 7d",
        ),
        (
            &[("public_url", "ftp://x")],
            &[],
            "invalid value \"ftp://x\" for public_url (from --public-url): expected an http:// or https:// URL with a host",
        ),
        (
            &[("log.max_files", "-1")],
            &[],
            "invalid value \"-1\" for log.max_files (from --log-max-files): expected a whole number such as 14",
        ),
    ];
    for (flags, env, expected) in cases {
        let err = Config::load(&inputs(flags, env)).unwrap_err().to_string();
        assert_eq!(&err, expected);
    }
}

#[test]
fn file_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let load = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let i = Inputs {
            config_file: Some(file.clone()),
            ..Inputs::default()
        };
        Config::load(&i).unwrap_err().to_string()
    };
    let path = file.display();
    assert_eq!(
        load("listen = \"127.0.0.1:1\"\n[log]\nlevle = \"info\"\n"),
        format!("unknown key \"log.levle\" in {path}:3 (did you mean \"log.level\"?)")
    );
    assert_eq!(
        load("\n\nlisten = 8080\n"),
        format!("invalid value \"<integer>\" for listen (from {path}:3): expected a string")
    );
    assert_eq!(
        load("[log]\nmax_files = \"ten\"\n"),
        format!(
            "invalid value \"ten\" for log.max_files (from {path}:2): expected a whole number such as 14"
        )
    );
    assert!(load("listen = \n").starts_with(&format!("{path}: TOML parse error at line 1")));
}

#[test]
fn unknown_betcycle_variables_warn() {
    let (_, warnings) = Config::load(&inputs(
        &[],
        &[
            ("BETCYCLE_LISTNE", "x"),
            ("BETCYCLE_TOKEN", "t"),
            ("HOME", "/root"),
        ],
    ))
    .unwrap();
    assert_eq!(
        warnings,
        ["unknown environment variable BETCYCLE_LISTNE ignored"]
    );
}

#[test]
fn example_parses_and_covers_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    let example = example();
    std::fs::write(&file, &example).unwrap();
    let i = Inputs {
        config_file: Some(file.clone()),
        ..Inputs::default()
    };
    Config::load(&i).expect("example parses as printed");

    // Uncommenting the derived options' sample lines sets every option from the file.
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, uncommented).unwrap();
    let (config, _) = Config::load(&i).unwrap();
    for (key, _, source) in &config.sources {
        assert!(
            matches!(source, Source::File { .. }),
            "{key} not in example"
        );
    }
    assert_eq!(config.sources.len(), OPTIONS.len());
}
