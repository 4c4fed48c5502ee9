//! Sending notifications: each channel kind's request (email in `email.rs`), and the
//! `notifications` worker that sends the outbox — every pending notification that is due, retried with backoff
//! (2 s, 4 s, … up to 5 min) and given up after [`MAX_ATTEMPTS`], each outcome stored.

use super::{AlertState, Channel, ChannelKind, Delivery, Notification};
use crate::secrets::Secrets;
use crate::store::Store;
use jiff::Timestamp;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub mod email;

/// Attempts before a notification is given up (marked failed).
pub const MAX_ATTEMPTS: u32 = 8;

/// The channel's URL: given, or read from the instance secret that holds it.
async fn url_of(secrets: &Secrets, channel: &Channel) -> Result<String, String> {
    match (&channel.url, &channel.url_secret) {
        (Some(url), _) => Ok(url.clone()),
        (None, Some(name)) => secrets
            .instance_value(name)
            .await
            .map_err(|e| format!("cannot read secret {name}: {e}"))?
            .ok_or_else(|| format!("the instance secret {name} (the channel's URL) is not set")),
        (None, None) => Err("the channel has no URL".into()),
    }
}

/// `FIRING` or `RESOLVED`, and its emoji.
fn state_label(state: AlertState) -> (&'static str, &'static str) {
    match state {
        AlertState::Firing => ("FIRING", "🔴"),
        AlertState::Resolved => ("RESOLVED", "✅"),
    }
}

/// The request an HTTP channel gets for `n`: its URL, body and extra headers.
pub async fn request_for(
    secrets: &Secrets,
    channel: &Channel,
    n: &Notification,
) -> Result<(String, Vec<u8>, Vec<(String, String)>), String> {
    let url = url_of(secrets, channel).await?;
    let (label, emoji) = state_label(n.state);
    let text = format!("{emoji} [{label}] {}", n.summary);
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("JSON");
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    let body = match channel.kind {
        ChannelKind::Webhook => {
            let body = json(serde_json::json!({
                "alert": n.alert,
                "state": n.state.as_str(),
                "severity": n.severity,
                "summary": n.summary,
                "link": n.link,
                "notification": n.id,
                "at": n.created_at,
            }));
            if let Some(name) = &channel.signing_secret {
                let key = secrets
                    .instance_value(name)
                    .await
                    .map_err(|e| format!("cannot read secret {name}: {e}"))?
                    .ok_or_else(|| format!("the signing secret {name} is not set"))?;
                let mac = crate::identity::secret::hmac_sha256(key.as_bytes(), &body);
                headers.push((
                    "x-betcycle-signature-256".into(),
                    format!("sha256={}", crate::identity::secret::hex(&mac)),
                ));
            }
            headers.push(("x-betcycle-event".into(), "alert".into()));
            body
        }
        ChannelKind::Slack => json(serde_json::json!({
            "text": format!("{text} <{}|details>", n.link),
        })),
        ChannelKind::Discord => json(serde_json::json!({
            "content": format!("{text} {}", n.link),
        })),
        ChannelKind::Teams => json(serde_json::json!({
            "text": format!("{text} [details]({})", n.link),
        })),
        ChannelKind::Ntfy => {
            headers = vec![
                ("content-type".into(), "text/plain".into()),
                ("title".into(), format!("BetCycle: {label}")),
                ("click".into(), n.link.clone()),
                (
                    "priority".into(),
                    if n.state == AlertState::Firing {
                        "high"
                    } else {
                        "default"
                    }
                    .into(),
                ),
            ];
            n.summary.clone().into_bytes()
        }
        ChannelKind::Gotify => json(serde_json::json!({
            "title": format!("BetCycle: {label}"),
            "message": format!("{} {}", n.summary, n.link),
            "priority": if n.state == AlertState::Firing { 8 } else { 4 },
        })),
        ChannelKind::Email => return Err("an email channel is not an HTTP request".into()),
    };
    Ok((url, body, headers))
}

