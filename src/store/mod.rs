//! The store: one redb database file, `<data-dir>/betcycle.redb`.
//!
//! Only this module knows redb. Callers use the typed methods in the submodules; each runs
//! its transaction on the blocking pool (`spawn_blocking`), never on the async runtime,
//! and holds no `.await` inside a transaction. Write transactions are short; when a write
//! returns, the record survives `kill -9`. Writes are made durable by group commit: a
//! write that is the only one in progress commits durably itself
//! (`Durability::Immediate`, one commit and one `fsync`); while others are in progress,
//! each transaction commits without syncing (`Durability::None`), then waits until a
//! durable commit made after it has returned; one such commit covers every write that
//! committed before it, so concurrent writers share one `fsync` (`Durable` below). Events
//! collected during a write are published only once it is durable.

mod agents;
mod audit;
mod auth;
mod backup;
mod codec;
mod deploy;
mod instance;
mod migrations;
mod monitoring;
mod policy;
mod project;
mod quarantine;
mod records;
mod run;
mod secrets;
mod seed;
mod service;
mod sessions;
pub mod tables;
mod trigger;

use crate::core::error::{Error, Result};
use crate::core::events::{Event, EventBus};
use redb::{Database, Durability, ReadableDatabase, WriteTransaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tables::META;

pub use backup::{CheckReport, Snapshot, check_file, ensure_not_open, table_names};
pub use migrations::latest as latest_schema_version;
pub use quarantine::Quarantined;
pub use run::{HISTORY_SCAN, RunFilter, RunPage, RunQuery};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "betcycle.redb";

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    events: EventBus,
    durable: Durable,
}

/// Group commit: which non-durable commits a durable commit has covered so far.
#[derive(Default)]
struct Durable {
    state: std::sync::Mutex<Commits>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct Commits {
    /// How many writes have committed (numbered from 1 in commit order).
    committed: u64,
    /// Every write up to this number is durable.
    durable: u64,
    /// A writer is making a durable commit now.
    syncing: bool,
    /// Writes in progress (from before their transaction begins until they are durable).
    writers: u64,
}

impl Durable {
    /// Counts a write in progress until the guard is dropped.
    fn enter(&self) -> Writing<'_> {
        self.state.lock().expect("commit lock").writers += 1;
        Writing(self)
    }

    /// Whether the caller's write is the only one in progress: then its own commit is the
    /// durable one, as no other writer would share an `fsync` with it.
    fn alone(&self) -> bool {
        self.state.lock().expect("commit lock").writers == 1
    }

    /// How many writes have committed so far. Read while holding the write transaction:
    /// every one of them committed before the caller's commit.
    fn committed_so_far(&self) -> u64 {
        self.state.lock().expect("commit lock").committed
    }

    /// The caller's durable commit has returned: it covered every write up to `covers`.
    fn synced(&self, covers: u64) {
        let mut state = self.state.lock().expect("commit lock");
        state.durable = state.durable.max(covers);
        self.changed.notify_all();
    }

    /// Numbers a write that has just committed without syncing.
    fn committed(&self) -> u64 {
        let mut state = self.state.lock().expect("commit lock");
        state.committed += 1;
        state.committed
    }

    /// Returns once write `number` is durable: it waits for the durable commit in progress,
    /// or makes one itself (covering every write committed so far).
    fn wait(&self, db: &Database, number: u64) -> Result<()> {
        let mut state = self.state.lock().expect("commit lock");
        loop {
            if state.durable >= number {
                return Ok(());
            }
            if !state.syncing {
                state.syncing = true;
                let covers = state.committed;
                drop(state);
                let synced = db.begin_write().map_err(Error::from).and_then(|mut tx| {
                    tx.set_durability(Durability::Immediate)?;
                    tx.commit().map_err(Error::from)
                });
                state = self.state.lock().expect("commit lock");
                state.syncing = false;
                if synced.is_ok() {
                    state.durable = state.durable.max(covers);
                }
                self.changed.notify_all();
                synced?;
                continue;
            }
            state = self.changed.wait(state).expect("commit lock");
        }
    }
}

/// A write in progress (see `Durable::enter`).
struct Writing<'a>(&'a Durable);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("commit lock").writers -= 1;
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// A write transaction plus the events to publish once it commits.
pub(crate) struct WriteTx {
    tx: WriteTransaction,
    events: std::cell::RefCell<Vec<Event>>,
}

impl std::ops::Deref for WriteTx {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.tx
    }
}

