//! Every table in the database, in one place. Keys are native redb types so range scans
//! sort correctly; values are JSON records (see `codec`) so fields can be added without a
//! migration. A breaking change to a table gets a new versioned name (`starts-1` →
//! `starts-2`) and a migration that copies the data across.

use redb::TableDefinition;

/// Key: setting name (`schema_version`, `instance`, `readiness_probe`).
/// Value: JSON — a number for `schema_version`, an [`crate::core::instance::Instance`] for
/// `instance`, a timestamp for `readiness_probe`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Key: start sequence number, from 1. Value: JSON [`crate::core::instance::Start`].
pub const STARTS: TableDefinition<u64, &[u8]> = TableDefinition::new("starts-1");

/// Key: user id, from 1. Value: JSON [`crate::identity::User`].
pub const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users-1");

/// Key: user name. Value: user id. Index of `USERS`, written in the same transaction.
pub const USER_NAMES: TableDefinition<&str, u64> = TableDefinition::new("user-names-1");

/// Key: SHA-256 (hex) of a session cookie value. Value: JSON [`crate::identity::Session`].
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions-1");

/// Key: API token id, from 1. Value: JSON [`crate::identity::ApiToken`].
pub const API_TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("api-tokens-1");

/// Key: SHA-256 (hex) of an API token secret. Value: token id. Index of `API_TOKENS`.
pub const API_TOKEN_DIGESTS: TableDefinition<&str, u64> =
    TableDefinition::new("api-token-digests-1");

/// Key: team id, from 1. Value: JSON [`crate::identity::Team`].
pub const TEAMS: TableDefinition<u64, &[u8]> = TableDefinition::new("teams-1");

/// Key: team name. Value: team id. Index of `TEAMS`.
pub const TEAM_NAMES: TableDefinition<&str, u64> = TableDefinition::new("team-names-1");

/// Key: (project slug, subject as `user:ID` or `team:ID`).
/// Value: JSON [`crate::identity::RoleBinding`].
pub const ROLE_BINDINGS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("role-bindings-1");

/// Key: audit sequence number, from 1. Value: `<SHA-256 hex of body>\n<body>`, where the
/// body is the JSON [`crate::identity::audit::Entry`]. Not the usual JSON record: the hash covers the
/// body's exact bytes. The chain's head (`{seq, hash}`) is `audit_head` in `META`.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-1");

/// Key: project id, from 1. Value: JSON [`crate::projects::Project`].
pub const PROJECTS: TableDefinition<u64, &[u8]> = TableDefinition::new("projects-1");

/// Key: project slug. Value: project id. Index of `PROJECTS`.
pub const PROJECT_SLUGS: TableDefinition<&str, u64> = TableDefinition::new("project-slugs-1");

/// Key: run id, from 1 (in creation order). Value: JSON [`crate::ci::run::Run`].
pub const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs-1");

/// Key: (project slug, run number). Value: run id. Index of `RUNS` per project.
pub const PROJECT_RUNS: TableDefinition<(&str, u64), u64> = TableDefinition::new("project-runs-1");

/// Key: run id of a queued run. Value: nothing. The queue, oldest first.
pub const RUN_QUEUE: TableDefinition<u64, ()> = TableDefinition::new("run-queue-1");

/// Key: run id of a running run. Value: nothing. Lets a restart find interrupted runs
/// without scanning every run.
pub const RUNS_RUNNING: TableDefinition<u64, ()> = TableDefinition::new("runs-running-1");

/// Key: (project id, credential name: `webhook_secret`, `forge_token`).
/// Value: JSON [`crate::secrets::seal::Sealed`] — never the plaintext. Legacy: since schema 6 these
/// are project secrets (`WEBHOOK_SECRET`, `FORGE_TOKEN` in `SECRETS`); the server moves any
/// left here at start.
pub const PROJECT_CREDENTIALS: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("project-credentials-1");

/// Key: delivery id, from 1 (in arrival order). Value: JSON [`crate::projects::inbox::Delivery`].
/// The payload itself is a file: `<data-dir>/deliveries/<sha256>.json`.
pub const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries-1");

/// Key: (project slug, delivery id). Value: nothing. A project's deliveries, in order.
pub const PROJECT_DELIVERIES: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("project-deliveries-1");

/// Key: (project slug, the forge's delivery id). Value: delivery id. Recognises a
/// delivery the forge sends again.
pub const DELIVERY_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("delivery-ids-1");

