//! Steps on remote agents (`runs_on:`). A step attempt becomes a *job* in the server's
//! queue; an agent (`betcycle agent`, see `agents/`) long-polls for one whose labels it
//! has, holds it under a lease it renews with every batch of output, fetches the run's
//! workspace, runs the step on its own host, sends the files it changed back and reports
//! how the step ended. A lease that runs out (the agent crashed or lost the network)
//! puts the job back in the queue for another agent; the server never counts a job as
//! running on an agent it has not heard from within the lease.
//!
//! Jobs live in memory only: a server that restarts re-queues its interrupted runs
//! (`ci::runner`), and an agent still holding a job of the old server is told it holds
//! nothing.

use super::local::process::{Exit, Stream};
use super::{OnLines, Process, Spawned};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// How often a job may lose its agent before the step fails instead of waiting again.
const MAX_REQUEUES: u32 = 2;

/// What an agent sends when it asks for work.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Poll {
    pub labels: Vec<String>,
    /// How many jobs it runs at once.
    pub capacity: u32,
    #[serde(default)]
    pub version: String,
}

/// The answer to a poll: a job, or none within the wait; and what the agent should be.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PollAnswer {
    pub job: Option<JobSpec>,
    /// `active`, `paused` (no new work) or `draining` (finish, then exit).
    pub state: String,
}

/// One step attempt, as an agent receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: u64,
    /// `project #number`, for the agent's own log.
    pub run: String,
    pub step: String,
    pub script: String,
    /// The directory the step starts in, relative to the workspace.
    pub dir: String,
    /// The step's environment, its revealed secrets included (never stored).
    pub env: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
    /// The agent renews its lease (by sending output or nothing) well within this.
    pub lease_ms: u64,
}

/// Output an agent sends: bursts of lines, each from one stream. An empty list renews
/// the lease.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lines {
    pub bursts: Vec<Burst>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Burst {
    pub stream: Stream,
    pub lines: Vec<String>,
}

/// How the attempt ended, and the files the step removed (relative to the workspace).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {
    pub exit: Exit,
    #[serde(default)]
    pub deleted: Vec<String>,
}

/// Why an agent's report about a job is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct NotHeld(pub String);

/// What the server knows of a connected agent (kept in memory, from its polls).
#[derive(Clone, Debug, Serialize)]
pub struct Contact {
    pub labels: Vec<String>,
    pub capacity: u32,
    pub version: String,
    pub last_contact: Timestamp,
    #[serde(skip)]
    seen: Option<Instant>,
}

/// A job an agent holds, as the agents' views show it.
#[derive(Clone, Debug, Serialize)]
pub struct HeldJob {
    pub job: u64,
    pub run: String,
    pub step: String,
    pub since: Timestamp,
}

struct Job {
    spec: JobSpec,
    labels: Vec<String>,
    workspace: PathBuf,
    on_lines: OnLines,
    holder: Option<Hold>,
    requeues: u32,
    done: Option<oneshot::Sender<Exit>>,
}

enum Claim {
    Job(JobSpec, OnLines),
    Nothing,
    /// The agent was forgotten (revoked) while it waited.
    Forgotten,
}

struct Hold {
    agent: String,
    deadline: Instant,
    since: Timestamp,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Queued and held jobs; ids rise, so the first queued match is the oldest.
    jobs: BTreeMap<u64, Job>,
    agents: HashMap<String, Contact>,
    /// Agents that take no new job (paused or draining).
    held_back: std::collections::HashSet<String>,
}

/// The server's queue of agent jobs and what it knows of the agents.
pub struct Dispatcher {
    lease: Duration,
    state: Mutex<State>,
    /// Woken when a job is queued (or queued again).
    queued: Notify,
}

