//! `betcycle project list|create|show`: projects on a server, through its API (token from
//! `BETCYCLE_TOKEN`, server from `--server` or `BETCYCLE_SERVER`).

use super::Failure;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The server's URL [default: $BETCYCLE_SERVER or http://127.0.0.1:8080].
    #[arg(long, global = true)]
    pub(super) server: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectVerb {
    /// List the projects you hold a role on.
    List,
    /// Create a project (administrators).
    Create {
        /// URL-safe identifier: a-z 0-9 . _ -
        slug: String,
        /// Git URL or absolute local path of the repository.
        #[arg(long)]
        repository: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        default_branch: Option<String>,
        /// The pipeline file's path in the repository [default: .betcycle.yml].
        #[arg(long)]
        pipeline_path: Option<String>,
    },
    /// Show one project as JSON.
    Show { slug: String },
}

/// A small API client: base URL, token, and an error shape that names the server's answer.
pub struct Api {
    server: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(server: Option<String>, env: &BTreeMap<String, String>) -> Result<Self, Failure> {
        let token = env
            .get("BETCYCLE_TOKEN")
            .cloned()
            .ok_or_else(|| Failure::Usage("set BETCYCLE_TOKEN to an API token".into()))?;
        let server = server
            .or_else(|| env.get("BETCYCLE_SERVER").cloned())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string();
        let client = crate::core::outbound::client_builder()
            .connect_timeout(Duration::from_secs(10))
            // Per read, not in total: a backup download may take minutes.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Failure::Runtime(e.to_string()))?;
        Ok(Self {
            server,
            token,
            client,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// A request to `path` with the token, for answers that are not JSON.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a non-2xx answer becomes an error with the server's message.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, Failure> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            Failure::Runtime(format!(
                "cannot reach {}: {}",
                self.server,
                crate::core::outbound::describe(&e)
            ))
        })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            let message = body["message"].as_str().unwrap_or("no message");
            Err(Failure::Runtime(format!(
                "the server refused ({status}): {message}"
            )))
        }
    }
}

pub fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?
        .block_on(future)
}

impl ProjectVerb {
    pub fn run(
        self,
        server: ServerArgs,
        env: BTreeMap<String, String>,
    ) -> Result<ExitCode, Failure> {
        let api = Api::new(server.server, &env)?;
        block_on(async {
            match self {
                ProjectVerb::List => {
                    let projects = api
                        .send(reqwest::Method::GET, "/api/v1/projects", None)
                        .await?;
                    println!(
                        "{:<24} {:<11} {:<12} REPOSITORY",
                        "PROJECT", "ROLE", "BRANCH"
                    );
                    for p in projects.as_array().into_iter().flatten() {
                        println!(
                            "{:<24} {:<11} {:<12} {}",
                            p["slug"].as_str().unwrap_or_default(),
                            p["role"].as_str().unwrap_or_default(),
                            p["default_branch"].as_str().unwrap_or_default(),
                            p["repository"].as_str().unwrap_or_default()
                        );
                    }
                }
                ProjectVerb::Create {
                    slug,
                    repository,
                    name,
                    default_branch,
                    pipeline_path,
                } => {
                    let body = serde_json::json!({
                        "slug": slug, "repository": repository, "name": name,
                        "default_branch": default_branch, "pipeline_path": pipeline_path,
                    });
                    let p = api
                        .send(reqwest::Method::POST, "/api/v1/projects", Some(body))
                        .await?;
                    println!(
                        "created project {} ({}/projects/{})",
                        p["slug"].as_str().unwrap_or_default(),
                        api.server(),
                        slug
                    );
                }
                ProjectVerb::Show { slug } => {
                    let p = api
                        .send(
                            reqwest::Method::GET,
                            &format!("/api/v1/projects/{slug}"),
                            None,
                        )
                        .await?;
                    println!("{}", serde_json::to_string_pretty(&p).expect("JSON"));
                }
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}
