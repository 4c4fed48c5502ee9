//! Stored users, teams and role bindings (sessions and API tokens: `sessions.rs`).
//! Every change appends its audit entry in the same transaction.

use super::sessions::delete_sessions_where;
use super::tables::{ROLE_BINDINGS, TEAM_NAMES, TEAMS, USER_NAMES, USERS};
use super::{Store, WriteTx, codec};
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::identity::{RoleBinding, Subject, Team, User, UserView};
use jiff::Timestamp;
use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

/// How stale `last_seen_at`/`last_used_at` may get before a request writes it again, so
/// ordinary reads do not each cost a durable write.
pub(super) const TOUCH_INTERVAL_SECS: i64 = 60;

pub(super) fn next_id(tx: &WriteTx, table: TableDefinition<u64, &[u8]>) -> Result<u64> {
    let t = tx.open_table(table)?;
    Ok(t.last()?.map_or(1, |(k, _)| k.value() + 1))
}

pub(super) fn get_user(tx: &ReadTransaction, id: u64) -> Result<Option<User>> {
    let users = tx.open_table(USERS)?;
    let user = match users.get(id)? {
        Some(v) => Some(codec::decode(USERS, v.value())?),
        None => None,
    };
    Ok(user)
}

fn user_named_in(tx: &WriteTx, name: &str) -> Result<User> {
    let id = tx
        .open_table(USER_NAMES)?
        .get(name)?
        .map(|v| v.value())
        .ok_or_else(|| Error::NotFound {
            what: format!("user \"{name}\""),
        })?;
    let users = tx.open_table(USERS)?;
    let bytes = users.get(id)?.ok_or_else(|| Error::Corrupt {
        table: "user-names-1".into(),
        reason: format!("user {id} is indexed but missing"),
    })?;
    codec::decode(USERS, bytes.value())
}

/// Inserts a new user and its name index entry; the name must be free.
fn insert_user(tx: &WriteTx, name: String, password_hash: String, admin: bool) -> Result<User> {
    if tx.open_table(USER_NAMES)?.get(name.as_str())?.is_some() {
        return Err(Error::Conflict(format!("user \"{name}\" already exists")));
    }
    let user = User {
        id: next_id(tx, USERS)?,
        name,
        admin,
        password_hash,
        created_at: Timestamp::now(),
        disabled: false,
    };
    put_user(tx, &user)?;
    tx.open_table(USER_NAMES)?
        .insert(user.name.as_str(), user.id)?;
    Ok(user)
}

pub(super) fn put_user(tx: &WriteTx, user: &User) -> Result<()> {
    tx.open_table(USERS)?
        .insert(user.id, codec::encode(user).as_slice())?;
    Ok(())
}

fn team_named_in(tx: &WriteTx, name: &str) -> Result<Team> {
    let id = tx
        .open_table(TEAM_NAMES)?
        .get(name)?
        .map(|v| v.value())
        .ok_or_else(|| Error::NotFound {
            what: format!("team \"{name}\""),
        })?;
    let teams = tx.open_table(TEAMS)?;
    let bytes = teams.get(id)?.ok_or_else(|| Error::Corrupt {
        table: "team-names-1".into(),
        reason: format!("team {id} is indexed but missing"),
    })?;
    codec::decode(TEAMS, bytes.value())
}

pub(super) fn all<V: serde::de::DeserializeOwned>(
    tx: &ReadTransaction,
    table: TableDefinition<u64, &[u8]>,
) -> Result<Vec<V>> {
    let t = tx.open_table(table)?;
    let mut out = Vec::new();
    for item in t.iter()? {
        let (_, v) = item?;
        out.push(codec::decode(table, v.value())?);
    }
    Ok(out)
}

fn subject_key(subject: &Subject) -> String {
    match subject {
        Subject::User(id) => format!("user:{id}"),
        Subject::Team(id) => format!("team:{id}"),
    }
}

impl Store {
    pub async fn user_count(&self) -> Result<u64> {
        self.read(|db| Ok(db.begin_read()?.open_table(USERS)?.len()?))
            .await
    }

    /// Creates a user; the name must be free.
    pub async fn create_user(
        &self,
        name: String,
        password_hash: String,
        admin: bool,
        audit: Record,
    ) -> Result<User> {
        self.write(move |tx| {
            let user = insert_user(tx, name, password_hash, admin)?;
            tx.audit(audit.detail(if admin { "admin" } else { "" }))?;
            Ok(user)
        })
        .await
    }