impl Dispatcher {
    pub fn new(lease: Duration) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            lease,
            state: Mutex::default(),
            queued: Notify::new(),
        })
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dispatcher lock")
    }

    /// Queues `process` for an agent with every one of `labels`; resolves when an agent
    /// reports its end (or it fails after losing agents). Cancelling the process, or
    /// dropping the future, takes the job back.
    pub fn spawn(self: &Arc<Self>, p: Process, labels: Vec<String>) -> Spawned {
        let (tx, rx) = oneshot::channel();
        let dir = p
            .dir
            .strip_prefix(&p.workspace)
            .unwrap_or(Path::new(""))
            .display()
            .to_string();
        let var = |name: &str| p.env.get(name).cloned().unwrap_or_default();
        let (step, run) = (
            var("BETCYCLE_STEP"),
            format!(
                "{} #{}",
                var("BETCYCLE_PROJECT"),
                var("BETCYCLE_RUN_NUMBER")
            ),
        );
        let waiting = {
            let mut state = self.state();
            state.next_id += 1;
            let id = state.next_id;
            let connected = state
                .agents
                .values()
                .any(|a| self.connected(a) && labels.iter().all(|l| a.labels.contains(l)));
            state.jobs.insert(
                id,
                Job {
                    spec: JobSpec {
                        id,
                        run,
                        step,
                        script: p.script.clone(),
                        dir,
                        env: p.env.clone(),
                        timeout_ms: p.timeout.map(|t| t.as_millis() as u64),
                        lease_ms: self.lease.as_millis() as u64,
                    },
                    labels: labels.clone(),
                    workspace: p.workspace.clone(),
                    on_lines: p.on_lines.clone(),
                    holder: None,
                    requeues: 0,
                    done: Some(tx),
                },
            );
            (id, connected)
        };
        let (id, connected) = waiting;
        self.queued.notify_waiters();
        let notice = format!(
            "betcycle: waiting for an agent with labels [{}]{}",
            labels.join(", "),
            if connected {
                ""
            } else {
                " (none is connected now)"
            }
        );
        (p.on_lines)(Stream::Stderr, &[&notice]);
        let taken = TakeBack(self.clone(), id);
        let cancel = p.cancel.clone();
        Box::pin(async move {
            let exit = tokio::select! {
                exit = rx => exit.unwrap_or_else(|_| Exit::SpawnFailed("the job was dropped".into())),
                _ = cancel.cancelled() => Exit::Cancelled,
            };
            drop(taken);
            exit
        })
    }

    /// Whether `agent` takes new jobs (an administrator paused or drained it); a poll
    /// waiting now sees it at once.
    pub fn hold_back(&self, agent: &str, held: bool) {
        let mut state = self.state();
        if held {
            state.held_back.insert(agent.to_string());
        } else {
            state.held_back.remove(agent);
        }
        drop(state);
        self.queued.notify_waiters();
    }

    /// An agent asks for work: its contact is recorded and, unless it is held back and
    /// while it holds fewer jobs than its capacity, the oldest queued job it can run is
    /// given to it — waiting up to `wait` for one.
    pub async fn poll(&self, agent: &str, poll: &Poll, wait: Duration) -> Option<JobSpec> {
        let until = Instant::now() + wait;
        self.state().agents.insert(
            agent.to_string(),
            Contact {
                labels: poll.labels.clone(),
                capacity: poll.capacity,
                version: poll.version.clone(),
                last_contact: Timestamp::now(),
                seen: Some(Instant::now()),
            },
        );
        let held_back = self.state().held_back.contains(agent);
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if self.state().held_back.contains(agent) != held_back {
                // Paused, drained or resumed while it waited: it hears so now.
                return None;
            }
            match self.claim(agent, poll.capacity) {
                Claim::Job(spec, on_lines) => {
                    let line = format!("betcycle: running on agent {agent} (job {})", spec.id);
                    on_lines(Stream::Stderr, &[&line]);
                    return Some(spec);
                }
                // Revoked while it waited: the next poll is refused.
                Claim::Forgotten => return None,
                Claim::Nothing => {}
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, queued).await.is_err() {
                return None;
            }
        }
    }

    fn claim(&self, agent: &str, capacity: u32) -> Claim {
        let mut state = self.state();
        let Some(contact) = state.agents.get_mut(agent) else {
            return Claim::Forgotten;
        };
        contact.last_contact = Timestamp::now();
        contact.seen = Some(Instant::now());
        let labels = contact.labels.clone();
        let held = state
            .jobs
            .values()
            .filter(|j| j.holder.as_ref().is_some_and(|h| h.agent == agent))
            .count();
        if state.held_back.contains(agent) || held >= capacity as usize {
            return Claim::Nothing;
        }
        let Some(job) = state
            .jobs
            .values_mut()
            .find(|j| j.holder.is_none() && j.labels.iter().all(|l| labels.contains(l)))
        else {
            return Claim::Nothing;
        };
        job.holder = Some(Hold {
            agent: agent.to_string(),
            deadline: Instant::now() + self.lease,
            since: Timestamp::now(),
        });
        Claim::Job(job.spec.clone(), job.on_lines.clone())
    }

    /// The workspace of job `id`, if `agent` holds it (the lease is renewed).
    pub fn workspace(&self, agent: &str, id: u64) -> Result<PathBuf, NotHeld> {
        let mut state = self.state();
        let job = held_by(&mut state, agent, id)?;
        job.holder.as_mut().expect("held").deadline = Instant::now() + self.lease;
        Ok(job.workspace.clone())
    }

    /// Output of job `id` from `agent`: passed on, and the lease renewed.
    pub fn lines(&self, agent: &str, id: u64, lines: &Lines) -> Result<(), NotHeld> {
        let on_lines = {
            let mut state = self.state();
            if let Some(contact) = state.agents.get_mut(agent) {
                contact.last_contact = Timestamp::now();
                contact.seen = Some(Instant::now());
            }
            let job = held_by(&mut state, agent, id)?;
            job.holder.as_mut().expect("held").deadline = Instant::now() + self.lease;
            job.on_lines.clone()
        };
        for burst in &lines.bursts {
            let texts: Vec<&str> = burst.lines.iter().map(String::as_str).collect();
            on_lines(burst.stream, &texts);
        }
        Ok(())
    }

    /// Job `id` ended on `agent`: it leaves the queue and its step goes on.
    pub fn finish(&self, agent: &str, id: u64, exit: Exit) -> Result<(), NotHeld> {
        let mut state = self.state();
        held_by(&mut state, agent, id)?;
        let mut job = state.jobs.remove(&id).expect("held");
        if let Some(done) = job.done.take() {
            let _ = done.send(exit);
        }
        Ok(())
    }

    /// Puts back in the queue every job whose agent let its lease run out (or, after
    /// [`MAX_REQUEUES`], fails its step); returns how many. Called every second by the
    /// `agents` worker.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let lost: Vec<u64> = self
            .state()
            .jobs
            .iter()
            .filter(|(_, j)| j.holder.as_ref().is_some_and(|h| h.deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &lost {
            self.lose(*id, "no word from it within its lease");
        }
        lost.len()
    }

    /// Takes every job `agent` holds from it (its token was revoked).
    pub fn forget_agent(&self, agent: &str) {
        let held: Vec<u64> = {
            let mut state = self.state();
            state.agents.remove(agent);
            state
                .jobs
                .iter()
                .filter(|(_, j)| j.holder.as_ref().is_some_and(|h| h.agent == agent))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in held {
            self.lose(id, "its token was revoked");
        }
        // Its waiting poll ends, so the next one is refused.
        self.queued.notify_waiters();
    }

    /// Job `id` lost its agent because of `why`: queued again, or failed.
    fn lose(&self, id: u64, why: &str) {
        let (line, on_lines) = {
            let mut state = self.state();
            let Some(job) = state.jobs.get_mut(&id) else {
                return;
            };
            let Some(hold) = job.holder.take() else {
                return;
            };
            job.requeues += 1;
            let on_lines = job.on_lines.clone();
            if job.requeues > MAX_REQUEUES {
                let reason = format!(
                    "lost agent {} ({why}), the {} time for this step",
                    hold.agent,
                    ordinal(job.requeues)
                );
                if let Some(done) = job.done.take() {
                    let _ = done.send(Exit::SpawnFailed(reason.clone()));
                }
                state.jobs.remove(&id);
                (format!("betcycle: {reason}; the step fails"), on_lines)
            } else {
                (
                    format!(
                        "betcycle: lost agent {} ({why}); the step is queued again",
                        hold.agent
                    ),
                    on_lines,
                )
            }
        };
        tracing::warn!(job = id, "{}", line.trim_start_matches("betcycle: "));
        on_lines(Stream::Stderr, &[&line]);
        self.queued.notify_waiters();
    }

    /// Every agent heard from since the server started, with the jobs it holds.
    pub fn contacts(&self) -> HashMap<String, (Contact, Vec<HeldJob>)> {
        let state = self.state();
        let mut out: HashMap<String, (Contact, Vec<HeldJob>)> = state
            .agents
            .iter()
            .map(|(name, c)| (name.clone(), (c.clone(), Vec::new())))
            .collect();
        for (id, job) in &state.jobs {
            if let Some(hold) = &job.holder
                && let Some((_, jobs)) = out.get_mut(&hold.agent)
            {
                jobs.push(HeldJob {
                    job: *id,
                    run: job.spec.run.clone(),
                    step: job.spec.step.clone(),
                    since: hold.since,
                });
            }
        }
        out
    }

    /// Jobs waiting for an agent.
    pub fn queued_count(&self) -> usize {
        self.state()
            .jobs
            .values()
            .filter(|j| j.holder.is_none())
            .count()
    }

    /// Whether `contact` was heard from within the lease.
    pub fn connected(&self, contact: &Contact) -> bool {
        contact.seen.is_some_and(|s| s.elapsed() < self.lease)
    }
}

/// The `agent-leases` worker: every second, jobs whose agent went quiet go back to the
/// queue.
pub async fn expire_leases(dispatcher: Arc<Dispatcher>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        dispatcher.expire();
    }
}

