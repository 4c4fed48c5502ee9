//! `betcycle db backup|restore|check`: backups of the store and the files that go with it
//! (see `crate::core::backup`). `backup` works with the server running — it then downloads the
//! backup from the server's API, since only one process may open the store — or stopped;
//! `restore` and `check` need the server stopped (`check --backup FILE` does not).

use super::{ConfigArgs, Failure};
use crate::core::backup;
use crate::core::config::Config;
use crate::core::events::EventBus;
use crate::secrets::seal::MasterKey;
use crate::store::{self, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum DbVerb {
    /// Write a backup archive (.tar.gz) of the store and the data directory's files. With
    /// the server running, the backup is taken through its API (BETCYCLE_TOKEN, an
    /// administrator's token).
    Backup {
        /// The archive to write; must not exist.
        file: PathBuf,
        /// Put the master key in the archive too (server stopped only). Without it, keep the
        /// key file safe separately: the backup's secrets need it.
        #[arg(long)]
        include_master_key: bool,
        /// Take the backup through this server's API (from any machine). Without it, the
        /// local data directory is used, and its server at $BETCYCLE_SERVER or
        /// http://127.0.0.1:8080 when it is running.
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Restore a backup archive into the data directory (server stopped). An existing
    /// database is moved aside, not deleted, and only with --force.
    Restore {
        file: PathBuf,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Check the data directory's database (server stopped), or a backup archive.
    Check {
        /// Check this backup archive instead of the data directory.
        #[arg(long, value_name = "FILE")]
        backup: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl DbVerb {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        match self {
            DbVerb::Backup {
                file,
                include_master_key,
                server,
                config,
            } => {
                let config = load(&config, &env)?;
                backup_verb(&config, &file, include_master_key, server, &env)
            }
            DbVerb::Restore {
                file,
                force,
                config,
            } => {
                let config = load(&config, &env)?;
                let restored = backup::restore(&file, &config.data_dir, force)
                    .map_err(super::offline::runtime_err)?;
                let m = &restored.manifest;
                println!(
                    "restored {} into {}: {} records (schema {}), {} files, made {} by BetCycle {}",
                    file.display(),
                    config.data_dir.display(),
                    m.records,
                    m.schema_version,
                    m.files,
                    m.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    m.betcycle
                );
                if let Some(aside) = restored.moved_aside {
                    println!("the previous contents are in {}", aside.display());
                }
                println!("{}", key_note(m, &config.master_key_file));
                Ok(ExitCode::SUCCESS)
            }
            DbVerb::Check { backup, config } => {
                let config = load(&config, &env)?;
                match backup {
                    Some(archive) => check_archive(&archive),
                    None => check_data_dir(&config),
                }
            }
        }
    }
}

fn load(args: &ConfigArgs, env: &BTreeMap<String, String>) -> Result<Config, Failure> {
    Config::load(&args.inputs(env.clone()))
        .map(|(config, _)| config)
        .map_err(|e| Failure::Usage(e.to_string()))
}

fn backup_verb(
    config: &Config,
    file: &Path,
    include_key: bool,
    server: Option<String>,
    env: &BTreeMap<String, String>,
) -> Result<ExitCode, Failure> {
    if file.exists() {
        return Err(Failure::Usage(format!("{} already exists", file.display())));
    }
    let path = config.data_dir.join(store::FILE_NAME);
    if server.is_none() && !path.exists() {
        return Err(Failure::Runtime(format!(
            "no BetCycle database at {}; check --data-dir, or back up a server with --server URL",
            path.display()
        )));
    }
    let partial = partial_path(file);
    let _ = std::fs::remove_file(&partial);
    let made = if server.is_some() {
        download_backup(config, &partial, include_key, server, env)
    } else {
        write_backup(config, &path, &partial, include_key, env)
    };
    if made.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    let manifest = made?;
    std::fs::rename(&partial, file)
        .map_err(|e| Failure::Runtime(format!("cannot create {}: {e}", file.display())))?;
    println!(
        "wrote {}: {} records (schema {}), {} files{}",
        file.display(),
        manifest.records,
        manifest.schema_version,
        manifest.files,
        if manifest.master_key_included {
            ", and the master key"
        } else {
            ""
        }
    );
    if !manifest.master_key_included && manifest.master_key_id.is_some() {
        println!(
            "the master key (id {}) is not in the backup; keep {} safe separately",
            manifest.master_key_id.as_deref().unwrap_or_default(),
            config.master_key_file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the backup to `partial`: itself with the server stopped, through the API with it
/// running.
fn write_backup(
    config: &Config,
    path: &Path,
    partial: &Path,
    include_key: bool,
    env: &BTreeMap<String, String>,
) -> Result<backup::Manifest, Failure> {
    let store = match Store::open(path, config.store_cache_size, EventBus::new()) {
        Ok(store) => store,
        Err(crate::core::error::Error::StoreLocked { .. }) => {
            return download_backup(config, partial, include_key, None, env);
        }
        Err(e) => return Err(Failure::Runtime(e.to_string())),
    };
    let key = MasterKey::read(&config.master_key_file).map_err(super::offline::runtime_err)?;
    let key = backup::KeyInBackup::new(key.as_ref(), include_key);
    super::project::block_on(async {
        backup::create(&store, &config.data_dir, key, partial)
            .await
            .map_err(super::offline::runtime_err)
    })
}

/// The server has the store: fetch the backup from its API, then unpack and check it
/// before it counts.
fn download_backup(
    config: &Config,
    partial: &Path,
    include_key: bool,
    server: Option<String>,
    env: &BTreeMap<String, String>,
) -> Result<backup::Manifest, Failure> {
    if include_key {
        return Err(Failure::Usage(format!(
            "backups through the server's API never carry the master key; \
             leave out --include-master-key and keep {} safe separately",
            config.master_key_file.display()
        )));
    }
    let api = super::project::Api::new(server, env)?;
    super::project::block_on(download(&api, partial))?;
    let unpacked = backup::unpack(partial, &std::env::temp_dir())
        .map_err(|e| Failure::Runtime(format!("the downloaded backup does not check out: {e}")))?;
    if !unpacked.check.problems.is_empty() {
        return Err(Failure::Runtime(format!(
            "the downloaded backup does not check out: {}",
            unpacked.check.problems.join("; ")
        )));
    }
    Ok(unpacked.manifest.clone())
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    file.with_file_name(name)
}

async fn download(api: &super::project::Api, to: &Path) -> Result<(), Failure> {
    use std::io::Write;
    let mut response = api
        .request(reqwest::Method::GET, "/api/v1/backup")
        .send()
        .await
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot reach {}: {}",
                api.server(),
                crate::core::outbound::describe(&e)
            ))
        })?;
    if !response.status().is_success() {
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(Failure::Runtime(format!(
            "the server refused ({status}): {}",
            body["message"].as_str().unwrap_or("no message")
        )));
    }
    let mut out = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| Failure::Runtime(format!("cannot create {}: {e}", to.display())))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::Runtime(format!("the download broke off: {e}")))?
    {
        out.write_all(&chunk)
            .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", to.display())))?;
    }
    out.sync_all()
        .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", to.display())))
}

fn check_data_dir(config: &Config) -> Result<ExitCode, Failure> {
    let path = config.data_dir.join(store::FILE_NAME);
    if !path.exists() {
        return Err(Failure::Runtime(format!(
            "no BetCycle database at {}",
            path.display()
        )));
    }
    let report = store::check_file(&path).map_err(|e| match e {
        crate::core::error::Error::StoreLocked { .. } => Failure::Runtime(format!(
            "{e}; `db check` needs the server stopped (or check a backup: betcycle db check --backup FILE)"
        )),
        other => Failure::Runtime(other.to_string()),
    })?;
    let mut problems = report.problems.clone();
    let key_line = match (
        &report.master_key_check,
        MasterKey::read(&config.master_key_file),
    ) {
        (None, _) => "no secrets sealed yet".to_string(),
        (Some(check), Ok(Some(key))) if key.verifies(check) => {
            format!(
                "the master key {} (id {}) opens its secrets",
                config.master_key_file.display(),
                key.id()
            )
        }
        (Some(_), Ok(Some(key))) => {
            problems.push(format!(
                "the master key {} (id {}) is not the one its secrets were sealed with",
                config.master_key_file.display(),
                key.id()
            ));
            String::new()
        }
        (Some(_), Ok(None)) => {
            problems.push(format!(
                "its secrets are sealed with a master key, but {} does not exist",
                config.master_key_file.display()
            ));
            String::new()
        }
        (Some(_), Err(e)) => {
            problems.push(e.to_string());
            String::new()
        }
    };
    report_outcome(&path, &report, &problems, &key_line)
}

fn check_archive(archive: &Path) -> Result<ExitCode, Failure> {
    let unpacked =
        backup::unpack(archive, &std::env::temp_dir()).map_err(super::offline::runtime_err)?;
    let m = &unpacked.manifest;
    println!(
        "backup made {} by BetCycle {}: {} files{}",
        m.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        m.betcycle,
        m.files,
        if m.master_key_included {
            ", with the master key"
        } else {
            ""
        }
    );
    let key_line = match &m.master_key_id {
        Some(id) => format!("its secrets need the master key with id {id}"),
        None => "no secrets sealed".into(),
    };
    report_outcome(
        archive,
        &unpacked.check,
        &unpacked.check.problems,
        &key_line,
    )
}

fn report_outcome(
    what: &Path,
    report: &store::CheckReport,
    problems: &[String],
    key_line: &str,
) -> Result<ExitCode, Failure> {
    for q in &report.quarantined {
        println!("set aside by the server (did not decode): {q}");
    }
    if problems.is_empty() {
        println!(
            "ok: {}: schema {}, {} tables, {} records, audit chain of {} entries intact{}",
            what.display(),
            report.schema_version,
            report.tables,
            report.records,
            report.audit_entries,
            if report.repaired {
                " (redb repaired an unclean shutdown)"
            } else {
                ""
            }
        );
        if !key_line.is_empty() {
            println!("{key_line}");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in problems {
            println!("problem: {problem}");
        }
        Err(Failure::Runtime(format!(
            "{} has {} problem(s)",
            what.display(),
            problems.len()
        )))
    }
}

fn key_note(m: &backup::Manifest, key_file: &Path) -> String {
    let Some(id) = &m.master_key_id else {
        return "the backup holds no sealed secrets".into();
    };
    let carried = if m.master_key_included {
        " (the backup carried its key: it is now master.key in the data directory)"
    } else {
        ""
    };
    match MasterKey::read(key_file) {
        Ok(Some(key)) if key.id() == *id => format!(
            "the master key {} (id {id}) opens the restored secrets{carried}",
            key_file.display()
        ),
        _ => format!(
            "the restored secrets need the master key with id {id}: put that key file at {} before starting{carried}",
            key_file.display()
        ),
    }
}
