//! Services: the team's own releases run by BetCycle on this node (the `service` deploy
//! target). A *release set* is one release's instances in one environment; an
//! environment serves from its *stable* set and, during a canary, a weighted *canary*
//! set. The supervisor (`supervisor.rs`) keeps each instance's process running, the
//! probes (`health.rs`) decide which instances take traffic, the reverse proxy
//! (`proxy.rs`) routes by Host and path to them and measures each set (`stats.rs`).
//!
//! What survives a restart of BetCycle is in the store: every instance (pid, start
//! time, port) in `service-instances-1` and every environment's stable release in
//! `service-routes-1`. At start, [`Services::recover`] adopts the instances still alive,
//! restarts the stable sets' dead ones and kills what belonged to an unfinished rollout.

pub mod cgroup;
pub mod health;
pub mod pool;
pub mod proxy;
pub mod shard;
pub mod stats;
pub mod supervisor;

use crate::ci::pipeline::deploy::{Health, ServiceTarget, Target as TargetDef};
use crate::core::error::{Error, Result};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use supervisor::{Launch, Supervised};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// One instance as stored: enough to adopt its process after a restart of BetCycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: u64,
    pub project: String,
    pub environment: String,
    /// The deployment (number) that started it, and its release (number).
    pub deployment: u64,
    pub release: u64,
    /// 1-based position among the set's instances.
    pub slot: u32,
    pub port: u16,
    #[serde(default)]
    pub pid: Option<u32>,
    /// The process's start time (clock ticks since boot), to tell a reused pid apart.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_exit: Option<String>,
    pub created_at: jiff::Timestamp,
}

/// Which release of an environment serves there now, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub project: String,
    pub environment: String,
    pub host: String,
    #[serde(default)]
    pub path: Option<String>,
    pub deployment: u64,
    pub release: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, not (yet) healthy.
    Starting,
    /// Exited; a restart is due after its backoff.
    Exited,
    /// Exited five times in a row; still restarted, at the longest backoff.
    CrashLoop,
    Stopped,
}

/// Stable or canary: which of an environment's sets a request went to (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Track {
    Stable,
    Canary,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// Where the proxy sends a request: an instance's address, while it is healthy.
pub struct Upstream {
    pub addr: SocketAddr,
    pub healthy: AtomicBool,
}

/// One instance of a set: its process, its address for the proxy, its probes.
pub struct Member {
    pub service: String,
    pub supervised: Arc<Supervised>,
    pub upstream: Arc<Upstream>,
    pub probes: Mutex<VecDeque<health::ProbeResult>>,
    pub probed: Notify,
}

/// One release's instances in one environment.
pub struct ReleaseSet {
    pub project: String,
    pub environment: String,
    pub deployment: u64,
    pub release: u64,
    pub label: String,
    pub members: Vec<Arc<Member>>,
    /// Requests in flight to this set (drain waits for 0).
    pub in_flight: shard::InProgress,
    /// Cancelled at the drain deadline: open WebSockets to the set are closed.
    pub closing: CancellationToken,
    pub stats: stats::Stats,
    /// What the proxy measured, every [`SAMPLE_EVERY`], the last [`SAMPLES`] of them.
    pub history: Mutex<VecDeque<stats::Sample>>,
    /// While this set is a canary: the requests split between it and the stable set.
    /// One count for all proxy threads (the one counter they share, and only during a
    /// canary), so every 100 requests give the canary exactly its weight.
    pub split: crossbeam_utils::CachePadded<AtomicU64>,
    probes: CancellationToken,
    dir: PathBuf,
}

