//! Layered configuration. Every option is resolved from, in order: a command-line flag,
//! a `BETCYCLE_*` environment variable (or `BETCYCLE_*_FILE`, naming a file that holds the
//! value), the TOML file given with `--config`, and finally the default.
//!
//! One table, [`OPTIONS`], describes every option once; the flags, the environment names,
//! the file keys, `betcycle config example` and `docs/configuration.md` all follow it.
//! The process environment is passed in as a map so tests never touch the real one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One configuration option.
#[derive(Debug)]
pub struct OptionSpec {
    /// Key in the TOML file; a dot separates the table from the key (`log.level`).
    pub key: &'static str,
    /// Command-line flag, without the leading dashes.
    pub flag: &'static str,
    /// Environment variable. `<env>_FILE` reads the value from a file.
    pub env: &'static str,
    /// Default as written in the file; `None` when it is derived from other options.
    pub default: Option<&'static str>,
    /// What an unset, derived option becomes, for the docs.
    pub derived: &'static str,
    /// Whether the file value is an integer rather than a string.
    pub integer: bool,
    pub value_name: &'static str,
    pub help: &'static str,
}

/// Every option BetCycle reads. Keep in the order `config example` prints them:
/// top-level keys first, then one table at a time.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "data_dir",
        flag: "data-dir",
        env: "BETCYCLE_DATA_DIR",
        default: Some("./betcycle-data"),
        derived: "",
        integer: false,
        value_name: "DIR",
        help: "Directory for the database, logs and workspaces; created on first start.",
    },
    OptionSpec {
        key: "listen",
        flag: "listen",
        env: "BETCYCLE_LISTEN",
        default: Some("127.0.0.1:8080"),
        derived: "",
        integer: false,
        value_name: "ADDR",
        help: "Address and port the HTTP server listens on (port 0 picks a free port).",
    },
    OptionSpec {
        key: "public_url",
        flag: "public-url",
        env: "BETCYCLE_PUBLIC_URL",
        default: None,
        derived: "http://<listen>",
        integer: false,
        value_name: "URL",
        help: "URL users and forges reach BetCycle at, used in links and webhooks.",
    },
    OptionSpec {
        key: "master_key_file",
        flag: "master-key-file",
        env: "BETCYCLE_MASTER_KEY_FILE",
        default: None,
        derived: "<data_dir>/master.key",
        integer: false,
        value_name: "FILE",
        help: "File holding the master key that seals every secret (64 hex digits). The default one is created on first start; a file named here must exist.",
    },
    OptionSpec {
        key: "shutdown_timeout",
        flag: "shutdown-timeout",
        env: "BETCYCLE_SHUTDOWN_TIMEOUT",
        default: Some("30s"),
        derived: "",
        integer: false,
        value_name: "DURATION",
        help: "How long in-flight requests may take to finish after SIGTERM or SIGINT.",
    },
    OptionSpec {
        key: "session_lifetime",
        flag: "session-lifetime",
        env: "BETCYCLE_SESSION_LIFETIME",
        default: Some("7d"),
        derived: "",
        integer: false,
        value_name: "DURATION",
        help: "How long a console sign-in lasts before the user must sign in again.",
    },
    OptionSpec {
        key: "run_concurrency",
        flag: "run-concurrency",
        env: "BETCYCLE_RUN_CONCURRENCY",
        default: None,
        derived: "the number of CPU cores",
        integer: true,
        value_name: "N",
        help: "How many pipeline runs (and steps within a run) execute at once.",
    },
    OptionSpec {
        key: "run_max_restarts",
        flag: "run-max-restarts",
        env: "BETCYCLE_RUN_MAX_RESTARTS",
        default: Some("1"),
        derived: "",
        integer: true,
        value_name: "N",
        help: "How many times a run interrupted by a server restart is re-queued before it is failed.",
    },
    OptionSpec {
        key: "workspace_retention",
        flag: "workspace-retention",
        env: "BETCYCLE_WORKSPACE_RETENTION",
        default: Some("3d"),
        derived: "",
        integer: false,
        value_name: "DURATION",
        help: "How long the workspace of a failed run is kept for inspection before it is deleted.",
    },
    OptionSpec {
        key: "log.level",
        flag: "log-level",
        env: "BETCYCLE_LOG_LEVEL",
        default: Some("info"),
        derived: "",
        integer: false,
        value_name: "FILTER",
        help: "Log level or filter: error, warn, info, debug, trace, or e.g. \"info,betcycle=debug\".",
    },
    OptionSpec {
        key: "log.format",
        flag: "log-format",
        env: "BETCYCLE_LOG_FORMAT",
        default: Some("auto"),
        derived: "",
        integer: false,
        value_name: "FORMAT",
        help: "Console log format: auto (text on a terminal, JSON otherwise), text or json.",
    },
    OptionSpec {
        key: "log.dir",
        flag: "log-dir",
        env: "BETCYCLE_LOG_DIR",
        default: None,
        derived: "<data_dir>/logs",
        integer: false,
        value_name: "DIR",
        help: "Directory for the daily rolling JSON log files.",
    },
    OptionSpec {
        key: "log.max_files",
        flag: "log-max-files",
        env: "BETCYCLE_LOG_MAX_FILES",
        default: Some("14"),
        derived: "",
        integer: true,
        value_name: "N",
        help: "How many daily log files to keep; older ones are deleted (0 keeps none on disk).",
    },
    OptionSpec {
        key: "log.step_max_size",
        flag: "log-step-max-size",
        env: "BETCYCLE_LOG_STEP_MAX_SIZE",
        default: Some("16 MiB"),
        derived: "",
        integer: false,
        value_name: "SIZE",
        help: "Most output kept per pipeline step; the rest is dropped with a notice in its log.",
    },
    OptionSpec {
        key: "tls.cert",
        flag: "tls-cert",
        env: "BETCYCLE_TLS_CERT",
        default: None,
        derived: "unset: plain HTTP",
        integer: false,
        value_name: "FILE",
        help: "PEM certificate chain; with tls.key, serve HTTPS. Reloaded when the files change.",
    },
    OptionSpec {
        key: "tls.key",
        flag: "tls-key",
        env: "BETCYCLE_TLS_KEY",
        default: None,
        derived: "unset: plain HTTP",
        integer: false,
        value_name: "FILE",
        help: "PEM private key for tls.cert.",
    },
    OptionSpec {
        key: "store.cache_size",
        flag: "store-cache-size",
        env: "BETCYCLE_STORE_CACHE_SIZE",
        default: Some("64 MiB"),
        derived: "",
        integer: false,
        value_name: "SIZE",
        help: "Memory the database may use for its page cache.",
    },
    OptionSpec {
        key: "health.min_free_disk",
        flag: "health-min-free-disk",
        env: "BETCYCLE_HEALTH_MIN_FREE_DISK",
        default: Some("256 MiB"),
        derived: "",
        integer: false,
        value_name: "SIZE",
        help: "/readyz reports not ready, and queued runs wait, when the data directory's disk has less free space.",
    },
    OptionSpec {
        key: "http.header_read_timeout",
        flag: "http-header-read-timeout",
        env: "BETCYCLE_HTTP_HEADER_READ_TIMEOUT",
        default: Some("10s"),
        derived: "",
        integer: false,
        value_name: "DURATION",
        help: "How long a client may take to send a request's headers (and, with TLS, its handshake) before the connection is closed.",
    },
    OptionSpec {
        key: "http.idle_timeout",
        flag: "http-idle-timeout",
        env: "BETCYCLE_HTTP_IDLE_TIMEOUT",
        default: Some("60s"),
        derived: "",
        integer: false,
        value_name: "DURATION",
        help: "How long a connection may carry no bytes either way before it is closed (a request in progress is let finish).",
    },
    OptionSpec {
        key: "http.max_connections",
        flag: "http-max-connections",
        env: "BETCYCLE_HTTP_MAX_CONNECTIONS",
        default: Some("1024"),
        derived: "",
        integer: true,
        value_name: "N",
        help: "How many client connections are served at once; more wait to be accepted.",
    },
];

