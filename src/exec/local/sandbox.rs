//! What a local step may touch, and what happens to its processes if the server dies.
//!
//! **Isolation** uses Landlock (the kernel's unprivileged sandbox, Linux 5.13+): the
//! rules are built before the step's shell is forked and applied in the child, just
//! before `exec`, so the shell and everything it starts inherit them and cannot lift
//! them. Three levels, chosen per project by an administrator:
//!
//! - `standard` (default): the step may use everything the server's user may, except
//!   the data directory — there it reaches only its own workspace and its private temp
//!   directory. Landlock rules only grant, so "all but the data directory" is granted
//!   as every sibling of every directory on the way down to it (symlinks among them are
//!   skipped, so none can lead back into it).
//! - `strict`: read and execute on the system's directories (`/usr`, `/bin`, `/lib*`,
//!   `/etc`, `/opt`, `/nix`, `/proc`, `/sys`), read and write on `/dev`, its
//!   workspace and its private temp directory; nothing else (no home directory).
//! - `off`: no confinement.
//!
//! Both confined levels also scope signals and abstract Unix sockets (Landlock ABI 6):
//! a step cannot signal the server or reach an abstract socket it did not create.
//! A kernel without Landlock cannot enforce them: a confined step then fails to start
//! and says so, rather than running unconfined.
//!
//! **Leftovers**: each step's process group is recorded in `<data-dir>/processes/`
//! (its id and the leader's start time) while it runs. After a crash or `kill -9` the
//! next start kills every group still alive before it recovers the interrupted runs,
//! so no step runs on beside its own re-run.

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope,
};
use serde::{Deserialize, Serialize};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How far a project's local steps are confined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Everything the server's user may touch, except the data directory.
    #[default]
    Standard,
    /// Only the system's directories (read), the workspace and a private temp directory.
    Strict,
    /// Not confined.
    Off,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Standard => "standard",
            Isolation::Strict => "strict",
            Isolation::Off => "off",
        }
    }

    pub fn parse(text: &str) -> Result<Isolation, String> {
        match text {
            "standard" => Ok(Isolation::Standard),
            "strict" => Ok(Isolation::Strict),
            "off" => Ok(Isolation::Off),
            other => Err(format!(
                "isolation \"{other}\": use standard, strict or off"
            )),
        }
    }
}

/// Where and how a run's local steps are confined.
#[derive(Clone, Default)]
pub struct Sandbox {
    pub isolation: Isolation,
    /// The directory steps may not see (the data directory), as a canonical path.
    pub hidden: Option<PathBuf>,
    /// The run's private temp directory (`TMPDIR`), writable under any isolation.
    pub tmp: Option<PathBuf>,
    /// Where running steps' process groups are recorded (`<data-dir>/processes`).
    pub registry: Option<PathBuf>,
    /// The rules, once built for the run's first step (every step gets a copy).
    built: std::sync::Arc<std::sync::Mutex<Option<RulesetCreated>>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("isolation", &self.isolation)
            .field("hidden", &self.hidden)
            .field("tmp", &self.tmp)
            .finish()
    }
}

/// What one process start needs from the sandbox: the rules to apply in the child and
/// where to record its process group.
#[derive(Default)]
pub struct Confine {
    pub rules: Option<RulesetCreated>,
    pub registry: Option<PathBuf>,
}

/// The system directories `strict` lets a step read and execute.
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc",
    "/opt",
    "/nix",
    "/proc",
    "/sys",
    "/run/current-system",
];

/// The Landlock ABI whose rights are handled (best effort on older kernels).
const ABI_USED: ABI = ABI::V6;

impl Sandbox {
    /// No confinement and no process records: `betcycle run` on a developer's machine.
    pub fn none() -> Sandbox {
        Sandbox {
            isolation: Isolation::Off,
            ..Default::default()
        }
    }

