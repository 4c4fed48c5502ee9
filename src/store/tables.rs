//! Every table in the database, in one place. Keys are native redb types so range scans
//! sort correctly; values are JSON records (see `codec`) so fields can be added without a
//! migration. A breaking change to a table gets a new versioned name (`starts-1` →
//! `starts-2`) and a migration that copies the data across.

use redb::{Key, TableDefinition, Value};

/// Declares every table once — its documentation, name, key and value types — and from
/// that list makes the constants, [`ALL`] (every table's name) and [`visit_all`], so
/// whole-store operations (the backup copy, `db check`) cannot miss a table.
macro_rules! tables {
    ($($(#[$doc:meta])* $name:ident: $k:ty => $v:ty = $table:literal;)*) => {
        $($(#[$doc])* pub const $name: TableDefinition<$k, $v> = TableDefinition::new($table);)*

        /// The name of every table, in declaration order.
        pub const ALL: &[&str] = &[$($table),*];

        /// Calls `visitor` with every table, typed.
        pub fn visit_all<E>(visitor: &mut impl Visit<E>) -> Result<(), E> {
            $(visitor.table($name)?;)*
            Ok(())
        }
    };
}

/// What [`visit_all`] calls for each table.
pub trait Visit<E> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<(), E>;
}

tables! {
    /// Key: setting name (`schema_version`, `instance`, `readiness_probe`).
    /// Value: JSON — a number for `schema_version`, an [`crate::core::instance::Instance`] for
    /// `instance`, a timestamp for `readiness_probe`.
    META: &str => &[u8] = "meta";
    /// Key: start sequence number, from 1. Value: JSON [`crate::core::instance::Start`].
    STARTS: u64 => &[u8] = "starts-1";
    /// Key: user id, from 1. Value: JSON [`crate::identity::User`].
    USERS: u64 => &[u8] = "users-1";
    /// Key: user name. Value: user id. Index of `USERS`, written in the same transaction.
    USER_NAMES: &str => u64 = "user-names-1";
    /// Key: SHA-256 (hex) of a session cookie value. Value: JSON [`crate::identity::Session`].
    SESSIONS: &str => &[u8] = "sessions-1";
    /// Key: API token id, from 1. Value: JSON [`crate::identity::ApiToken`].
    API_TOKENS: u64 => &[u8] = "api-tokens-1";
    /// Key: SHA-256 (hex) of an API token secret. Value: token id. Index of `API_TOKENS`.
    API_TOKEN_DIGESTS: &str => u64 = "api-token-digests-1";
    /// Key: team id, from 1. Value: JSON [`crate::identity::Team`].
    TEAMS: u64 => &[u8] = "teams-1";
    /// Key: team name. Value: team id. Index of `TEAMS`.
    TEAM_NAMES: &str => u64 = "team-names-1";
    /// Key: (project slug, subject as `user:ID` or `team:ID`).
    /// Value: JSON [`crate::identity::RoleBinding`].
    ROLE_BINDINGS: (&str, &str) => &[u8] = "role-bindings-1";
    /// Key: audit sequence number, from 1. Value: `<SHA-256 hex of body>\n<body>`, where the
    /// body is the JSON [`crate::identity::audit::Entry`]. Not the usual JSON record: the hash covers the
    /// body's exact bytes. The chain's head (`{seq, hash}`) is `audit_head` in `META`.
    AUDIT: u64 => &[u8] = "audit-1";
    /// Key: project id, from 1. Value: JSON [`crate::projects::Project`].
    PROJECTS: u64 => &[u8] = "projects-1";
    /// Key: project slug. Value: project id. Index of `PROJECTS`.
    PROJECT_SLUGS: &str => u64 = "project-slugs-1";
    /// Key: run id, from 1 (in creation order). Value: JSON [`crate::ci::run::Run`].
    RUNS: u64 => &[u8] = "runs-1";
    /// Key: (project slug, run number). Value: run id. Index of `RUNS` per project.
    PROJECT_RUNS: (&str, u64) => u64 = "project-runs-1";
    /// Key: (project slug, run status as in the API, run number). Value: run id. Index of
    /// `RUNS` by status, kept by `run::save` (a run moves when its status changes).
    PROJECT_RUN_STATUSES: (&str, &str, u64) => u64 = "project-run-statuses-1";
    /// Key: (project slug, branch, run number). Value: run id. Index of `RUNS` by branch
    /// (runs of a tag or bare commit have none).
    PROJECT_RUN_BRANCHES: (&str, &str, u64) => u64 = "project-run-branches-1";
    /// Key: run id of a queued run. Value: nothing. The queue, oldest first.
    RUN_QUEUE: u64 => () = "run-queue-1";
    /// Key: run id of a running run. Value: nothing. Lets a restart find interrupted runs
    /// without scanning every run.
    RUNS_RUNNING: u64 => () = "runs-running-1";
    /// Key: (project id, credential name: `webhook_secret`, `forge_token`).
    /// Value: JSON [`crate::secrets::seal::Sealed`] — never the plaintext. Legacy: since schema 6 these
    /// are project secrets (`WEBHOOK_SECRET`, `FORGE_TOKEN` in `SECRETS`); the server moves any
    /// left here at start.
    PROJECT_CREDENTIALS: (u64, &str) => &[u8] = "project-credentials-1";
    /// Key: delivery id, from 1 (in arrival order). Value: JSON [`crate::projects::inbox::Delivery`].
    /// The payload itself is a file: `<data-dir>/deliveries/<sha256>.json`.
    DELIVERIES: u64 => &[u8] = "deliveries-1";
    /// Key: (project slug, delivery id). Value: nothing. A project's deliveries, in order.
    PROJECT_DELIVERIES: (&str, u64) => () = "project-deliveries-1";
    /// Key: (project slug, the forge's delivery id). Value: delivery id. Recognises a
    /// delivery the forge sends again.
    DELIVERY_IDS: (&str, &str) => u64 = "delivery-ids-1";
    /// Key: schedule id, from 1. Value: JSON [`crate::projects::schedule::Schedule`].
    SCHEDULES: u64 => &[u8] = "schedules-1";
    /// Key: project id. Value: JSON [`crate::projects::poll::PollState`] — the refs last seen and when to
    /// look again.
    POLL_STATES: u64 => &[u8] = "poll-states-1";
    /// Key: (scope: `instance`, `project:ID` or `project:ID/environment:NAME`, secret name).
    /// Value: JSON [`crate::secrets::Secret`] — its kept versions, each sealed for its scope,
    /// name and version; never a plaintext value.
    SECRETS: (&str, &str) => &[u8] = "secrets-1";
    /// Key: (project slug, environment name). Value: JSON [`crate::delivery::Environment`].
    ENVIRONMENTS: (&str, &str) => &[u8] = "environments-1";
    /// Key: release id, from 1. Value: JSON [`crate::delivery::Release`] — never changed.
    RELEASES: u64 => &[u8] = "releases-1";
    /// Key: (project slug, release number). Value: release id. Index of `RELEASES`.
    PROJECT_RELEASES: (&str, u64) => u64 = "project-releases-1";
    /// Key: deployment id, from 1. Value: JSON [`crate::delivery::Deployment`].
    DEPLOYMENTS: u64 => &[u8] = "deployments-1";
    /// Key: (project slug, deployment number). Value: deployment id. Index of `DEPLOYMENTS`.
    PROJECT_DEPLOYMENTS: (&str, u64) => u64 = "project-deployments-1";
    /// Key: deployment id of a queued deployment. Value: nothing. The queue, oldest first.
    DEPLOY_QUEUE: u64 => () = "deploy-queue-1";
    /// Key: (project slug, environment) with a deployment in progress. Value: its id. At most
    /// one per environment.
    DEPLOYS_ACTIVE: (&str, &str) => u64 = "deploys-active-1";
    /// Key: SHA-256 (hex) of a webhook target's one-time callback token. Value: deployment id.
    DEPLOY_CALLBACKS: &str => u64 = "deploy-callbacks-1";
    /// Key: (scope: `instance` or `project:SLUG`, policy name). Value: JSON
    /// [`crate::policy::Policy`] with its versions.
    POLICIES: (&str, &str) => &[u8] = "policies-1";
    /// Key: decision id, from 1. Value: JSON [`crate::policy::Decision`] (with its input).
    POLICY_DECISIONS: u64 => &[u8] = "policy-decisions-1";
    /// Key: (project slug, decision id). Value: nothing. A project's decisions, in order.
    PROJECT_DECISIONS: (&str, u64) => () = "project-decisions-1";
    /// Key: service instance id, from 1 (the last one given is `service_instance_seq` in
    /// `META`). Value: JSON [`crate::service::InstanceRecord`] — a supervised process (pid,
    /// start time, port) the next start adopts.
    SERVICE_INSTANCES: u64 => &[u8] = "service-instances-1";
    /// Key: (project slug, environment). Value: JSON [`crate::service::RouteRecord`] — the
    /// release a `service` environment serves, restored at the next start.
    SERVICE_ROUTES: (&str, &str) => &[u8] = "service-routes-1";
    /// Key: agent name. Value: JSON [`crate::agents::Agent`] — a remote agent and its
    /// token's digest.
    AGENTS: &str => &[u8] = "agents-1";
    /// Key: channel name. Value: JSON [`crate::monitoring::Channel`] — where notifications
    /// go (a URL, or the instance secret that holds it).
    CHANNELS: &str => &[u8] = "channels-1";
    /// Key: `rule:subject`. Value: JSON [`crate::monitoring::Alert`] — its current state.
    ALERTS: &str => &[u8] = "alerts-1";
    /// Key: entry id, from 1. Value: JSON [`crate::monitoring::AlertEvent`].
    ALERT_HISTORY: u64 => &[u8] = "alert-history-1";
    /// Key: silence id, from 1. Value: JSON [`crate::monitoring::Silence`].
    SILENCES: u64 => &[u8] = "silences-1";
    /// Key: rule name. Value: JSON [`crate::monitoring::rules::Rule`] — a built-in rule's
    /// settings once an administrator changed them, and every metric rule.
    ALERT_RULES: &str => &[u8] = "alert-rules-1";
    /// Key: notification id, from 1. Value: JSON [`crate::monitoring::Notification`] — the
    /// outbox: pending until sent or given up, kept with its outcome.
    OUTBOX: u64 => &[u8] = "outbox-1";
    /// Key: notification id. Value: nothing. The outbox's pending notifications, so the
    /// sender looks only at them.
    OUTBOX_PENDING: u64 => () = "outbox-pending-1";
    /// Key: probe name. Value: JSON [`crate::monitoring::probes::Probe`].
    PROBES: &str => &[u8] = "probes-1";
    /// Key: probe name. Value: JSON [`crate::monitoring::probes::ProbeState`] — up, down
    /// or unknown, with its streak and last result.
    PROBE_STATES: &str => &[u8] = "probe-states-1";
    /// Key: (probe name, Unix milliseconds). Value: JSON
    /// [`crate::monitoring::probes::ProbeResult`], kept 30 days.
    PROBE_RESULTS: (&str, i64) => &[u8] = "probe-results-1";
    /// Key: (probe name, `hour` or `day`, the period's start in Unix seconds). Value: JSON
    /// [`crate::monitoring::probes::ProbeSummary`] — written with the results it sums;
    /// hours kept 90 days, days 400.
    PROBE_SUMMARIES: (&str, &str, i64) => &[u8] = "probe-summaries-1";
    /// Key: (table name, the record's key as text). Value: JSON
    /// [`crate::store::Quarantined`] — a record that did not decode, set aside (it stays in its
    /// own table) so queues and start-up carry on.
    QUARANTINE: (&str, &str) => &[u8] = "quarantine-1";
}
