//! The local executor: steps as processes on the server's own host, each in its own
//! process group, confined by Landlock (`sandbox.rs`; `process.rs` runs one).

pub mod process;
pub mod sandbox;

use super::{Executor, Process, Spawned};
use sandbox::{Isolation, Sandbox};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Runs every process of a run here, confined by its [`Sandbox`].
pub struct Local {
    pub sandbox: Sandbox,
}

impl Local {
    /// The server's executor for one run or deployment: `isolation` as the project
    /// sets it, a private temp directory `<data-dir>/tmp/<name>`, processes recorded.
    pub fn on_server(data_dir: &Path, isolation: Isolation, name: &str) -> Arc<Local> {
        Arc::new(Local {
            sandbox: Sandbox::on_server(data_dir, isolation, name),
        })
    }

    /// No confinement and no process records: `betcycle run` on a developer's machine.
    pub fn unconfined() -> Arc<Local> {
        Arc::new(Local {
            sandbox: Sandbox::none(),
        })
    }
}

impl Executor for Local {
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(tmp) = &self.sandbox.tmp {
            env.insert("TMPDIR".into(), tmp.display().to_string());
        }
        env
    }

    fn spawn(&self, p: Process) -> Result<Spawned, String> {
        let confine = self.sandbox.confine(&p.workspace)?;
        Ok(Box::pin(async move {
            let on_lines = p.on_lines;
            process::run(
                &p.script,
                &p.dir,
                &p.env,
                p.timeout,
                &p.cancel,
                confine,
                move |stream, lines| on_lines(stream, lines),
            )
            .await
        }))
    }

    fn clean_up(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.sandbox.clean_up())
    }
}