    /// The sandbox for work `name` (a run, a deployment) of a server with `data_dir`: the
    /// data directory hidden, a private temp directory `<data-dir>/tmp/<name>` (created
    /// here; [`Sandbox::clean_up`] removes it), process groups recorded.
    pub fn on_server(data_dir: &Path, isolation: Isolation, name: &str) -> Sandbox {
        let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let tmp = data_dir.join("tmp").join(name);
        if let Err(e) = std::fs::create_dir_all(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot create a private temp directory");
        }
        Sandbox {
            isolation,
            tmp: Some(tmp),
            registry: Some(data_dir.join("processes")),
            hidden: Some(data_dir),
            built: Default::default(),
        }
    }

    /// Removes the private temp directory.
    pub async fn clean_up(&self) {
        if let Some(tmp) = &self.tmp {
            let _ = tokio::fs::remove_dir_all(tmp).await;
        }
    }

    /// What a process started for a step in `workspace` is given.
    pub fn confine(&self, workspace: &Path) -> Result<Confine, String> {
        Ok(Confine {
            rules: self.rules(workspace)?,
            registry: self.registry.clone(),
        })
    }

    /// The Landlock rules for a step in `workspace`, ready to apply in the child; `None`
    /// when the isolation is `off`.
    fn rules(&self, workspace: &Path) -> Result<Option<RulesetCreated>, String> {
        if self.isolation == Isolation::Off {
            return Ok(None);
        }
        let mut built = self.built.lock().expect("sandbox lock");
        if let Some(rules) = built.as_ref() {
            // The same rules for every step of the run: a copy of the ruleset's handle.
            return rules
                .try_clone()
                .map(Some)
                .map_err(|e| format!("cannot copy the step sandbox: {e}"));
        }
        let all = AccessFs::from_all(ABI_USED);
        let read = AccessFs::from_read(ABI_USED);
        let hidden = self.hidden.as_deref();
        let problem = |e: landlock::RulesetError| format!("cannot build the step sandbox: {e}");
        let mut ruleset = Some(
            Ruleset::default()
                .set_compatibility(CompatLevel::BestEffort)
                .handle_access(all)
                .map_err(problem)?
                .scope(Scope::from_all(ABI_USED))
                .map_err(problem)?
                .create()
                .map_err(problem)?,
        );
        // Each rule is added as its path is opened, so only one descriptor is open at a
        // time however many entries a directory on the way has.
        let mut add = |fd: OwnedFd, access: BitFlags<AccessFs>| -> Result<(), String> {
            let access = if is_dir(&fd) {
                access
            } else {
                access & file_rights()
            };
            let rules = ruleset.take().expect("present between rules");
            ruleset = Some(
                rules
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(problem)?,
            );
            Ok(())
        };
        match self.isolation {
            Isolation::Standard => grant(Path::new("/"), all, hidden, &mut add)?,
            Isolation::Strict => {
                for dir in SYSTEM_DIRS {
                    grant(Path::new(dir), read, hidden, &mut add)?;
                }
                grant(Path::new("/dev"), all, hidden, &mut add)?;
            }
            Isolation::Off => unreachable!("handled above"),
        }
        for dir in [Some(workspace), self.tmp.as_deref()].into_iter().flatten() {
            let fd = open_path(dir)
                .map_err(|e| format!("cannot open {} for the sandbox: {e}", dir.display()))?;
            add(fd, all)?;
        }
        let rules = ruleset.expect("present after the rules");
        let copy = rules
            .try_clone()
            .map_err(|e| format!("cannot copy the step sandbox: {e}"))?;
        *built = Some(rules);
        Ok(Some(copy))
    }
}

/// The rights that apply to a file (not a directory).
fn file_rights() -> BitFlags<AccessFs> {
    AccessFs::Execute
        | AccessFs::WriteFile
        | AccessFs::ReadFile
        | AccessFs::Truncate
        | AccessFs::IoctlDev
}