/// Environment variables with the `BETCYCLE_` prefix that are not configuration options,
/// so they do not trigger the "unknown variable" warning.
const OTHER_ENV: &[&str] = &[
    "BETCYCLE_CONFIG",
    "BETCYCLE_TOKEN",
    "BETCYCLE_SERVER",
    "BETCYCLE_PROMTOOL",
    "BETCYCLE_MANAGED_BY",
];

/// Where a value came from, for error messages and `config show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    EnvFile { var: String, path: PathBuf },
    File { path: PathBuf, line: usize },
    Default,
    Derived,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "--{flag}"),
            Source::Env(var) => write!(f, "{var}"),
            Source::EnvFile { var, path } => write!(f, "{var}={}", path.display()),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Default => f.write_str("default"),
            Source::Derived => f.write_str("derived"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value \"{value}\" for {key} (from {from}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        from: Source,
        reason: String,
    },
    #[error("unknown key \"{key}\" in {path}:{line}{hint}")]
    UnknownKey {
        key: String,
        path: PathBuf,
        line: usize,
        hint: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("both {var} and {var}_FILE are set; set only one")]
    Ambiguous { var: &'static str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub dir: PathBuf,
    pub max_files: usize,
    pub step_max_size: u64,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a client connection may take (see `http::listen`).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The validated configuration every other module reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub public_url: String,
    /// The master key file, and whether it was named (a named file must exist).
    pub master_key_file: PathBuf,
    pub master_key_file_named: bool,
    pub shutdown_timeout: Duration,
    pub http: HttpLimits,
    pub session_lifetime: Duration,
    pub run_concurrency: usize,
    pub run_max_restarts: u32,
    pub workspace_retention: Duration,
    /// Certificate and key files when HTTPS is on.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
    pub store_cache_size: u64,
    pub health_min_free_disk: u64,
    /// Each option's final value and where it came from, in [`OPTIONS`] order.
    pub sources: Vec<(&'static str, String, Source)>,
}

/// What the caller gathered before resolution: flag values by option key, the config file
/// named on the command line, and the process environment.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub flags: BTreeMap<&'static str, String>,
    pub config_file: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl Config {
    /// Resolves every option through the layers and validates it. Returns the config and
    /// warnings (unknown `BETCYCLE_*` variables) to log once logging is up.
    pub fn load(inputs: &Inputs) -> Result<(Config, Vec<String>), ConfigError> {
        let file_path = inputs
            .config_file
            .clone()
            .or_else(|| inputs.env.get("BETCYCLE_CONFIG").map(PathBuf::from));
        let file_values = match &file_path {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let mut raw = Vec::with_capacity(OPTIONS.len());
        for opt in OPTIONS {
            raw.push((opt, resolve(opt, inputs, &file_values)?));
        }
        let r = Resolved(raw);

        let data_dir = r.path("data_dir")?;
        let listen: SocketAddr = r
            .value("listen")
            .parse()
            .map_err(|_| r.invalid("listen", "expected HOST:PORT such as 127.0.0.1:8080"))?;
        let public_url = match r.get("public_url") {
            Some((value, _)) => {
                let url = url::Url::parse(value)
                    .map_err(|e| r.invalid("public_url", &format!("not a URL ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(r.invalid(
                        "public_url",
                        "expected an http:// or https:// URL with a host",
                    ));
                }
                value.trim_end_matches('/').to_string()
            }
            None if r.get("tls.cert").is_some() => format!("https://{listen}"),
            None => format!("http://{listen}"),
        };
        let http = HttpLimits {
            header_read_timeout: r.duration("http.header_read_timeout")?,
            idle_timeout: r.duration("http.idle_timeout")?,
            max_connections: r.at_least_one("http.max_connections")?,
        };
        let run_concurrency = match r.get("run_concurrency") {
            Some(_) => r.at_least_one("run_concurrency")?,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        let run_max_restarts = r
            .value("run_max_restarts")
            .parse::<u32>()
            .map_err(|_| r.invalid("run_max_restarts", "expected a whole number such as 1"))?;
        let tls = match (r.get("tls.cert"), r.get("tls.key")) {
            (Some(_), Some(_)) => Some(TlsConfig {
                cert: r.path("tls.cert")?,
                key: r.path("tls.key")?,
            }),
            (Some(_), None) => return Err(r.invalid("tls.cert", "tls.key must be set too")),
            (None, Some(_)) => return Err(r.invalid("tls.key", "tls.cert must be set too")),
            (None, None) => None,
        };
        let log = r.log(&data_dir)?;
        let (master_key_file, master_key_file_named) = match r.get("master_key_file") {
            Some(_) => (r.path("master_key_file")?, true),
            None => (data_dir.join(crate::secrets::seal::MASTER_KEY_FILE), false),
        };
        let sources = r.sources(|key| match key {
            "public_url" => public_url.clone(),
            "run_concurrency" => run_concurrency.to_string(),
            "log.dir" => log.dir.display().to_string(),
            "master_key_file" => master_key_file.display().to_string(),
            _ => String::new(),
        });
        let config = Config {
            data_dir,
            listen,
            public_url,
            master_key_file,
            master_key_file_named,
            shutdown_timeout: r.duration("shutdown_timeout")?,
            http,
            session_lifetime: r.duration("session_lifetime")?,
            run_concurrency,
            run_max_restarts,
            workspace_retention: r.duration("workspace_retention")?,
            tls,
            log,
            store_cache_size: r.size("store.cache_size")?,
            health_min_free_disk: r.size("health.min_free_disk")?,
            sources,
        };
        Ok((config, unknown_env_warnings(&inputs.env)))
    }
}

/// Every option with the value and source it resolved to (`None`: derived, unset).
struct Resolved(Vec<(&'static OptionSpec, Option<(String, Source)>)>);

impl Resolved {
    fn get(&self, key: &str) -> Option<&(String, Source)> {
        self.0
            .iter()
            .find(|(opt, _)| opt.key == key)
            .and_then(|(_, v)| v.as_ref())
    }

    /// The value of an option that has a default.
    fn value(&self, key: &str) -> &str {
        &self.get(key).expect("has default").0
    }

    fn invalid(&self, key: &'static str, reason: &str) -> ConfigError {
        let (value, source) = self
            .get(key)
            .cloned()
            .expect("validated options have values");
        ConfigError::Invalid {
            key,
            value,
            from: source,
            reason: reason.to_string(),
        }
    }

    fn duration(&self, key: &'static str) -> Result<std::time::Duration, ConfigError> {
        parse_duration(self.value(key)).map_err(|reason| self.invalid(key, &reason))
    }

    fn size(&self, key: &'static str) -> Result<u64, ConfigError> {
        parse_size(self.value(key)).map_err(|reason| self.invalid(key, &reason))
    }

    fn path(&self, key: &'static str) -> Result<PathBuf, ConfigError> {
        std::path::absolute(self.value(key)).map_err(|e| self.invalid(key, &e.to_string()))
    }

    fn at_least_one(&self, key: &'static str) -> Result<usize, ConfigError> {
        match self.value(key).parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.invalid(key, "expected a whole number of at least 1")),
        }
    }

    /// The `log.*` options (the log directory defaults to `<data-dir>/logs`).
    fn log(&self, data_dir: &Path) -> Result<LogConfig, ConfigError> {
        let level = self.value("log.level").to_string();
        tracing_subscriber::EnvFilter::builder()
            .parse(&level)
            .map_err(|e| self.invalid("log.level", &e.to_string()))?;
        let format = match self.value("log.format") {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(self.invalid("log.format", "expected auto, text or json")),
        };
        let dir = match self.get("log.dir") {
            Some(_) => self.path("log.dir")?,
            None => data_dir.join("logs"),
        };
        let max_files = self
            .value("log.max_files")
            .parse::<usize>()
            .map_err(|_| self.invalid("log.max_files", "expected a whole number such as 14"))?;
        Ok(LogConfig {
            level,
            format,
            dir,
            max_files,
            step_max_size: self.size("log.step_max_size")?,
        })
    }

    /// Where each option's value came from; derived ones show the value `derived` gives.
    fn sources(&self, derived: impl Fn(&str) -> String) -> Vec<(&'static str, String, Source)> {
        self.0
            .iter()
            .map(|(opt, value)| match value {
                Some((value, source)) => (opt.key, value.clone(), source.clone()),
                None => (opt.key, derived(opt.key), Source::Derived),
            })
            .collect()
    }
}

/// The first layer that sets `opt`, or `None` for a derived option nobody set.
fn resolve(
    opt: &'static OptionSpec,
    inputs: &Inputs,
    file_values: &BTreeMap<String, (String, usize, PathBuf)>,
) -> Result<Option<(String, Source)>, ConfigError> {
    if let Some(value) = inputs.flags.get(opt.key) {
        return Ok(Some((value.clone(), Source::Flag(opt.flag))));
    }
    let file_var = format!("{}_FILE", opt.env);
    match (inputs.env.get(opt.env), inputs.env.get(&file_var)) {
        (Some(_), Some(_)) => return Err(ConfigError::Ambiguous { var: opt.env }),
        (Some(value), None) => return Ok(Some((value.clone(), Source::Env(opt.env)))),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let value = std::fs::read_to_string(&path).map_err(|e| ConfigError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let value = value.trim_end_matches(['\n', '\r']).to_string();
            return Ok(Some((
                value,
                Source::EnvFile {
                    var: file_var,
                    path,
                },
            )));
        }
        (None, None) => {}
    }
    if let Some((value, line, path)) = file_values.get(opt.key) {
        let source = Source::File {
            path: path.clone(),
            line: *line,
        };
        return Ok(Some((value.clone(), source)));
    }
    Ok(opt.default.map(|d| (d.to_string(), Source::Default)))
}

/// Reads the TOML file into `key → (value, line, path)`, rejecting unknown keys and values
/// of the wrong type with their line.
fn read_file(path: &Path) -> Result<BTreeMap<String, (String, usize, PathBuf)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let table = toml::de::DeTable::parse(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        reason: e.to_string().trim_end().replace('\n', " "),
    })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;

    let mut leaves = Vec::new();
    for (key, value) in table.get_ref() {
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => {
                for (k, v) in inner {
                    leaves.push((format!("{}.{}", key.get_ref(), k.get_ref()), k.span(), v));
                }
            }
            _ => leaves.push((key.get_ref().to_string(), key.span(), value)),
        }
    }

    let mut values = BTreeMap::new();
    for (key, span, value) in leaves {
        let line = line_of(span.start);
        let Some(opt) = OPTIONS.iter().find(|o| o.key == key) else {
            return Err(ConfigError::UnknownKey {
                hint: did_you_mean(&key),
                key,
                path: path.to_path_buf(),
                line,
            });
        };
        let text = match value.get_ref() {
            toml::de::DeValue::String(s) => s.to_string(),
            toml::de::DeValue::Integer(i) if opt.integer => i.as_str().to_string(),
            other => {
                return Err(ConfigError::Invalid {
                    key: opt.key,
                    value: format!("<{}>", other.type_str()),
                    from: Source::File {
                        path: path.to_path_buf(),
                        line,
                    },
                    reason: if opt.integer {
                        "expected an integer".into()
                    } else {
                        "expected a string".into()
                    },
                });
            }
        };
        values.insert(key, (text, line, path.to_path_buf()));
    }
    Ok(values)
}

