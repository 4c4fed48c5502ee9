//! Resource limits of a service instance (`memory` and `cpus` in its target): a cgroup of
//! its own, set up before its process starts and joined by the process between fork and
//! exec, so nothing the instance runs is ever outside its limits. cgroup v2 when the host
//! has it (BetCycle's cgroup must be given the memory and cpu controllers); otherwise
//! cgroup v1's memory and cpu hierarchies. The kernel's interface is a handful of files
//! (Documentation/admin-guide/cgroup-v2.rst, cgroup-v1/memory.rst, scheduler/sched-bwc.rst).
//! The crates that wrap it add a pid after the process has started, so the few files are
//! written here.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The CFS period a CPU quota is a share of (the kernel's default, 100 ms).
const PERIOD_US: u64 = 100_000;
/// The cgroup v2 leaf BetCycle moves itself into, so its own cgroup may hold the
/// instances' cgroups (a cgroup with controllers for its children holds no process).
const SERVER_LEAF: &str = "betcycle-server";

/// What an instance may use at most.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (swap included); above it the kernel's OOM killer ends the process.
    pub memory: Option<u64>,
    /// CPUs' worth of time per period (0.5 is half of one CPU).
    pub cpus: Option<f64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some()
    }

    /// The CFS quota for `cpus` in microseconds per [`PERIOD_US`] (1 ms at least, the
    /// kernel's minimum).
    fn quota_us(cpus: f64) -> u64 {
        ((cpus * PERIOD_US as f64).round() as u64).max(1000)
    }
}

/// Where this host's instance cgroups are made.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// A cgroup v2 directory whose children get the memory and cpu controllers.
    V2 { parent: PathBuf },
    /// BetCycle's own cgroups in the cgroup v1 memory and cpu hierarchies.
    V1 { memory: PathBuf, cpu: PathBuf },
}

static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();

/// This host's layout, found once (on cgroup v2 this may move BetCycle into its
/// [`SERVER_LEAF`] and give its cgroup's children the controllers). The error says
/// why limits cannot be had here.
pub fn layout() -> Result<&'static Layout, String> {
    LAYOUT
        .get_or_init(|| {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
            let layout = detect(Path::new("/sys/fs/cgroup"), &own)?;
            if let Layout::V2 { parent } = &layout {
                delegate(parent)?;
            }
            Ok(layout)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Ends and removes the cgroup `name` an instance no release holds any more may have
/// left (its limits are not known then), without preparing anything.
pub async fn remove_leftover(name: &str) {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    if let Ok(layout) = detect(Path::new("/sys/fs/cgroup"), &own) {
        let every = Limits {
            memory: Some(0),
            cpus: Some(0.0),
        };
        Cgroup::new(&layout, name, every).kill_and_remove().await;
    }
}

/// The layout under `root` (where cgroupfs is mounted) for a process whose
/// `/proc/self/cgroup` reads `own`.
pub fn detect(root: &Path, own: &str) -> Result<Layout, String> {
    // Each line is `hierarchy-id:controllers:path`; cgroup v2's is `0::path`.
    let lines: Vec<(&str, &str)> = own
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    if root.join("cgroup.controllers").exists() {
        let path = lines
            .iter()
            .find(|(controllers, _)| controllers.is_empty())
            .map(|(_, path)| *path)
            .ok_or("cgroup v2 is mounted but /proc/self/cgroup has no v2 line")?;
        let mut own = root.join(path.trim_start_matches('/'));
        if own.file_name().is_some_and(|n| n == SERVER_LEAF) {
            own.pop();
        }
        let offered = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = offered.split_whitespace().collect();
        if !(offered.contains(&"memory") && offered.contains(&"cpu")) {
            return Err(format!(
                "cgroup v2: BetCycle's cgroup {} is not given the memory and cpu controllers (it has: {}); with systemd, set Delegate=yes and DelegateSubgroup={SERVER_LEAF} in the unit",
                own.display(),
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(" ")
                }
            ));
        }
        return Ok(Layout::V2 { parent: own });
    }
    let v1 = |controller: &str| -> Result<PathBuf, String> {
        let (controllers, path) = lines
            .iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .ok_or_else(|| {
                format!("neither cgroup v2 nor a cgroup v1 {controller} hierarchy is mounted")
            })?;
        let mount = [root.join(controllers), root.join(controller)]
            .into_iter()
            .find(|m| m.join("cgroup.procs").exists())
            .ok_or_else(|| {
                format!(
                    "the cgroup v1 {controller} hierarchy is not mounted under {}",
                    root.display()
                )
            })?;
        // Inside a container the path may be the host's, not visible here.
        let own = mount.join(path.trim_start_matches('/'));
        Ok(if own.is_dir() { own } else { mount })
    };
    Ok(Layout::V1 {
        memory: v1("memory")?,
        cpu: v1("cpu")?,
    })
}

/// Gives `parent`'s children the memory and cpu controllers, first moving BetCycle out
/// of `parent` into its leaf when it is there.
fn delegate(parent: &Path) -> Result<(), String> {
    let control = parent.join("cgroup.subtree_control");
    let enable = || std::fs::write(&control, "+memory +cpu");
    if enable().is_ok() {
        return Ok(());
    }
    let leaf = parent.join(SERVER_LEAF);
    let moved = std::fs::create_dir_all(&leaf)
        .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), "0"));
    moved.and_then(|()| enable()).map_err(|e| {
        format!(
            "cgroup v2: cannot give the memory and cpu controllers to the children of {}: {e}",
            parent.display()
        )
    })
}

