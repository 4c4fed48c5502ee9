//! Readiness: can this instance do its job right now? `/readyz` and `betcycle
//! healthcheck` report it; liveness (`/healthz`) only says the process answers.

use crate::store::Store;
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// Runs every readiness check: the store reads and writes durably, the data directory
/// accepts new files, and its disk has at least `min_free_disk` bytes free.
pub async fn readiness(store: &Store, data_dir: &Path, min_free_disk: u64) -> Readiness {
    let store_check = match store.probe().await {
        Ok(()) => Check {
            name: "store",
            ok: true,
            detail: "readable and writable".into(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            Check {
                name: "store",
                ok: false,
                detail: "the database cannot be read or written; see the server log".into(),
            }
        }
    };

    let dir = data_dir.to_path_buf();
    let (dir_check, disk_check) = tokio::task::spawn_blocking(move || {
        (check_writable(&dir), check_disk(&dir, min_free_disk))
    })
    .await
    .unwrap_or_else(|e| {
        let failed = |name| Check {
            name,
            ok: false,
            detail: format!("check did not run: {e}"),
        };
        (failed("data_dir"), failed("disk"))
    });

    let checks = vec![store_check, dir_check, disk_check];
    Readiness {
        ready: checks.iter().all(|c| c.ok),
        checks,
    }
}

fn check_writable(dir: &Path) -> Check {
    let probe = dir.join(".readyz-probe");
    let result = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe));
    Check {
        name: "data_dir",
        ok: result.is_ok(),
        detail: match result {
            Ok(()) => format!("{} is writable", dir.display()),
            Err(e) => format!("{} is not writable: {e}", dir.display()),
        },
    }
}

fn check_disk(dir: &Path, min_free: u64) -> Check {
    match free_disk_bytes(dir) {
        Some(free) => Check {
            name: "disk",
            ok: free >= min_free,
            detail: format!(
                "{} free, {} required",
                bytesize::ByteSize(free).display().iec(),
                bytesize::ByteSize(min_free).display().iec()
            ),
        },
        None => Check {
            name: "disk",
            ok: false,
            detail: format!("cannot read free space of {}", dir.display()),
        },
    }
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field widths differ between targets (u32 on 32-bit), hence the conversions.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}