fn did_you_mean(key: &str) -> String {
    OPTIONS
        .iter()
        .map(|o| (strsim::jaro_winkler(key, o.key), o.key))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

fn unknown_env_warnings(env: &BTreeMap<String, String>) -> Vec<String> {
    env.keys()
        .filter(|k| k.starts_with("BETCYCLE_"))
        .filter(|k| {
            let base = k.strip_suffix("_FILE").unwrap_or(k);
            !OPTIONS.iter().any(|o| o.env == base || o.env == k.as_str())
                && !OTHER_ENV.contains(&k.as_str())
        })
        .map(|k| format!("unknown environment variable {k} ignored"))
        .collect()
}

/// Parses a size such as `64 MiB`, `1GB` or `1048576`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|_| "expected a size such as 64 MiB, 1 GB or 1048576".to_string())
}

/// Parses a duration such as `30s`, `5m`, `1h 30m` or `7d` (a day is 24 hours here).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let expected = || "expected a duration such as 30s, 5m, 1h 30m or 7d".to_string();
    let span: jiff::Span = value.trim().parse().map_err(|_| expected())?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| expected())?;
    Duration::try_from(d).map_err(|_| expected())
}

/// The complete, commented example file printed by `betcycle config example`.
pub fn example() -> String {
    let mut out = String::from(
        "# BetCycle configuration. Pass it with `betcycle serve --config FILE`.\n\
         # Every option can also be set with a flag (--log-level) or an environment variable\n\
         # (BETCYCLE_LOG_LEVEL, or BETCYCLE_LOG_LEVEL_FILE naming a file that holds the value).\n\
         # Precedence: flags, then environment, then this file, then the defaults shown here.\n",
    );
    let mut table = "";
    for opt in OPTIONS {
        let (section, name) = opt.key.split_once('.').unwrap_or(("", opt.key));
        if section != table {
            out.push_str(&format!("\n[{section}]\n"));
            table = section;
        }
        out.push_str(&format!("\n# {} (--{}, {})\n", opt.help, opt.flag, opt.env));
        match opt.default {
            Some(d) if opt.integer => out.push_str(&format!("{name} = {d}\n")),
            Some(d) => out.push_str(&format!("{name} = \"{d}\"\n")),
            None if opt.integer => out.push_str(&format!(
                "# Unset: {}.\n# {name} = {}\n",
                opt.derived,
                example_for(opt.key)
            )),
            None => out.push_str(&format!(
                "# Unset: {}.\n# {name} = \"{}\"\n",
                opt.derived,
                example_for(opt.key)
            )),
        }
    }
    out
}

fn example_for(key: &str) -> &'static str {
    match key {
        "public_url" => "https://betcycle.example.com",
        "log.dir" => "/var/log/betcycle",
        "master_key_file" => "/run/secrets/betcycle-master.key",
        "tls.cert" => "/etc/betcycle/cert.pem",
        "run_concurrency" => "4",
        "tls.key" => "/etc/betcycle/key.pem",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(config.store_cache_size, 64 * 1024 * 1024);
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
        let (config, _) =
            Config::load(&inputs(&[], &[("BETCYCLE_PUBLIC_URL_FILE", path)])).unwrap();
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
}