/// Grants `access` beneath `path` — except beneath `hidden`: a directory on the way to it
/// is not granted itself; its other entries are, one by one.
fn grant(
    path: &Path,
    access: BitFlags<AccessFs>,
    hidden: Option<&Path>,
    add: &mut dyn FnMut(OwnedFd, BitFlags<AccessFs>) -> Result<(), String>,
) -> Result<(), String> {
    match hidden {
        Some(hidden) if hidden.starts_with(path) => {
            if hidden == path {
                return Ok(());
            }
            let Ok(entries) = std::fs::read_dir(path) else {
                return Ok(());
            };
            for entry in entries.flatten() {
                grant(&entry.path(), access, Some(hidden), add)?;
            }
            Ok(())
        }
        _ => match open_path(path) {
            // Not following symlinks: one among the siblings must not lead into `hidden`.
            Ok(fd) if !is_symlink(&fd) => add(fd, access),
            _ => Ok(()),
        },
    }
}

/// `open(path, O_PATH | O_NOFOLLOW)`: a handle naming the file itself, not what a
/// symlink points at.
fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is NUL-terminated; these flags take no mode argument.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mode(fd: &OwnedFd) -> libc::mode_t {
    use std::os::fd::AsRawFd;
    // SAFETY: fstat on a descriptor we own, into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    st.st_mode & libc::S_IFMT
}

fn is_dir(fd: &OwnedFd) -> bool {
    mode(fd) == libc::S_IFDIR
}

fn is_symlink(fd: &OwnedFd) -> bool {
    mode(fd) == libc::S_IFLNK
}

/// Applies `rules` to the calling process. Called in the forked child before `exec`, so
/// it allocates nothing: errors are plain OS errors.
pub fn apply(rules: RulesetCreated) -> std::io::Result<()> {
    match rules.restrict_self() {
        Ok(status) if status.ruleset != landlock::RulesetStatus::NotEnforced => Ok(()),
        // The kernel has no Landlock (or it is disabled): refuse to run unconfined.
        Ok(_) => Err(std::io::Error::from_raw_os_error(libc::ENOSYS)),
        Err(_) => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
    }
}

/// Why a confined step could not start, for its log.
pub fn start_failure(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => "the step sandbox cannot be enforced: this kernel has no Landlock \
             (Linux 5.13 or later with landlock in its LSM list); an administrator can set the \
             project's isolation to off to run steps unconfined"
            .into(),
        _ => format!("the step sandbox could not be applied: {error}"),
    }
}

/// A running step's process group, recorded in the registry while it runs.
pub struct Recorded {
    path: Option<PathBuf>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Records process group `pgid` (its leader just started) in `registry`; the record is
/// removed when the returned guard drops (after the group was killed).
pub fn record(registry: Option<&Path>, pgid: i32) -> Recorded {
    let Some(dir) = registry else {
        return Recorded { path: None };
    };
    let Some(started) = start_time(pgid) else {
        return Recorded { path: None };
    };
    let path = dir.join(pgid.to_string());
    let written =
        std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, format!("{started}\n")));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record a step's process group");
        return Recorded { path: None };
    }
    Recorded { path: Some(path) }
}

/// (process group, start time in clock ticks after boot) of process `pid`, from
/// `/proc/<pid>/stat`.
fn stat(pid: &str) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5) … starttime (22).
    Some((fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn start_time(pid: i32) -> Option<u64> {
    stat(&pid.to_string()).map(|(_, started)| started)
}

/// Kills every recorded process group that is still alive — members whose group id is
/// the recorded one and that started no earlier than its leader, so a reused id is left
/// alone — and clears the records. Returns how many groups were killed.
pub fn kill_leftovers(registry: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(registry) else {
        return 0;
    };
    let recorded: Vec<(PathBuf, i32, u64)> = entries
        .flatten()
        .filter_map(|e| {
            let pgid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let started = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((e.path(), pgid, started))
        })
        .collect();
    if recorded.is_empty() {
        return 0;
    }
    let processes: Vec<(i32, u64)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| stat(e.file_name().to_str()?))
                .collect()
        })
        .unwrap_or_default();
    let mut killed = 0;
    for (path, pgid, started) in recorded {
        let alive = processes
            .iter()
            .any(|(group, start)| *group == pgid && *start >= started);
        if alive {
            super::process::kill_group(pgid);
            killed += 1;
        }
        let _ = std::fs::remove_file(path);
    }
    killed
}
