//! `betcycle agent`: a build machine for a BetCycle server. It long-polls the server for
//! jobs its labels allow, up to its capacity at once; for each it fetches the run's
//! workspace, runs the step as a process in its own process group (confined by Landlock
//! like the server's local steps), sends its output in batches — which renews its lease
//! — and finally the files the step changed and how it ended. A job the server no longer
//! lets it hold (cancelled, or its lease ran out) is killed at once.

use crate::exec::local::Local;
use crate::exec::local::process::{Exit, PASSTHROUGH_ENV, Stream};
use crate::exec::local::sandbox::{self, Isolation, Sandbox};
use crate::exec::remote::{Burst, Done, JobSpec, Lines, Poll, PollAnswer};
use crate::exec::{Executor, Process};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long output waits to be sent with more.
const BATCH_EVERY: Duration = Duration::from_millis(200);
/// Most output in one batch.
const BATCH_MAX: usize = 512 * 1024;

pub struct Options {
    /// The server's base URL.
    pub server: String,
    pub token: String,
    pub labels: Vec<String>,
    pub capacity: u32,
    /// Where jobs' workspaces and temp directories go.
    pub work_dir: PathBuf,
    pub isolation: Isolation,
}

/// Why a call to the server failed.
enum Failed {
    /// The server refused the agent (unknown or revoked token): stop.
    Refused(String),
    /// The server says the agent no longer holds this job: abandon it.
    NotHeld(String),
    /// Worth trying again (the network, a restart).
    Later(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused(m) | Failed::NotHeld(m) | Failed::Later(m) => f.write_str(m),
        }
    }
}

struct Agent {
    options: Options,
    client: reqwest::Client,
    /// Environment passed through to steps (`PATH`, `HOME`, …) from the agent's own.
    passthrough: BTreeMap<String, String>,
}