impl WriteTx {
    /// Queues an event; it is sent only if the transaction commits.
    pub(crate) fn publish(&self, event: Event) {
        self.events.borrow_mut().push(event);
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations. Blocking:
    /// call it from a blocking context.
    pub fn open(path: &Path, cache_size: u64, events: EventBus) -> Result<Store> {
        let db = Database::builder()
            .set_cache_size(usize::try_from(cache_size).unwrap_or(usize::MAX))
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                events,
                durable: Durable::default(),
            }),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }

    /// The schema version recorded in the database (0 for a new file).
    fn schema_version(&self) -> Result<u64> {
        schema_version_in(&self.inner.db.begin_read()?)
    }

    fn migrate(&self) -> Result<()> {
        let current = self.schema_version()?;
        let latest = migrations::latest();
        if current > latest {
            return Err(Error::StoreTooNew {
                path: self.inner.path.clone(),
                found: current,
                supported: latest,
            });
        }
        for migration in migrations::MIGRATIONS
            .iter()
            .filter(|m| m.version > current)
        {
            tracing::info!(
                version = migration.version,
                description = migration.description,
                "applying store migration"
            );
            let tx = self.inner.db.begin_write()?;
            (migration.apply)(&tx)?;
            tx.open_table(META)?.insert(
                "schema_version",
                codec::encode(&migration.version).as_slice(),
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Publishes an event about something observed, not stored (a service's health).
    pub fn announce(&self, event: Event) {
        self.inner.events.publish(event);
    }

    /// Runs `f` with the database on the blocking pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&inner.db)).await
    }

    /// Runs `f` in one write transaction on the blocking pool, commits, returns once the
    /// commit is durable (see `Durable`), then publishes the events `f` queued. If `f`
    /// fails, nothing is written or published.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let (value, events) = blocking(move || {
            let _writing = inner.durable.enter();
            let mut tx = inner.db.begin_write()?;
            // Durable before this returns: a write that returned survives `kill -9`.
            let alone = inner.durable.alone();
            tx.set_durability(if alone {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let tx = WriteTx {
                tx,
                events: Default::default(),
            };
            let value = f(&tx)?;
            if alone {
                let covers = inner.durable.committed_so_far();
                tx.tx.commit()?;
                inner.durable.synced(covers);
            } else {
                tx.tx.commit()?;
                inner.durable.wait(&inner.db, inner.durable.committed())?;
            }
            Ok((value, tx.events.into_inner()))
        })
        .await?;
        for event in events {
            self.inner.events.publish(event);
        }
        Ok(value)
    }

    /// Proves the store answers a read (the systemd watchdog's check; no write, so it can
    /// run every few seconds).
    pub async fn ping(&self) -> Result<()> {
        self.read(|db| {
            db.begin_read()?.open_table(META)?;
            Ok(())
        })
        .await
    }

    /// Proves the store can be read and durably written, for `/readyz`.
    pub async fn probe(&self) -> Result<()> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let now = jiff::Timestamp::now();
            meta.insert("readiness_probe", codec::encode(&now).as_slice())?;
            Ok(())
        })
        .await?;
        self.read(|db| {
            let tx = db.begin_read()?;
            tx.open_table(META)?.get("readiness_probe")?;
            Ok(())
        })
        .await
    }
}

/// The schema version `tx` sees (0 for a new file).
fn schema_version_in(tx: &redb::ReadTransaction) -> Result<u64> {
    let meta = match tx.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match meta.get("schema_version")? {
        Some(v) => codec::decode(META, v.value()),
        None => Ok(0),
    }
}

/// A failure to open the database file: `StoreLocked` when another process holds it.
fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::StoreLocked {
            path: path.to_path_buf(),
        },
        other => Error::Store(format!("cannot open {}: {other}", path.display())),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Store(format!("store task failed: {e}")))?
}