/// One instance's cgroup: a directory in each hierarchy its limits need.
#[derive(Clone, Debug)]
pub struct Cgroup {
    limits: Limits,
    /// `(directory, hierarchy)`: on cgroup v2 one, on v1 the memory one and the cpu one.
    dirs: Vec<(PathBuf, Hierarchy)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hierarchy {
    V2,
    Memory,
    Cpu,
}

impl Cgroup {
    /// The cgroup called `name` under `layout` for `limits` (nothing is made yet).
    pub fn new(layout: &Layout, name: &str, limits: Limits) -> Cgroup {
        let dirs = match layout {
            Layout::V2 { parent } => vec![(parent.join(name), Hierarchy::V2)],
            Layout::V1 { memory, cpu } => {
                let mut dirs = Vec::new();
                if limits.memory.is_some() {
                    dirs.push((memory.join(name), Hierarchy::Memory));
                }
                if limits.cpus.is_some() {
                    dirs.push((cpu.join(name), Hierarchy::Cpu));
                }
                dirs
            }
        };
        Cgroup { limits, dirs }
    }

    /// Makes the cgroup (or keeps the one there) with its limits written, and opens what
    /// a new process writes to join it: [`join`] in the child before exec.
    pub fn prepare(&self) -> Result<Vec<OwnedFd>, String> {
        let mut procs = Vec::new();
        for (dir, hierarchy) in &self.dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot make the cgroup {}: {e}", dir.display()))?;
            for (file, value) in self.settings(*hierarchy) {
                // Swap limits exist only where swap is accounted; without them there is
                // no swap to limit.
                let optional = file.contains("swap") || file.contains("memsw");
                match std::fs::write(dir.join(file), &value) {
                    Ok(()) => {}
                    Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(format!(
                            "cannot set {} to {value}: {e}",
                            dir.join(file).display()
                        ));
                    }
                }
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", dir.display()))?;
            procs.push(OwnedFd::from(file));
        }
        Ok(procs)
    }