impl ReleaseSet {
    /// The next healthy instance, round-robin from the caller's count `start` (each
    /// proxy thread keeps its own); any instance when none is healthy (the request then
    /// fails as it would without the proxy).
    pub fn pick(&self, start: usize) -> Option<&Arc<Upstream>> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        (0..n)
            .map(|i| &self.members[(start + i) % n].upstream)
            .find(|u| u.healthy.load(Ordering::Relaxed))
            .or(Some(&self.members[start % n].upstream))
    }

    pub fn healthy(&self) -> bool {
        self.members
            .iter()
            .all(|m| m.upstream.healthy.load(Ordering::Relaxed))
    }

    /// Why the set is not healthy: each instance's state, last exit and last probes.
    pub fn explain(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let r = m.supervised.snapshot();
                let probes: Vec<String> = m
                    .probes
                    .lock()
                    .expect("probe lock")
                    .iter()
                    .rev()
                    .take(3)
                    .map(|p| p.detail.clone())
                    .collect();
                let mut out = format!("instance {} (port {})", r.slot, r.port);
                if let Some(exit) = &r.last_exit {
                    out.push_str(&format!(": {exit}"));
                }
                if !probes.is_empty() {
                    out.push_str(&format!("; last probes: {}", probes.join(", ")));
                }
                out
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stops every instance and its probes and removes the release's directory.
    pub async fn stop(&self) {
        self.probes.cancel();
        futures_util::future::join_all(self.members.iter().map(|m| m.supervised.stop())).await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

/// How often a release set's measurements are sampled for its chart, and how many
/// samples are kept (three minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
pub const SAMPLES: usize = 90;

/// Samples `set`'s measurements until it is stopped.
async fn sample(set: Arc<ReleaseSet>) {
    let mut last = set.stats.snapshot();
    loop {
        tokio::select! {
            () = set.probes.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        let now = set.stats.snapshot();
        let window = now.since(&last);
        last = now;
        let mut history = set.history.lock().expect("history lock");
        if history.len() == SAMPLES {
            history.pop_front();
        }
        history.push_back(stats::Sample::of(&window));
    }
}

/// What the proxy routes for one environment. Never changed once made: a switch makes a
/// new one (so a proxy thread may keep its own copy until the table's version moves).
#[derive(Clone)]
pub struct Site {
    pub host: String,
    pub path: Option<String>,
    /// `project/environment`: the `service` metric label.
    pub service: String,
    pub stable: Arc<ReleaseSet>,
    /// The canary set and its share in percent.
    pub canary: Option<(Arc<ReleaseSet>, u32)>,
    pub sticky: bool,
    /// The proxy's metric handles for this service, stable and canary (made at its first
    /// request).
    pub meters: std::sync::OnceLock<[proxy::Meters; 2]>,
}

/// Every site, most specific first (a host's longer path prefixes before shorter).
#[derive(Default)]
pub struct RouteTable {
    pub sites: Vec<Arc<Site>>,
}

/// Whether a site's path `prefix` takes `path`: whole segments only, so `/api` takes
/// `/api` and `/api/x`, not `/apiary`.
fn covers(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix.trim_end_matches('/'))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_prefix_takes_whole_segments() {
        let matches = super::covers;
        assert!(matches("/api", "/api") && matches("/api", "/api/x") && matches("/api/", "/api/x"));
        assert!(!matches("/api", "/apiary") && !matches("/api", "/"));
        assert!(matches("/", "/anything"));
    }
}

impl Site {
    pub fn set(&self, track: Track) -> &Arc<ReleaseSet> {
        match (&self.canary, track) {
            (Some((canary, _)), Track::Canary) => canary,
            _ => &self.stable,
        }
    }
}

impl RouteTable {
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Site>> {
        self.sites.iter().find(|s| {
            s.host.eq_ignore_ascii_case(host) && s.path.as_deref().is_none_or(|p| covers(p, path))
        })
    }
}

/// A running rollout's manual controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Run,
    Promote,
    Abort,
}

/// An environment's sets as the control plane holds them.
#[derive(Default)]
struct EnvState {
    site: Option<Arc<Site>>,
    control: Option<(u64, watch::Sender<Control>)>,
}

/// What a new release set is started from.
pub struct SetSpec {
    pub project: String,
    pub environment: String,
    pub deployment: u64,
    pub release: u64,
    pub label: String,
    pub target: ServiceTarget,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub sandbox: Option<crate::exec::local::sandbox::Sandbox>,
    /// Instances to adopt (after a restart); new ones are created when empty.
    pub adopt: Vec<InstanceRecord>,
}

pub struct Services {
    store: Store,
    data_dir: PathBuf,
    http: reqwest::Client,
    table: RwLock<Arc<RouteTable>>,
    /// Moves on every change of `table` (proxy threads keep a copy until it does).
    version: AtomicU64,
    envs: Mutex<HashMap<(String, String), EnvState>>,
    pub metrics: proxy::ProxyMetrics,
    /// The Prometheus server canary analyses query (`prometheus.url`).
    pub prometheus: Option<String>,
}

impl Services {
    pub fn new(store: Store, data_dir: PathBuf, prometheus: Option<String>) -> Arc<Services> {
        Arc::new(Services {
            store,
            data_dir,
            prometheus,
            http: health::client(),
            table: RwLock::new(Arc::new(RouteTable::default())),
            version: AtomicU64::new(0),
            envs: Mutex::new(HashMap::new()),
            metrics: proxy::ProxyMetrics::default(),
        })
    }

    /// Where a release set of `project`'s `environment` lives.
    pub fn set_dir(&self, project: &str, environment: &str, deployment: u64) -> PathBuf {
        self.data_dir
            .join("services")
            .join(project)
            .join(environment)
            .join(deployment.to_string())
    }

    /// The name of an instance's cgroup: unique on the host, also among the BetCycle
    /// servers on it (the data directory's digest).
    fn cgroup_name(&self, instance: u64) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.data_dir.as_os_str().as_encoded_bytes());
        format!("betcycle-{}-{instance}", hex::encode(&digest[..6]))
    }

    /// The route table's version: it moves (sequentially consistent, after the new
    /// table is in place) on every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// The route table with its version.
    pub fn versioned_table(&self) -> (u64, Arc<RouteTable>) {
        let table = self.table.read().expect("route lock");
        (self.version.load(Ordering::SeqCst), table.clone())
    }

    /// Starts (or adopts) a release set's instances and their probes.
    pub async fn start(&self, spec: SetSpec) -> Result<Arc<ReleaseSet>> {
        let service = format!("{}/{}", spec.project, spec.environment);
        let mut records = spec.adopt.clone();
        if records.is_empty() {
            // A port the kernel calls free may be one another instance was just given
            // and has not bound yet.
            let mut taken: std::collections::HashSet<u16> = self
                .store
                .service_instances()
                .await?
                .iter()
                .map(|i| i.port)
                .collect();
            for slot in 1..=spec.target.instances() {
                let mut port = supervisor::free_port()?;
                for _ in 0..20 {
                    if taken.insert(port) {
                        break;
                    }
                    port = supervisor::free_port()?;
                }
                let record = InstanceRecord {
                    id: self.store.next_service_instance_id().await?,
                    project: spec.project.clone(),
                    environment: spec.environment.clone(),
                    deployment: spec.deployment,
                    release: spec.release,
                    slot,
                    port,
                    pid: None,
                    start_ticks: None,
                    restarts: 0,
                    last_exit: None,
                    created_at: jiff::Timestamp::now(),
                };
                self.store.put_service_instance(record.clone()).await?;
                records.push(record);
            }
        }
        let health: Health = spec.target.health();
        let limits = cgroup::Limits {
            memory: spec.target.memory_bytes(),
            cpus: spec.target.cpus,
        };
        let layout = match limits.any() {
            true => Some(cgroup::layout().map_err(|e| {
                Error::Invalid(format!("memory and cpus cannot be limited here: {e}"))
            })?),
            false => None,
        };
        let probes = CancellationToken::new();
        let mut members = Vec::new();
        for record in records {
            let cgroup = layout
                .map(|layout| cgroup::Cgroup::new(layout, &self.cgroup_name(record.id), limits));
            let launch = Launch {
                command: spec.target.command.clone(),
                dir: spec.dir.join("workspace"),
                env: spec.env.clone(),
                log: spec.dir.join(format!("instance-{}.log", record.slot)),
                stop_grace: spec.target.stop_grace(),
                sandbox: spec.sandbox.clone(),
                cgroup,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], record.port));
            let member = Arc::new(Member {
                service: service.clone(),
                supervised: Supervised::start(self.store.clone(), record, launch),
                upstream: Arc::new(Upstream {
                    addr,
                    healthy: AtomicBool::new(false),
                }),
                probes: Mutex::new(VecDeque::new()),
                probed: Notify::new(),
            });
            tokio::spawn(health::probe(
                member.clone(),
                health.clone(),
                self.http.clone(),
                self.store.clone(),
                probes.clone(),
            ));
            members.push(member);
        }
        let set = Arc::new(ReleaseSet {
            project: spec.project,
            environment: spec.environment,
            deployment: spec.deployment,
            release: spec.release,
            label: spec.label,
            members,
            in_flight: shard::InProgress::default(),
            closing: CancellationToken::new(),
            stats: stats::Stats::default(),
            history: Mutex::new(VecDeque::new()),
            split: Default::default(),
            probes,
            dir: spec.dir,
        });
        tokio::spawn(sample(set.clone()));
        Ok(set)
    }

    /// Waits until every instance of `set` is healthy. Fails at `timeout`, or at once
    /// when an instance exits first, with what the instances and probes said.
    pub async fn wait_healthy(
        &self,
        set: &ReleaseSet,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if set.healthy() {
                return Ok(());
            }
            if let Some(m) = set.members.iter().find(|m| {
                matches!(
                    *m.supervised.state.borrow(),
                    InstanceState::Exited | InstanceState::CrashLoop
                )
            }) {
                let r = m.supervised.snapshot();
                return Err(Error::Invalid(format!(
                    "instance {} exited before it became healthy ({}); last output: {}",
                    r.slot,
                    r.last_exit.unwrap_or_default(),
                    tail(&set.dir.join(format!("instance-{}.log", r.slot)), 5)
                )));
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Invalid(format!(
                        "the release did not become healthy within {}: {}",
                        humantime(timeout),
                        set.explain()
                    )));
                }
                () = shutdown.cancelled() => return Err(Error::Unavailable("BetCycle is stopping".into())),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// The site of an environment now.
    pub fn site(&self, project: &str, environment: &str) -> Option<Arc<Site>> {
        self.envs
            .lock()
            .expect("services lock")
            .get(&(project.to_string(), environment.to_string()))
            .and_then(|e| e.site.clone())
    }

    /// Makes `site` what the proxy routes for its environment, in one swap of the table.
    pub fn publish(&self, site: Site) -> Result<()> {
        let key = (site.stable.project.clone(), site.stable.environment.clone());
        let site = Arc::new(site);
        let mut envs = self.envs.lock().expect("services lock");
        if let Some((other, _)) = envs.iter().find(|(k, e)| {
            **k != key
                && e.site
                    .as_ref()
                    .is_some_and(|s| s.host.eq_ignore_ascii_case(&site.host) && s.path == site.path)
        }) {
            return Err(Error::Conflict(format!(
                "host {} (path {}) is already served by {}/{}",
                site.host,
                site.path.as_deref().unwrap_or("/"),
                other.0,
                other.1
            )));
        }
        envs.entry(key).or_default().site = Some(site);
        self.rebuild(&envs);
        Ok(())
    }

    fn rebuild(&self, envs: &HashMap<(String, String), EnvState>) {
        let mut sites: Vec<Arc<Site>> = envs.values().filter_map(|e| e.site.clone()).collect();
        sites.sort_by(|a, b| {
            let len = |s: &Site| s.path.as_deref().map_or(0, str::len);
            a.host.cmp(&b.host).then(len(b).cmp(&len(a)))
        });
        let mut table = self.table.write().expect("route lock");
        *table = Arc::new(RouteTable { sites });
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops what an environment serves and forgets it (the environment was deleted).
    pub async fn remove(&self, project: &str, environment: &str) -> Result<()> {
        let site = {
            let mut envs = self.envs.lock().expect("services lock");
            let site = envs
                .remove(&(project.to_string(), environment.to_string()))
                .and_then(|e| e.site);
            self.rebuild(&envs);
            site
        };
        self.store
            .delete_service_route(project, environment)
            .await?;
        let probe = crate::monitoring::probes::service_probe_name(project, environment);
        self.store.remove_managed_probe(&probe).await?;
        if let Some(site) = site {
            site.stable.stop().await;
            if let Some((canary, _)) = &site.canary {
                canary.stop().await;
            }
        }
        Ok(())
    }

    /// Records which release serves an environment, for the next start, and keeps the
    /// environment's service probe (its health check, with uptime and `probe_down`).
    pub async fn remember(&self, set: &ReleaseSet, target: &ServiceTarget) -> Result<()> {
        self.store
            .put_service_route(RouteRecord {
                project: set.project.clone(),
                environment: set.environment.clone(),
                host: target.host.clone(),
                path: target.path.clone(),
                deployment: set.deployment,
                release: set.release,
            })
            .await?;
        let probe = crate::monitoring::probes::for_service(
            &set.project,
            &set.environment,
            &target.health(),
        );
        self.store.put_managed_probe(probe).await
    }

    /// Waits until the requests in flight to `set` are done, at most `grace`; then
    /// closes its WebSockets and stops it. Called once `set` is out of the route table:
    /// a proxy thread counts a request in flight before it checks the table's version
    /// (both sequentially consistent), so a request either is counted here or sees the
    /// new table and goes there.
    pub async fn retire(&self, set: Arc<ReleaseSet>, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while set.in_flight.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        set.closing.cancel();
        set.stop().await;
    }

    /// Opens the manual controls of a rollout in an environment.
    pub fn open_controls(
        &self,
        project: &str,
        environment: &str,
        deployment: u64,
    ) -> watch::Receiver<Control> {
        let (tx, rx) = watch::channel(Control::Run);
        self.envs
            .lock()
            .expect("services lock")
            .entry((project.to_string(), environment.to_string()))
            .or_default()
            .control = Some((deployment, tx));
        rx
    }

    pub fn close_controls(&self, project: &str, environment: &str) {
        if let Some(e) = self
            .envs
            .lock()
            .expect("services lock")
            .get_mut(&(project.to_string(), environment.to_string()))
        {
            e.control = None;
        }
    }

    /// Runs a canary's Prometheus query and returns its result (the first sample of a
    /// vector, or a scalar).
    pub async fn query_prometheus(&self, query: &str) -> std::result::Result<f64, String> {
        let base = self
            .prometheus
            .as_deref()
            .ok_or("no Prometheus server is configured (prometheus.url)")?;
        let mut url = url::Url::parse(&format!("{base}/api/v1/query"))
            .map_err(|e| format!("prometheus.url: {e}"))?;
        url.query_pairs_mut().append_pair("query", query);
        let answer: serde_json::Value = self
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("Prometheus could not be reached: {e}"))?
            .json()
            .await
            .map_err(|e| format!("Prometheus answered something else than JSON: {e}"))?;
        if answer["status"] != "success" {
            return Err(format!(
                "Prometheus refused the query: {}",
                answer["error"].as_str().unwrap_or("no reason given")
            ));
        }
        let data = &answer["data"];
        let sample = match data["resultType"].as_str() {
            Some("vector") => &data["result"][0]["value"][1],
            Some("scalar") => &data["result"][1],
            other => {
                return Err(format!(
                    "the query gave a {} result; it needs a vector or a scalar",
                    other.unwrap_or("missing")
                ));
            }
        };
        sample
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| "the query gave no finite number (an empty vector?)".to_string())
    }

    /// Promotes or aborts the canary of deployment `deployment`; `Conflict` when no
    /// canary of that deployment is running.
    pub fn steer(
        &self,
        project: &str,
        environment: &str,
        deployment: u64,
        what: Control,
    ) -> Result<()> {
        let envs = self.envs.lock().expect("services lock");
        match envs
            .get(&(project.to_string(), environment.to_string()))
            .and_then(|e| e.control.as_ref())
        {
            Some((d, tx)) if *d == deployment => {
                tx.send_replace(what);
                Ok(())
            }
            _ => Err(Error::Conflict(format!(
                "deployment {deployment} has no canary in progress"
            ))),
        }
    }

    /// Stops every site's watchers without stopping the processes: BetCycle is shutting
    /// down and the next start adopts them.
    pub fn release_all(&self) {
        let envs = self.envs.lock().expect("services lock");
        for e in envs.values() {
            if let Some(site) = &e.site {
                for set in std::iter::once(&site.stable).chain(site.canary.as_ref().map(|c| &c.0)) {
                    set.probes.cancel();
                    for m in &set.members {
                        m.supervised.release();
                    }
                }
            }
        }
    }

    /// After a start: adopts or restarts every environment's stable set, and kills the
    /// instances of rollouts the last process left unfinished.
    pub async fn recover(&self, secrets: &crate::secrets::Secrets) -> Result<()> {
        let routes = self.store.service_routes().await?;
        let mut instances = self.store.service_instances().await?;
        for route in routes {
            let (mine, rest): (Vec<_>, Vec<_>) = instances.into_iter().partition(|i| {
                i.project == route.project
                    && i.environment == route.environment
                    && i.deployment == route.deployment
            });
            instances = rest;
            if let Err(e) = self.recover_route(&route, mine, secrets).await {
                tracing::error!(project = %route.project, environment = %route.environment, error = %e, "cannot restore a service");
            }
        }
        for orphan in instances {
            supervisor::kill_recorded(&orphan);
            cgroup::remove_leftover(&self.cgroup_name(orphan.id)).await;
            self.store.delete_service_instance(orphan.id).await?;
            let _ = std::fs::remove_dir_all(self.set_dir(
                &orphan.project,
                &orphan.environment,
                orphan.deployment,
            ));
        }
        Ok(())
    }

    async fn recover_route(
        &self,
        route: &RouteRecord,
        adopt: Vec<InstanceRecord>,
        secrets: &crate::secrets::Secrets,
    ) -> Result<()> {
        let release = self
            .store
            .release(&route.project, route.release)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("release {} of {}", route.release, route.project),
            })?;
        let project = self
            .store
            .project(&route.project)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("project {}", route.project),
            })?;
        let Some(TargetDef::Service(target)) =
            release.deploy.get(&route.environment).map(|d| &d.target)
        else {
            return Err(Error::Invalid("the release has no service target".into()));
        };
        let deployment = self
            .store
            .deployment(&route.project, route.deployment)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("deployment {}", route.deployment),
            })?;
        // Read (and recorded) again: the running processes' values are not kept anywhere.
        let values = crate::delivery::reveal(
            &self.store,
            secrets,
            &deployment,
            project.id,
            "service restart",
            &target.secret_pairs(),
        )
        .await?;
        let dir = self.set_dir(&route.project, &route.environment, route.deployment);
        let mut env = environment_of(&deployment, &release, target, &dir);
        env.extend(values);
        let adopted = adopt.len();
        let set = self
            .start(SetSpec {
                project: route.project.clone(),
                environment: route.environment.clone(),
                deployment: route.deployment,
                release: route.release,
                label: release.label(),
                target: (**target).clone(),
                dir,
                env,
                sandbox: sandbox_of(&self.data_dir, &project, &route.environment),
                adopt,
            })
            .await?;
        self.publish(Site {
            host: target.host.clone(),
            path: target.path.clone(),
            service: format!("{}/{}", route.project, route.environment),
            stable: set,
            canary: None,
            sticky: false,
            meters: Default::default(),
        })?;
        tracing::info!(project = %route.project, environment = %route.environment, release = route.release, adopted, "service restored");
        Ok(())
    }
}

