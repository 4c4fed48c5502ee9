//! Step caches (`cache: { key, paths }`): the paths, inside the workspace, restored before
//! a step runs when its key has been saved, and saved after it succeeds when it has not.
//! Archives are tar files named by their SHA-256 (`<root>/blobs/`), shared by every
//! namespace (a project on the server; a directory for `betcycle run`); a namespace's
//! keys point at them (`<root>/keys/<namespace>/<sha256 of the key>`, its mtime the last
//! use). Past `max_size` in all, the least recently used keys go, and the archives no key
//! points at. They live beside the workspace, so host and container steps share them.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where caches are kept, and how much in all.
pub struct Caches {
    root: PathBuf,
    max_size: u64,
    /// Saves and evictions one at a time (restores need no lock: archives are written
    /// under a temporary name and renamed).
    writing: Mutex<()>,
}

/// One namespace's view: what a run uses.
#[derive(Clone)]
pub struct CacheSpace {
    caches: Arc<Caches>,
    namespace: String,
}

/// What a restore or save did, said in the step's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Restored {
        bytes: u64,
    },
    Missed,
    Saved {
        bytes: u64,
    },
    /// Not saved: the key was restored (nothing to do), nothing matched, or it was larger
    /// than all the space there is.
    Skipped(String),
}

impl Caches {
    pub fn new(root: PathBuf, max_size: u64) -> Arc<Caches> {
        Arc::new(Caches {
            root,
            max_size,
            writing: Mutex::new(()),
        })
    }

    pub fn space(self: &Arc<Self>, namespace: &str) -> CacheSpace {
        CacheSpace {
            caches: self.clone(),
            namespace: namespace.to_string(),
        }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{digest}.tar"))
    }

    /// Removes the least recently used keys until the archives fit `max_size`, then the
    /// archives no key points at.
    fn evict(&self) -> std::io::Result<()> {
        let mut keys = Vec::new();
        if let Ok(spaces) = std::fs::read_dir(self.root.join("keys")) {
            for space in spaces.flatten() {
                for key in std::fs::read_dir(space.path())?.flatten() {
                    let used = key.metadata()?.modified()?;
                    let digest = std::fs::read_to_string(key.path())?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    keys.push((used, key.path(), digest));
                }
            }
        }
        keys.sort();
        let size_of = |d: &str| std::fs::metadata(self.blob(d)).map_or(0, |m| m.len());
        let mut live: std::collections::BTreeSet<String> =
            keys.iter().map(|(_, _, d)| d.clone()).collect();
        let mut total: u64 = live.iter().map(|d| size_of(d)).sum();
        let mut oldest = keys.iter();
        while total > self.max_size {
            let Some((_, path, digest)) = oldest.next() else {
                break;
            };
            std::fs::remove_file(path)?;
            let still_used = keys
                .iter()
                .any(|(_, p, d)| d == digest && p != path && p.exists());
            if !still_used && live.remove(digest) {
                total -= size_of(digest);
            }
        }
        for blob in std::fs::read_dir(self.root.join("blobs"))?.flatten() {
            let name = blob.file_name().to_string_lossy().to_string();
            let digest = name.trim_end_matches(".tar");
            if name.ends_with(".tar") && !live.contains(digest) {
                std::fs::remove_file(blob.path())?;
            }
        }
        Ok(())
    }
}

impl CacheSpace {
    fn key_file(&self, key: &str) -> PathBuf {
        let digest = crate::identity::secret::hex(&Sha256::digest(key.as_bytes()));
        self.caches
            .root
            .join("keys")
            .join(&self.namespace)
            .join(digest)
    }

    /// Unpacks the archive saved under `key` into `workspace`.
    pub fn restore(&self, key: &str, workspace: &Path) -> Result<Outcome, String> {
        let key_file = self.key_file(key);
        let Ok(text) = std::fs::read_to_string(&key_file) else {
            return Ok(Outcome::Missed);
        };
        let digest = text.lines().next().unwrap_or_default();
        let blob = self.caches.blob(digest);
        let file = match std::fs::File::open(&blob) {
            Ok(f) => f,
            // Evicted between the two reads.
            Err(_) => return Ok(Outcome::Missed),
        };
        let bytes = file.metadata().map_or(0, |m| m.len());
        tar::Archive::new(file)
            .unpack(workspace)
            .map_err(|e| format!("cannot restore the cache for key {key}: {e}"))?;
        // Its last use, for eviction.
        let _ = std::fs::File::options()
            .append(true)
            .open(&key_file)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Ok(Outcome::Restored { bytes })
    }

