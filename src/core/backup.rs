//! Backups: one `.tar.gz` holding a consistent snapshot of the store and the files under
//! the data directory that records point at — step logs (`runs/`), artifacts
//! (`artifacts/`), kept webhook payloads (`deliveries/`) and deployment logs
//! (`deployments/*.log`). Repository mirrors, workspaces, step caches (`cache/`) and the
//! server's own log files are left out: BetCycle makes them again.
//!
//! The master key is not in a backup unless asked for (`--include-master-key`): a backup
//! that carries its key makes the sealed secrets in it readable by whoever holds the file.
//! `manifest.json` (first in the archive) names the key a backup's secrets need.
//!
//! Made while the server runs: the store part is a snapshot of one read transaction (see
//! `store::backup`), so it holds every record committed before the backup began. Files are
//! copied after it; a file newer than the snapshot is harmless extra.

use crate::core::error::{Error, Result};
use crate::secrets::seal::MasterKey;
use crate::store::{self, Store};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The archive layout's version; `restore` refuses a newer one.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// Directories under the data directory that a backup carries whole.
const DIRS: &[&str] = &["runs", "artifacts", "deliveries"];
/// Deployment logs are `deployments/ID.log`; `deployments/ID/` holds throwaway workspaces.
const DEPLOYMENTS: &str = "deployments";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The BetCycle version that made the backup.
    pub betcycle: String,
    pub created_at: jiff::Timestamp,
    pub schema_version: u64,
    pub records: u64,
    /// SHA-256 of `betcycle.redb` in the archive.
    pub store_sha256: String,
    pub files: u64,
    /// The id of the master key the backup's secrets are sealed with.
    pub master_key_id: Option<String>,
    pub master_key_included: bool,
}

/// Which master key a backup names, and whether it carries it.
pub struct KeyInBackup {
    pub id: Option<String>,
    /// The key file's text, when the backup is to carry the key.
    pub file: Option<String>,
}

impl KeyInBackup {
    pub fn new(key: Option<&MasterKey>, include: bool) -> Self {
        Self {
            id: key.map(MasterKey::id),
            file: key.filter(|_| include).map(MasterKey::file_contents),
        }
    }
}

/// Writes a backup of `store` and `data_dir` to `out` (a new file). The work happens on the
/// blocking pool.
pub async fn create(
    store: &Store,
    data_dir: &Path,
    key: KeyInBackup,
    out: &Path,
) -> Result<Manifest> {
    let scratch = Scratch::new(data_dir, "backup")?;
    let snapshot_path = scratch.0.join(store::FILE_NAME);
    let snapshot = store.snapshot(snapshot_path.clone()).await?;
    let KeyInBackup {
        id: key_id,
        file: key_file,
    } = key;
    let (data_dir, out) = (data_dir.to_path_buf(), out.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let files = data_files(&data_dir);
        let manifest = Manifest {
            format: FORMAT,
            betcycle: crate::VERSION.into(),
            created_at: jiff::Timestamp::now(),
            schema_version: snapshot.schema_version,
            records: snapshot.records,
            store_sha256: sha256_file(&snapshot_path)?,
            files: files.len() as u64,
            master_key_id: key_id,
            master_key_included: key_file.is_some(),
        };
        write_archive(
            &out,
            &manifest,
            &snapshot_path,
            &data_dir,
            &files,
            key_file.as_deref(),
        )?;
        drop(scratch);
        Ok(manifest)
    })
    .await
    .map_err(|e| Error::Store(format!("backup task failed: {e}")))?
}

/// The files a backup carries, relative to the data directory.
fn data_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in DIRS {
        for entry in walkdir::WalkDir::new(data_dir.join(dir))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
        {
            if let Ok(rel) = entry.path().strip_prefix(data_dir) {
                files.push(rel.to_path_buf());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(data_dir.join(DEPLOYMENTS)) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".log") && entry.path().is_file() {
                files.push(Path::new(DEPLOYMENTS).join(name));
            }
        }
    }
    files.sort();
    files
}

fn write_archive(
    out: &Path,
    manifest: &Manifest,
    snapshot: &Path,
    data_dir: &Path,
    files: &[PathBuf],
    key_file: Option<&str>,
) -> Result<()> {
    let io = |what: &str| Error::io(format!("cannot write the backup {}: {what}", out.display()));
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io("create"))?;
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
    append_bytes(&mut tar, MANIFEST, &json).map_err(io(MANIFEST))?;
    append_file(&mut tar, store::FILE_NAME, snapshot).map_err(io(store::FILE_NAME))?;
    if let Some(key) = key_file {
        append_bytes(
            &mut tar,
            crate::secrets::seal::MASTER_KEY_FILE,
            key.as_bytes(),
        )
        .map_err(io("master key"))?;
    }
    for rel in files {
        match append_file(&mut tar, &rel.to_string_lossy(), &data_dir.join(rel)) {
            Ok(()) => {}
            // Removed since it was listed (a pruned payload or log).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&rel.to_string_lossy())(e)),
        }
    }
    let gz = tar.into_inner().map_err(io("finish"))?;
    let file = gz.finish().map_err(io("finish"))?;
    file.sync_all().map_err(io("sync"))?;
    Ok(())
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)
}

/// An archive entry's path as a person reads it, in quotes.
fn entry_name<R: std::io::Read>(entry: &tar::Entry<R>) -> String {
    match entry.path() {
        Ok(path) => format!("\"{}\"", path.display()),
        Err(_) => "(with an unreadable name)".into(),
    }
}

