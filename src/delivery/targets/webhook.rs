//! The `webhook` target: a signed POST, then — with `callback` — a wait for the
//! one-time callback URL.

use super::{Job, Target};
use crate::ci::pipeline::deploy::WebhookTarget;
use crate::core::error::{Error, Result};
use crate::delivery::deployer::{CallbackResult, Deployer, LogFile};
use crate::delivery::model::*;
use std::pin::Pin;
use tokio::sync::oneshot;

impl Target for WebhookTarget {
    fn deploy<'a>(
        &'a self,
        job: Job<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<super::Outcome>> + Send + 'a>> {
        Box::pin(async move { deploy(self, job).await.map(|()| super::Outcome::Live) })
    }
}

/// `webhook`: a signed POST; then, with `callback`, a wait for the one-time URL.
async fn deploy(t: &WebhookTarget, job: Job<'_>) -> Result<()> {
    let Job {
        deployer,
        deployment: d,
        release,
        project,
        shutdown,
    } = job;
    let log = LogFile::create(&deployer.log_path(d.id))?;
    let secret = match &t.secret {
        Some(name) => deployer
            .reveal(d, project.id, &[(name.clone(), name.clone())])
            .await?
            .pop()
            .map(|(_, v)| v),
        None => None,
    };
    let (callback_url, waiter) = if t.callback {
        let (url, waiter) = register_callback(deployer, d).await?;
        (Some(url), Some(waiter))
    } else {
        (None, None)
    };
    let body = serde_json::to_vec(&serde_json::json!({
        "event": "deploy",
        "project": d.project,
        "environment": d.environment,
        "deployment": d.number,
        "release": release.label(),
        "release_number": release.number,
        "commit": release.commit,
        "branch": release.branch,
        "artifacts": release.artifacts,
        "callback_url": callback_url,
    }))
    .expect("JSON");
    let posted = tokio::select! {
        posted = post(deployer, t, d, body, secret.as_deref(), &log) => posted,
        () = shutdown.cancelled() => Err(Error::Invalid("shut down".into())),
    };
    if let Err(e) = posted {
        deployer.forget_callback(d.id);
        return Err(e);
    }
    let Some(waiter) = waiter else {
        let note = "verifying: the webhook answered 2xx";
        return deployer
            .set_status(d.id, DeploymentStatus::Verifying, note)
            .await;
    };
    let note = "verifying: waiting for the callback";
    deployer
        .set_status(d.id, DeploymentStatus::Verifying, note)
        .await?;
    let result = tokio::select! {
        r = tokio::time::timeout(t.timeout(), waiter) => r,
        () = shutdown.cancelled() => return Err(Error::Invalid("shut down".into())),
    };
    deployer.forget_callback(d.id);
    match result {
        Ok(Ok(r)) => reported(r, &log),
        _ => Err(Error::Invalid(format!(
            "no callback within {} s",
            t.timeout().as_secs()
        ))),
    }
}

/// Issues the deployment's one-time callback URL and registers the waiter it answers;
/// the caller awaits the receiver once the POST was accepted.
async fn register_callback(
    deployer: &Deployer,
    d: &Deployment,
) -> Result<(String, oneshot::Receiver<CallbackResult>)> {
    let token = crate::identity::secret::random_hex(32);
    deployer
        .store
        .set_deploy_callback(crate::identity::secret::digest(&token), d.id)
        .await?;
    let (tx, rx) = oneshot::channel();
    deployer
        .waiting
        .lock()
        .expect("deployer lock")
        .insert(d.id, tx);
    let url = format!(
        "{}/api/v1/deployments/callback/{token}",
        deployer.public_url.trim_end_matches('/')
    );
    Ok((url, rx))
}

/// POSTs the deployment, signed with `secret` when there is one; a 2xx answer is success.
async fn post(
    deployer: &Deployer,
    t: &WebhookTarget,
    d: &Deployment,
    body: Vec<u8>,
    secret: Option<&str>,
    log: &LogFile,
) -> Result<()> {
    let mut request = deployer
        .http
        .post(&t.url)
        .header("content-type", "application/json")
        .header("x-betcycle-event", "deploy")
        .header("x-betcycle-delivery", format!("{}-{}", d.project, d.number))
        .timeout(t.timeout());
    if let Some(secret) = secret {
        let signature = crate::identity::secret::hmac_sha256(secret.as_bytes(), &body);
        request = request.header(
            "x-betcycle-signature-256",
            format!("sha256={}", hex::encode(signature)),
        );
    }
    log.write_line(false, &format!("POST {}", t.url));
    let answer = request
        .body(body)
        .send()
        .await
        .map_err(|e| Error::Invalid(format!("the webhook could not be reached: {e}")))?;
    let status = answer.status();
    log.write_line(!status.is_success(), &format!("answered {status}"));
    if !status.is_success() {
        return Err(Error::Invalid(format!("the webhook answered {status}")));
    }
    Ok(())
}

/// What the target's callback reported, logged.
fn reported(r: CallbackResult, log: &LogFile) -> Result<()> {
    let outcome = if r.succeeded { "succeeded" } else { "failed" };
    log.write_line(!r.succeeded, &format!("callback: {outcome} {}", r.message));
    if r.succeeded {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the target reported failure: {}",
            r.message
        )))
    }
}
