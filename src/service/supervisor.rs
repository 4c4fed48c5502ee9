//! One instance of a release: its process started (or adopted after a restart of
//! BetCycle), watched, restarted with exponential backoff when it exits, and stopped with
//! SIGTERM then SIGKILL. The process runs in its own session, writes straight to its log
//! file and so outlives BetCycle; its pid and start time are in the store so the next
//! BetCycle adopts it instead of starting a second one.

use super::{InstanceRecord, InstanceState};
use crate::core::error::{Error, Result};
use crate::store::Store;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The first restart waits this long; each crash in a row doubles it, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An instance that ran this long before it exited starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Crashes in a row from which an instance is shown as crash-looping.
const CRASH_LOOP: u32 = 5;
/// A log past this size is moved to `.1` at the next start of the instance.
const LOG_ROTATE: u64 = 8 << 20;

/// What an instance is started with.
#[derive(Clone)]
pub struct Launch {
    pub command: String,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
    pub stop_grace: Duration,
    /// The Landlock rules' source; `None` runs unconfined.
    pub sandbox: Option<crate::exec::local::sandbox::Sandbox>,
    /// The instance's own cgroup, when its target sets `memory` or `cpus`.
    pub cgroup: Option<super::cgroup::Cgroup>,
}

/// A running (or restarting) instance and the task that watches it.
pub struct Supervised {
    pub record: Mutex<InstanceRecord>,
    pub state: watch::Sender<InstanceState>,
    /// The instance's own cgroup, when it has limits.
    pub cgroup: Option<super::cgroup::Cgroup>,
    stop: CancellationToken,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Supervised {
    /// Starts watching `record`'s instance: adopts its recorded process when that is
    /// still alive, otherwise starts a new one.
    pub fn start(store: Store, record: InstanceRecord, launch: Launch) -> Arc<Supervised> {
        let (state, _) = watch::channel(InstanceState::Starting);
        let me = Arc::new(Supervised {
            record: Mutex::new(record),
            state,
            cgroup: launch.cgroup.clone(),
            stop: CancellationToken::new(),
            done: Mutex::new(None),
        });
        let task = tokio::spawn(me.clone().watch(store, launch));
        *me.done.lock().expect("instance lock") = Some(task);
        me
    }

    pub fn id(&self) -> u64 {
        self.record.lock().expect("instance lock").id
    }

    pub fn port(&self) -> u16 {
        self.record.lock().expect("instance lock").port
    }

    pub fn snapshot(&self) -> InstanceRecord {
        self.record.lock().expect("instance lock").clone()
    }

    /// Stops the instance (SIGTERM, then SIGKILL after its grace) and forgets its record.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.done.lock().expect("instance lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Lets go of the instance without stopping it (BetCycle is shutting down; the
    /// next start adopts it).
    pub fn release(&self) {
        if let Some(task) = self.done.lock().expect("instance lock").take() {
            task.abort();
        }
    }

    async fn watch(self: Arc<Self>, store: Store, launch: Launch) {
        let mut crashes = 0u32;
        // The cgroup's OOM kills when the process started (or was adopted), to tell one
        // of its own.
        let mut oom_kills = 0u64;
        let mut adopt = {
            let r = self.record.lock().expect("instance lock");
            r.pid.zip(r.start_ticks)
        };
        loop {
            let mut process = match adopt.take().filter(|&(pid, ticks)| alive(pid, ticks)) {
                Some((pid, ticks)) => {
                    note(&launch.log, &format!("adopted process {pid}"));
                    // Kills before the adoption (of a process the instance started) are
                    // not this process's end.
                    oom_kills = launch.cgroup.as_ref().map_or(0, |c| c.oom_kills());
                    Process::Adopted { pid, ticks }
                }
                None => match spawn(&launch, self.port(), &mut oom_kills) {
                    Ok(p) => p,
                    Err(e) => {
                        // Nothing to restart from: the reason is the instance's state.
                        note(&launch.log, &e);
                        self.exited(&store, &e, crashes + 1).await;
                        crashes += 1;
                        if self.backoff(crashes).await {
                            return self.forget(&store).await;
                        }
                        continue;
                    }
                },
            };
            let pid = process.pid();
            let ticks = start_ticks(pid);
            let updated = {
                let mut r = self.record.lock().expect("instance lock");
                r.pid = Some(pid);
                r.start_ticks = ticks;
                r.clone()
            };
            if let Err(e) = store.put_service_instance(updated).await {
                tracing::error!(error = %e, pid, "cannot record a service instance");
            }
            self.state.send_replace(InstanceState::Starting);
            let started = Instant::now();
            let exit = tokio::select! {
                exit = process.exited() => exit,
                () = self.stop.cancelled() => {
                    terminate(&mut process, launch.stop_grace).await;
                    if let Some(cgroup) = &launch.cgroup {
                        cgroup.kill_and_remove().await;
                    }
                    note(&launch.log, "stopped");
                    return self.forget(&store).await;
                }
            };
            let exit = match &launch.cgroup {
                Some(cgroup) if cgroup.oom_kills() > oom_kills => format!(
                    "{exit}: out of memory (its limit is {})",
                    cgroup.memory_limit().unwrap_or_default()
                ),
                _ => exit,
            };
            note(&launch.log, &format!("exited: {exit}"));
            // What the command left behind in its group (or its cgroup) goes too, so a
            // restart finds its port free.
            signal_group(pid as i32, libc::SIGKILL);
            if let Some(cgroup) = &launch.cgroup {
                cgroup.kill_and_remove().await;
            }
            if started.elapsed() >= STABLE_AFTER {
                crashes = 0;
            }
            crashes += 1;
            self.exited(&store, &exit, crashes).await;
            if self.backoff(crashes).await {
                return self.forget(&store).await;
            }
        }
    }

    /// Records an exit; the state says whether the instance is crash-looping.
    async fn exited(&self, store: &Store, reason: &str, crashes: u32) {
        let updated = {
            let mut r = self.record.lock().expect("instance lock");
            r.restarts += 1;
            r.last_exit = Some(reason.to_string());
            r.pid = None;
            r.start_ticks = None;
            r.clone()
        };
        let state = if crashes >= CRASH_LOOP {
            InstanceState::CrashLoop
        } else {
            InstanceState::Exited
        };
        self.state.send_replace(state);
        if let Err(e) = store.put_service_instance(updated).await {
            tracing::error!(error = %e, "cannot record a service instance's exit");
        }
        tracing::warn!(instance = self.id(), reason, "a service instance exited");
    }

    /// Waits before the next start; true when the instance was stopped meanwhile.
    async fn backoff(&self, crashes: u32) -> bool {
        let wait = BACKOFF_START
            .saturating_mul(1 << crashes.saturating_sub(1).min(10))
            .min(BACKOFF_MAX);
        tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = self.stop.cancelled() => true,
        }
    }