macro_rules! store_errors {
    ($($ty:ty),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, bus: &EventBus) -> Result<Store> {
        Store::open(&dir.join(FILE_NAME), 1 << 20, bus.clone())
    }

    #[tokio::test]
    async fn events_are_published_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EventBus::new();
        let store = open(dir.path(), &bus).unwrap();
        let mut rx = bus.subscribe();

        let failed: Result<()> = store
            .write(|tx| {
                tx.publish(Event::InstanceStarted {
                    seq: 99,
                    version: "x".into(),
                });
                Err(Error::Invalid("rolled back".into()))
            })
            .await;
        assert!(failed.is_err());
        assert!(rx.try_recv().is_err(), "a failed write published an event");

        let seq = store.record_start("1.0", 7).await.unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(
            got.event,
            Event::InstanceStarted {
                seq,
                version: "1.0".into()
            }
        );
        // By the time the event arrives, the change is readable.
        let info = store.instance_info().await.unwrap();
        assert_eq!(info.recent_starts[0].seq, seq);
    }

    #[tokio::test]
    async fn reopening_keeps_records_and_skips_applied_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EventBus::new();
        let id = {
            let store = open(dir.path(), &bus).unwrap();
            store.record_start("1.0", 1).await.unwrap();
            store.instance_info().await.unwrap().instance.id
        };
        let store = open(dir.path(), &bus).unwrap();
        let info = store.instance_info().await.unwrap();
        assert_eq!(info.instance.id, id, "migration 1 ran twice");
        assert_eq!(info.starts_total, 1);
        assert_eq!(store.schema_version().unwrap(), migrations::latest());
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EventBus::new();
        {
            let store = open(dir.path(), &bus).unwrap();
            store
                .write(|tx| {
                    tx.open_table(META)?
                        .insert("schema_version", codec::encode(&999u64).as_slice())?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        let err = open(dir.path(), &bus).err().unwrap().to_string();
        assert!(err.contains("schema version 999"), "{err}");
        let supported = format!("supports at most {}", migrations::latest());
        assert!(err.contains(&supported), "{err}");
    }

    #[tokio::test]
    async fn project_roles_come_from_user_and_team_bindings() {
        use crate::identity::audit::{Context, Record};
        use crate::identity::{Role, Subject};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &EventBus::new()).unwrap();
        let ctx = Context::default();
        let rec = || Record::new(&ctx, "test", "x");
        let alice = store
            .create_user("alice".into(), "h".into(), false, rec())
            .await
            .unwrap();
        store
            .create_user("bob".into(), "h".into(), false, rec())
            .await
            .unwrap();
        store.create_team("ops".into(), rec()).await.unwrap();
        store
            .set_team_member("ops", "alice", true, rec())
            .await
            .unwrap();
        let ops = store.list_teams().await.unwrap()[0].id;

        assert_eq!(store.project_role("api", &alice).await.unwrap(), None);
        store
            .set_role_binding("api", Subject::User(alice.id), Some(Role::Viewer), rec())
            .await
            .unwrap();
        store
            .set_role_binding("api", Subject::Team(ops), Some(Role::Maintainer), rec())
            .await
            .unwrap();
        store
            .set_role_binding(
                "apiary",
                Subject::User(alice.id),
                Some(Role::Developer),
                rec(),
            )
            .await
            .unwrap();
        assert_eq!(
            store.project_role("api", &alice).await.unwrap(),
            Some(Role::Maintainer)
        );
        assert_eq!(
            store.project_role("apiary", &alice).await.unwrap(),
            Some(Role::Developer)
        );

        // Deleting the team drops its bindings; the direct one stays.
        store.delete_team("ops", rec()).await.unwrap();
        assert_eq!(
            store.project_role("api", &alice).await.unwrap(),
            Some(Role::Viewer)
        );
        store
            .set_role_binding("api", Subject::User(alice.id), None, rec())
            .await
            .unwrap();
        assert_eq!(store.project_role("api", &alice).await.unwrap(), None);
        // Two users, a team, a member, three bindings, the team deletion, the unbinding.
        assert_eq!(store.verify_audit().await.unwrap(), Ok(9));
    }

    #[tokio::test]
    async fn runs_left_running_are_requeued_once_then_failed() {
        use crate::ci::run::{Run, RunStatus};
        let dir = tempfile::tempdir().unwrap();
        let bus = EventBus::new();
        let run = Run {
            id: 0,
            project: "p".into(),
            number: 0,
            event: "api".into(),
            git_ref: "main".into(),
            branch: Some("main".into()),
            commit: "0".repeat(40),
            commit_subject: String::new(),
            commit_author: String::new(),
            actor: "test".into(),
            status: RunStatus::Queued,
            created_at: jiff::Timestamp::now(),
            started_at: None,
            finished_at: None,
            message: String::new(),
            restarts: 0,
            rerun_of: None,
            failed_only: false,
            steps: Vec::new(),
            env: Default::default(),
            changed_paths: None,
            pull_request: None,
            concurrency_group: None,
            delivery: None,
            schedule: None,
            secrets: Vec::new(),
        };
        let ctx = crate::identity::audit::Context::default();
        {
            let store = open(dir.path(), &bus).unwrap();
            let created = store
                .create_run(
                    run,
                    crate::identity::audit::Record::new(&ctx, "run.create", "p"),
                )
                .await
                .unwrap();
            assert_eq!((created.id, created.number), (1, 1));
            let claimed = store.claim_next_run().await.unwrap().unwrap();
            assert_eq!(claimed.status, RunStatus::Running);
            assert!(store.claim_next_run().await.unwrap().is_none());
        }
        let store = open(dir.path(), &bus).unwrap();
        assert_eq!(store.recover_interrupted_runs(1).await.unwrap(), (1, 0));
        assert_eq!(
            store.run(1).await.unwrap().unwrap().status,
            RunStatus::Queued
        );
        store.claim_next_run().await.unwrap().unwrap();
        assert_eq!(store.recover_interrupted_runs(1).await.unwrap(), (0, 1));
        assert_eq!(
            store.run(1).await.unwrap().unwrap().status,
            RunStatus::Failed
        );
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EventBus::new();
        let _first = open(dir.path(), &bus).unwrap();
        let err = open(dir.path(), &bus).err().unwrap();
        assert!(matches!(err, Error::StoreLocked { .. }), "{err}");
    }
}