/// Appends a file as it is now. A log still being written may grow while it is copied:
/// exactly the length seen at the start goes in (zero-padded should it shrink), so the
/// archive stays well-formed.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
) -> std::io::Result<()> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_mtime(
        file.metadata()?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    let body = file.take(len).chain(std::io::repeat(0)).take(len);
    tar.append_data(&mut header, name, body)
}

fn sha256_file(path: &Path) -> Result<String> {
    crate::exec::digest_file(path)
        .map(|(_, sha256)| sha256)
        .map_err(Error::io(format!("cannot read {}", path.display())))
}

/// A directory under the data directory for work in progress, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(data_dir: &Path, purpose: &str) -> Result<Self> {
        let path = data_dir.join(format!(".{purpose}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)
            .map_err(Error::io(format!("cannot create {}", path.display())))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An archive unpacked into a scratch directory, its manifest read and its store checked.
pub struct Unpacked {
    scratch: Scratch,
    pub manifest: Manifest,
    pub check: store::CheckReport,
}

impl Unpacked {
    fn root(&self) -> &Path {
        &self.scratch.0
    }
}

/// Unpacks `archive` under `work_dir` and checks it: the manifest's format, the store's
/// digest, then `store::check_file` on the store. Blocking.
pub fn unpack(archive: &Path, work_dir: &Path) -> Result<Unpacked> {
    let bad = |why: String| {
        Error::Invalid(format!(
            "{} is not a usable BetCycle backup: {why}",
            archive.display()
        ))
    };
    let file =
        File::open(archive).map_err(Error::io(format!("cannot read {}", archive.display())))?;
    std::fs::create_dir_all(work_dir)
        .map_err(Error::io(format!("cannot create {}", work_dir.display())))?;
    let scratch = Scratch::new(work_dir, "restore")?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(bad(format!(
                "entry {} is neither a file nor a directory",
                entry_name(&entry)
            )));
        }
        // `unpack_in` refuses paths that would land outside the directory (`..`, absolute).
        let inside = entry
            .unpack_in(&scratch.0)
            .map_err(|e| bad(e.to_string()))?;
        if !inside {
            return Err(bad(format!(
                "entry {} points outside the archive",
                entry_name(&entry)
            )));
        }
    }
    let manifest: Manifest = std::fs::read(scratch.0.join(MANIFEST))
        .map_err(|_| bad(format!("it has no {MANIFEST}")))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("{MANIFEST}: {e}")))
        })?;
    if manifest.format > FORMAT {
        return Err(bad(format!(
            "its format {} is newer than this BetCycle's {FORMAT}; restore it with BetCycle {} or later",
            manifest.format, manifest.betcycle
        )));
    }
    let store_path = scratch.0.join(store::FILE_NAME);
    if !store_path.exists() {
        return Err(bad(format!("it has no {}", store::FILE_NAME)));
    }
    let digest = sha256_file(&store_path)?;
    if digest != manifest.store_sha256 {
        return Err(bad(format!(
            "{} has SHA-256 {digest}, but the manifest says {}: the file is damaged",
            store::FILE_NAME,
            manifest.store_sha256
        )));
    }
    let check = store::check_file(&store_path)?;
    Ok(Unpacked {
        scratch,
        manifest,
        check,
    })
}

/// Removes what an interrupted backup or restore left in the data directory (scratch
/// directories, half-written downloads). Called at start, before anything else runs.
pub fn sweep_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".backup-") || name.starts_with(".restore-") {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed what an interrupted backup left")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an interrupted backup's leftovers")
                }
            }
        }
    }
}

/// What `restore` did.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    /// Where the data directory's previous contents went, if it had any.
    pub moved_aside: Option<PathBuf>,
}

/// Restores `archive` into `data_dir` (no server may be running on it). An existing store
/// is refused unless `force`, and then moved aside with the directories the backup
/// replaces — nothing is deleted. Blocking.
pub fn restore(archive: &Path, data_dir: &Path, force: bool) -> Result<Restored> {
    let current = data_dir.join(store::FILE_NAME);
    if current.exists() {
        store::ensure_not_open(&current)?;
        if !force {
            return Err(Error::Invalid(format!(
                "{} already holds a database; pass --force to move it (and the files that go with it) aside and restore over it",
                data_dir.display()
            )));
        }
    }
    let unpacked = unpack(archive, data_dir)?;
    if !unpacked.check.problems.is_empty() {
        return Err(Error::Invalid(format!(
            "the backup's database fails its check, nothing restored: {}",
            unpacked.check.problems.join("; ")
        )));
    }
    let mut top: Vec<PathBuf> = std::fs::read_dir(unpacked.root())
        .map_err(Error::io("cannot list the unpacked backup"))?
        .filter_map(|e| e.ok())
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|name| name != Path::new(MANIFEST))
        .collect();
    top.sort();
    let aside = data_dir.join(format!(
        "before-restore-{}",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    ));
    let mut moved_aside = None;
    let replaced = top
        .iter()
        .map(|p| p.as_path())
        .chain(DIRS.iter().map(Path::new))
        .chain([Path::new(DEPLOYMENTS)]);
    for name in replaced {
        let existing = data_dir.join(name);
        if existing.exists() {
            std::fs::create_dir_all(&aside)
                .map_err(Error::io(format!("cannot create {}", aside.display())))?;
            std::fs::rename(&existing, aside.join(name)).map_err(Error::io(format!(
                "cannot move {} aside",
                existing.display()
            )))?;
            moved_aside = Some(aside.clone());
        }
    }
    for name in &top {
        let to = data_dir.join(name);
        std::fs::rename(unpacked.root().join(name), &to).map_err(Error::io(format!(
            "cannot move the restored {} into place",
            to.display()
        )))?;
    }
    Ok(Restored {
        manifest: unpacked.manifest,
        moved_aside,
    })
}