/// The agents' figures at each scrape: connected agents, jobs waiting, jobs held.
#[derive(Debug)]
pub struct Collector(pub Arc<Dispatcher>);

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("lease", &self.lease)
            .finish()
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::core::metrics::gauge;
        let (connected, queued, held) = {
            let state = self.0.state();
            let connected = state
                .agents
                .values()
                .filter(|c| self.0.connected(c))
                .count();
            let held = state.jobs.values().filter(|j| j.holder.is_some()).count();
            (connected, state.jobs.len() - held, held)
        };
        gauge(
            &mut encoder,
            "betcycle_agents_connected",
            "Remote agents heard from within their lease",
            connected as f64,
        )?;
        gauge(
            &mut encoder,
            "betcycle_agent_jobs_queued",
            "Steps with runs_on waiting for an agent",
            queued as f64,
        )?;
        gauge(
            &mut encoder,
            "betcycle_agent_jobs_running",
            "Steps with runs_on held by an agent",
            held as f64,
        )
    }
}

fn held_by<'a>(state: &'a mut State, agent: &str, id: u64) -> Result<&'a mut Job, NotHeld> {
    match state.jobs.get_mut(&id) {
        Some(job) if job.holder.as_ref().is_some_and(|h| h.agent == agent) => Ok(job),
        _ => Err(NotHeld(format!(
            "job {id} is not held by agent \"{agent}\": it finished, was cancelled, or its \
             lease ran out and it went to another agent"
        ))),
    }
}