    async fn forget(&self, store: &Store) {
        self.state.send_replace(InstanceState::Stopped);
        if let Err(e) = store.delete_service_instance(self.id()).await {
            tracing::error!(error = %e, "cannot forget a stopped service instance");
        }
    }
}

/// A process of ours, or one a previous BetCycle started.
enum Process {
    Child(tokio::process::Child),
    Adopted { pid: u32, ticks: u64 },
}

impl Process {
    fn pid(&self) -> u32 {
        match self {
            Process::Child(c) => c.id().unwrap_or(0),
            Process::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits for the process to end; says how.
    async fn exited(&mut self) -> String {
        match self {
            Process::Child(child) => match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("cannot wait for the process: {e}"),
            },
            Process::Adopted { pid, ticks } => {
                while alive(*pid, *ticks) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                "the process ended (its status went to the BetCycle that started it)".into()
            }
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended".into(),
    }
}

/// Starts the instance's process; `oom_kills` becomes its cgroup's count at the start.
fn spawn(launch: &Launch, port: u16, oom_kills: &mut u64) -> std::result::Result<Process, String> {
    rotate(&launch.log);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|e| format!("cannot open the log {}: {e}", launch.log.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot open the log: {e}"))?;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script(&launch.command))
        .current_dir(&launch.dir)
        .env_clear()
        .envs(&launch.env)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(false);
    let mut rules = match &launch.sandbox {
        Some(sandbox) => sandbox.confine(&launch.dir)?.rules,
        None => None,
    };
    let procs = match &launch.cgroup {
        Some(cgroup) => {
            let procs = cgroup.prepare()?;
            *oom_kills = cgroup.oom_kills();
            note(&launch.log, &cgroup.to_string());
            procs
        }
        None => Vec::new(),
    };
    let cgroups = super::cgroup::raw(&procs);
    // SAFETY: the closure runs in the forked child before exec and only makes system
    // calls (setsid, write, landlock_restrict_self, prctl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            super::cgroup::join(&cgroups)?;
            match rules.take() {
                Some(rules) => crate::exec::local::sandbox::apply(rules),
                None => Ok(()),
            }
        });
    }
    let child = cmd
        .spawn()
        .map(Process::Child)
        .map_err(|e| format!("cannot start sh in {}: {e}", launch.dir.display()));
    // The child has its own copies; ours close here.
    drop(procs);
    child
}

/// The shell script for `command`: a simple command is `exec`uted, so the instance is one
/// process that gets the signals itself; anything else runs as written.
fn script(command: &str) -> String {
    let simple = !command.contains(|c: char| ";&|<>()$`\\\n*?[]{}!#~'\"=".contains(c));
    if simple {
        format!("exec {command}")
    } else {
        command.to_string()
    }
}

/// SIGTERM to the instance's process group, SIGKILL after `grace`.
async fn terminate(process: &mut Process, grace: Duration) {
    let pid = process.pid() as i32;
    if pid <= 0 {
        return;
    }
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(grace, process.exited()).await.is_err() {
        signal_group(pid, libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
    }
    // What the command left in its group goes with it.
    signal_group(pid, libc::SIGKILL);
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22), which
/// tells a pid that was reused from the process recorded.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after it do not.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks`.
pub fn alive(pid: u32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks)
}

/// Kills a recorded instance's process group that no release holds any more.
pub fn kill_recorded(record: &InstanceRecord) {
    if let (Some(pid), Some(ticks)) = (record.pid, record.start_ticks)
        && alive(pid, ticks)
    {
        signal_group(pid as i32, libc::SIGKILL);
    }
}

fn rotate(log: &std::path::Path) {
    if std::fs::metadata(log).is_ok_and(|m| m.len() > LOG_ROTATE) {
        let _ = std::fs::rename(log, log.with_extension("log.1"));
    }
}

/// A line from BetCycle in the instance's log.
fn note(log: &std::path::Path, text: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "[betcycle {}] {text}", jiff::Timestamp::now());
    }
}

/// A free port on the loopback interface for a new instance.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(Error::io("cannot find a free port for a service instance"))?;
    Ok(listener
        .local_addr()
        .map_err(Error::io("cannot read a free port"))?
        .port())
}
