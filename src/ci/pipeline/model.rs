//! The `.betcycle.yml` file as written: serde structs that reject unknown keys. Names
//! and dependencies keep their source location for errors found after parsing.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// One value or a list of them (`branch: main` or `branch: [main, release/*]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The container image of every step that names none.
    #[serde(default)]
    pub image: Option<Spanned<String>>,
    pub steps: Vec<StepDef>,
    #[serde(default)]
    pub services: Vec<ServiceDef>,
    #[serde(default)]
    pub concurrency: Option<ConcurrencyDef>,
    /// Deploy targets per environment (see `deploy.rs`), parsed after the file.
    #[serde(default)]
    pub deploy: Option<Spanned<BTreeMap<String, serde_json::Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub name: Spanned<String>,
    pub run: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub when: Option<WhenDef>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub retry: u32,
    #[serde(default)]
    pub allow_failure: bool,
    #[serde(default)]
    pub workdir: Option<Spanned<String>>,
    #[serde(default)]
    pub artifacts: Vec<Spanned<String>>,
    #[serde(default)]
    pub reports: ReportsDef,
    #[serde(default)]
    pub secrets: Vec<SecretDef>,
    #[serde(default)]
    pub matrix: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    /// Run in a container of this image (through the container engine).
    #[serde(default)]
    pub image: Option<Spanned<String>>,
    /// A container step's memory limit (`512 MiB`).
    #[serde(default)]
    pub memory: Option<Spanned<String>>,
    /// A container step's CPU limit, in cores (`1.5`).
    #[serde(default)]
    pub cpus: Option<Spanned<f64>>,
    /// A privileged container (the project must allow host access).
    #[serde(default)]
    pub privileged: bool,
    /// Host paths mounted into the container, `/host:/container[:ro]` (the project must
    /// allow host access).
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    /// Files kept between runs under a key.
    #[serde(default)]
    pub cache: Option<Spanned<CacheDef>>,
    /// Run on a remote agent that has every one of these labels.
    #[serde(default)]
    pub runs_on: Vec<Spanned<String>>,
}

/// `cache: { key: "deps-{{ hashFiles('Cargo.lock') }}", paths: [target] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDef {
    pub key: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenDef {
    #[serde(default)]
    pub branch: OneOrMany,
    #[serde(default)]
    pub event: OneOrMany,
    #[serde(default)]
    pub paths: OneOrMany,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsDef {
    /// JUnit XML files: a path or glob, or a list of them (every match counts, summed).
    #[serde(default)]
    pub junit: OneOrMany,
    /// LCOV or Cobertura files, the same way.
    #[serde(default)]
    pub coverage: OneOrMany,
    pub sarif: Option<String>,
    pub cyclonedx: Option<String>,
    pub terraform_plan: Option<String>,
}

/// `DATABASE_URL`, or `{ name: PROD_DB_URL, as: DATABASE_URL }` to rename.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum SecretDef {
    Name(String),
    Renamed {
        name: String,
        #[serde(rename = "as")]
        env: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: Spanned<String>,
    /// The command; with an `image`, optional (the image's own command by default).
    #[serde(default)]
    pub run: Option<String>,
    /// Run in a container of this image, reachable by `name` from container steps.
    #[serde(default)]
    pub image: Option<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A command retried until it succeeds before steps start (e.g. `pg_isready`).
    #[serde(default)]
    pub ready: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyDef {
    pub group: Spanned<String>,
    #[serde(default)]
    pub cancel_in_progress: bool,
}

impl SecretDef {
    /// `(secret name, environment variable)`.
    pub fn pair(&self) -> (String, String) {
        match self {
            SecretDef::Name(n) => (n.clone(), n.clone()),
            SecretDef::Renamed { name, env } => (name.clone(), env.clone()),
        }
    }
}
