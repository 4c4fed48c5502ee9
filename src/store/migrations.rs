//! Schema migrations, applied in order at open, each in its own write transaction that
//! also records the new `schema_version`: a crash between two migrations leaves the
//! database at the last completed one, and the next start continues from there.

use super::codec;
use super::tables::*;
use crate::core::error::Result;
use crate::core::instance::Instance;
use redb::{ReadableTable, WriteTransaction};

pub struct Migration {
    pub version: u64,
    pub description: &'static str,
    pub apply: fn(&WriteTransaction) -> Result<()>,
}

/// Every migration ever shipped. Append only; never edit or reorder a shipped one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "create meta and starts tables; give the instance its id",
        apply: |tx| {
            let mut meta = tx.open_table(META)?;
            tx.open_table(STARTS)?;
            let instance = Instance {
                id: uuid::Uuid::new_v4().simple().to_string(),
                created_at: jiff::Timestamp::now(),
                created_by_version: crate::VERSION.to_string(),
            };
            meta.insert("instance", codec::encode(&instance).as_slice())?;
            Ok(())
        },
    },
    Migration {
        version: 2,
        description: "create users, sessions, API tokens, teams, role bindings and audit tables",
        apply: |tx| {
            tx.open_table(USERS)?;
            tx.open_table(USER_NAMES)?;
            tx.open_table(SESSIONS)?;
            tx.open_table(API_TOKENS)?;
            tx.open_table(API_TOKEN_DIGESTS)?;
            tx.open_table(TEAMS)?;
            tx.open_table(TEAM_NAMES)?;
            tx.open_table(ROLE_BINDINGS)?;
            tx.open_table(AUDIT)?;
            Ok(())
        },
    },
    Migration {
        version: 3,
        description: "create projects tables",
        apply: |tx| {
            tx.open_table(PROJECTS)?;
            tx.open_table(PROJECT_SLUGS)?;
            Ok(())
        },
    },
    Migration {
        version: 4,
        description: "create runs, the per-project run index, the run queue and the running set",
        apply: |tx| {
            tx.open_table(RUNS)?;
            tx.open_table(PROJECT_RUNS)?;
            tx.open_table(RUN_QUEUE)?;
            tx.open_table(RUNS_RUNNING)?;
            Ok(())
        },
    },
    Migration {
        version: 5,
        description: "create project credentials, webhook deliveries, schedules and poll states",
        apply: |tx| {
            tx.open_table(PROJECT_CREDENTIALS)?;
            tx.open_table(DELIVERIES)?;
            tx.open_table(PROJECT_DELIVERIES)?;
            tx.open_table(DELIVERY_IDS)?;
            tx.open_table(SCHEDULES)?;
            tx.open_table(POLL_STATES)?;
            Ok(())
        },
    },
    Migration {
        version: 6,
        description: "create secrets",
        apply: |tx| {
            tx.open_table(SECRETS)?;
            Ok(())
        },
    },
    Migration {
        version: 7,
        description: "create environments, releases, deployments and the deploy queue",
        apply: |tx| {
            tx.open_table(ENVIRONMENTS)?;
            tx.open_table(RELEASES)?;
            tx.open_table(PROJECT_RELEASES)?;
            tx.open_table(DEPLOYMENTS)?;
            tx.open_table(PROJECT_DEPLOYMENTS)?;
            tx.open_table(DEPLOY_QUEUE)?;
            tx.open_table(DEPLOYS_ACTIVE)?;
            tx.open_table(DEPLOY_CALLBACKS)?;
            Ok(())
        },
    },
    Migration {
        version: 8,
        description: "create policies and the policy decision log",
        apply: |tx| {
            tx.open_table(POLICIES)?;
            tx.open_table(POLICY_DECISIONS)?;
            tx.open_table(PROJECT_DECISIONS)?;
            Ok(())
        },
    },
    Migration {
        version: 9,
        description: "create the quarantine of records that do not decode",
        apply: |tx| {
            tx.open_table(QUARANTINE)?;
            Ok(())
        },
    },
    Migration {
        version: 10,
        description: "index runs by status and by branch",
        apply: |tx| {
            let runs = tx.open_table(RUNS)?;
            let mut statuses = tx.open_table(PROJECT_RUN_STATUSES)?;
            let mut branches = tx.open_table(PROJECT_RUN_BRANCHES)?;
            for item in runs.iter()? {
                let (id, value) = item?;
                // A run that does not decode stays out of the indexes (and is quarantined
                // when it is met).
                let Ok(run) = codec::decode::<crate::ci::run::Run>(RUNS, value.value()) else {
                    continue;
                };
                let (project, number) = (run.project.as_str(), run.number);
                statuses.insert((project, run.status.as_str(), number), id.value())?;
                if let Some(branch) = &run.branch {
                    branches.insert((project, branch.as_str(), number), id.value())?;
                }
            }
            Ok(())
        },
    },
    Migration {
        version: 11,
        description: "create service instances and routes",
        apply: |tx| {
            tx.open_table(SERVICE_INSTANCES)?;
            tx.open_table(SERVICE_ROUTES)?;
            Ok(())
        },
    },
    Migration {
        version: 12,
        description: "create remote agents",
        apply: |tx| {
            tx.open_table(AGENTS)?;
            Ok(())
        },
    },
    Migration {
        version: 13,
        description: "create alerts, their history, silences, channels, the outbox and probes",
        apply: |tx| {
            tx.open_table(PROBES)?;
            tx.open_table(PROBE_STATES)?;
            tx.open_table(PROBE_RESULTS)?;
            tx.open_table(CHANNELS)?;
            tx.open_table(ALERTS)?;
            tx.open_table(ALERT_HISTORY)?;
            tx.open_table(SILENCES)?;
            tx.open_table(OUTBOX)?;
            tx.open_table(OUTBOX_PENDING)?;
            Ok(())
        },
    },
    Migration {
        version: 14,
        description: "create alert rules",
        apply: |tx| {
            tx.open_table(ALERT_RULES)?;
            Ok(())
        },
    },
    Migration {
        version: 15,
        description: "create probe summaries, summed from the results kept so far",
        apply: |tx| {
            let results = tx.open_table(PROBE_RESULTS)?;
            let mut summaries = tx.open_table(PROBE_SUMMARIES)?;
            for item in results.iter()? {
                let (k, v) = item?;
                let (name, _) = k.value();
                // A result that does not decode is left out of the sums (it stays where it is).
                let Ok(result) = codec::decode::<crate::monitoring::probes::ProbeResult>(
                    PROBE_RESULTS,
                    v.value(),
                ) else {
                    continue;
                };
                super::monitoring::add_to_summaries(&mut summaries, name, &result)?;
            }
            Ok(())
        },
    },
];

/// The schema version this build writes.
pub fn latest() -> u64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}
