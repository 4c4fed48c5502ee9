//! Whole-store operations: the online snapshot a backup is made of, and the offline check
//! `betcycle db check` runs.
//!
//! A snapshot copies every table, record by record, from one read transaction into a new
//! database file. redb's read transactions see one committed state (MVCC) while writers go
//! on, so the copy holds exactly the records committed before the snapshot began, however
//! busy the server is — a byte copy of the live file could not promise that.

use super::tables;
use super::{Store, migrations};
use crate::core::error::{Error, Result};
use crate::secrets::seal::Sealed;
use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, Value,
};
use std::path::{Path, PathBuf};

/// What a snapshot copied.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub schema_version: u64,
    pub tables: usize,
    pub records: u64,
}

/// What `check_file` found. `problems` empty means the database is sound.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub schema_version: u64,
    pub tables: usize,
    pub records: u64,
    pub audit_entries: u64,
    /// redb found an unclean shutdown and repaired its allocator state on open.
    pub repaired: bool,
    pub problems: Vec<String>,
    /// Records the server set aside because they did not decode (`table key: reason`).
    pub quarantined: Vec<String>,
    /// The sealed check value of the master key the secrets were sealed with, if any.
    pub master_key_check: Option<Sealed>,
}

/// A table of JSON records by id, which index tables point into.
type RecordTable = super::records::Records;

/// Most problems one check lists; past that the database needs a person, not a longer list.
const MAX_PROBLEMS: usize = 20;

/// The name of every table this binary knows.
pub fn table_names() -> Vec<&'static str> {
    tables::ALL.to_vec()
}

impl Store {
    /// Copies the committed state of every table into a new database at `dest` (which must
    /// not exist). Runs on the blocking pool; writers are not held up.
    pub async fn snapshot(&self, dest: PathBuf) -> Result<Snapshot> {
        self.read(move |db| {
            let src = db.begin_read()?;
            let known = table_names();
            for handle in src.list_tables()? {
                if !known.contains(&handle.name()) {
                    return Err(Error::Store(format!(
                        "table {} is not known to this binary; refusing an incomplete backup",
                        handle.name()
                    )));
                }
            }
            if dest.exists() {
                return Err(Error::Invalid(format!("{} already exists", dest.display())));
            }
            let out = Database::builder()
                .create(&dest)
                .map_err(|e| Error::Store(format!("cannot create {}: {e}", dest.display())))?;
            let mut records = 0;
            struct Copy<'a>(&'a ReadTransaction, &'a Database, u64);
            impl tables::Visit<Error> for Copy<'_> {
                fn table<K: Key + 'static, V: Value + 'static>(
                    &mut self,
                    def: TableDefinition<'static, K, V>,
                ) -> Result<()> {
                    self.2 += copy_table(self.0, self.1, def)?;
                    Ok(())
                }
            }
            let mut copy = Copy(&src, &out, 0);
            tables::visit_all(&mut copy)?;
            records += copy.2;
            let schema_version = super::schema_version_in(&src)?;
            Ok(Snapshot {
                schema_version,
                tables: known.len(),
                records,
            })
        })
        .await
    }
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    out: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64> {
    let table = match src.open_table(def) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let tx = out.begin_write()?;
    let mut copied = 0;
    {
        let mut to = tx.open_table(def)?;
        for item in table.iter()? {
            let (k, v) = item?;
            to.insert(k.value(), v.value())?;
            copied += 1;
        }
    }
    tx.commit()?;
    Ok(copied)
}

/// Fails with `StoreLocked` when a process (a running server) has the database open.
/// Opens it only for that; a damaged file passes (a restore is about to replace it).
pub fn ensure_not_open(path: &Path) -> Result<()> {
    match Database::builder().open(path) {
        Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => Err(super::open_error(path, e)),
        _ => Ok(()),
    }
}