/// Sends `n` through `channel` once; the error says what went wrong.
pub async fn send_once(
    client: &reqwest::Client,
    secrets: &Secrets,
    channel: &Channel,
    n: &Notification,
) -> Result<(), String> {
    if channel.kind == ChannelKind::Email {
        let url = url_of(secrets, channel).await?;
        return email::send(&url, channel, n).await;
    }
    let (url, body, headers) = request_for(secrets, channel, n).await?;
    let mut request = client
        .post(&url)
        .body(body)
        .timeout(Duration::from_secs(10));
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let response = request
        .send()
        .await
        .map_err(|e| crate::core::outbound::describe(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(format!("{status}: {text}"))
    }
}

/// Records the outcome of one attempt on `n`.
pub fn after_attempt(n: &mut Notification, outcome: Result<(), String>) {
    n.attempts += 1;
    match outcome {
        Ok(()) => {
            n.status = Delivery::Sent;
            n.sent_at = Some(Timestamp::now());
            n.last_error.clear();
        }
        Err(e) => {
            n.last_error = e;
            if n.attempts >= MAX_ATTEMPTS {
                n.status = Delivery::Failed;
            } else {
                let wait = (1u64 << n.attempts.min(8)).min(300);
                n.next_at = Timestamp::now() + Duration::from_secs(wait);
            }
        }
    }
}

/// The `notifications` worker.
pub async fn work(store: Store, secrets: Secrets, stop: CancellationToken) {
    let client = match crate::core::outbound::client_builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notifications: cannot build the HTTP client");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = send_due(&store, &secrets, &client).await {
            tracing::warn!(error = %e, "notifications: the outbox could not be read");
        }
    }
}

async fn send_due(
    store: &Store,
    secrets: &Secrets,
    client: &reqwest::Client,
) -> crate::core::error::Result<()> {
    let due = store.notifications(Some(Timestamp::now()), 50).await?;
    if due.is_empty() {
        return Ok(());
    }
    let channels = store.channels().await?;
    for mut n in due {
        let outcome = match channels.iter().find(|c| c.name == n.channel) {
            Some(channel) => send_once(client, secrets, channel, &n).await,
            None => Err(format!("channel \"{}\" no longer exists", n.channel)),
        };
        if let Err(e) = &outcome {
            tracing::warn!(notification = n.id, channel = %n.channel, error = %e, attempt = n.attempts + 1, "a notification was not sent");
        }
        after_attempt(&mut n, outcome);
        store.put_notification(n).await?;
    }
    Ok(())
}

/// Sends a test notification through channel `name` now; the attempt is kept in the
/// outbox (tried once, not retried). The error says why the channel did not take it.
pub async fn test(
    store: &Store,
    secrets: &Secrets,
    name: &str,
    link: &str,
) -> crate::core::error::Result<std::result::Result<Notification, String>> {
    let channels = store.channels().await?;
    let channel = channels.iter().find(|c| c.name == name).ok_or_else(|| {
        crate::core::error::Error::NotFound {
            what: format!("channel \"{name}\""),
        }
    })?;
    let now = Timestamp::now();
    let test = super::Alert::firing(
        "test",
        name,
        now,
        format!("a test notification from BetCycle to channel {name}"),
        link.to_string(),
    );
    let mut n = Notification::pending(name, &test, now);
    n.alert = "test".into();
    let client = crate::core::outbound::client_builder()
        .build()
        .map_err(|e| crate::core::error::Error::Unavailable(e.to_string()))?;
    let outcome = send_once(&client, secrets, channel, &n).await;
    after_attempt(&mut n, outcome.clone());
    if n.status == Delivery::Pending {
        n.status = Delivery::Failed;
    }
    let n = store.add_notification(n).await?;
    Ok(outcome
        .map(|()| n)
        .map_err(|e| format!("channel \"{name}\" did not take the test notification: {e}")))
}
