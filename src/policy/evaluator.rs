//! Gate evaluations off the server process. A Rego policy is code a maintainer (or a
//! repository) wrote; regorus checks its time limit only between steps of evaluation,
//! and nothing bounds the memory one `concat` or comprehension can take. So the server
//! never evaluates a policy itself: it hands each evaluation to a worker — the same
//! binary as `betcycle policy-worker`, a child process with an address-space limit —
//! and kills the worker when an evaluation outlives its deadline. A policy that runs
//! away fails its own gate with a clear error; it cannot take the server down.
//!
//! Workers are kept between evaluations (a spawn costs milliseconds, an evaluation
//! microseconds) and keep each policy set they compiled, keyed by its modules' digest.

use super::{Gate, Module, Outcome, PolicySet, TIME_LIMIT};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How much address space a worker may use.
pub const MEMORY_LIMIT: u64 = 256 * 1024 * 1024;

/// How long the server waits for one evaluation before it kills the worker: the
/// engine's own limit plus time for a worker to start and compile.
const DEADLINE: Duration = Duration::from_millis(TIME_LIMIT.as_millis() as u64 + 1500);

/// Workers at most, each evaluating one set at a time: the most memory policies can
/// take is this many times `MEMORY_LIMIT`.
const WORKERS: usize = 2;

/// Policy sets a worker keeps compiled.
const WORKER_SETS: usize = 64;

#[derive(Serialize, Deserialize)]
struct Request {
    /// The digest of the modules.
    set: String,
    /// The modules, when this worker has not compiled `set` yet.
    modules: Option<Vec<Module>>,
    gate: Gate,
    input: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
enum Response {
    Outcome(Outcome),
    /// The set does not compile (or the request was malformed).
    Error(String),
}

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    compiled: HashSet<String>,
}

/// Evaluates policy sets in worker processes.
pub struct Evaluator {
    exe: PathBuf,
    idle: std::sync::Mutex<Vec<Worker>>,
    permits: tokio::sync::Semaphore,
    limit: Duration,
}

/// The digest a set of modules is known by.
fn digest(modules: &[Module]) -> String {
    let mut hasher = Sha256::new();
    for m in modules {
        for part in [m.name.as_bytes(), m.source.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    crate::identity::secret::hex(&hasher.finalize())
}

impl Evaluator {
    /// Workers run `exe` (this binary).
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(WORKERS),
            limit: DEADLINE,
        }
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("policy-worker")
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        // SAFETY: setrlimit is async-signal-safe; nothing is allocated in the child.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: MEMORY_LIMIT,
                    rlim_max: MEMORY_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Worker {
            child,
            stdin,
            stdout,
            compiled: HashSet::new(),
        })
    }

    /// Evaluates `gate` on `input` with the set `modules`; what went wrong — the set does
    /// not compile, or it ran past its time or memory limit — is an error in the outcome,
    /// naming the modules.
    pub async fn evaluate(
        &self,
        modules: &[Module],
        gate: Gate,
        input: &serde_json::Value,
    ) -> Outcome {
        if modules.is_empty() {
            return Outcome::default();
        }
        // Only the gate's own package is evaluated: a runaway is among those modules.
        let package = format!("package {}", gate.package());
        let names = modules
            .iter()
            .filter(|m| m.source.lines().any(|l| l.trim() == package))
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let failed = |error: String| Outcome {
            errors: vec![error],
            ..Default::default()
        };
        let _permit = self.permits.acquire().await.expect("never closed");
        let worker = self.idle.lock().expect("evaluator lock").pop();
        let mut worker = match worker {
            Some(w) => w,
            None => match self.spawn() {
                Ok(w) => w,
                Err(e) => return failed(format!("cannot start a policy worker: {e}")),
            },
        };
        let set = digest(modules);
        let known = worker.compiled.contains(&set);
        // The worker forgets its sets at the same moment (see `serve_worker`).
        if !known && worker.compiled.len() >= WORKER_SETS {
            worker.compiled.clear();
        }
        let request = Request {
            modules: (!known).then(|| modules.to_vec()),
            set: set.clone(),
            gate,
            input: input.clone(),
        };
        let response = match exchange(&mut worker, &request, self.limit).await {
            Ok(response) => response,
            Err(stopped) => return failed(stopped.say(&names)),
        };
        let outcome = match response {
            Ok(Response::Outcome(mut outcome)) => {
                worker.compiled.insert(set);
                // The engine's own timer, when it caught the runaway first: said the same way.
                for e in outcome.errors.iter_mut() {
                    if e.contains("exceeded time limit") {
                        *e = format!(
                            "policy {names} exceeded its time limit ({} ms) and was stopped",
                            TIME_LIMIT.as_millis()
                        );
                    }
                }
                outcome
            }
            Ok(Response::Error(e)) => failed(e),
            Err(e) => failed(e),
        };
        self.idle.lock().expect("evaluator lock").push(worker);
        outcome
    }
}

