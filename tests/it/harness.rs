//! Starting and stopping the real server, and small helpers around it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_betcycle");

/// A `betcycle` command with a clean environment (no stray `BETCYCLE_*` from the
/// developer's shell), running in `dir`.
pub fn betcycle(dir: &Path) -> Command {
    betcycle_at(BIN, dir)
}

pub fn betcycle_at(bin: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// The administrator `Server::start_admin` creates.
pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin password 123";

/// A running `betcycle serve`.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// An admin-scoped API token of `ADMIN`, sent by `get` when set.
    pub token: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Creates a user with the real CLI on a stopped server's data directory.
pub fn add_user(root: &Path, name: &str, password: &str, admin: bool) {
    let mut cmd = betcycle(root);
    cmd.args(["user", "add", name, "--password-stdin", "--data-dir"])
        .arg(root.join("data"));
    if admin {
        cmd.arg("--admin");
    }
    let (code, _, stderr) = run_with_stdin(&mut cmd, &format!("{password}\n"));
    assert_eq!(code, 0, "user add {name}: {stderr}");
}

/// Creates an API token with the real CLI on a stopped server's data directory.
pub fn create_token(root: &Path, user: &str, scope: &str) -> String {
    let (code, stdout, stderr) = run(betcycle(root)
        .args([
            "token",
            "create",
            "--user",
            user,
            "--scope",
            scope,
            "--data-dir",
        ])
        .arg(root.join("data")));
    assert_eq!(code, 0, "token create: {stderr}");
    stdout.trim().to_string()
}

pub fn run_with_stdin(cmd: &mut Command, input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

impl Server {
    /// Starts a server with its data in `root/data`, listening on a free port.
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        Self::start_with(betcycle(root), root, extra)
    }

    /// Like `start`, with an administrator `ADMIN` (created before the first start if
    /// missing) whose admin-scoped token `get` sends.
    pub fn start_admin(root: &Path, extra: &[&str]) -> Server {
        Self::start_admin_with(betcycle(root), root, extra)
    }

    /// `start_admin` with the command to start (its environment set by the test).
    pub fn start_admin_with(cmd: Command, root: &Path, extra: &[&str]) -> Server {
        if !root.join("data/betcycle.redb").exists() {
            add_user(root, ADMIN, ADMIN_PASSWORD, true);
        }
        let token = create_token(root, ADMIN, "admin");
        let mut server = Self::start_with(cmd, root, extra);
        server.token = Some(token);
        server
    }

    pub fn start_with(mut cmd: Command, root: &Path, extra: &[&str]) -> Server {
        let data_dir = root.join("data");
        cmd.arg("serve");
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(["--log-format", "json"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn betcycle serve");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let _ = tx.send(v["fields"]["url"].as_str().unwrap_or_default().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child,
            url,
            data_dir,
            token: None,
            logs,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The one-time set-up URL a server without users prints to its log.
    pub fn setup_url(&self) -> String {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["fields"]["setup_url"].as_str().map(str::to_string))
            .expect("the set-up URL is in the log")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(20))
    }

    /// Waits for an exit after a signal the test already sent.
    pub fn stop_after_signal(mut self) -> ExitStatus {
        self.wait(Duration::from_secs(20))
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(20));
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the log reader drain what the process wrote last.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Requests with the admin token when there is one.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            url: &self.url,
            token: self.token.clone(),
        }
    }

    /// Requests with another user's token.
    pub fn as_token(&self, token: &str) -> Caller<'_> {
        Caller {
            url: &self.url,
            token: Some(token.to_string()),
        }
    }

    /// A request to this server, with the admin token when there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.caller().request(method, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.caller().get(path).await
    }

    /// Sends `body` as JSON (with the admin token when there is one).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.caller().call(method, path, body).await
    }

    /// Sends `body` as JSON and asserts the answer's status; returns the JSON answer.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
        status: u16,
    ) -> serde_json::Value {
        self.caller().expect(method, path, body, status).await
    }

    /// Gives `subject` (`user:NAME` or `team:NAME`) a role on a project.
    pub async fn grant(&self, project: &str, subject: &str, role: &str) {
        let path = format!("/api/v1/projects/{project}/members/{subject}");
        let body = serde_json::json!({ "role": role });
        self.expect(reqwest::Method::PUT, &path, &body, 204).await;
    }

    /// Sets a secret through its API path (`/api/v1/secrets/NAME` for the instance,
    /// `/api/v1/projects/P/secrets/NAME` for a project).
    pub async fn set_secret(&self, path: &str, value: &str) {
        let body = serde_json::json!({ "value": value });
        self.expect(reqwest::Method::PUT, path, &body, 201).await;
    }

    /// Sends `body` as JSON: the status and the JSON answer (`Null` when there is none).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.caller().send_json(method, path, body).await
    }

    /// The body of `GET path` as text (a console page, a log).
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

/// Requests to a server as one caller (a bearer token, or none).
pub struct Caller<'a> {
    url: &'a str,
    token: Option<String>,
}

impl Caller<'_> {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = client().request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.request(method, path).json(body).send().await.unwrap()
    }

    /// Sends `body` as JSON and asserts the answer's status (the body is in the failure
    /// message); returns the JSON answer (`Null` when there is none).
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
        status: u16,
    ) -> serde_json::Value {
        let response = self.call(method.clone(), path, body).await;
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self.call(method, path, &body).await;
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion: (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

pub fn content_type(response: &reqwest::Response) -> &str {
    response.headers()["content-type"].to_str().unwrap()
}

/// An HTTP client for tests (rustls with the ring provider, as the server uses).
/// Certificates `client()` trusts (a test's self-signed ones), instead of none.
static TRUSTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Makes `client()` trust `pem` (for a test whose server speaks HTTPS).
pub fn trust(pem: &str) {
    TRUSTED.lock().unwrap().push(pem.to_string());
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trusted = TRUSTED.lock().unwrap().clone();
    if trusted.is_empty() {
        return reqwest::Client::new();
    }
    reqwest::Client::builder()
        .tls_certs_only(
            trusted
                .iter()
                .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()),
        )
        .build()
        .unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("betcycle-it-")
        .tempdir()
        .unwrap()
}

/// The string `field` of each object in the JSON array `items`; a test failure when
/// `items` is not an array or a `field` is not a string.
pub fn texts<'a>(items: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} is not a string in {item}"))
        })
        .collect()
}

/// Tries `attempt` every 50 ms until it gives `Ok`, and returns that; fails the test
/// with `what` and the last `Err` (what was seen instead) after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what} (not within {within:?}): {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `message` of an error answer.
pub async fn message_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["message"].as_str().unwrap_or_default().to_string()
}