/// Checks a database file that no server has open: redb's own integrity check (page
/// checksums and the allocator), the schema version, that every table is one this binary
/// knows, that every JSON record decodes, that the name and per-project indexes point at
/// records that exist, and the audit chain.
pub fn check_file(path: &Path) -> Result<CheckReport> {
    let mut db = Database::builder()
        .open(path)
        .map_err(|e| super::open_error(path, e))?;
    let mut report = CheckReport::default();
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => report.repaired = true,
        Err(e) => {
            report
                .problems
                .push(format!("redb integrity check failed: {e}"));
            return Ok(report);
        }
    }
    let tx = db.begin_read()?;
    report.schema_version = super::schema_version_in(&tx)?;
    if report.schema_version > migrations::latest() {
        report.problems.push(format!(
            "schema version {} is newer than this binary's {}; check it with a newer BetCycle",
            report.schema_version,
            migrations::latest()
        ));
        return Ok(report);
    }
    let known = table_names();
    for handle in tx.list_tables()? {
        if !known.contains(&handle.name()) {
            report
                .problems
                .push(format!("table {} is not one BetCycle makes", handle.name()));
        }
    }
    tables::visit_all(&mut Check(&tx, &mut report))?;
    check_indexes(&tx, &mut report)?;
    use tables::{META, QUARANTINE};
    match super::audit::verify_audit_in(&tx)? {
        Ok(n) => report.audit_entries = n,
        Err(broken) => report.problems.push(format!(
            "audit chain: entry {} {}",
            broken.seq, broken.problem
        )),
    }
    report.master_key_check = match tx.open_table(META)?.get(super::secrets::KEY_CHECK)? {
        Some(v) => super::codec::decode(META, v.value()).ok(),
        None => None,
    };
    let quarantine = match tx.open_table(QUARANTINE) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    for item in quarantine.iter().flat_map(|t| t.iter()).flatten() {
        let (k, v) = item?;
        let (table, key) = k.value();
        let reason = super::codec::decode::<super::Quarantined>(QUARANTINE, v.value())
            .map_or_else(|e| e.to_string(), |q| q.reason);
        report.quarantined.push(format!("{table} {key}: {reason}"));
    }
    report.problems.truncate(MAX_PROBLEMS);
    Ok(report)
}

/// Every index entry points at a record that exists.
fn check_indexes(tx: &ReadTransaction, report: &mut CheckReport) -> Result<()> {
    use tables::*;
    let indexes: [(&str, Vec<u64>, RecordTable); 9] = [
        ("user-names-1", values(tx, USER_NAMES)?, USERS),
        (
            "api-token-digests-1",
            values(tx, API_TOKEN_DIGESTS)?,
            API_TOKENS,
        ),
        ("team-names-1", values(tx, TEAM_NAMES)?, TEAMS),
        ("project-slugs-1", values(tx, PROJECT_SLUGS)?, PROJECTS),
        ("project-runs-1", values(tx, PROJECT_RUNS)?, RUNS),
        (
            "project-run-statuses-1",
            values(tx, PROJECT_RUN_STATUSES)?,
            RUNS,
        ),
        (
            "project-run-branches-1",
            values(tx, PROJECT_RUN_BRANCHES)?,
            RUNS,
        ),
        (
            "project-releases-1",
            values(tx, PROJECT_RELEASES)?,
            RELEASES,
        ),
        (
            "project-deployments-1",
            values(tx, PROJECT_DEPLOYMENTS)?,
            DEPLOYMENTS,
        ),
    ];
    for (index, ids, target) in indexes {
        if let Some(missing) = first_missing(tx, &ids, target)? {
            report.problems.push(format!(
                "index {index} points at {} {missing}, which does not exist",
                target.name()
            ));
        }
    }
    Ok(())
}

/// Counts a table's records and, for JSON-valued tables, decodes each one.
/// Checks every table it visits (see [`check_table`]).
struct Check<'a>(&'a ReadTransaction, &'a mut CheckReport);

impl tables::Visit<Error> for Check<'_> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<()> {
        check_table(self.0, def, self.1)
    }
}

fn check_table<K: Key + 'static, V: Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
    report: &mut CheckReport,
) -> Result<()> {
    let table = match tx.open_table(def) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    report.tables += 1;
    report.records += table.len()?;
    // Byte values are JSON records, except the audit chain's `<hash>\n<body>` (checked whole
    // by `verify_audit_in`).
    let json =
        V::type_name() == <&[u8] as Value>::type_name() && def.name() != tables::AUDIT.name();
    if !json {
        return Ok(());
    }
    for item in table.iter()? {
        let (k, v) = item?;
        let value = v.value();
        let bytes = V::as_bytes(&value);
        if let Err(e) = decode_as_server(def.name(), bytes.as_ref()) {
            report.problems.push(format!(
                "table {}: record {:?} does not decode: {e}",
                def.name(),
                K::as_bytes(&k.value()).as_ref()
            ));
            if report.problems.len() >= MAX_PROBLEMS {
                break;
            }
        }
    }
    Ok(())
}