fn ordinal(n: u32) -> String {
    match n {
        1 => "first".into(),
        2 => "second".into(),
        3 => "third".into(),
        n => format!("{n}th"),
    }
}

/// Removes job `.1` when its step stops waiting for it (cancelled, dropped).
struct TakeBack(Arc<Dispatcher>, u64);

impl Drop for TakeBack {
    fn drop(&mut self) {
        self.0.state().jobs.remove(&self.1);
    }
}

/// Packs `workspace` into a tar file at `to` (symbolic links kept as links).
pub fn pack_workspace(workspace: &Path, to: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(to)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", workspace)?;
    builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    Ok(())
}

/// Unpacks the tar at `from` over `workspace` (entries that would land outside it are
/// refused by `tar`), then removes `deleted` (relative paths inside the workspace).
pub fn apply_to_workspace(from: &Path, workspace: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::fs::File::open(from)?);
    archive.set_overwrite(true);
    archive.set_preserve_mtime(true);
    archive.unpack(workspace)
}

/// Removes what a step on an agent deleted; paths that leave the workspace are ignored.
pub fn remove_deleted(workspace: &Path, deleted: &[String]) {
    for path in deleted {
        let relative = Path::new(path);
        let inside = !path.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            continue;
        }
        let target = workspace.join(relative);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&target);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&target);
            }
            Err(_) => {}
        }
    }
}