/// Runs the agent until `stop` (its jobs are then killed; the server gives them to
/// another agent when their leases run out) or until the server drains it.
pub async fn run(options: Options, stop: CancellationToken) -> Result<(), String> {
    std::fs::create_dir_all(options.work_dir.join("jobs"))
        .map_err(|e| format!("cannot create {}: {e}", options.work_dir.display()))?;
    // A previous agent process killed mid-job may have left process groups behind.
    sandbox::kill_leftovers(&options.work_dir.join("processes"));
    let client = crate::core::outbound::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let agent = Arc::new(Agent {
        passthrough: std::env::vars()
            .filter(|(k, _)| PASSTHROUGH_ENV.contains(&k.as_str()) && k != "TMPDIR")
            .collect(),
        client,
        options,
    });
    tracing::info!(
        server = %agent.options.server,
        labels = %agent.options.labels.join(","),
        capacity = agent.options.capacity,
        "agent started"
    );
    let slots = Arc::new(Semaphore::new(agent.options.capacity.max(1) as usize));
    let mut jobs = JoinSet::new();
    let mut backoff = Duration::from_secs(1);
    let outcome = loop {
        while jobs.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            _ = stop.cancelled() => break Ok(()),
        };
        let answer = tokio::select! {
            answer = agent.poll() => answer,
            _ = stop.cancelled() => break Ok(()),
        };
        match answer {
            Ok(PollAnswer { job: Some(job), .. }) => {
                backoff = Duration::from_secs(1);
                let (agent, stop) = (agent.clone(), stop.child_token());
                jobs.spawn(async move {
                    agent.job(job, stop).await;
                    drop(permit);
                });
            }
            Ok(PollAnswer { state, .. }) if state == "draining" => {
                tracing::info!("the server drains this agent: finishing its jobs, then exiting");
                break Ok(());
            }
            Ok(_) => backoff = Duration::from_secs(1),
            Err(Failed::Refused(reason)) => {
                break Err(format!("the server refused this agent: {reason}"));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "cannot reach the server");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    while jobs.join_next().await.is_some() {}
    outcome
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.options.server.trim_end_matches('/'))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failed> {
        let response = request
            .bearer_auth(&self.options.token)
            .send()
            .await
            .map_err(|e| Failed::Later(crate::core::outbound::describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        let message = format!("{status}: {message}");
        Err(match status.as_u16() {
            401 => Failed::Refused(message),
            409 => Failed::NotHeld(message),
            _ => Failed::Later(message),
        })
    }

    async fn poll(&self) -> Result<PollAnswer, Failed> {
        let poll = Poll {
            labels: self.options.labels.clone(),
            capacity: self.options.capacity,
            version: crate::VERSION.to_string(),
        };
        let request = self
            .client
            .post(self.url("/api/v1/agent/poll"))
            .timeout(Duration::from_secs(60))
            .json(&poll);
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| Failed::Later(format!("a poll answer that does not read: {e}")))
    }

    /// Runs one job from the workspace download to the report.
    async fn job(self: Arc<Self>, job: JobSpec, stop: CancellationToken) {
        let id = job.id;
        tracing::info!(job = id, run = %job.run, step = %job.step, "job started");
        let dir = self.options.work_dir.join("jobs").join(id.to_string());
        let outcome = self.job_in(&job, &dir, stop).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let sandbox = self.options.work_dir.join("tmp").join(format!("job-{id}"));
        let _ = tokio::fs::remove_dir_all(&sandbox).await;
        match outcome {
            Ok(exit) => tracing::info!(job = id, ?exit, "job finished"),
            Err(e) => tracing::warn!(job = id, error = %e, "job abandoned"),
        }
    }

    async fn job_in(
        &self,
        job: &JobSpec,
        dir: &Path,
        stop: CancellationToken,
    ) -> Result<Exit, Failed> {
        let workspace = dir.join("workspace");
        let _ = tokio::fs::remove_dir_all(dir).await;
        tokio::fs::create_dir_all(&workspace)
            .await
            .map_err(|e| Failed::Later(format!("cannot create {}: {e}", workspace.display())))?;
        let lease = Duration::from_millis(job.lease_ms.max(3000));
        let output = Output::default();
        let cancel = stop.child_token();
        // The lease is renewed from the start: fetching a big workspace takes time.
        let sender = {
            let (this, output, cancel) = (self.clone_handle(), output.clone(), cancel.clone());
            let id = job.id;
            tokio::spawn(async move { this.send_output(id, output, lease, cancel).await })
        };
        let exit = match self.fetch(job.id, dir, &workspace).await {
            Ok(manifest) => {
                let exit = self.execute(job, &workspace, &output, &cancel).await;
                Ok((exit, manifest))
            }
            Err(Failed::NotHeld(m)) => Err(Failed::NotHeld(m)),
            Err(e) => Ok((
                Exit::SpawnFailed(format!("the agent could not fetch the workspace: {e}")),
                Manifest::default(),
            )),
        };
        output.close();
        let sent = sender.await.unwrap_or(Ok(()));
        let (exit, manifest) = exit?;
        sent?;
        // Taken back by the server, or the agent is stopping: the server decides what
        // becomes of the step (another agent gets it once the lease runs out).
        if cancel.is_cancelled() {
            return Err(Failed::NotHeld("the job was stopped before its end".into()));
        }
        // Packing and sending a big workspace can outlast the lease: keep it meanwhile.
        let beat = tokio::spawn(self.clone_handle().keep_lease(job.id, lease));
        let reported = self.report(job, dir, &workspace, &manifest, &exit).await;
        beat.abort();
        reported.map(|()| exit)
    }

    /// Sends the step's changes, then how it ended.
    async fn report(
        &self,
        job: &JobSpec,
        dir: &Path,
        workspace: &Path,
        manifest: &Manifest,
        exit: &Exit,
    ) -> Result<(), Failed> {
        let deleted = self.send_changes(job.id, dir, workspace, manifest).await?;
        let done = Done {
            exit: exit.clone(),
            deleted,
        };
        let request = self
            .client
            .post(self.url(&format!("/api/v1/agent/jobs/{}/done", job.id)))
            .timeout(Duration::from_secs(60))
            .json(&done);
        self.retrying(request).await.map(drop)
    }

    /// Sends `request` until it is answered (or the server says the job is not held).
    async fn retrying(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failed> {
        let mut wait = Duration::from_millis(500);
        for _ in 0..6 {
            let attempt = request.try_clone().expect("a JSON body clones");
            match self.send(attempt).await {
                Err(Failed::Later(e)) => {
                    tracing::warn!(error = %e, "the server did not take a report; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => return other,
            }
        }
        Err(Failed::Later("the server did not answer".into()))
    }

    fn clone_handle(&self) -> Handle {
        Handle {
            client: self.client.clone(),
            url: self.url(""),
            token: self.options.token.clone(),
        }
    }

    /// Downloads and unpacks the workspace; returns what it held.
    async fn fetch(&self, id: u64, dir: &Path, workspace: &Path) -> Result<Manifest, Failed> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let request = self
            .client
            .get(self.url(&format!("/api/v1/agent/jobs/{id}/workspace")));
        let response = self.send(request).await?;
        let archive = dir.join("workspace.tar");
        let mut file = tokio::fs::File::create(&archive)
            .await
            .map_err(|e| Failed::Later(format!("cannot write {}: {e}", archive.display())))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failed::Later(crate::core::outbound::describe(&e)))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| Failed::Later(format!("cannot write the workspace: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| Failed::Later(e.to_string()))?;
        let (archive, workspace) = (archive.clone(), workspace.to_path_buf());
        tokio::task::spawn_blocking(move || {
            crate::exec::remote::apply_to_workspace(&archive, &workspace)?;
            std::fs::remove_file(&archive)?;
            Ok::<_, std::io::Error>(Manifest::of(&workspace))
        })
        .await
        .map_err(|e| Failed::Later(e.to_string()))?
        .map_err(|e| Failed::Later(format!("cannot unpack the workspace: {e}")))
    }

    /// Runs the step's process to its end.
    async fn execute(
        &self,
        job: &JobSpec,
        workspace: &Path,
        output: &Output,
        cancel: &CancellationToken,
    ) -> Exit {
        let local = Local {
            sandbox: Sandbox::on_server(
                &self.options.work_dir,
                self.options.isolation,
                &format!("job-{}", job.id),
            ),
        };
        let mut env = self.passthrough.clone();
        env.extend(job.env.clone());
        env.extend(local.env());
        env.insert("BETCYCLE_WORKSPACE".into(), workspace.display().to_string());
        let dir = workspace.join(&job.dir);
        let on_lines = {
            let output = output.clone();
            Arc::new(move |stream: Stream, lines: &[&str]| output.push(stream, lines))
        };
        let process = Process {
            script: job.script.clone(),
            workspace: workspace.to_path_buf(),
            dir,
            env,
            timeout: job.timeout_ms.map(Duration::from_millis),
            cancel: cancel.clone(),
            on_lines,
            container: None,
        };
        match local.spawn(process) {
            Ok(spawned) => spawned.await,
            Err(e) => Exit::SpawnFailed(e),
        }
    }

    /// Uploads what the step added or changed; returns what it deleted.
    async fn send_changes(
        &self,
        id: u64,
        dir: &Path,
        workspace: &Path,
        before: &Manifest,
    ) -> Result<Vec<String>, Failed> {
        let archive = dir.join("changes.tar");
        let (to, ws, before) = (archive.clone(), workspace.to_path_buf(), before.clone());
        let deleted = tokio::task::spawn_blocking(move || before.pack_changes(&ws, &to))
            .await
            .map_err(|e| Failed::Later(e.to_string()))?
            .map_err(|e| Failed::Later(format!("cannot pack the workspace's changes: {e}")))?;
        let file = tokio::fs::File::open(&archive)
            .await
            .map_err(|e| Failed::Later(e.to_string()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let request = self
            .client
            .put(self.url(&format!("/api/v1/agent/jobs/{id}/workspace")))
            .header("content-type", "application/x-tar")
            .body(body);
        self.send(request).await?;
        Ok(deleted)
    }
}

/// What the output sender needs of the agent.
struct Handle {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Handle {
    /// Renews the lease on job `id` every third of it, until aborted.
    async fn keep_lease(self, id: u64, lease: Duration) {
        let url = format!("{}/api/v1/agent/jobs/{id}/lines", self.url);
        loop {
            tokio::time::sleep(lease / 3).await;
            let _ = self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .timeout(lease / 2)
                .json(&Lines::default())
                .send()
                .await;
        }
    }

    /// Sends the job's output in batches, and nothing at least every third of the lease
    /// to keep it; cancels the job when the server says it is no longer held.
    async fn send_output(
        &self,
        id: u64,
        output: Output,
        lease: Duration,
        cancel: CancellationToken,
    ) -> Result<(), Failed> {
        let url = format!("{}/api/v1/agent/jobs/{id}/lines", self.url);
        let mut last = Instant::now();
        let mut unsent: Vec<Burst> = Vec::new();
        loop {
            let closed = output.wait(BATCH_EVERY).await;
            unsent.extend(output.take(BATCH_MAX));
            if unsent.is_empty() && !closed && last.elapsed() < lease / 3 {
                continue;
            }
            let request = self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .timeout(lease / 2)
                .json(&Lines {
                    bursts: unsent.clone(),
                });
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    unsent.clear();
                    last = Instant::now();
                }
                Ok(r) if matches!(r.status().as_u16(), 401 | 409) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    cancel.cancel();
                    return Err(Failed::NotHeld(format!("{status}: {text}")));
                }
                Ok(r) => {
                    tracing::warn!(job = id, status = %r.status(), "output not taken; retrying")
                }
                Err(e) => {
                    tracing::warn!(job = id, error = %crate::core::outbound::describe(&e), "output not sent; retrying")
                }
            }
            if closed && unsent.is_empty() && output.is_empty() {
                return Ok(());
            }
            if closed && last.elapsed() > lease {
                return Err(Failed::Later("the job's output could not be sent".into()));
            }
        }
    }
}

/// A job's output waiting to be sent.
#[derive(Clone, Default)]
struct Output(Arc<Pending>);

#[derive(Default)]
struct Pending {
    /// The bursts not sent yet, and whether the process has ended.
    held: Mutex<(Vec<Burst>, bool)>,
    arrived: tokio::sync::Notify,
}

impl Output {
    fn held(&self) -> std::sync::MutexGuard<'_, (Vec<Burst>, bool)> {
        self.0.held.lock().expect("output lock")
    }

    fn push(&self, stream: Stream, lines: &[&str]) {
        self.held().0.push(Burst {
            stream,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        });
        self.0.arrived.notify_one();
    }

    fn close(&self) {
        self.held().1 = true;
        self.0.arrived.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.held().0.is_empty()
    }

    fn closed(&self) -> bool {
        self.held().1
    }

    /// Waits up to `most` for output (then a little more, to batch it); whether closed.
    async fn wait(&self, most: Duration) -> bool {
        if self.is_empty() && !self.closed() {
            let _ = tokio::time::timeout(most, self.0.arrived.notified()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.closed()
    }

    /// Bursts up to about `bytes` of text, oldest first.
    fn take(&self, bytes: usize) -> Vec<Burst> {
        let mut held = self.held();
        let mut size = 0;
        let mut n = 0;
        for burst in &held.0 {
            if n > 0 && size >= bytes {
                break;
            }
            size += burst.lines.iter().map(|l| l.len() + 1).sum::<usize>();
            n += 1;
        }
        held.0.drain(..n).collect()
    }
}

/// The workspace as it was unpacked: each entry's kind, size and modification time.
#[derive(Clone, Default)]
struct Manifest(HashMap<PathBuf, (bool, u64, Option<SystemTime>)>);

impl Manifest {
    fn of(workspace: &Path) -> Manifest {
        let mut entries = HashMap::new();
        for entry in walkdir::WalkDir::new(workspace)
            .min_depth(1)
            .follow_links(false)
        {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(relative) = entry.path().strip_prefix(workspace) else {
                continue;
            };
            entries.insert(
                relative.to_path_buf(),
                (meta.is_dir(), meta.len(), meta.modified().ok()),
            );
        }
        Manifest(entries)
    }

    /// Packs every entry that is new or changed since `self` into a tar at `to`; returns
    /// the paths that are gone.
    fn pack_changes(&self, workspace: &Path, to: &Path) -> std::io::Result<Vec<String>> {
        let now = Manifest::of(workspace);
        let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(to)?));
        builder.follow_symlinks(false);
        let mut changed: Vec<&PathBuf> = now
            .0
            .iter()
            .filter(|(path, entry)| match self.0.get(*path) {
                None => true,
                Some(before) => !entry.0 && before != *entry,
            })
            .map(|(path, _)| path)
            .collect();
        changed.sort();
        for path in changed {
            let full = workspace.join(path);
            if full.is_dir() && !full.is_symlink() {
                builder.append_dir(path, &full)?;
            } else {
                builder.append_path_with_name(&full, path)?;
            }
        }
        builder
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        let mut deleted: Vec<String> = self
            .0
            .keys()
            .filter(|path| !now.0.contains_key(*path))
            // A deleted directory covers what was in it.
            .filter(|path| {
                path.parent()
                    .is_none_or(|p| p.as_os_str().is_empty() || now.0.contains_key(p))
            })
            .map(|path| path.display().to_string())
            .collect();
        deleted.sort();
        Ok(deleted)
    }
}
