//! One step attempt as an operating-system process: `sh -c <run>` in its own process
//! group with a clean environment, output captured line by line, and the whole group
//! killed on timeout, on cancel, and when the step's shell exits (so nothing it started
//! in the background outlives it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Variables passed through from BetCycle's own environment; everything else a step
/// sees is declared in the pipeline or set by BetCycle (`BETCYCLE_*`).
pub const PASSTHROUGH_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM",
];

/// How long to wait for output still in the pipes after the group was killed.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How an attempt ended (an agent reports it in this shape, too).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// The shell exited with this code (a signal counts as 128 + signal).
    Code(i32),
    TimedOut,
    Cancelled,
    /// The process could not be started.
    SpawnFailed(String),
}

/// Runs `script` confined by `confine` and calls `on_lines` with its output as it
/// arrives, a burst of lines at a time.
pub async fn run(
    script: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    confine: super::sandbox::Confine,
    on_lines: impl Fn(Stream, &[&str]) + Send + Sync + Clone + 'static,
) -> Exit {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let confined = confine.rules.is_some();
    if let Some(rules) = confine.rules {
        let mut rules = Some(rules);
        // SAFETY: the closure runs in the forked child before exec and only makes system
        // calls (landlock_restrict_self, prctl); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || match rules.take() {
                Some(rules) => super::sandbox::apply(rules),
                None => Ok(()),
            });
        }
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e)
            if confined
                && e.raw_os_error()
                    .is_some_and(|c| c == libc::ENOSYS || c == libc::EPERM) =>
        {
            return Exit::SpawnFailed(super::sandbox::start_failure(&e));
        }
        Err(e) => return Exit::SpawnFailed(format!("cannot start sh in {}: {e}", dir.display())),
    };
    let pgid = child.id().map(|id| id as i32);
    // Recorded until the group is killed below, so a server killed meanwhile can find
    // and kill it at its next start.
    let _recorded = pgid.map(|g| super::sandbox::record(confine.registry.as_deref(), g));
    let readers = [
        tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            Stream::Stdout,
            on_lines.clone(),
        )),
        tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            Stream::Stderr,
            on_lines,
        )),
    ];

    let sleep = async {
        match timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let exit = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Exit::Code(status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            })),
            Err(e) => Exit::SpawnFailed(format!("cannot wait for the step: {e}")),
        },
        () = sleep => Exit::TimedOut,
        () = cancel.cancelled() => Exit::Cancelled,
    };
    if let Some(pgid) = pgid {
        kill_group(pgid);
    }
    let _ = child.wait().await;
    for reader in readers {
        let _ = tokio::time::timeout(DRAIN, reader).await;
    }
    exit
}

/// SIGKILL to every process in the group (the shell, its children, their children).
pub fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// The most lines passed on at once.
const BURST: usize = 1024;

/// Reads `stream` line by line and passes the lines on in bursts: whatever complete lines
/// have been read once the next line is not fully read yet (the process has not written
/// it, or the read buffer ends inside it), at most [`BURST`] at a time. A fast writer is
/// forwarded a pipe-read at a time, a slow one line by line, and no line waits for more
/// output to arrive.
async fn pump(stream: impl AsyncRead + Unpin, which: Stream, on_lines: impl Fn(Stream, &[&str])) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut buf = Vec::new();
    // The burst's lines, each followed by '\n'.
    let mut burst = String::new();
    let mut count = 0;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).await.unwrap_or(0);
        if read > 0 {
            let text = String::from_utf8_lossy(&buf);
            burst.push_str(text.trim_end_matches(['\n', '\r']));
            burst.push('\n');
            count += 1;
        }
        let next_waits = !reader.buffer().contains(&b'\n');
        if count > 0 && (read == 0 || next_waits || count >= BURST) {
            let lines: Vec<&str> = burst.split_terminator('\n').collect();
            on_lines(which, &lines);
            burst.clear();
            count = 0;
        }
        if read == 0 {
            return;
        }
    }
}
