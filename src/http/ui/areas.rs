//! The product's areas, as the navigation lists them. An area that is not built yet gets
//! a page that says so plainly and what it will do.

use super::{Layout, render};
use crate::http::ServerResult;
use crate::http::auth::Signed;
use askama::Template;
use axum::response::Html;

pub struct Area {
    pub slug: &'static str,
    pub title: &'static str,
    pub summary: &'static str,
    /// Screens of this area that exist: (title, link, what it holds).
    pub built: &'static [(&'static str, &'static str, &'static str)],
    /// What the area's page says is still missing.
    pub pending: &'static str,
}

pub const AREAS: &[Area] = &[
    Area {
        slug: "projects",
        title: "Projects",
        summary: "Git repositories with a .betcycle.yml pipeline, their settings and role bindings.",
        built: &[],
        pending: "Projects is not built yet in this version of BetCycle.",
    },
    Area {
        slug: "runs",
        title: "Runs",
        summary: "Pipeline runs across all projects: live logs, test results, coverage and artifacts.",
        built: &[],
        pending: "Runs is not built yet in this version of BetCycle.",
    },
    Area {
        slug: "environments",
        title: "Environments",
        summary: "Where releases are deployed, with approvals, deploy windows, promotion and rollback.",
        built: &[(
            "Projects",
            "/projects",
            "each project's Environments board: what is live where, approvals, promote, rollback, DORA metrics",
        )],
        pending: "The service and kubernetes targets and the blue-green and canary strategies are not built yet.",
    },
    Area {
        slug: "policies",
        title: "Policies",
        summary: "Rego policies gating pipelines, deployments and infrastructure, and every decision made.",
        built: &[],
        pending: "Policies is not built yet in this version of BetCycle.",
    },
    Area {
        slug: "catalog",
        title: "Catalog",
        summary: "The service catalog: owners, lifecycle, dependencies, docs and self-service templates.",
        built: &[],
        pending: "Catalog is not built yet in this version of BetCycle.",
    },
    Area {
        slug: "monitoring",
        title: "Monitoring",
        summary: "Alerts, uptime probes, status pages, silences and notification channels.",
        built: &[(
            "Monitoring",
            "/monitoring",
            "alerts and their history, probes with uptime, status pages, silences, channels (administrators only)",
        )],
        // Monitoring has its own page; this area page is never shown.
        pending: "",
    },
    Area {
        slug: "security",
        title: "Security",
        summary: "Users, teams, tokens, secrets, the audit log and findings from security reports.",
        built: &[
            (
                "Your account",
                "/account",
                "password, sessions and API tokens",
            ),
            (
                "Users",
                "/security/users",
                "accounts and administrators (administrators only)",
            ),
            (
                "Teams",
                "/security/teams",
                "groups of users for project roles (administrators only)",
            ),
            (
                "Instance secrets",
                "/security/secrets",
                "secrets every project's steps can use (administrators only); projects have their own",
            ),
            (
                "Audit log",
                "/security/audit",
                "every change and sign-in, hash-chained (administrators only)",
            ),
        ],
        pending: "Findings from security reports are not built yet.",
    },
    Area {
        slug: "cost",
        title: "Cost",
        summary: "Runner and environment costs, FOCUS billing imports, budgets and unused resources.",
        built: &[],
        pending: "Cost is not built yet in this version of BetCycle.",
    },
    Area {
        slug: "settings",
        title: "Settings",
        summary: "Instance configuration, backups and updates.",
        built: &[
            (
                "Backups",
                "/settings/backup",
                "download a consistent backup of the running server; how to restore (administrators only)",
            ),
            (
                "Agents",
                "/settings/agents",
                "build machines that run steps with runs_on: their labels, capacity and jobs (administrators only)",
            ),
        ],
        pending: "Editing the instance configuration in the console is not built yet: use the configuration file (betcycle config example). Updates come from betcycle self-update or your package manager.",
    },
];

#[derive(Template)]
#[template(path = "core/area.html")]
struct AreaPage {
    layout: Layout,
    area: &'static Area,
    admin: bool,
}

/// The marker in a screen's description that only administrators may open it.
const ADMINS_ONLY: &str = "(administrators only)";

impl AreaPage {
    /// The area's screens the caller may open: a non-administrator is not sent to
    /// pages that would refuse them.
    fn screens(&self) -> Vec<&'static (&'static str, &'static str, &'static str)> {
        self.area
            .built
            .iter()
            .filter(|(_, _, what)| self.admin || !what.contains(ADMINS_ONLY))
            .collect()
    }
}

pub async fn page(area: &'static Area, signed: Signed) -> ServerResult<Html<String>> {
    render(&AreaPage {
        layout: Layout::new(area.title, area.slug, Some(&signed.principal)),
        area,
        admin: signed.principal.user.admin,
    })
}