    /// Creates the first administrator, only while there are no users at all (the
    /// check and the insert are one transaction, so two set-up requests cannot both win).
    pub async fn create_first_admin(
        &self,
        name: String,
        password_hash: String,
        audit: Record,
    ) -> Result<User> {
        self.write(move |tx| {
            if tx.open_table(USERS)?.len()? > 0 {
                return Err(Error::Conflict(
                    "set-up is done: a user already exists".into(),
                ));
            }
            let user = insert_user(tx, name, password_hash, true)?;
            tx.audit(audit.detail("first administrator"))?;
            Ok(user)
        })
        .await
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let name = name.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let id = tx
                .open_table(USER_NAMES)?
                .get(name.as_str())?
                .map(|v| v.value());
            match id {
                Some(id) => get_user(&tx, id),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every user with the names of their teams, by id.
    pub async fn list_users(&self) -> Result<Vec<UserView>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let users: Vec<User> = all(&tx, USERS)?;
            let teams: Vec<Team> = all(&tx, TEAMS)?;
            Ok(users
                .into_iter()
                .map(|u| UserView {
                    teams: teams
                        .iter()
                        .filter(|t| t.members.contains(&u.id))
                        .map(|t| t.name.clone())
                        .collect(),
                    id: u.id,
                    name: u.name,
                    admin: u.admin,
                    disabled: u.disabled,
                    created_at: u.created_at,
                })
                .collect())
        })
        .await
    }

    /// Replaces a user's password hash and signs out all their sessions.
    pub async fn set_password(
        &self,
        name: &str,
        password_hash: String,
        audit: Record,
    ) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut user = user_named_in(tx, &name)?;
            user.password_hash = password_hash;
            put_user(tx, &user)?;
            delete_sessions_where(tx, |s| s.user_id == user.id)?;
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// Changes a user's admin flag or disables them (which also ends their sessions).
    /// Refuses to leave the instance without an enabled administrator.
    pub async fn update_user(
        &self,
        name: &str,
        admin: Option<bool>,
        disabled: Option<bool>,
        audit: Record,
    ) -> Result<User> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut user = user_named_in(tx, &name)?;
            if let Some(admin) = admin {
                user.admin = admin;
            }
            if let Some(disabled) = disabled {
                user.disabled = disabled;
            }
            put_user(tx, &user)?;
            let users: Vec<User> = {
                let t = tx.open_table(USERS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    out.push(codec::decode::<User>(USERS, item?.1.value())?);
                }
                out
            };
            if !users.iter().any(|u| u.admin && !u.disabled) {
                return Err(Error::Invalid(
                    "this would leave no enabled administrator; make someone else an administrator first".into(),
                ));
            }
            if user.disabled {
                delete_sessions_where(tx, |s| s.user_id == user.id)?;
            }
            tx.audit(audit.detail(format!(
                "admin={} disabled={}",
                user.admin, user.disabled
            )))?;
            Ok(user)
        })
        .await
    }

    // --- sessions ---

    // --- API tokens ---

    // --- teams and role bindings ---

    pub async fn list_teams(&self) -> Result<Vec<Team>> {
        self.read(|db| all(&db.begin_read()?, TEAMS)).await
    }

    pub async fn create_team(&self, name: String, audit: Record) -> Result<Team> {
        self.write(move |tx| {
            if tx.open_table(TEAM_NAMES)?.get(name.as_str())?.is_some() {
                return Err(Error::Conflict(format!("team \"{name}\" already exists")));
            }
            let team = Team {
                id: next_id(tx, TEAMS)?,
                name,
                members: Vec::new(),
                created_at: Timestamp::now(),
            };
            tx.open_table(TEAMS)?
                .insert(team.id, codec::encode(&team).as_slice())?;
            tx.open_table(TEAM_NAMES)?
                .insert(team.name.as_str(), team.id)?;
            tx.audit(audit)?;
            Ok(team)
        })
        .await
    }

    /// Deletes a team and its role bindings.
    pub async fn delete_team(&self, name: &str, audit: Record) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            let team = team_named_in(tx, &name)?;
            tx.open_table(TEAMS)?.remove(team.id)?;
            tx.open_table(TEAM_NAMES)?.remove(name.as_str())?;
            let subject = subject_key(&Subject::Team(team.id));
            let mut bindings = tx.open_table(ROLE_BINDINGS)?;
            let mut keys = Vec::new();
            for item in bindings.iter()? {
                let (k, _) = item?;
                let (p, s) = k.value();
                if s == subject {
                    keys.push((p.to_string(), s.to_string()));
                }
            }
            for (project, subject) in keys {
                bindings.remove((project.as_str(), subject.as_str()))?;
            }
            drop(bindings);
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// Adds (`member = true`) or removes a user from a team.
    pub async fn set_team_member(
        &self,
        team: &str,
        user: &str,
        member: bool,
        audit: Record,
    ) -> Result<Team> {
        let (team, user) = (team.to_string(), user.to_string());
        self.write(move |tx| {
            let mut t = team_named_in(tx, &team)?;
            let u = user_named_in(tx, &user)?;
            t.members.retain(|id| *id != u.id);
            if member {
                t.members.push(u.id);
            }
            tx.open_table(TEAMS)?
                .insert(t.id, codec::encode(&t).as_slice())?;
            tx.audit(audit)?;
            Ok(t)
        })
        .await
    }

    /// Grants (or with `None` removes) a project role.
    pub async fn set_role_binding(
        &self,
        project: &str,
        subject: Subject,
        role: Option<crate::identity::Role>,
        audit: Record,
    ) -> Result<()> {
        let project = project.to_string();
        self.write(move |tx| {
            let key = subject_key(&subject);
            let mut bindings = tx.open_table(ROLE_BINDINGS)?;
            match role {
                Some(role) => {
                    let binding = RoleBinding {
                        project: project.clone(),
                        subject,
                        role,
                    };
                    bindings.insert(
                        (project.as_str(), key.as_str()),
                        codec::encode(&binding).as_slice(),
                    )?;
                }
                None => {
                    bindings.remove((project.as_str(), key.as_str()))?;
                }
            }
            drop(bindings);
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// The role `user` holds on `project`, directly or through a team.
    pub async fn project_role(
        &self,
        project: &str,
        user: &User,
    ) -> Result<Option<crate::identity::Role>> {
        let (project, user) = (project.to_string(), user.clone());
        self.read(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(ROLE_BINDINGS)?;
            let mut bindings = Vec::new();
            for item in t.range((project.as_str(), "")..)? {
                let (k, v) = item?;
                if k.value().0 != project {
                    break;
                }
                bindings.push(codec::decode::<RoleBinding>(ROLE_BINDINGS, v.value())?);
            }
            let teams: Vec<Team> = all(&tx, TEAMS)?;
            Ok(crate::identity::project_role(&user, &teams, &bindings))
        })
        .await
    }
}