    /// The files (and values) that set `hierarchy`'s limits.
    fn settings(&self, hierarchy: Hierarchy) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match hierarchy {
            Hierarchy::V2 => {
                if let Some(bytes) = self.limits.memory {
                    out.push(("memory.max", bytes.to_string()));
                    out.push(("memory.swap.max", "0".into()));
                }
                let quota = self
                    .limits
                    .cpus
                    .map_or("max".into(), |c| Limits::quota_us(c).to_string());
                out.push(("cpu.max", format!("{quota} {PERIOD_US}")));
            }
            Hierarchy::Memory => {
                if let Some(bytes) = self.limits.memory {
                    // memsw (memory and swap) may not be below the memory limit: the
                    // memory limit goes first.
                    out.push(("memory.limit_in_bytes", bytes.to_string()));
                    out.push(("memory.memsw.limit_in_bytes", bytes.to_string()));
                }
            }
            Hierarchy::Cpu => {
                if let Some(cpus) = self.limits.cpus {
                    out.push(("cpu.cfs_period_us", PERIOD_US.to_string()));
                    out.push(("cpu.cfs_quota_us", Limits::quota_us(cpus).to_string()));
                }
            }
        }
        out
    }

    /// How many times the kernel's OOM killer has ended a process of the cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some((dir, hierarchy)) = self
            .dirs
            .iter()
            .find(|(_, h)| matches!(h, Hierarchy::V2 | Hierarchy::Memory))
        else {
            return 0;
        };
        let file = if *hierarchy == Hierarchy::V2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The memory its processes use now (page cache included), when it has a memory limit.
    pub fn memory_used(&self) -> Option<u64> {
        let (dir, hierarchy) = self
            .dirs
            .iter()
            .find(|(_, h)| matches!(h, Hierarchy::V2 | Hierarchy::Memory))?;
        self.limits.memory?;
        let file = if *hierarchy == Hierarchy::V2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The memory limit as people write it, for an exit's reason.
    pub fn memory_limit(&self) -> Option<String> {
        self.limits.memory.map(crate::core::config::format_size)
    }

    /// SIGKILLs every process in the cgroup (also those that left the instance's
    /// process group), then removes its directories once they are empty.
    pub async fn kill_and_remove(&self) {
        for (dir, _) in &self.dirs {
            if !dir.is_dir() {
                continue;
            }
            for _ in 0..50 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) on a process of the instance's own cgroup.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                // Refused while a killed process is not yet reaped.
                if std::fs::remove_dir(dir).is_ok() || !dir.is_dir() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files `procs` are.
/// Runs in the child between fork and exec: only write(2), nothing allocated.
pub fn join(procs: &[i32]) -> std::io::Result<()> {
    for &fd in procs {
        // Writing 0 moves the writing process.
        // SAFETY: write(2) of a static byte to a descriptor the parent opened.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The raw descriptors of `procs`, for [`join`] (they stay owned by `procs`).
pub fn raw(procs: &[OwnedFd]) -> Vec<i32> {
    procs.iter().map(AsRawFd::as_raw_fd).collect()
}

/// For the instance's log: its limits and where its cgroup is.
impl std::fmt::Display for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "limits:")?;
        if let Some(memory) = self.memory_limit() {
            write!(f, " memory {memory}")?;
        }
        if let Some(cpus) = self.limits.cpus {
            write!(f, " cpus {cpus}")?;
        }
        for (dir, _) in &self.dirs {
            write!(f, " ({})", dir.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dirs: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        for (f, text) in files {
            std::fs::write(root.path().join(f), text).unwrap();
        }
        root
    }

    #[test]
    fn cgroup_v1_uses_betcycles_own_cgroups_in_the_memory_and_cpu_hierarchies() {
        let root = fake(
            &["memory/ci/job", "cpu,cpuacct"],
            &[
                ("memory/cgroup.procs", ""),
                ("cpu,cpuacct/cgroup.procs", ""),
            ],
        );
        let own = "12:pids:/\n4:memory:/ci/job\n2:cpu,cpuacct:/gone\n0::/\n";
        assert_eq!(
            detect(root.path(), own).unwrap(),
            Layout::V1 {
                memory: root.path().join("memory/ci/job"),
                // A path not visible here (a container's view): the hierarchy's root.
                cpu: root.path().join("cpu,cpuacct"),
            }
        );
        let root = fake(&["memory"], &[("memory/cgroup.procs", "")]);
        assert_eq!(
            detect(root.path(), "4:memory:/\n0::/\n").unwrap_err(),
            "neither cgroup v2 nor a cgroup v1 cpu hierarchy is mounted"
        );
    }

    #[test]
    fn cgroup_v2_needs_the_controllers_given_to_betcycles_cgroup() {
        let root = fake(
            &["system.slice/betcycle.service/betcycle-server"],
            &[
                ("cgroup.controllers", "cpu io memory pids"),
                ("system.slice/betcycle.service/cgroup.controllers", "pids"),
            ],
        );
        let own = "0::/system.slice/betcycle.service/betcycle-server\n";
        let message = detect(root.path(), own).unwrap_err();
        assert!(
            message.contains("is not given the memory and cpu controllers (it has: pids)")
                && message.contains("Delegate=yes"),
            "{message}"
        );
        std::fs::write(
            root.path()
                .join("system.slice/betcycle.service/cgroup.controllers"),
            "cpu memory pids",
        )
        .unwrap();
        // From its leaf, the instances go beside BetCycle.
        assert_eq!(
            detect(root.path(), own).unwrap(),
            Layout::V2 {
                parent: root.path().join("system.slice/betcycle.service")
            }
        );
    }

    #[test]
    fn limits_become_the_kernels_settings() {
        let limits = Limits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
        };
        let v2 = Cgroup::new(
            &Layout::V2 {
                parent: "/x".into(),
            },
            "i",
            limits,
        );
        assert_eq!(
            v2.settings(Hierarchy::V2),
            vec![
                ("memory.max", "67108864".to_string()),
                ("memory.swap.max", "0".to_string()),
                ("cpu.max", "50000 100000".to_string()),
            ]
        );
        let cpu_only = Limits {
            memory: None,
            cpus: Some(0.001),
        };
        let v1 = Cgroup::new(
            &Layout::V1 {
                memory: "/m".into(),
                cpu: "/c".into(),
            },
            "i",
            cpu_only,
        );
        assert_eq!(v1.dirs, vec![(PathBuf::from("/c/i"), Hierarchy::Cpu)]);
        assert_eq!(
            v1.settings(Hierarchy::Cpu),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "1000".to_string()),
            ]
        );
    }
}