/// The sandbox a project's service runs in (`None` when its isolation is off).
pub fn sandbox_of(
    data_dir: &std::path::Path,
    project: &crate::projects::Project,
    environment: &str,
) -> Option<crate::exec::local::sandbox::Sandbox> {
    use crate::exec::local::sandbox::{Isolation, Sandbox};
    (project.isolation != Isolation::Off).then(|| {
        Sandbox::on_server(
            data_dir,
            project.isolation,
            &format!("service-{}-{environment}", project.slug),
        )
    })
}

/// The environment an instance's process gets (besides `PORT` and its secrets).
pub fn environment_of(
    d: &crate::delivery::Deployment,
    release: &crate::delivery::Release,
    target: &ServiceTarget,
    dir: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| crate::exec::local::process::PASSTHROUGH_ENV.contains(&k.as_str()))
        .collect();
    env.extend(crate::delivery::variables(d, release));
    env.insert(
        "BETCYCLE_ARTIFACTS".into(),
        dir.join("workspace").display().to_string(),
    );
    env.extend(target.env.clone());
    env
}

/// The last `n` lines of a log that `keep` keeps.
fn last_lines(path: &std::path::Path, n: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The last `n` lines the app wrote to its log (not BetCycle's notes), on one line.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let lines = last_lines(path, n, |l| !l.starts_with("[betcycle "));
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join(" | ")
    }
}

