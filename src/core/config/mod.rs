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

mod options;

pub use options::{OPTIONS, OptionSpec};

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
    /// Where spans are exported (OTLP/HTTP, the traces URL in full), when anywhere.
    pub otlp_endpoint: Option<String>,
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

/// The reverse proxy's address and limits (`proxy.*`).
#[derive(Clone, Copy, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub max_body: u64,
    pub upstream_timeout: Duration,
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
    /// The services' reverse proxy, when it is on.
    pub proxy: Option<ProxyConfig>,
    /// The Prometheus server canary analyses query.
    pub prometheus_url: Option<String>,
    /// The container engine's socket.
    pub container_socket: String,
    /// `container.fallback = local`: without an engine, image steps run on the host.
    pub container_fallback_local: bool,
    /// Space all steps' caches may take together.
    pub cache_max_size: u64,
    /// How long an agent holds a job without a word before it goes to another agent.
    pub agent_lease: Duration,
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
        let public_url = r.public_url(listen)?;
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
        let tls = r.tls()?;
        let log = r.log(&data_dir)?;
        let (master_key_file, master_key_file_named) = match r.get("master_key_file") {
            Some(_) => (r.path("master_key_file")?, true),
            None => (data_dir.join(crate::secrets::seal::MASTER_KEY_FILE), false),
        };
        let container_socket = crate::exec::container::socket_of(
            r.get("container.socket").map(|(v, _)| v.as_str()),
            &inputs.env,
        );
        let sources = r.sources(|key| match key {
            "container.socket" => container_socket.clone(),
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
            proxy: match r.get("proxy.listen") {
                Some((value, _)) => Some(ProxyConfig {
                    listen: value.parse().map_err(|_| {
                        r.invalid("proxy.listen", "expected HOST:PORT such as 0.0.0.0:8443")
                    })?,
                    max_body: r.size("proxy.max_body")?,
                    upstream_timeout: r.duration("proxy.upstream_timeout")?,
                }),
                None => None,
            },
            prometheus_url: r
                .http_url("prometheus.url", "expected an http(s):// URL")?
                .map(|(value, _)| value.trim_end_matches('/').to_string()),
            health_min_free_disk: r.size("health.min_free_disk")?,
            container_socket: container_socket.clone(),
            container_fallback_local: match r.get("container.fallback").map(|(v, _)| v.as_str()) {
                Some("fail") | None => false,
                Some("local") => true,
                Some(_) => {
                    return Err(r.invalid("container.fallback", "expected fail or local"));
                }
            },
            cache_max_size: r.size("cache.max_size")?,
            agent_lease: match r.duration("agent.lease")? {
                d if d >= Duration::from_secs(3) => d,
                _ => return Err(r.invalid("agent.lease", "a lease is at least 3s")),
            },
            sources,
        };
        Ok((config, unknown_env_warnings(&inputs.env)))
    }
}

/// Every option with the value and source it resolved to (`None`: derived, unset).
struct Resolved(Vec<(&'static OptionSpec, Option<(String, Source)>)>);

impl Resolved {
    /// `public_url`, checked; by default the listen address with the scheme TLS implies.
    fn public_url(&self, listen: SocketAddr) -> Result<String, ConfigError> {
        Ok(match self.get("public_url") {
            Some((value, _)) => {
                let url = url::Url::parse(value)
                    .map_err(|e| self.invalid("public_url", &format!("not a URL ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(self.invalid(
                        "public_url",
                        "expected an http:// or https:// URL with a host",
                    ));
                }
                value.trim_end_matches('/').to_string()
            }
            None if self.get("tls.cert").is_some() => format!("https://{listen}"),
            None => format!("http://{listen}"),
        })
    }

    /// `tls.cert` and `tls.key`: both or neither.
    fn tls(&self) -> Result<Option<TlsConfig>, ConfigError> {
        Ok(match (self.get("tls.cert"), self.get("tls.key")) {
            (Some(_), Some(_)) => Some(TlsConfig {
                cert: self.path("tls.cert")?,
                key: self.path("tls.key")?,
            }),
            (Some(_), None) => return Err(self.invalid("tls.cert", "tls.key must be set too")),
            (None, Some(_)) => return Err(self.invalid("tls.key", "tls.cert must be set too")),
            (None, None) => None,
        })
    }

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
            otlp_endpoint: self.otlp_endpoint()?,
        })
    }

    /// `otlp.endpoint` as the URL spans are posted to: `/v1/traces` added to a bare
    /// address, as OpenTelemetry's exporters do with `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn otlp_endpoint(&self) -> Result<Option<String>, ConfigError> {
        let expected = "expected an http(s):// URL such as http://127.0.0.1:4318";
        Ok(self
            .http_url("otlp.endpoint", expected)?
            .map(|(value, url)| match url.path() {
                "" | "/" => format!("{}/v1/traces", value.trim_end_matches('/')),
                _ => value.to_string(),
            }))
    }

    /// Option `key` as an http(s) URL with a host (as written, and parsed), if set;
    /// `expected` says what it should be when it is not.
    fn http_url(
        &self,
        key: &'static str,
        expected: &str,
    ) -> Result<Option<(&str, url::Url)>, ConfigError> {
        let Some((value, _)) = self.get(key) else {
            return Ok(None);
        };
        let url =
            url::Url::parse(value).map_err(|e| self.invalid(key, &format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(self.invalid(key, expected));
        }
        Ok(Some((value.as_str(), url)))
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

/// A size as `parse_size` reads it back: `512 MiB`, `1.5 GiB`, `900 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{} {}", text.trim_end_matches(".0"), UNITS[unit])
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
        "proxy.listen" => "0.0.0.0:8443",
        "prometheus.url" => "http://127.0.0.1:9090",
        "otlp.endpoint" => "http://127.0.0.1:4318",
        "container.socket" => "/run/podman/podman.sock",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
