//! The `service` target end to end: a real repository whose release is a small HTTP app
//! (Python's standard library), run by BetCycle's supervisor behind its proxy, under load
//! from the test — blue-green with no failed request, a canary answering 500 rolled back
//! with its share of requests bounded by its weight, a release that never becomes
//! healthy aborted, crashes and `kill -9` of BetCycle survived without a second process,
//! and bad input recorded with its reason.

use crate::alerts::alert_in;
use crate::deploy::wait_deployment;
use crate::harness::{Server, client, eventually, tempdir};
use crate::run::git;
use crate::runs::{demo, trigger, wait_for};
use crate::status_pages::probe_is;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The app: answers its version (from `version.txt` in its checkout); `mode` says
/// whether it answers 500 (`fail`) or fails its health check (`sick`).
const APP: &str = r#"
import http.server, os, time
VERSION = open("version.txt").read().strip()
MODE = open("mode").read().strip() if os.path.exists("mode") else "ok"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/ws":
            return self.echo()
        if self.path == "/eat":
            hoard = b"x" * (256 << 20)
        if self.path == "/spin":
            end = time.time() + 1
            while time.time() < end:
                pass
        if self.path == "/cgroup":
            body = open("/proc/self/cgroup", "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        if self.path == "/healthz":
            status = 404 if MODE == "sick" else 200
        else:
            status = 500 if MODE == "fail" else 200
        body = (VERSION + " " + self.headers.get("X-Forwarded-For", "") + " " + self.headers.get("X-Request-Id", "")).encode()
        if self.path == "/proto":
            body = (VERSION + " " + self.headers.get("X-Forwarded-Proto", "")).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = str(len(self.rfile.read(length))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def echo(self):
        self.send_response(101)
        self.send_header("Upgrade", "echo")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        while True:
            line = self.rfile.readline()
            if not line:
                break
            self.wfile.write(VERSION.encode() + b" " + line)
            self.wfile.flush()
        self.close_connection = True
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True
print("serving", VERSION, flush=True)
Server(("127.0.0.1", int(os.environ.get("BIND_PORT") or os.environ["PORT"])), Handler).serve_forever()
"#;

/// The Python interpreter itself (not a shim), so an instance is one process.
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("these tests run a Python app: python3 must be installed");
    assert!(out.status.success(), "python3 does not run");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) fn pipeline(target: &str, strategy: &str) -> String {
    format!(
        "steps:\n  - name: build\n    run: test -f app.py\ndeploy:\n  web:\n    target: {target}\n{strategy}"
    )
}

pub(crate) fn service_target(extra: &str) -> String {
    format!(
        "{{ kind: service, command: \"{} app.py\", host: app.test, health: {{ path: /healthz, interval: 100ms }}, timeout: 20s, stop_grace: 2s{extra} }}",
        python()
    )
}

pub(crate) struct Project {
    pub(crate) server: Server,
    repo: PathBuf,
    pub(crate) proxy: String,
    releases: u64,
    /// Kills the test's app processes when the test ends, passed or not.
    reaper: Reaper,
}

/// Services outlive BetCycle on purpose; a test's must not outlive the test.
pub(crate) struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in app_processes(&self.0) {
            // SAFETY: ending the test's own app process (and its group).
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

impl Project {
    pub(crate) async fn new(dir: &Path, pipeline: &str) -> Project {
        Self::with(dir, pipeline, &[]).await
    }

    async fn with(dir: &Path, pipeline: &str, extra: &[&str]) -> Project {
        let mut args = vec!["--proxy-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (server, repo) = demo(dir, pipeline, &args).await;
        let proxy = proxy_url(&server).await;
        let (status, env) = server
            .send_json(
                Method::PUT,
                "/api/v1/projects/demo/environments/web",
                json!({}),
            )
            .await;
        assert_eq!(status, 201, "{env}");
        Project {
            server,
            repo,
            proxy,
            releases: 0,
            reaper: Reaper(dir.to_path_buf()),
        }
    }

    /// Commits `version` (and `mode`, and the pipeline when given) and waits for its
    /// green run's release; returns the release number.
    pub(crate) async fn release(
        &mut self,
        version: &str,
        mode: &str,
        pipeline: Option<&str>,
    ) -> u64 {
        std::fs::write(self.repo.join("app.py"), APP).unwrap();
        std::fs::write(self.repo.join("version.txt"), version).unwrap();
        std::fs::write(self.repo.join("mode"), mode).unwrap();
        if let Some(p) = pipeline {
            std::fs::write(self.repo.join(".betcycle.yml"), p).unwrap();
        }
        git(&self.repo, &["add", "."]);
        git(&self.repo, &["commit", "-qm", version]);
        let run = trigger(&self.server, "demo").await;
        let number = run["number"].as_u64().unwrap();
        wait_for(&self.server, "demo", number, |r| r["status"] == "succeeded").await;
        self.releases += 1;
        self.releases
    }

    /// Requests a deployment of `release` to `web`; returns its number.
    async fn request_deployment(&self, release: u64) -> u64 {
        let (status, d) = self
            .server
            .send_json(
                Method::POST,
                "/api/v1/projects/demo/deployments",
                json!({"environment": "web", "release": release}),
            )
            .await;
        assert_eq!(status, 201, "{d}");
        d["number"].as_u64().unwrap()
    }

    /// Requests a deployment of `release` and waits until it has finished.
    pub(crate) async fn deploy(&self, release: u64) -> Value {
        let number = self.request_deployment(release).await;
        wait_deployment(&self.server, "demo", number, |d| {
            ["succeeded", "failed", "rolled_back"].contains(&d["status"].as_str().unwrap_or(""))
        })
        .await
    }

    pub(crate) async fn get(&self, host: &str) -> (u16, String) {
        self.get_path(host, "/").await
    }

    async fn get_path(&self, host: &str, path: &str) -> (u16, String) {
        let r = client()
            .get(format!("{}{path}", self.proxy))
            .header("host", host)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn service(&self) -> Value {
        self.server
            .get_json("/api/v1/projects/demo/environments/web/service")
            .await
    }
}

async fn proxy_url(server: &Server) -> String {
    eventually(
        Duration::from_secs(10),
        "the proxy never listened",
        || async {
            server
                .logs()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["fields"]["message"] == "proxy listening")
                .and_then(|v| v["fields"]["url"].as_str().map(str::to_string))
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
}

/// Constant load through the proxy from a few keep-alive clients: every answer's status
/// and first word, until stopped (and at most 200,000 requests).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<(u16, String)>>>,
    errors: Arc<AtomicU64>,
}

impl Load {
    fn start(proxy: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, seen, errors) = (stop.clone(), seen.clone(), errors.clone());
                let url = format!("{proxy}/");
                tokio::spawn(async move {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) && seen.lock().unwrap().len() < 200_000 {
                        match http.get(&url).header("host", "app.test").send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.text().await.unwrap_or_default();
                                let word = body.split(' ').next().unwrap_or("").to_string();
                                seen.lock().unwrap().push((status, word));
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            seen,
            errors,
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn finish(self) -> (Vec<(u16, String)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (seen, self.errors.load(Ordering::Relaxed))
    }
}

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The service view once its first instance was restarted once (no longer process
/// `first`) and is healthy again.
async fn restarted_once(project: &Project, first: u64, what: &str) -> Value {
    eventually(Duration::from_secs(20), what, || async {
        let s = project.service().await;
        let i = &s["stable"]["instances"][0];
        if i["restarts"] == 1
            && i["healthy"] == true
            && i["pid"].as_u64().is_some_and(|p| p != first)
        {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await
}

fn instance_pid(service: &Value) -> u64 {
    service["stable"]["instances"][0]["pid"].as_u64().unwrap()
}

/// The processes whose command line runs this test's app (from `dir`'s data directory).
pub(crate) fn app_processes(dir: &Path) -> Vec<u32> {
    let marker = dir.join("data").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cwd.display().to_string().starts_with(&marker)
                && String::from_utf8_lossy(&cmdline).contains("app.py")
        })
        .collect()
}

#[tokio::test]
async fn blue_green_under_load_drops_no_request_and_then_serves_only_the_new_release() {
    let dir = tempdir();
    let p = pipeline(
        &service_target(""),
        "    strategy: { kind: blue_green, drain: 5s }\n",
    );
    let mut project = Project::new(dir.path(), &p).await;
    let v1 = project.release("v1", "ok", None).await;
    let d1 = project.deploy(v1).await;
    assert_eq!(d1["status"], "succeeded", "{d1:#}");
    assert_eq!(
        project.get("app.test").await.1.split(' ').next(),
        Some("v1")
    );
    let old_pid = instance_pid(&project.service().await);

    // Unknown hosts get a plain 404 from the proxy, naming the host.
    let (status, text) = project.get("nothing.test").await;
    assert_eq!(status, 404);
    assert!(
        text.contains("no service is deployed for host nothing.test"),
        "{text}"
    );
    // A host is matched without its port or trailing dot, in any case; what is not a
    // host is a 400.
    let (status, text) = project.get("App.TEST.:8080").await;
    assert_eq!(
        (status, text.split(' ').next()),
        (200, Some("v1")),
        "{text}"
    );
    for bad in ["app test", "user@app.test", "app.test:http"] {
        let (status, text) = project.get(bad).await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains("the request names no host"), "{bad}: {text}");
    }

    let v2 = project.release("v2", "ok", None).await;
    let load = Load::start(&project.proxy, 6);
    eventually(
        Duration::from_secs(10),
        "the load never started",
        || async {
            if load.count() > 50 {
                Ok(())
            } else {
                Err(load.count().to_string())
            }
        },
    )
    .await;
    let d2 = project.deploy(v2).await;
    assert_eq!(d2["status"], "succeeded", "{d2:#}");
    let switched_at = load.count();
    let more = switched_at + 300;
    eventually(Duration::from_secs(20), "the load stopped", || async {
        if load.count() > more {
            Ok(())
        } else {
            Err(load.count().to_string())
        }
    })
    .await;
    let (seen, errors) = load.finish().await;
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(errors, 0, "requests failed at the transport level");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(seen.iter().any(|(_, w)| w == "v1"), "no request reached v1");
    assert!(
        seen[switched_at..].iter().all(|(_, w)| w == "v2"),
        "a request after the switch reached v1"
    );
    let timeline = d2["timeline"].to_string();
    assert!(timeline.contains("draining demo-1"), "{timeline}");
    assert!(
        !alive(old_pid),
        "the old release's process is still running"
    );
    let service = project.service().await;
    assert_eq!(service["stable"]["release"], v2);
    assert_eq!(service["stable"]["instances"][0]["healthy"], true);

    // Forwarded headers reach the app.
    let (_, text) = project.get("app.test").await;
    let words: Vec<&str> = text.split(' ').collect();
    assert_eq!(words[1], "127.0.0.1", "{text}");
    assert_eq!(words[2].len(), 32, "{text}");
    // The proxy's metrics are in /metrics, labelled by service and track.
    let metrics = project.server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"betcycle_proxy_requests_total{service="demo/web",track="stable",class="2xx"}"#
        ),
        "{metrics}"
    );
    // Every proxy thread counts in a shard of its own; what /metrics shows adds them up
    // exactly (requests on new connections, which any proxy thread may take).
    let value = |metrics: &str, series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    let requests =
        r#"betcycle_proxy_requests_total{service="demo/web",track="stable",class="2xx"}"#;
    let durations =
        r#"betcycle_proxy_request_duration_seconds_count{service="demo/web",track="stable"}"#;
    let in_flight = r#"betcycle_proxy_in_flight_requests{service="demo/web",track="stable"}"#;
    let before = (value(&metrics, requests), value(&metrics, durations));
    for _ in 0..24 {
        assert_eq!(project.get("app.test").await.0, 200);
    }
    let metrics = project.server.get("/metrics").await.text().await.unwrap();
    assert_eq!(value(&metrics, requests), before.0 + 24, "{metrics}");
    assert_eq!(value(&metrics, durations), before.1 + 24, "{metrics}");
    assert_eq!(value(&metrics, in_flight), 0, "{metrics}");
    for kind in [
        "betcycle_proxy_requests_total counter",
        "betcycle_proxy_request_duration_seconds histogram",
        "betcycle_proxy_in_flight_requests gauge",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {kind}\n")),
            "{kind}: {metrics}"
        );
    }
    let service = project.service().await;
    assert_eq!(service["stable"]["in_flight"], 0);
    assert!(
        service["stable"]["measured"]["requests"].as_u64().unwrap() >= 24,
        "{service}"
    );
    project.server.stop();
    // A graceful stop leaves the service running for the next start to adopt.
    let left = app_processes(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
}

#[tokio::test]
async fn a_canary_answering_500_is_rolled_back_and_got_no_more_than_its_weight() {
    let dir = tempdir();
    let strategy = "    strategy: { kind: canary, steps: [20, 100], interval: 20s, max_error_rate: 5%, min_requests: 20 }\n";
    let p = pipeline(&service_target(""), strategy);
    let mut project = Project::new(dir.path(), &p).await;
    let v1 = project.release("v1", "ok", None).await;
    // The first release has no stable release to compare with: it takes all traffic.
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let v2 = project.release("v2", "fail", None).await;
    let load = Load::start(&project.proxy, 4);
    let started = std::time::Instant::now();
    let d = project.deploy(v2).await;
    let took = started.elapsed();
    let (seen, errors) = load.finish().await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    let message = d["message"].as_str().unwrap();
    assert!(message.contains("error rate over 5.0 %"), "{message}");
    assert!(
        took < Duration::from_secs(20),
        "not rolled back within its interval: {took:?}"
    );
    assert_eq!(errors, 0);
    let to_canary = seen.iter().filter(|(_, w)| w == "v2").count();
    assert!(
        seen.iter()
            .filter(|(_, w)| w == "v2")
            .all(|(s, _)| *s == 500)
    );
    assert!(to_canary > 0, "no request reached the canary");
    // 20 % of the requests sent while the canary was in, at most: of every 100 requests
    // in a row, 20 went to it.
    let share = to_canary as f64 / seen.len() as f64;
    assert!(
        share <= 0.21,
        "the canary got {share:.3} of {} requests",
        seen.len()
    );
    // Afterwards everything is served by v1 again; the canary is gone.
    for _ in 0..20 {
        let (status, text) = project.get("app.test").await;
        assert_eq!((status, text.split(' ').next()), (200, Some("v1")));
    }
    let service = project.service().await;
    assert_eq!(service["stable"]["release"], v1);
    assert!(service["canary"].is_null(), "{service:#}");
    assert_eq!(app_processes(dir.path()).len(), 1);
    project.server.kill();
}

#[tokio::test]
async fn a_release_that_never_becomes_healthy_is_aborted_and_the_old_one_keeps_serving() {
    let dir = tempdir();
    let p = pipeline(
        &service_target(", timeout: 2s").replace(", timeout: 20s", ""),
        "",
    );
    let mut project = Project::new(dir.path(), &p).await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let v2 = project.release("v2", "sick", None).await;
    let load = Load::start(&project.proxy, 2);
    let d = project.deploy(v2).await;
    let (seen, errors) = load.finish().await;
    assert_eq!(d["status"], "failed", "{d:#}");
    let message = d["message"].as_str().unwrap();
    assert!(
        message.contains("did not become healthy within 2s") && message.contains("404 in"),
        "{message}"
    );
    assert_eq!(errors, 0);
    assert!(seen.iter().all(|(s, w)| *s == 200 && w == "v1"));
    assert_eq!(
        project.get("app.test").await.1.split(' ').next(),
        Some("v1")
    );
    assert_eq!(app_processes(dir.path()).len(), 1);

    // A command that does not exist: the reason is its exit and its output.
    let v3 = project
        .release(
            "v3",
            "ok",
            Some(&pipeline(
                &service_target("").replace("app.py", "nope.py"),
                "",
            )),
        )
        .await;
    let d = project.deploy(v3).await;
    assert_eq!(d["status"], "failed");
    let message = d["message"].as_str().unwrap();
    assert!(
        message.contains("exited before it became healthy (exit status 2)")
            && message.contains("nope.py"),
        "{message}"
    );
    // A port already taken (the app insists on one the test holds).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let v4 = project
        .release(
            "v4",
            "ok",
            Some(&pipeline(
                &service_target(&format!(", env: {{ BIND_PORT: \"{port}\" }}")),
                "",
            )),
        )
        .await;
    let d = project.deploy(v4).await;
    assert_eq!(d["status"], "failed");
    let message = d["message"].as_str().unwrap();
    assert!(message.contains("Address already in use"), "{message}");
    assert_eq!(
        project.get("app.test").await.1.split(' ').next(),
        Some("v1")
    );
    assert_eq!(app_processes(dir.path()).len(), 1);
    // Deleting the environment stops its service.
    let gone = project
        .server
        .request(Method::DELETE, "/api/v1/projects/demo/environments/web")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    assert_eq!(app_processes(dir.path()), Vec::<u32>::new());
    assert_eq!(project.get("app.test").await.0, 404);
    project.server.kill();
}

#[tokio::test]
async fn a_killed_instance_is_restarted_and_a_killed_betcycle_adopts_its_service() {
    let dir = tempdir();
    let p = pipeline(&service_target(""), "");
    let mut project = Project::new(dir.path(), &p).await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let first = instance_pid(&project.service().await);
    // BetCycle keeps a probe of the environment's health check, in the project: up, then
    // down (and alerting) while the instance is frozen, up again once it runs.
    let probe = probe_is(&project.server, "service.demo.web", "up").await;
    assert_eq!(probe["kind"], "service", "{probe:#}");
    assert_eq!(probe["target"], "demo/web");
    assert_eq!(probe["health_path"], "/healthz");
    assert_eq!(probe["project"], "demo");
    assert_eq!(probe["environment"], "web");
    // SAFETY: pausing the test's own app process.
    unsafe { libc::kill(first as i32, libc::SIGSTOP) };
    let down = probe_is(&project.server, "service.demo.web", "down").await;
    let error = down["last"]["error"].as_str().unwrap();
    assert!(error.starts_with("instance 1: "), "{down:#}");
    let alert = alert_in(&project.server, "probe_down:service.demo.web", "firing").await;
    assert_eq!(alert["project"], "demo", "{alert:#}");
    // SAFETY: as above.
    unsafe { libc::kill(first as i32, libc::SIGCONT) };
    probe_is(&project.server, "service.demo.web", "up").await;
    alert_in(&project.server, "probe_down:service.demo.web", "resolved").await;
    let mut events = project.server.get("/api/v1/events").await;
    assert_eq!(events.status(), 200);
    // SAFETY: killing the test's own app process.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    // The failed health check is an event, for the console and (later) alerting.
    let mut stream = String::new();
    while !(stream.contains("event: service_health") && stream.contains(r#""healthy":false"#)) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .expect("no service_health event")
            .unwrap()
            .expect("the event stream ended");
        stream.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(stream.contains(r#""environment":"web""#), "{stream}");
    drop(events);
    let restarted = restarted_once(&project, first, "the instance was not restarted").await;
    let i = &restarted["stable"]["instances"][0];
    assert_eq!(i["last_exit"], "killed by signal 9", "{i}");
    let second = i["pid"].as_u64().unwrap();
    assert_eq!(project.get("app.test").await.0, 200);
    let log = project
        .server
        .get("/api/v1/projects/demo/environments/web/service/log")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("exited: killed by signal 9") && log.contains("serving v1"),
        "{log}"
    );

    // kill -9 of BetCycle: the app keeps running; the next start adopts it.
    let Project { server, reaper, .. } = project;
    server.kill();
    assert!(alive(second));
    let server = Server::start_admin(dir.path(), &["--proxy-listen", "127.0.0.1:0"]);
    let proxy = proxy_url(&server).await;
    let s = server
        .get_json("/api/v1/projects/demo/environments/web/service")
        .await;
    assert_eq!(instance_pid(&s), second, "{s:#}");
    let answer = eventually(
        Duration::from_secs(10),
        "the proxy does not serve",
        || async {
            let r = client()
                .get(format!("{proxy}/"))
                .header("host", "app.test")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == 200 {
                Ok(r.text().await.unwrap())
            } else {
                Err(r.status().to_string())
            }
        },
    )
    .await;
    assert!(answer.starts_with("v1 "), "{answer}");
    assert_eq!(app_processes(dir.path()), vec![second as u32]);
    // The probe came through the restart and checks the adopted instance.
    let probes = server.get_json("/api/v1/probes").await;
    let kept: Vec<&Value> = probes
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "service")
        .collect();
    assert_eq!(kept.len(), 1, "{probes:#}");
    probe_is(&server, "service.demo.web", "up").await;
    server.kill();
    drop(reaper);
}

/// Requests a deployment and waits until its canary is at its first step.
pub(crate) async fn canary_started(project: &Project, release: u64) -> u64 {
    let number = project.request_deployment(release).await;
    wait_deployment(&project.server, "demo", number, |d| {
        d["timeline"].to_string().contains("canary step 1/2")
    })
    .await;
    number
}

#[tokio::test]
async fn a_canary_is_split_by_weight_sticky_and_promoted_or_aborted_by_hand() {
    use crate::harness::{betcycle, run as run_cmd};
    let dir = tempdir();
    let strategy =
        "    strategy: { kind: canary, steps: [30, 100], interval: 10m, sticky: true }\n";
    let mut project = Project::new(dir.path(), &pipeline(&service_target(""), strategy)).await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let v2 = project.release("v2", "ok", None).await;
    let number = canary_started(&project, v2).await;

    // 100 requests without a cookie: 30 to the canary, each told to stay there.
    let (mut to_canary, mut pinned) = (0, 0);
    for _ in 0..100 {
        let r = client()
            .get(format!("{}/", project.proxy))
            .header("host", "app.test")
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        let text = r.text().await.unwrap();
        if text.starts_with("v2 ") {
            to_canary += 1;
            pinned += usize::from(cookie.starts_with("betcycle_track=canary;"));
        }
    }
    assert_eq!((to_canary, pinned), (30, 30));
    // A client pinned to the canary stays on it.
    for _ in 0..10 {
        let r = client()
            .get(format!("{}/", project.proxy))
            .header("host", "app.test")
            .header("cookie", "theme=dark; betcycle_track=canary")
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().starts_with("v2 "));
    }
    let service = project.service().await;
    assert_eq!(
        (&service["stable"]["weight"], &service["canary"]["weight"]),
        (&json!(70), &json!(30)),
        "{service:#}"
    );
    assert_eq!(service["canary"]["release"], v2);
    assert!(service["canary"]["measured"]["requests"].as_u64().unwrap() >= 40);
    // The console shows the split, and the buttons on the canary's deployment page.
    let page = project
        .server
        .get_text(&format!("/projects/demo/deployments/{number}"))
        .await;
    assert!(
        page.contains("Promote canary") && page.contains("Abort canary"),
        "{page}"
    );
    assert!(
        page.contains(r#"data-track="Canary""#) && page.contains("30 %"),
        "{page}"
    );
    let board = project.server.get_text("/projects/demo/environments").await;
    assert!(
        board.contains("data-serving") && board.contains("demo-2</a> at 30 %"),
        "{board}"
    );

    // Promoted from the command line: every request goes to v2, v1 stops.
    let mut cmd = betcycle(dir.path());
    cmd.args(["canary", "promote", &number.to_string(), "--wait"])
        .args(["--server", &project.server.url, "--project", "demo"])
        .env("BETCYCLE_TOKEN", project.server.token.clone().unwrap());
    let (code, stdout, stderr) = run_cmd(&mut cmd);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.trim_end().ends_with("succeeded"), "{stdout}");
    for _ in 0..10 {
        assert!(project.get("app.test").await.1.starts_with("v2 "));
    }
    // Nothing to promote any more.
    let (status, body) = project
        .server
        .send_json(
            Method::POST,
            &format!("/api/v1/projects/demo/deployments/{number}/promote"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Aborted through the API: rolled back, v2 keeps serving.
    let v3 = project.release("v3", "ok", None).await;
    let number = canary_started(&project, v3).await;
    let (status, body) = project
        .server
        .send_json(
            Method::POST,
            &format!("/api/v1/projects/demo/deployments/{number}/abort"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d = wait_deployment(&project.server, "demo", number, |d| {
        d["status"] == "rolled_back"
    })
    .await;
    assert_eq!(d["message"], "aborted by hand");
    for _ in 0..10 {
        assert!(project.get("app.test").await.1.starts_with("v2 "));
    }
    // And from the console's button.
    let v4 = project.release("v4", "ok", None).await;
    let number = canary_started(&project, v4).await;
    let answer = project
        .server
        .request(
            Method::POST,
            &format!("/projects/demo/deployments/{number}/canary"),
        )
        .form(&[("action", "abort")])
        .send()
        .await
        .unwrap();
    // Redirected (and followed) to the deployment's page.
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.url().path(),
        format!("/projects/demo/deployments/{number}")
    );
    let d = wait_deployment(&project.server, "demo", number, |d| {
        d["status"] == "rolled_back"
    })
    .await;
    assert!(
        d["timeline"].to_string().contains("abort the canary"),
        "{d:#}"
    );
    assert!(project.get("app.test").await.1.starts_with("v2 "));
    assert_eq!(app_processes(dir.path()).len(), 1);
    project.server.kill();
}

#[tokio::test]
async fn the_proxy_speaks_http2_tunnels_websockets_and_limits_bodies() {
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempdir();
    let p = pipeline(&service_target(""), "");
    let mut project = Project::with(dir.path(), &p, &["--proxy-max-body", "1 KiB"]).await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");

    // HTTP/2 without TLS (prior knowledge), to an HTTP/1.1 instance.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let addr = project.proxy.trim_start_matches("http://");
    let request = hyper::Request::get(format!("http://{addr}/"))
        .header("host", "app.test")
        .body(Empty::new())
        .unwrap();
    let answer = h2.request(request).await.unwrap();
    assert_eq!(answer.version(), hyper::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"v1 "), "{body:?}");

    // A WebSocket-style upgrade is tunnelled both ways.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    loop {
        line.clear();
        read.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    write.write_all(b"hello\n").await.unwrap();
    line.clear();
    read.read_line(&mut line).await.unwrap();
    assert_eq!(line, "v1 hello\n");

    // Bodies: under the limit forwarded, over it refused by the proxy.
    let post = |size: usize| {
        client()
            .post(format!("{}/upload", project.proxy))
            .header("host", "app.test")
            .body(vec![b'x'; size])
            .send()
    };
    let small = post(500).await.unwrap();
    assert_eq!(small.status(), 200);
    assert_eq!(small.text().await.unwrap(), "500");
    let large = post(2000).await.unwrap();
    assert_eq!(large.status(), 413);
    assert!(
        large
            .text()
            .await
            .unwrap()
            .contains("over the proxy's limit of 1024 bytes")
    );
    drop(write);
    project.server.kill();
}

/// The open connections of each proxy thread, from `/metrics`.
async fn open_per_thread(server: &Server) -> Vec<f64> {
    let text = server.get_text("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("betcycle_proxy_open_connections{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_burst_of_connections_is_spread_evenly_over_the_proxy_threads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let server = Server::start(dir.path(), &["--proxy-listen", "127.0.0.1:0"]);
    let proxy = proxy_url(&server).await;
    let addr = proxy.trim_start_matches("http://");
    assert_eq!(open_per_thread(&server).await.iter().sum::<f64>(), 0.0);

    // 16 connections at once (as a load generator opens them), each answered and kept.
    let connections = futures_util::future::join_all((0..16).map(|_| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 404");
        stream
    }))
    .await;
    let open = open_per_thread(&server).await;
    assert!(
        !open.is_empty(),
        "no betcycle_proxy_open_connections series"
    );
    assert_eq!(open.iter().sum::<f64>(), 16.0, "{open:?}");
    let least = open.iter().copied().fold(f64::MAX, f64::min);
    let most = open.iter().copied().fold(0.0, f64::max);
    assert!(
        most - least <= 1.0,
        "the connections are not spread over the proxy threads: {open:?}"
    );

    drop(connections);
    eventually(
        Duration::from_secs(10),
        "closed connections still counted open",
        || async {
            let open = open_per_thread(&server).await;
            if open.iter().sum::<f64>() == 0.0 {
                Ok(())
            } else {
                Err(format!("{open:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_proxy_serves_https_with_the_servers_certificate_and_picks_up_its_renewal() {
    let dir = tempdir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let make = || {
        let names = ["localhost", "127.0.0.1", "app.test"]
            .map(String::from)
            .to_vec();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let (first, first_key) = make();
    let (second, second_key) = make();
    std::fs::write(&cert, &first).unwrap();
    std::fs::write(&key, &first_key).unwrap();
    // The harness's own API calls go to the same (HTTPS) server.
    crate::harness::trust(&first);
    crate::harness::trust(&second);
    let p = pipeline(&service_target(""), "");
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let mut project = Project::with(dir.path(), &p, &tls).await;
    assert!(project.proxy.starts_with("https://"), "{}", project.proxy);
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");

    // By name, as a browser would: SNI and Host are `app.test`.
    let addr: std::net::SocketAddr = project
        .proxy
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
            .resolve("app.test", addr)
            .build()
            .unwrap()
    };
    let url = format!("https://app.test:{}/proto", addr.port());
    let answer = trusting(&first).get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "v1 https");
    assert!(trusting(&second).get(&url).send().await.is_err());

    // A renewed certificate on disk: the proxy's new connections get it, on every thread.
    std::fs::write(&key, &second_key).unwrap();
    std::fs::write(&cert, &second).unwrap();
    eventually(
        Duration::from_secs(20),
        "the proxy kept the old certificate",
        || async {
            let client = trusting(&second);
            for _ in 0..4 {
                let answer = client.get(&url).send().await.map_err(|e| e.to_string())?;
                if answer.text().await.map_err(|e| e.to_string())? != "v1 https" {
                    return Err("a wrong answer".to_string());
                }
            }
            Ok(())
        },
    )
    .await;
    project.server.kill();
}

/// A stand-in for a Prometheus server: answers every query with `value` and records the
/// request lines it got.
async fn fake_prometheus(value: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            record
                .lock()
                .unwrap()
                .push(head.lines().next().unwrap_or("").to_string());
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000,"{value}"]}}]}}}}"#
            );
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_canary_whose_prometheus_query_fails_its_condition_is_rolled_back() {
    let dir = tempdir();
    let (prometheus, queries) = fake_prometheus("0.5").await;
    let strategy = "    strategy: { kind: canary, steps: [50, 100], interval: 1s, min_requests: 1, prometheus: { query: 'sum(rate(app_errors{release=\"{{release}}\"}[1m]))', success_condition: result < 0.1 }, sticky: true }\n";
    let mut project = Project::with(
        dir.path(),
        &pipeline(&service_target(""), strategy),
        &["--prometheus-url", &prometheus],
    )
    .await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let v2 = project.release("v2", "ok", None).await;
    let load = Load::start(&project.proxy, 2);
    // One-second requests pinned to the canary, back to back: one is in flight when the
    // canary is rolled back, and it must still be answered.
    let spinning = Arc::new(AtomicBool::new(true));
    let spinner = tokio::spawn({
        let (url, spinning) = (format!("{}/spin", project.proxy), spinning.clone());
        async move {
            let http = client();
            let mut answers = Vec::new();
            while spinning.load(Ordering::Relaxed) {
                let r = http
                    .get(&url)
                    .header("host", "app.test")
                    .header("cookie", "betcycle_track=canary")
                    .send()
                    .await;
                answers.push(r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
            }
            answers
        }
    });
    let d = project.deploy(v2).await;
    let (seen, errors) = load.finish().await;
    spinning.store(false, Ordering::Relaxed);
    let spun = spinner.await.unwrap();
    assert!(spun.iter().all(|a| a == &Ok(200)), "{spun:?}");
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    let message = d["message"].as_str().unwrap();
    assert!(
        message.starts_with("prometheus: 0.5 does not meet result < 0.1 at step 1"),
        "{message}"
    );
    let asked = queries.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].starts_with(
            "GET /api/v1/query?query=sum%28rate%28app_errors%7Brelease%3D%22demo-2%22%7D"
        ),
        "{asked:?}"
    );
    assert_eq!(errors, 0);
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {}: {failed:?}",
        failed.len(),
        seen.len()
    );
    assert_eq!(
        project.get("app.test").await.1.split(' ').next(),
        Some("v1")
    );
    project.server.kill();
}

/// The files that hold an instance's limits, from the `/proc/self/cgroup` of its process:
/// `(memory limit, cpu limit, cpu.stat)` on cgroup v2 or v1.
fn limit_files(own: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = Path::new("/sys/fs/cgroup");
    let line = |want: &str| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = controllers.split(',').any(|c| c == want) || controllers == want;
            (ours && path.contains("betcycle-"))
                .then(|| root.join(controllers).join(path.trim_start_matches('/')))
        })
    };
    match line("") {
        Some(v2) => (
            v2.join("memory.max"),
            v2.join("cpu.max"),
            v2.join("cpu.stat"),
        ),
        None => {
            let memory = line("memory").expect("the instance is in no memory cgroup of its own");
            let cpu = line("cpu").expect("the instance is in no cpu cgroup of its own");
            (
                memory.join("memory.limit_in_bytes"),
                cpu.join("cpu.cfs_quota_us"),
                cpu.join("cpu.stat"),
            )
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[tokio::test]
async fn an_instances_memory_and_cpu_are_limited_and_running_out_of_memory_is_its_recorded_reason()
{
    let dir = tempdir();
    let p = pipeline(&service_target(", memory: 64 MiB, cpus: 0.5"), "");
    let mut project = Project::new(dir.path(), &p).await;
    let v1 = project.release("v1", "ok", None).await;
    let d = project.deploy(v1).await;
    assert_eq!(
        d["status"], "succeeded",
        "limits need cgroup v2 with the memory and cpu controllers given to BetCycle's cgroup, or cgroup v1's memory and cpu hierarchies writable (as root); this machine has neither: {d:#}"
    );
    // The instance's own process is in its cgroups, with the limits the target gives.
    let (status, own) = project.get_path("app.test", "/cgroup").await;
    assert_eq!(status, 200, "{own}");
    let (memory, cpu, cpu_stat) = limit_files(&own);
    let v2 = memory.ends_with("memory.max");
    assert_eq!(read(&memory).trim(), (64u64 << 20).to_string());
    let quota = read(&cpu);
    assert_eq!(
        quota.trim(),
        if v2 { "50000 100000" } else { "50000" },
        "{}",
        cpu.display()
    );
    // Half a CPU: a second of spinning is throttled.
    assert_eq!(project.get_path("app.test", "/spin").await.0, 200);
    let throttled = read(&cpu_stat)
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled ")?.parse::<u64>().ok())
        .unwrap();
    assert!(throttled > 0, "{}", read(&cpu_stat));
    let log = project
        .server
        .get("/api/v1/projects/demo/environments/web/service/log")
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("limits: memory 64 MiB cpus 0.5"), "{log}");
    // The service view and the console show the limits and the memory in use.
    let i = &project.service().await["stable"]["instances"][0];
    assert_eq!(i["memory_limit"], 64u64 << 20, "{i}");
    assert_eq!(i["cpus"], 0.5);
    let used = i["memory_used"].as_u64().unwrap();
    assert!(used > 1 << 20 && used < 64 << 20, "{i}");
    let page = project
        .server
        .get_text(&format!("/projects/demo/deployments/{}", d["number"]))
        .await;
    assert!(page.contains(" of 64 MiB · 0.5 CPU</td>"), "{page}");

    // Past its memory the kernel ends it: the request fails, the reason is recorded, the
    // instance is restarted in its limits and serves again.
    let first = instance_pid(&project.service().await);
    assert_eq!(project.get_path("app.test", "/eat").await.0, 502);
    let restarted = restarted_once(
        &project,
        first,
        "the instance was not restarted after running out of memory",
    )
    .await;
    assert_eq!(
        restarted["stable"]["instances"][0]["last_exit"],
        "killed by signal 9: out of memory (its limit is 64 MiB)",
        "{restarted:#}"
    );
    let (status, own) = project.get_path("app.test", "/cgroup").await;
    assert_eq!(status, 200);
    assert_eq!(limit_files(&own).0, memory);
    assert_eq!(read(&memory).trim(), (64u64 << 20).to_string());
    assert_eq!(project.get("app.test").await.0, 200);

    // kill -9 of BetCycle, then of the instance while BetCycle is down: the next start
    // restarts it in the same cgroups with the same limits, and they hold it alone.
    let before = instance_pid(&project.service().await);
    project.server.kill();
    // SAFETY: killing the test's own app process.
    unsafe { libc::kill(before as i32, libc::SIGKILL) };
    project.server = Server::start_admin(dir.path(), &["--proxy-listen", "127.0.0.1:0"]);
    project.proxy = proxy_url(&project.server).await;
    let own = eventually(
        Duration::from_secs(20),
        "the instance was not restarted after BetCycle's restart",
        || async {
            match project.get_path("app.test", "/cgroup").await {
                (200, own) => Ok(own),
                (status, text) => Err(format!("{status} {text}")),
            }
        },
    )
    .await;
    assert_eq!(limit_files(&own).0, memory);
    assert_eq!(read(&memory).trim(), (64u64 << 20).to_string());
    assert_eq!(read(&cpu).trim(), quota.trim());
    let after = instance_pid(&project.service().await);
    assert_ne!(after, before);
    assert_eq!(app_processes(dir.path()), vec![after as u32]);
    let procs = read(&memory.with_file_name("cgroup.procs"));
    assert_eq!(
        procs.split_whitespace().collect::<Vec<_>>(),
        [after.to_string()],
        "{procs}"
    );

    // Stopped, its cgroups go with it.
    let gone = project
        .server
        .request(Method::DELETE, "/api/v1/projects/demo/environments/web")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    assert_eq!(app_processes(dir.path()), Vec::<u32>::new());
    for file in [&memory, &cpu] {
        let dir = file.parent().unwrap();
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    project.server.kill();
}