/// `30s`, or `250 ms` for a duration that is not whole seconds.
pub fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// What the API and the console show of an environment's service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    pub host: String,
    pub path: Option<String>,
    pub stable: SetView,
    /// During a canary: the canary set, with `weight` its share in percent.
    pub canary: Option<SetView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SetView {
    pub deployment: u64,
    pub release: u64,
    pub label: String,
    pub track: Track,
    pub weight: u32,
    pub in_flight: u64,
    /// What the proxy measured for this set since it started serving.
    pub measured: stats::Snapshot,
    pub error_rate: f64,
    pub p95_ms: Option<u64>,
    /// The last three minutes, a sample every 2 s, oldest first.
    pub history: Vec<stats::Sample>,
    pub instances: Vec<InstanceView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    pub slot: u32,
    pub pid: Option<u32>,
    pub port: u16,
    pub state: InstanceState,
    pub healthy: bool,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub probes: Vec<health::ProbeResult>,
    /// Its limits (`memory` in bytes, `cpus`), and the memory it uses now.
    pub memory_limit: Option<u64>,
    pub memory_used: Option<u64>,
    pub cpus: Option<f64>,
}

/// The charts' size in SVG units.
pub const CHART_WIDTH: usize = 180;
pub const CHART_HEIGHT: u32 = 40;

