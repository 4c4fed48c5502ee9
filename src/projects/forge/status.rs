//! Commit statuses: each run's state reported to its project's forge — `pending` when
//! queued, then `success`, `failure` or `error` — with a link to the run, so the forge
//! shows it next to the commit and the pull request.
//!
//! The reporter follows the event bus; posting happens on a task of its own, in event
//! order, so a slow forge never holds up runs. A failed report is retried (network
//! errors and 5xx) and then logged; it never changes the run.

use super::{Forge, ForgeLink};
use crate::ci::run::{Run, RunStatus};
use crate::core::events::{Event, EventBus};
use crate::secrets::Secrets;
use crate::store::Store;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The name of the project secret holding the forge token.
pub const FORGE_TOKEN: &str = "FORGE_TOKEN";

/// How a run's status is said to a forge: (state, description).
pub fn state_for(forge: Forge, status: RunStatus) -> (&'static str, &'static str) {
    let gitlab = forge == Forge::Gitlab;
    match status {
        RunStatus::Queued => ("pending", "queued"),
        RunStatus::Running if gitlab => ("running", "running"),
        RunStatus::Running => ("pending", "running"),
        RunStatus::Succeeded => ("success", "succeeded"),
        RunStatus::Failed if gitlab => ("failed", "failed"),
        RunStatus::Failed => ("failure", "failed"),
        RunStatus::Cancelled if gitlab => ("canceled", "cancelled"),
        RunStatus::Cancelled => ("error", "cancelled"),
        RunStatus::Error if gitlab => ("failed", "could not start"),
        RunStatus::Error => ("error", "could not start"),
    }
}

pub struct Reporter {
    store: Store,
    secrets: Secrets,
    public_url: String,
    client: reqwest::Client,
}

/// What the forge API is asked, for one status.
pub struct StatusRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: serde_json::Value,
}

/// The API request that sets `run`'s status on `link`'s forge.
pub fn request_for(link: &ForgeLink, token: &str, run: &Run, target_url: &str) -> StatusRequest {
    let (state, description) = state_for(link.kind, run.status);
    let context = format!("betcycle/{}", run.project);
    let description = format!("BetCycle run #{} {description}", run.number);
    let api = link.api_root();
    let path = link.repository_path();
    match link.kind {
        Forge::Github => StatusRequest {
            url: format!("{api}/repos/{path}/statuses/{}", run.commit),
            headers: vec![
                ("authorization", format!("Bearer {token}")),
                ("accept", "application/vnd.github+json".into()),
                ("x-github-api-version", "2022-11-28".into()),
            ],
            body: serde_json::json!({
                "state": state, "target_url": target_url,
                "description": description, "context": context,
            }),
        },
        Forge::Gitea | Forge::Forgejo => StatusRequest {
            url: format!("{api}/repos/{path}/statuses/{}", run.commit),
            headers: vec![("authorization", format!("token {token}"))],
            body: serde_json::json!({
                "state": state, "target_url": target_url,
                "description": description, "context": context,
            }),
        },
        Forge::Gitlab => {
            let id: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
            let mut body = serde_json::json!({
                "state": state, "target_url": target_url,
                "description": description, "name": context,
            });
            if let Some(branch) = &run.branch
                && run.pull_request.is_none()
            {
                body["ref"] = serde_json::Value::String(branch.clone());
            }
            StatusRequest {
                url: format!("{api}/projects/{id}/statuses/{}", run.commit),
                headers: vec![("private-token", token.to_string())],
                body,
            }
        }
    }
}

impl Reporter {
    pub fn new(store: Store, secrets: Secrets, public_url: String) -> Self {
        let client = crate::core::outbound::client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client with default TLS settings");
        Self {
            store,
            secrets,
            public_url,
            client,
        }
    }

