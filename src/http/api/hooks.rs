//! Webhooks and the project settings they need.
//!
//! `POST /api/v1/hooks/{slug}` receives deliveries from GitHub, Gitea/Forgejo and GitLab
//! (public; the signature is the credential). `GET /api/v1/projects/{slug}/deliveries`,
//! `GET /api/v1/projects/{slug}/deliveries/{id}`,
//! `POST /api/v1/projects/{slug}/deliveries/{id}/redeliver`,
//! `PUT|DELETE /api/v1/projects/{slug}/credentials/{name}` (`webhook_secret`,
//! `forge_token`; values are write-only).

use super::projects::find;
use super::runs::ListQuery;
use crate::app::App;
use crate::audit::Record;
use crate::delivery::{Delivery, Inbox, Receipt};
use crate::forge::webhook::Headers;
use crate::http::ServerResult;
use crate::http::auth::{Anyone, Signed};
use crate::http::error::ServerError;
use crate::project::{CREDENTIALS, WEBHOOK_SECRET, credential_context};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

/// The largest payload accepted (GitHub caps deliveries at 25 MB).
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;

fn inbox(app: &App) -> Inbox<'_> {
    Inbox {
        store: &app.store,
        runner: &app.runner,
        key: &app.master_key,
        data_dir: &app.config.data_dir,
    }
}

#[derive(Serialize)]
pub struct ReceiptView {
    /// `triggered`, `ignored` or `duplicate`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// For a duplicate: the delivery that was first received with this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<u64>,
}

/// Triggered → 201, ignored → 202 (with the reason), duplicate → 200.
fn respond(receipt: Receipt) -> (StatusCode, Json<ReceiptView>) {
    match receipt {
        Receipt::Triggered(d) => (
            StatusCode::CREATED,
            Json(ReceiptView {
                result: "triggered",
                delivery: Some(d),
                duplicate_of: None,
            }),
        ),
        Receipt::Ignored(d) => (
            StatusCode::ACCEPTED,
            Json(ReceiptView {
                result: "ignored",
                delivery: Some(d),
                duplicate_of: None,
            }),
        ),
        Receipt::Duplicate(first) => (
            StatusCode::OK,
            Json(ReceiptView {
                result: "duplicate",
                delivery: None,
                duplicate_of: Some(first),
            }),
        ),
    }
}

pub async fn receive(
    State(app): State<App>,
    anyone: Anyone,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ServerResult<(StatusCode, Json<ReceiptView>)> {
    let project = find(&app, &slug).await?;
    let headers: Headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let receipt = inbox(&app)
        .receive(&project, &headers, &body, &anyone.audit.source)
        .await
        .inspect_err(|e| {
            tracing::warn!(project = %slug, error = %e, "webhook delivery refused");
        })?;
    Ok(respond(receipt))
}

pub async fn list(
    State(app): State<App>,
    Path(slug): Path<String>,
    Query(q): Query<ListQuery>,
) -> ServerResult<Json<Vec<Delivery>>> {
    find(&app, &slug).await?;
    Ok(Json(app.store.project_deliveries(&slug, q.limit()).await?))
}

pub async fn show(
    State(app): State<App>,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<Json<Delivery>> {
    find(&app, &slug).await?;
    app.store
        .delivery(id)
        .await?
        .filter(|d| d.project == slug)
        .map(Json)
        .ok_or_else(|| {
            ServerError::NotFound(format!("delivery {id} of project \"{slug}\" not found"))
        })
}

pub async fn redeliver(
    State(app): State<App>,
    signed: Signed,
    Path((slug, id)): Path<(String, u64)>,
) -> ServerResult<(StatusCode, Json<ReceiptView>)> {
    let project = find(&app, &slug).await?;
    let receipt = inbox(&app).redeliver(&project, id, &signed.audit).await?;
    Ok(respond(receipt))
}

#[derive(Deserialize, Default)]
pub struct CredentialRequest {
    /// The secret. For `webhook_secret` it may be left out: one is generated.
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Serialize)]
pub struct CredentialView {
    pub name: String,
    /// Only a generated webhook secret is returned, once, to paste into the forge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The address to give the forge, for the webhook secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

fn credential_name(name: &str) -> crate::error::Result<&'static str> {
    CREDENTIALS
        .into_iter()
        .find(|c| *c == name)
        .ok_or_else(|| crate::error::Error::NotFound {
            what: format!(
                "credential \"{name}\" (projects have {})",
                CREDENTIALS.join(" and ")
            ),
        })
}

pub fn webhook_url(app: &App, slug: &str) -> String {
    format!(
        "{}/api/v1/hooks/{slug}",
        app.config.public_url.trim_end_matches('/')
    )
}

/// Seals and stores a credential; a webhook secret without a value is generated.
pub async fn set_credential(
    app: &App,
    slug: &str,
    name: &str,
    value: Option<String>,
    audit: &crate::audit::Context,
) -> crate::error::Result<CredentialView> {
    let project = super::projects::project_of(app, slug).await?;
    let name = credential_name(name)?;
    let value = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let (value, generated) = match (value, name) {
        (Some(v), _) => (v, false),
        (None, WEBHOOK_SECRET) => (crate::auth::secret::random_hex(32), true),
        (None, _) => {
            return Err(crate::error::Error::Invalid(format!(
                "{name} needs a value"
            )));
        }
    };
    if value.len() > 4096 {
        return Err(crate::error::Error::Invalid(format!(
            "{name} is longer than 4096 bytes"
        )));
    }
    let sealed = app
        .master_key
        .seal(&value, &credential_context(project.id, name));
    app.store
        .set_credential(
            project.id,
            name,
            Some(sealed),
            Record::new(audit, "project.credential", format!("project:{slug}")),
        )
        .await?;
    Ok(CredentialView {
        name: name.to_string(),
        value: generated.then_some(value),
        webhook_url: (name == WEBHOOK_SECRET).then(|| webhook_url(app, slug)),
    })
}

/// The body is optional (`{"value": "…"}`): an empty one generates a webhook secret.
pub async fn put_credential(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
    body: Bytes,
) -> ServerResult<Json<CredentialView>> {
    let request: CredentialRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CredentialRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("request body: {e}")))?
    };
    Ok(Json(
        set_credential(&app, &slug, &name, request.value, &signed.audit).await?,
    ))
}

pub async fn delete_credential(
    State(app): State<App>,
    signed: Signed,
    Path((slug, name)): Path<(String, String)>,
) -> ServerResult<StatusCode> {
    let project = find(&app, &slug).await?;
    let name = credential_name(&name)?;
    app.store
        .set_credential(
            project.id,
            name,
            None,
            Record::new(
                &signed.audit,
                "project.credential",
                format!("project:{slug}"),
            ),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