/// How a worker stopped without answering.
enum Stopped {
    /// It died: the kernel refused it memory (Rust aborts on a failed allocation), or it
    /// crashed.
    Died(Option<std::process::ExitStatus>),
    /// It ran past the deadline and was killed.
    Late,
}

impl Stopped {
    fn say(&self, names: &str) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Stopped::Died(status) => match status.and_then(|s| s.signal()) {
                Some(libc::SIGABRT) | Some(libc::SIGKILL) | Some(libc::SIGSEGV) => format!(
                    "policy {names} exceeded its memory limit ({} MiB) and was stopped",
                    MEMORY_LIMIT / (1024 * 1024)
                ),
                _ => format!("policy {names} stopped its evaluator ({status:?})"),
            },
            Stopped::Late => format!(
                "policy {names} exceeded its time limit ({} ms) and was stopped",
                TIME_LIMIT.as_millis()
            ),
        }
    }
}

/// Sends `request` to `worker` and reads its answer within `limit`; a worker that dies or
/// runs late is reaped.
async fn exchange(
    worker: &mut Worker,
    request: &Request,
    limit: std::time::Duration,
) -> Result<Result<Response, String>, Stopped> {
    let talk = async {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        worker.stdin.write_all(&line).await?;
        worker.stdin.flush().await?;
        let mut answer = String::new();
        worker.stdout.read_line(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(limit, talk).await {
        Ok(Ok(answer)) if !answer.is_empty() => Ok(serde_json::from_str::<Response>(&answer)
            .map_err(|e| format!("policy worker answered nonsense: {e}"))),
        Ok(Ok(_)) | Ok(Err(_)) => Err(Stopped::Died(worker.child.wait().await.ok())),
        Err(_) => {
            let _ = worker.child.start_kill();
            let _ = worker.child.wait().await;
            Err(Stopped::Late)
        }
    }
}

/// `betcycle policy-worker`: answers evaluation requests, one JSON line each, on stdin
/// and stdout until stdin closes. Started by the server, never by a person.
pub fn serve_worker() -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut sets: HashMap<String, PolicySet> = HashMap::new();
    for line in stdin.lines() {
        let line = line?;
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("malformed evaluation request: {e}")),
            Ok(request) => {
                if let Some(modules) = &request.modules {
                    if sets.len() >= WORKER_SETS {
                        sets.clear();
                    }
                    match PolicySet::new(modules, TIME_LIMIT) {
                        Ok(set) => {
                            sets.insert(request.set.clone(), set);
                        }
                        Err(e) => {
                            sets.remove(&request.set);
                            writeln!(stdout, "{}", json(&Response::Error(e)))?;
                            stdout.flush()?;
                            continue;
                        }
                    }
                }
                match sets.get(&request.set) {
                    Some(set) => Response::Outcome(
                        set.evaluate(request.gate, regorus::Value::from(request.input)),
                    ),
                    None => Response::Error("policy set not loaded in this worker".into()),
                }
            }
        };
        writeln!(stdout, "{}", json(&response))?;
        stdout.flush()?;
    }
    Ok(())
}

fn json(response: &Response) -> String {
    serde_json::to_string(response).expect("responses serialise")
}