    /// Archives `paths` of `workspace` under `key` (a path that does not exist is left
    /// out), then evicts what no longer fits.
    pub fn save(&self, key: &str, workspace: &Path, paths: &[String]) -> Result<Outcome, String> {
        let failed = |e: std::io::Error| format!("cannot save the cache for key {key}: {e}");
        let present: Vec<&String> = paths
            .iter()
            .filter(|p| workspace.join(p).symlink_metadata().is_ok())
            .collect();
        if present.is_empty() {
            return Ok(Outcome::Skipped(format!(
                "none of {} exists",
                paths.join(", ")
            )));
        }
        let _writing = self.caches.writing.lock().expect("cache lock");
        let blobs = self.caches.root.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(failed)?;
        let partial = blobs.join(format!(".partial-{}", std::process::id()));
        let file = std::fs::File::create(&partial).map_err(failed)?;
        let mut builder = tar::Builder::new(Hashing {
            inner: std::io::BufWriter::new(file),
            hasher: Sha256::new(),
            bytes: 0,
        });
        builder.follow_symlinks(false);
        for p in &present {
            let source = workspace.join(p);
            let written = if source.is_dir() {
                builder.append_dir_all(p.as_str(), &source)
            } else {
                builder.append_path_with_name(&source, p.as_str())
            };
            if let Err(e) = written {
                let _ = std::fs::remove_file(&partial);
                return Err(failed(e));
            }
        }
        let mut hashing = builder.into_inner().map_err(failed)?;
        hashing.inner.flush().map_err(failed)?;
        let (digest, bytes) = (
            crate::identity::secret::hex(&hashing.hasher.finalize()),
            hashing.bytes,
        );
        if bytes > self.caches.max_size {
            let _ = std::fs::remove_file(&partial);
            return Ok(Outcome::Skipped(format!(
                "{bytes} bytes is more than the caches' limit of {} bytes",
                self.caches.max_size
            )));
        }
        std::fs::rename(&partial, self.caches.blob(&digest)).map_err(failed)?;
        let key_file = self.key_file(key);
        let dir = key_file.parent().expect("a key file has a directory");
        std::fs::create_dir_all(dir).map_err(failed)?;
        let partial_key = dir.join(format!(".partial-{}", std::process::id()));
        std::fs::write(&partial_key, format!("{digest}\n{key}\n")).map_err(failed)?;
        std::fs::rename(&partial_key, &key_file).map_err(failed)?;
        self.caches.evict().map_err(failed)?;
        Ok(Outcome::Saved { bytes })
    }

    /// The SHA-256 (hex) of the workspace files matching `patterns`: their paths and
    /// contents, in path order (`hashFiles` in a key).
    pub fn hash_files(workspace: &Path, patterns: &[String]) -> String {
        let mut hasher = Sha256::new();
        for relative in super::reports::matching_files(workspace, patterns) {
            hasher.update(relative.as_bytes());
            hasher.update([0]);
            if let Ok(mut file) = std::fs::File::open(workspace.join(&relative)) {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            }
            hasher.update([0]);
        }
        crate::identity::secret::hex(&hasher.finalize())
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_with(dir: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn a_saved_cache_is_restored_and_the_least_recently_used_key_is_evicted() {
        let root = tempfile::tempdir().unwrap();
        let caches = Caches::new(root.path().join("cache"), 40 * 1024);
        let space = caches.space("project-1");
        let ws = tempfile::tempdir().unwrap();
        workspace_with(
            ws.path(),
            &[("deps/a.txt", "alpha"), ("deps/sub/b.txt", "beta")],
        );
        let paths = vec!["deps".to_string(), "missing".to_string()];
        assert_eq!(space.restore("k1", ws.path()).unwrap(), Outcome::Missed);
        assert!(matches!(
            space.save("k1", ws.path(), &paths).unwrap(),
            Outcome::Saved { .. }
        ));

        let fresh = tempfile::tempdir().unwrap();
        assert!(matches!(
            space.restore("k1", fresh.path()).unwrap(),
            Outcome::Restored { .. }
        ));
        assert_eq!(
            std::fs::read_to_string(fresh.path().join("deps/sub/b.txt")).unwrap(),
            "beta"
        );
        // Another namespace does not see it.
        assert_eq!(
            caches
                .space("project-2")
                .restore("k1", fresh.path())
                .unwrap(),
            Outcome::Missed
        );

        // Three more keys of ~12 KiB each overflow 40 KiB: the least recently used goes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        for (i, key) in ["k2", "k3", "k4"].iter().enumerate() {
            workspace_with(ws.path(), &[("deps/big.txt", &"x".repeat(10_000 + i))]);
            space.save(key, ws.path(), &paths).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(space.restore("k1", fresh.path()).unwrap(), Outcome::Missed);
        assert!(matches!(
            space.restore("k4", fresh.path()).unwrap(),
            Outcome::Restored { .. }
        ));
        let blobs = std::fs::read_dir(root.path().join("cache/blobs"))
            .unwrap()
            .count();
        assert!(blobs <= 3, "unreferenced archives are removed: {blobs}");

        // Nothing to save is said, not an error.
        assert!(matches!(
            space
                .save("k5", ws.path(), &["nothing".to_string()])
                .unwrap(),
            Outcome::Skipped(_)
        ));
    }

    #[test]
    fn keys_render_hash_files_and_reject_what_they_do_not_understand() {
        let k = crate::ci::pipeline::Cache::render(
            "deps-{{ hashFiles('Cargo.lock', \"*.toml\") }}",
            |p| {
                assert_eq!(p, ["Cargo.lock", "*.toml"]);
                "abc".into()
            },
        )
        .unwrap();
        assert_eq!(k, "deps-abc");
        for bad in [
            "{{ branch }}",
            "x-{{ hashFiles(Cargo.lock) }}",
            "{{ hashFiles('a')",
            "   ",
        ] {
            assert!(
                crate::ci::pipeline::Cache::render(bad, |_| String::new()).is_err(),
                "{bad}"
            );
        }
        let ws = tempfile::tempdir().unwrap();
        workspace_with(ws.path(), &[("Cargo.lock", "v1")]);
        let one = CacheSpace::hash_files(ws.path(), &["Cargo.lock".into()]);
        workspace_with(ws.path(), &[("Cargo.lock", "v2")]);
        assert_ne!(
            one,
            CacheSpace::hash_files(ws.path(), &["Cargo.lock".into()])
        );
    }
}
