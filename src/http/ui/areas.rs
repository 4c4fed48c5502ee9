//! The product's areas, as the navigation lists them. An area that is not built yet gets
//! a page that says so plainly and what it will do.

use super::{Layout, render};
use crate::http::ServerResult;
use askama::Template;
use axum::response::Html;

pub struct Area {
    pub slug: &'static str,
    pub title: &'static str,
    pub summary: &'static str,
}

pub const AREAS: &[Area] = &[
    Area {
        slug: "projects",
        title: "Projects",
        summary: "Git repositories with a .betcycle.yml pipeline, their settings and role bindings.",
    },
    Area {
        slug: "runs",
        title: "Runs",
        summary: "Pipeline runs across all projects: live logs, test results, coverage and artifacts.",
    },
    Area {
        slug: "environments",
        title: "Environments",
        summary: "Where releases are deployed, with approvals, deploy windows, promotion and rollback.",
    },
    Area {
        slug: "policies",
        title: "Policies",
        summary: "Rego policies gating pipelines, deployments and infrastructure, and every decision made.",
    },
    Area {
        slug: "catalog",
        title: "Catalog",
        summary: "The service catalog: owners, lifecycle, dependencies, docs and self-service templates.",
    },
    Area {
        slug: "monitoring",
        title: "Monitoring",
        summary: "DORA metrics, pipeline trends, health probes, alert rules and notification channels.",
    },
    Area {
        slug: "security",
        title: "Security",
        summary: "Users, teams, tokens, secrets, the audit log and findings from security reports.",
    },
    Area {
        slug: "cost",
        title: "Cost",
        summary: "Runner and environment costs, FOCUS billing imports, budgets and unused resources.",
    },
    Area {
        slug: "settings",
        title: "Settings",
        summary: "Instance configuration, backups and updates.",
    },
];

#[derive(Template)]
#[template(path = "area.html")]
struct AreaPage {
    layout: Layout,
    area: &'static Area,
}

pub async fn page(area: &'static Area) -> ServerResult<Html<String>> {
    render(&AreaPage {
        layout: Layout::new(area.title, area.slug),
        area,
    })
}