impl ServiceView {
    /// The sets, stable first.
    pub fn sets(&self) -> Vec<&SetView> {
        std::iter::once(&self.stable).chain(&self.canary).collect()
    }

    /// The highest p95 any set had in its history (the latency chart's top), in ms.
    pub fn top_p95(&self) -> u64 {
        self.sets()
            .iter()
            .flat_map(|s| s.history.iter().filter_map(|h| h.p95_ms))
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// An SVG polyline's points for `set`'s error rate (0 to 100 %) over its history.
    pub fn error_points(&self, set: &SetView) -> String {
        Self::points(set, |h| h.error_rate, 1.0)
    }

    /// An SVG polyline's points for `set`'s p95 over its history, on `top_p95`'s scale.
    pub fn latency_points(&self, set: &SetView) -> String {
        let top = self.top_p95() as f64;
        Self::points(set, |h| h.p95_ms.map_or(0.0, |p| p as f64), top)
    }

    fn points(set: &SetView, value: impl Fn(&stats::Sample) -> f64, top: f64) -> String {
        let step = CHART_WIDTH as f64 / (SAMPLES - 1) as f64;
        let start = SAMPLES.saturating_sub(set.history.len());
        set.history
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let x = (start + i) as f64 * step;
                let y = f64::from(CHART_HEIGHT) * (1.0 - (value(h) / top).clamp(0.0, 1.0));
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `2/2 healthy`.
    pub fn health_summary(set: &SetView) -> String {
        let healthy = set.instances.iter().filter(|i| i.healthy).count();
        format!("{healthy}/{} healthy", set.instances.len())
    }
}

impl SetView {
    /// The error rate as shown: `0.0 %`.
    pub fn error_percent(&self) -> String {
        format!("{:.1} %", self.error_rate * 100.0)
    }

    fn of(set: &ReleaseSet, track: Track, weight: u32) -> SetView {
        let measured = set.stats.snapshot();
        SetView {
            deployment: set.deployment,
            release: set.release,
            label: set.label.clone(),
            track,
            weight,
            in_flight: set.in_flight.get(),
            error_rate: measured.error_rate(),
            p95_ms: measured.p95().map(|d| d.as_millis() as u64),
            measured,
            history: set
                .history
                .lock()
                .expect("history lock")
                .iter()
                .cloned()
                .collect(),
            instances: set
                .members
                .iter()
                .map(|m| {
                    let r = m.supervised.snapshot();
                    let cgroup = m.supervised.cgroup.as_ref();
                    let limits = cgroup.map(|c| c.limits()).unwrap_or_default();
                    InstanceView {
                        slot: r.slot,
                        pid: r.pid,
                        port: r.port,
                        state: *m.supervised.state.borrow(),
                        healthy: m.upstream.healthy.load(Ordering::Relaxed),
                        restarts: r.restarts,
                        last_exit: r.last_exit,
                        memory_limit: limits.memory,
                        memory_used: cgroup.and_then(|c| c.memory_used()),
                        cpus: limits.cpus,
                        probes: m
                            .probes
                            .lock()
                            .expect("probe lock")
                            .iter()
                            .cloned()
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

impl crate::monitoring::probes::ServingInstances for Services {
    /// The instances of the release that serves the environment now (its stable set).
    fn serving(&self, project: &str, environment: &str) -> Vec<(u32, u16)> {
        self.site(project, environment)
            .map(|site| {
                site.stable
                    .members
                    .iter()
                    .map(|m| (m.supervised.snapshot().slot, m.supervised.port()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Services {
    /// The environment's service now, if it runs one.
    pub fn view(&self, project: &str, environment: &str) -> Option<ServiceView> {
        let site = self.site(project, environment)?;
        let canary_weight = site.canary.as_ref().map_or(0, |c| c.1);
        Some(ServiceView {
            host: site.host.clone(),
            path: site.path.clone(),
            stable: SetView::of(&site.stable, Track::Stable, 100 - canary_weight.min(100)),
            canary: site
                .canary
                .as_ref()
                .map(|(set, weight)| SetView::of(set, Track::Canary, *weight)),
        })
    }

    /// The last `lines` lines of an instance's log (its output and BetCycle's notes).
    pub fn log_tail(
        &self,
        project: &str,
        environment: &str,
        track: Track,
        slot: u32,
        lines: usize,
    ) -> Result<String> {
        let site = self
            .site(project, environment)
            .ok_or_else(|| Error::NotFound {
                what: format!("a service in {project}/{environment}"),
            })?;
        let set = match (track, &site.canary) {
            (Track::Canary, Some((canary, _))) => canary,
            (Track::Canary, None) => {
                return Err(Error::NotFound {
                    what: "a canary".into(),
                });
            }
            (Track::Stable, _) => &site.stable,
        };
        if !set
            .members
            .iter()
            .any(|m| m.supervised.snapshot().slot == slot)
        {
            return Err(Error::NotFound {
                what: format!("instance {slot}"),
            });
        }
        let log = set.dir.join(format!("instance-{slot}.log"));
        Ok(last_lines(&log, lines, |_| true).join("\n"))
    }
}