    /// Reports run statuses until `shutdown`.
    pub async fn work(self, events: EventBus, shutdown: CancellationToken) {
        let (queue, mut next) = mpsc::unbounded_channel::<(u64, RunStatus)>();
        let mut subscription = events.subscribe();
        let follow = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = follow.cancelled() => break,
                    event = subscription.recv() => match event {
                        Ok(envelope) => {
                            if let Event::RunUpdated { id, status, .. } = envelope.event {
                                let _ = queue.send((id, status));
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "commit status reporter fell behind; some statuses were not reported");
                        }
                        Err(_) => break,
                    },
                }
            }
        });
        // The status last reported per active run: step progress repeats `running`.
        let mut sent: HashMap<u64, RunStatus> = HashMap::new();
        loop {
            let (id, status) = tokio::select! {
                () = shutdown.cancelled() => break,
                item = next.recv() => match item { Some(item) => item, None => break },
            };
            if sent.get(&id) == Some(&status) {
                continue;
            }
            if status.is_finished() {
                sent.remove(&id);
            } else {
                sent.insert(id, status);
            }
            if let Err(e) = self.report(id, status, &shutdown).await {
                tracing::warn!(run = id, error = %e, "cannot report a commit status");
            }
        }
    }

    /// Posts run `id`'s current status, if its project has a forge and a token.
    /// Posts `status` — the status the event announced, not the run's status now, which
    /// may already be a later one — for run `id`.
    async fn report(
        &self,
        id: u64,
        status: RunStatus,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let run = match self.store.run(id).await {
            Ok(Some(run)) => Run { status, ..run },
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let Some(project) = self
            .store
            .project(&run.project)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(link) = project.forge.clone() else {
            return Ok(());
        };
        let Some(token) = self
            .secrets
            .project_value(project.id, FORGE_TOKEN)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let target = format!(
            "{}/projects/{}/runs/{}",
            self.public_url.trim_end_matches('/'),
            run.project,
            run.number
        );
        let request = request_for(&link, &token, &run, &target);
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=3 {
            let mut builder = self.client.post(&request.url).json(&request.body);
            for (name, value) in &request.headers {
                builder = builder.header(*name, value);
            }
            let outcome = builder.send().await;
            let retry = match outcome {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(run = id, state = %request.body["state"], "reported a commit status");
                    return Ok(());
                }
                Ok(response) if response.status().is_server_error() => {
                    format!("{} answered {}", link.kind.title(), response.status())
                }
                Ok(response) => {
                    return Err(format!(
                        "{} refused the status: {}",
                        link.kind.title(),
                        response.status()
                    ));
                }
                // The error text can carry the URL, never the token (it is a header).
                Err(e) => format!("cannot reach {}: {e}", link.kind.title()),
            };
            if attempt == 3 {
                return Err(retry);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(retry),
                () = tokio::time::sleep(delay) => {}
            }
            delay *= 2;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitea_and_forgejo_statuses_use_their_api_shape() {
        let link = ForgeLink {
            kind: Forge::Forgejo,
            url: "https://codeberg.org/acme/app".into(),
            api_url: None,
        };
        let run: Run = serde_json::from_value(serde_json::json!({
            "id": 1, "project": "app", "number": 4, "event": "push", "git_ref": "refs/heads/main",
            "branch": "main", "commit": "abc123", "actor": "x", "status": "cancelled",
            "created_at": "2026-11-22T08:00:00Z"
        }))
        .unwrap();
        let request = request_for(
            &link,
            "t0ken",
            &run,
            "https://ci.example/projects/app/runs/4",
        );
        assert_eq!(
            request.url,
            "https://codeberg.org/api/v1/repos/acme/app/statuses/abc123"
        );
        assert_eq!(
            request.headers,
            vec![("authorization", "token t0ken".to_string())]
        );
        assert_eq!(request.body["state"], "error");
        assert_eq!(request.body["description"], "BetCycle run #4 cancelled");
        assert_eq!(request.body["context"], "betcycle/app");
    }
}
