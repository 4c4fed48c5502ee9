//! Steps and services in containers (`image:`), through the Docker Engine API over its
//! unix socket (Docker, or Podman's compatible socket) with bollard. One run has one
//! bridge network (its services are reachable there by name) and its workspace
//! bind-mounted at the same path in every container. A step's container is removed when
//! the step ends, times out or is cancelled; the run's network and services when the run
//! ends; and whatever a crashed server left is swept at its next start — everything
//! BetCycle creates is labelled with the server it belongs to.

use super::local::process::{Exit, Stream};
use super::{OnLines, Process, Spawned};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, HostConfig, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Label on everything BetCycle creates: which server (or `betcycle run`) owns it.
pub const OWNER_LABEL: &str = "io.betcycle.owner";
/// Label naming the run a container or network belongs to.
pub const RUN_LABEL: &str = "io.betcycle.run";

/// The default engine socket when neither the option nor `DOCKER_HOST` names one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The engine socket: the option when set, else `DOCKER_HOST` when it is a `unix://`
/// socket, else Docker's default.
pub fn socket_of(option: Option<&str>, env: &BTreeMap<String, String>) -> String {
    option
        .map(str::to_string)
        .or_else(|| {
            env.get("DOCKER_HOST")
                .and_then(|h| h.strip_prefix("unix://"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

/// A connection to the container engine, made on first use and shared by every run.
pub struct Engine {
    socket: String,
    /// Who owns what this engine creates (see [`OWNER_LABEL`]).
    owner: String,
    /// Connected on first use; not kept after a failure (the engine may start later).
    client: tokio::sync::Mutex<Option<Docker>>,
}

impl Engine {
    pub fn new(socket: String, owner: String) -> Arc<Engine> {
        Arc::new(Engine {
            socket: socket.trim_start_matches("unix://").to_string(),
            owner,
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// The owner label of a server: its data directory's canonical path, hashed (stable
    /// across restarts, distinct between servers sharing one engine).
    pub fn owner_of_data_dir(data_dir: &std::path::Path) -> String {
        use sha2::{Digest, Sha256};
        let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        format!("server-{}", &crate::identity::secret::hex(&digest)[..16])
    }

    /// The client, connected (and the API version agreed) on first use.
    async fn client(&self) -> Result<Docker, String> {
        let mut client = self.client.lock().await;
        if let Some(docker) = &*client {
            return Ok(docker.clone());
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            format!(
                "cannot reach the container engine at unix://{}: {e} \
                 (is Docker or Podman running? container.socket names its socket)",
                self.socket
            )
        };
        let docker = Docker::connect_with_unix(&self.socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(&e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&e))?;
        docker.ping().await.map_err(|e| unreachable(&e))?;
        *client = Some(docker.clone());
        Ok(docker)
    }

    /// Removes every container and network this owner left behind (a crash, a kill).
    /// Quiet when there is no engine: nothing can have been left on it.
    pub async fn sweep(&self) {
        tracing::info!(
            socket = %self.socket,
            owner = %self.owner,
            label = OWNER_LABEL,
            "container engine"
        );
        let Ok(docker) = self.client().await else {
            return;
        };
        let docker = &docker;
        let filter = HashMap::from([("label", vec![format!("{OWNER_LABEL}={}", self.owner)])]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for c in &containers {
            if let Some(id) = &c.id {
                remove(docker, id).await;
            }
        }
        let networks = docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for n in &networks {
            if let Some(id) = &n.id {
                let _ = docker.remove_network(id).await;
            }
        }
        if !containers.is_empty() || !networks.is_empty() {
            tracing::info!(
                containers = containers.len(),
                networks = networks.len(),
                "removed containers and networks an earlier run left"
            );
        }
    }
}

/// Force-removes a container and its anonymous volumes.
async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    if let Err(e) = docker.remove_container(id, Some(options)).await
        && !matches!(
            e,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        )
    {
        tracing::warn!(container = %id, error = %e, "cannot remove a container");
    }
}

/// What a process needs to run in a container.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub image: String,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    /// Asked by the step; refused unless the run allows host access.
    pub privileged: bool,
    pub volumes: Vec<String>,
    /// A service's name: its container's host name on the run's network. The container
    /// stays until the run ends.
    pub service: Option<String>,
    /// Run inside this service's container instead of a new one (its `ready` probe).
    pub exec_in: Option<String>,
}

/// One run's containers: its network, its services' containers, and the labels.
pub struct RunContainers {
    engine: Arc<Engine>,
    /// The run's name (`run-42`), part of every container and network name.
    run: String,
    network: OnceCell<Result<String, String>>,
    /// Service name → container id, for their `ready` probes.
    services: Mutex<BTreeMap<String, String>>,
    /// Every container of the run not yet removed (removed at the end of the run).
    containers: Mutex<std::collections::BTreeSet<String>>,
    /// Whether steps may be privileged and mount host paths (the project's setting).
    host_access: bool,
    /// An administrator's choice (`container.fallback = local`): without a reachable
    /// engine, steps with an `image` run on the host instead, with a warning.
    pub(super) fallback_local: bool,
}

impl RunContainers {
    pub fn new(engine: Arc<Engine>, run: &str, host_access: bool) -> RunContainers {
        RunContainers {
            host_access,
            fallback_local: false,
            engine,
            run: run.to_string(),
            network: OnceCell::new(),
            services: Mutex::new(BTreeMap::new()),
            containers: Mutex::new(Default::default()),
        }
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (OWNER_LABEL.to_string(), self.engine.owner.clone()),
            (RUN_LABEL.to_string(), self.run.clone()),
        ])
    }

    /// The run's network, created on first use.
    async fn network(&self, docker: &Docker) -> Result<String, String> {
        self.network
            .get_or_init(|| async {
                let name = format!("betcycle-{}-{}", &self.engine.owner, self.run);
                docker
                    .create_network(NetworkCreateRequest {
                        name: name.clone(),
                        driver: Some("bridge".into()),
                        labels: Some(self.labels()),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("cannot create the run's network {name}: {e}"))?;
                Ok(name)
            })
            .await
            .clone()
    }

    /// The image, here or pulled; a clear error when it is neither.
    async fn ensure_image(docker: &Docker, image: &str) -> Result<(), String> {
        if docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let mut pull = docker.create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image(image)
                    .build(),
            ),
            None,
            None,
        );
        while let Some(progress) = pull.next().await {
            if let Err(e) = progress {
                return Err(format!(
                    "image \"{image}\" is not on this host and cannot be pulled: {}",
                    engine_message(&e)
                ));
            }
        }
        Ok(())
    }

    /// Starts `process` in a container (or, for a probe, inside its service's).
    /// Lets steps with an `image` run on the host when the engine cannot be reached.
    pub fn falling_back(mut self, local: bool) -> RunContainers {
        self.fallback_local = local;
        self
    }

    /// Whether the engine answers (connecting if need be); the error says why not.
    pub async fn reachable(&self) -> Result<(), String> {
        self.engine.client().await.map(drop)
    }

    pub fn spawn(self: &Arc<Self>, p: Process, spec: ContainerSpec) -> Spawned {
        let this = self.clone();
        Box::pin(async move {
            let docker = match this.engine.client().await {
                Ok(d) => d,
                Err(e) => return Exit::SpawnFailed(e),
            };
            if let Some(service) = &spec.exec_in {
                return this.exec(&docker, service, p).await;
            }
            match this.start(&docker, &p, &spec).await {
                Ok(id) => {
                    let exit = watch(&docker, &id, &p).await;
                    this.remove(&docker, &id).await;
                    if let Some(s) = &spec.service {
                        this.services.lock().expect("services lock").remove(s);
                    }
                    exit
                }
                Err(e) => Exit::SpawnFailed(e),
            }
        })
    }

    /// Creates and starts the container; its id.
    async fn start(
        &self,
        docker: &Docker,
        p: &Process,
        spec: &ContainerSpec,
    ) -> Result<String, String> {
        if (spec.privileged || !spec.volumes.is_empty()) && !self.host_access {
            return Err(
                "privileged containers and host volumes are off for this project; an \
                 administrator can allow them (PUT /api/v1/projects/<slug>/containers \
                 {\"host_access\": true})"
                    .into(),
            );
        }
        Self::ensure_image(docker, &spec.image).await?;
        let network = self.network(docker).await?;
        let workspace = p.workspace.display().to_string();
        let name = match &spec.service {
            Some(s) => format!("{network}-{s}"),
            None => format!("{network}-{}", random_suffix()),
        };
        // A `run` replaces the image's entrypoint (as Woodpecker and GitLab do), so an
        // image whose entrypoint is a tool still runs the script; without one (a
        // service), the image's own entrypoint and command run.
        let script = !p.script.trim().is_empty();
        let entrypoint = script.then(|| vec!["sh".to_string(), "-c".to_string()]);
        let cmd = script.then(|| vec![p.script.clone()]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint,
            cmd,
            env: Some(p.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(p.dir.display().to_string()),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                binds: Some(
                    std::iter::once(format!("{workspace}:{workspace}"))
                        .chain(spec.volumes.iter().cloned())
                        .collect(),
                ),
                privileged: Some(spec.privileged),
                network_mode: Some(network.clone()),
                memory: spec.memory.map(|m| m as i64),
                nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                init: Some(true),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.clone(),
                    EndpointSettings {
                        aliases: spec.service.clone().map(|s| vec![s]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot create a container of \"{}\": {}",
                    spec.image,
                    engine_message(&e)
                )
            })?;
        self.containers
            .lock()
            .expect("containers lock")
            .insert(created.id.clone());
        if let Some(s) = &spec.service {
            self.services
                .lock()
                .expect("services lock")
                .insert(s.clone(), created.id.clone());
        }
        if let Err(e) = docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            self.remove(docker, &created.id).await;
            return Err(format!(
                "cannot start a container of \"{}\": {}",
                spec.image,
                engine_message(&e)
            ));
        }
        Ok(created.id)
    }

    /// Runs `p` inside the running container of `service` (a readiness probe).
    async fn exec(&self, docker: &Docker, service: &str, p: Process) -> Exit {
        let Some(id) = self
            .services
            .lock()
            .expect("services lock")
            .get(service)
            .cloned()
        else {
            return Exit::SpawnFailed(format!("service \"{service}\" has no container"));
        };
        let exec = docker
            .create_exec(
                &id,
                ExecConfig {
                    cmd: Some(vec!["sh".into(), "-c".into(), p.script.clone()]),
                    env: Some(p.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await;
        let exec = match exec {
            Ok(e) => e.id,
            Err(e) => return Exit::SpawnFailed(engine_message(&e)),
        };
        let run = async {
            if let Ok(bollard::exec::StartExecResults::Attached { mut output, .. }) =
                docker.start_exec(&exec, None).await
            {
                let mut lines = Lines::new(p.on_lines.clone());
                while let Some(Ok(chunk)) = output.next().await {
                    lines.push(&chunk);
                }
                lines.finish();
            }
            match docker.inspect_exec(&exec).await {
                Ok(i) => Exit::Code(i.exit_code.unwrap_or(1) as i32),
                Err(e) => Exit::SpawnFailed(engine_message(&e)),
            }
        };
        tokio::select! {
            exit = run => exit,
            () = sleep_or_forever(p.timeout) => Exit::TimedOut,
            () = p.cancel.cancelled() => Exit::Cancelled,
        }
    }

    /// Removes one of the run's containers.
    async fn remove(&self, docker: &Docker, id: &str) {
        remove(docker, id).await;
        self.containers.lock().expect("containers lock").remove(id);
    }

    /// After the run: every container still there (services, a step whose wait was
    /// dropped) and the network.
    pub async fn clean_up(&self) {
        let left = std::mem::take(&mut *self.containers.lock().expect("containers lock"));
        if left.is_empty() && self.network.get().is_none() {
            return;
        }
        let Ok(docker) = self.engine.client().await else {
            return;
        };
        for id in left {
            remove(&docker, &id).await;
        }
        if let Some(Ok(network)) = self.network.get()
            && let Err(e) = docker.remove_network(network).await
        {
            tracing::warn!(%network, error = %e, "cannot remove a run's network");
        }
    }
}

/// Follows a started container's output until it exits, times out or is cancelled.
async fn watch(docker: &Docker, id: &str, p: &Process) -> Exit {
    let follow = async {
        let mut logs = docker.logs(
            id,
            Some(
                LogsOptionsBuilder::default()
                    .follow(true)
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        let mut lines = Lines::new(p.on_lines.clone());
        while let Some(Ok(chunk)) = logs.next().await {
            lines.push(&chunk);
        }
        lines.finish();
        let mut wait =
            docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Exit::Code(r.status_code as i32),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Exit::Code(code as i32)
            }
            Some(Err(e)) => Exit::SpawnFailed(format!(
                "cannot wait for the container: {}",
                engine_message(&e)
            )),
            None => {
                Exit::SpawnFailed("the container engine did not say how the container ended".into())
            }
        }
    };
    tokio::select! {
        exit = follow => exit,
        () = sleep_or_forever(p.timeout) => Exit::TimedOut,
        () = p.cancel.cancelled() => Exit::Cancelled,
    }
}

async fn sleep_or_forever(timeout: Option<Duration>) {
    match timeout {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Splits an engine's output chunks into lines per stream, passed on a chunk at a time.
struct Lines {
    on_lines: OnLines,
    partial: [String; 2],
}

impl Lines {
    fn new(on_lines: OnLines) -> Lines {
        Lines {
            on_lines,
            partial: Default::default(),
        }
    }

    fn push(&mut self, chunk: &bollard::container::LogOutput) {
        use bollard::container::LogOutput;
        let (stream, bytes) = match chunk {
            LogOutput::StdErr { message } => (Stream::Stderr, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (Stream::Stdout, message)
            }
            LogOutput::StdIn { .. } => return,
        };
        let partial = &mut self.partial[stream as usize];
        partial.push_str(&String::from_utf8_lossy(bytes));
        if let Some(end) = partial.rfind('\n') {
            let complete: String = partial.drain(..=end).collect();
            let lines: Vec<&str> = complete
                .split_terminator('\n')
                .map(|l| l.trim_end_matches('\r'))
                .collect();
            (self.on_lines)(stream, &lines);
        }
    }

    fn finish(&mut self) {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                (self.on_lines)(stream, &[rest.as_str()]);
            }
        }
    }
}

/// What the engine said, without bollard's wrapping.
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the system's random numbers");
    crate::identity::secret::hex(&bytes)
}
