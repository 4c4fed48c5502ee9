//! The policies screen (`/policies`): the instance's policies with their source, history
//! and a diff between versions; administrators upload new versions and delete. The
//! starter policies are there from the first start.

use super::form::form_failed;
use super::{Console, Layout, render};
use crate::app::App;
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::policy::Policy;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "policy/policies.html")]
struct PoliciesPage {
    layout: Layout,
    policies: Vec<Policy>,
    /// The policy shown, its version, and the diff from the version before (or the one
    /// asked for).
    selected: Option<Policy>,
    version: u64,
    source: String,
    diff: Option<(u64, String)>,
    admin: bool,
    done: Option<&'static str>,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    /// Diff against this version (default: the one before).
    #[serde(default)]
    against: Option<u64>,
    #[serde(default)]
    done: Option<String>,
}

fn done_message(key: Option<&str>) -> Option<&'static str> {
    Some(match key? {
        "saved" => "Policy saved as a new version.",
        "deleted" => "Policy deleted.",
        _ => return None,
    })
}

async fn render_page(
    app: &App,
    signed: &Signed,
    q: PageQuery,
    error: Option<String>,
) -> ServerResult<Html<String>> {
    let policies = app.store.policies("instance").await?;
    let selected = q
        .name
        .as_ref()
        .and_then(|n| policies.iter().find(|p| &p.name == n))
        .cloned();
    let (mut version, mut source, mut diff) = (0, String::new(), None);
    if let Some(p) = &selected {
        let shown = q
            .version
            .and_then(|v| p.versions.iter().find(|x| x.version == v))
            .unwrap_or_else(|| p.current());
        version = shown.version;
        source = shown.source.clone();
        let base = match q.against {
            Some(v) => p.versions.iter().find(|x| x.version == v),
            None => p.versions.iter().rev().find(|x| x.version < shown.version),
        };
        if let Some(base) = base {
            let text = similar::TextDiff::from_lines(&base.source, &shown.source)
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("{} v{}", p.name, base.version),
                    &format!("{} v{}", p.name, shown.version),
                )
                .to_string();
            diff = Some((base.version, text));
        }
    }
    render(&PoliciesPage {
        layout: Layout::new("Policies", "policies", Some(&signed.principal)),
        admin: signed.principal.user.admin,
        policies,
        selected,
        version,
        source,
        diff,
        done: done_message(q.done.as_deref()),
        error,
    })
}

pub async fn page(
    Console { app, signed }: Console,
    Query(q): Query<PageQuery>,
) -> ServerResult<Html<String>> {
    render_page(&app, &signed, q, None).await
}

#[derive(Deserialize)]
pub struct UploadForm {
    name: String,
    source: String,
}

pub async fn upload(
    Console { app, signed }: Console,
    Form(form): Form<UploadForm>,
) -> ServerResult<Response> {
    let name = form.name.trim().to_string();
    match app
        .policies
        .set("instance", &name, form.source, &signed.audit)
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/policies?name={name}&done=saved")).into_response()),
        Err(e) => failed(&app, &signed, e).await,
    }
}

async fn failed(app: &App, signed: &Signed, e: Error) -> ServerResult<Response> {
    form_failed(e, |message| {
        render_page(app, signed, PageQuery::default(), Some(message))
    })
    .await
}

pub async fn delete(
    Console { app, signed }: Console,
    Path(name): Path<String>,
) -> ServerResult<Response> {
    let result = app
        .store
        .delete_policy(
            "instance",
            &name,
            crate::identity::audit::Record::new(
                &signed.audit,
                "policy.delete",
                format!("policy:instance/{name}"),
            ),
        )
        .await;
    match result {
        Ok(()) => Ok(Redirect::to("/policies?done=deleted").into_response()),
        Err(e) => failed(&app, &signed, e).await,
    }
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/policies" USER => page,
        POST "/policies" ADMIN => upload,
        POST "/policies/{name}/delete" ADMIN => delete,
    ]
}