/// Key: schedule id, from 1. Value: JSON [`crate::projects::schedule::Schedule`].
pub const SCHEDULES: TableDefinition<u64, &[u8]> = TableDefinition::new("schedules-1");

/// Key: project id. Value: JSON [`crate::projects::poll::PollState`] — the refs last seen and when to
/// look again.
pub const POLL_STATES: TableDefinition<u64, &[u8]> = TableDefinition::new("poll-states-1");

/// Key: (scope: `instance`, `project:ID` or `project:ID/environment:NAME`, secret name).
/// Value: JSON [`crate::secrets::Secret`] — its kept versions, each sealed for its scope,
/// name and version; never a plaintext value.
pub const SECRETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("secrets-1");

/// Key: (project slug, environment name). Value: JSON [`crate::delivery::Environment`].
pub const ENVIRONMENTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("environments-1");

/// Key: release id, from 1. Value: JSON [`crate::delivery::Release`] — never changed.
pub const RELEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("releases-1");

/// Key: (project slug, release number). Value: release id. Index of `RELEASES`.
pub const PROJECT_RELEASES: TableDefinition<(&str, u64), u64> =
    TableDefinition::new("project-releases-1");

/// Key: deployment id, from 1. Value: JSON [`crate::delivery::Deployment`].
pub const DEPLOYMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("deployments-1");

/// Key: (project slug, deployment number). Value: deployment id. Index of `DEPLOYMENTS`.
pub const PROJECT_DEPLOYMENTS: TableDefinition<(&str, u64), u64> =
    TableDefinition::new("project-deployments-1");

/// Key: deployment id of a queued deployment. Value: nothing. The queue, oldest first.
pub const DEPLOY_QUEUE: TableDefinition<u64, ()> = TableDefinition::new("deploy-queue-1");

/// Key: (project slug, environment) with a deployment in progress. Value: its id. At most
/// one per environment.
pub const DEPLOYS_ACTIVE: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("deploys-active-1");

/// Key: SHA-256 (hex) of a webhook target's one-time callback token. Value: deployment id.
pub const DEPLOY_CALLBACKS: TableDefinition<&str, u64> = TableDefinition::new("deploy-callbacks-1");

/// Key: (scope: `instance` or `project:SLUG`, policy name). Value: JSON
/// [`crate::policy::Policy`] with its versions.
pub const POLICIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("policies-1");

/// Key: decision id, from 1. Value: JSON [`crate::policy::Decision`] (with its input).
pub const POLICY_DECISIONS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("policy-decisions-1");

/// Key: (project slug, decision id). Value: nothing. A project's decisions, in order.
pub const PROJECT_DECISIONS: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("project-decisions-1");

/// Key: (table name, the record's key as text). Value: JSON
/// [`crate::store::Quarantined`] — a record that did not decode, set aside (it stays in its
/// own table) so queues and start-up carry on.
pub const QUARANTINE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("quarantine-1");

/// Calls `$callback!` with the name of every table above, so whole-store operations (the
/// backup copy, `db check`) cannot miss one. A table added above must be added here; the
/// unit test in `store::backup` fails when a migrated store holds a table missing here.
macro_rules! with_all_tables {
    ($callback:ident) => {
        $callback!(
            META,
            STARTS,
            USERS,
            USER_NAMES,
            SESSIONS,
            API_TOKENS,
            API_TOKEN_DIGESTS,
            TEAMS,
            TEAM_NAMES,
            ROLE_BINDINGS,
            AUDIT,
            PROJECTS,
            PROJECT_SLUGS,
            RUNS,
            PROJECT_RUNS,
            RUN_QUEUE,
            RUNS_RUNNING,
            PROJECT_CREDENTIALS,
            DELIVERIES,
            PROJECT_DELIVERIES,
            DELIVERY_IDS,
            SCHEDULES,
            POLL_STATES,
            SECRETS,
            ENVIRONMENTS,
            RELEASES,
            PROJECT_RELEASES,
            DEPLOYMENTS,
            PROJECT_DEPLOYMENTS,
            DEPLOY_QUEUE,
            DEPLOYS_ACTIVE,
            DEPLOY_CALLBACKS,
            POLICIES,
            POLICY_DECISIONS,
            PROJECT_DECISIONS,
            QUARANTINE
        )
    };
}
pub(crate) use with_all_tables;