/// Decodes a record of `table` into the type the server reads it as (not merely as
/// JSON: a `null` where a number belongs is valid JSON but no record the server can use).
fn decode_as_server(table: &str, bytes: &[u8]) -> std::result::Result<(), String> {
    fn typed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<(), String> {
        serde_json::from_slice::<T>(bytes)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    type Decoder = fn(&[u8]) -> std::result::Result<(), String>;
    use tables::*;
    let decoders: [(&str, Decoder); 19] = [
        (STARTS.name(), typed::<crate::core::instance::Start>),
        (USERS.name(), typed::<crate::identity::User>),
        (SESSIONS.name(), typed::<crate::identity::Session>),
        (API_TOKENS.name(), typed::<crate::identity::ApiToken>),
        (TEAMS.name(), typed::<crate::identity::Team>),
        (ROLE_BINDINGS.name(), typed::<crate::identity::RoleBinding>),
        (PROJECTS.name(), typed::<crate::projects::Project>),
        (RUNS.name(), typed::<crate::ci::run::Run>),
        (PROJECT_CREDENTIALS.name(), typed::<Sealed>),
        (DELIVERIES.name(), typed::<crate::projects::inbox::Delivery>),
        (
            SCHEDULES.name(),
            typed::<crate::projects::schedule::Schedule>,
        ),
        (
            POLL_STATES.name(),
            typed::<crate::projects::poll::PollState>,
        ),
        (SECRETS.name(), typed::<crate::secrets::Secret>),
        (ENVIRONMENTS.name(), typed::<crate::delivery::Environment>),
        (RELEASES.name(), typed::<crate::delivery::Release>),
        (DEPLOYMENTS.name(), typed::<crate::delivery::Deployment>),
        (POLICIES.name(), typed::<crate::policy::Policy>),
        (POLICY_DECISIONS.name(), typed::<crate::policy::Decision>),
        (QUARANTINE.name(), typed::<super::Quarantined>),
    ];
    match decoders.iter().find(|(name, _)| *name == table) {
        Some((_, decode)) => decode(bytes),
        // `meta` holds values of several kinds, each read where it is used.
        None => typed::<serde::de::IgnoredAny>(bytes),
    }
}

/// Every value of an index table (record ids).
fn values<K: Key + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, u64>,
) -> Result<Vec<u64>> {
    let table = match tx.open_table(def) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in table.iter()? {
        out.push(item?.1.value());
    }
    Ok(out)
}

fn first_missing(
    tx: &ReadTransaction,
    ids: &[u64],
    target: TableDefinition<u64, &[u8]>,
) -> Result<Option<u64>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let table = tx.open_table(target)?;
    for id in ids {
        if table.get(*id)?.is_none() {
            return Ok(Some(*id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::EventBus;

    #[tokio::test]
    async fn a_snapshot_copies_every_table_and_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("live.redb"), 1 << 20, EventBus::new()).unwrap();
        store.record_start("1.0", 7).await.unwrap();
        // Every table the migrations create is one `tables!` declares.
        let live = store
            .read(|db| {
                let tx = db.begin_read()?;
                Ok(tx
                    .list_tables()?
                    .map(|h| h.name().to_string())
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap();
        for name in &live {
            assert!(
                table_names().contains(&name.as_str()),
                "{name} is missing from the tables! declaration"
            );
        }
        let copy = dir.path().join("copy.redb");
        let snapshot = store.snapshot(copy.clone()).await.unwrap();
        assert_eq!(snapshot.schema_version, migrations::latest());
        assert!(snapshot.records >= 2, "{snapshot:?}");
        drop(store);
        let report = check_file(&copy).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, snapshot.records);
        assert_eq!(report.schema_version, migrations::latest());
    }
}
