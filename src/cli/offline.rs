//! Helpers for verbs that work on the data directory directly, without a server
//! (`user`, `token`, `audit`, `secrets`). The store allows one process at a time: with the server
//! running, these verbs say so and exit 1.

use super::{ConfigArgs, Failure};
use crate::core::config::Config;
use crate::core::events::EventBus;
use crate::store::Store;
use std::collections::BTreeMap;
use std::future::Future;

/// Loads the config, opens the store in the data directory and runs `f` on a small
/// runtime. With `create`, a missing data directory and store are created (so the first
/// administrator can be added before the first start).
pub fn with_store<T, F, Fut>(
    config: &ConfigArgs,
    env: BTreeMap<String, String>,
    create: bool,
    f: F,
) -> Result<T, Failure>
where
    F: FnOnce(Store, Config) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let (config, _) =
        Config::load(&config.inputs(env)).map_err(|e| Failure::Usage(e.to_string()))?;
    let path = config.data_dir.join(crate::store::FILE_NAME);
    if create {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Failure::Runtime(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
    } else if !path.exists() {
        return Err(Failure::Runtime(format!(
            "no BetCycle database at {}; check --data-dir (it is created by the first `betcycle serve`)",
            path.display()
        )));
    }
    let store = Store::open(&path, config.store_cache_size, EventBus::new()).map_err(|e| {
        Failure::Runtime(match e {
            crate::core::error::Error::StoreLocked { .. } => {
                format!("{e}; stop the server first, or use the API")
            }
            other => other.to_string(),
        })
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(f(store, config))
}

/// Reads a password from standard input (one line, the newline removed).
pub fn password_from_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| {
        Failure::Runtime(format!("cannot read the password from standard input: {e}"))
    })?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(Failure::Usage("no password on standard input".into()));
    }
    Ok(password)
}

pub fn runtime_err(e: crate::core::error::Error) -> Failure {
    match e {
        crate::core::error::Error::Invalid(m) => Failure::Usage(m),
        other => Failure::Runtime(other.to_string()),
    }
}
