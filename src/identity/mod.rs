//! Who is asking and whether they may: users, teams, sessions, API tokens, roles and the
//! checks every route declares. Passwords are argon2id hashes; session ids and API
//! tokens are random secrets stored only as SHA-256 digests, so the database never
//! holds anything that can be replayed.

pub mod accounts;
pub mod audit;
pub mod secret;
pub mod throttle;
pub mod views;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A person (or robot) who signs in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    /// Instance administrator: may do everything.
    #[serde(default)]
    pub admin: bool,
    /// argon2id PHC string. Never serialised to API responses (see `UserView`).
    pub password_hash: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub disabled: bool,
}

/// A user as the API and console show it.
#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    pub id: u64,
    pub name: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub teams: Vec<String>,
}

/// A named group of users, bound to project roles as one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Team {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub members: Vec<u64>,
    pub created_at: Timestamp,
}

/// A project role, weakest first: each includes what the ones before it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the project, its runs and deployments.
    Viewer,
    /// Also triggers, cancels and re-runs pipelines; deploys where protections allow.
    Developer,
    /// Also changes the project's settings, environments, secrets and role bindings.
    Maintainer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "developer" => Ok(Role::Developer),
            "maintainer" => Ok(Role::Maintainer),
            _ => Err(format!(
                "unknown role \"{s}\": expected viewer, developer or maintainer"
            )),
        }
    }
}

/// Who a role binding grants a role to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Subject {
    User(u64),
    Team(u64),
}

/// A project role granted to a user or a team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleBinding {
    pub project: String,
    pub subject: Subject,
    pub role: Role,
}

/// The strongest role `user` holds on a project through `bindings` (the project's
/// bindings), directly or through any of `teams`.
pub fn project_role(user: &User, teams: &[Team], bindings: &[RoleBinding]) -> Option<Role> {
    bindings
        .iter()
        .filter(|b| match b.subject {
            Subject::User(id) => id == user.id,
            Subject::Team(id) => teams
                .iter()
                .any(|t| t.id == id && t.members.contains(&user.id)),
        })
        .map(|b| b.role)
        .max()
}

/// What an API token may do on behalf of its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// GET requests only.
    Read,
    /// Also changes, within the user's roles; no instance administration.
    Write,
    /// Everything the user may do, including administration if the user is an admin.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!(
                "unknown scope \"{s}\": expected read, write or admin"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        })
    }
}

/// A personal API token. The secret itself is shown once at creation and never stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: u64,
    pub user_id: u64,
    pub name: String,
    pub scope: Scope,
    /// The first characters of the secret, so people can tell their tokens apart.
    pub prefix: String,
    /// SHA-256 of the secret, hex. Not shown by the API (see `TokenView`).
    pub secret_hash: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub last_used_at: Option<Timestamp>,
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
}

impl ApiToken {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id,
            user_id: self.user_id,
            name: self.name.clone(),
            scope: self.scope,
            prefix: self.prefix.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// An API token as the API and console show it: everything but the secret's digest.
#[derive(Clone, Debug, Serialize)]
pub struct TokenView {
    pub id: u64,
    pub user_id: u64,
    pub name: String,
    pub scope: Scope,
    pub prefix: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// A signed-in browser. Keyed in the store by the SHA-256 of the cookie value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Short public id (a prefix of the key's hash) for listing and revoking.
    pub id: String,
    pub user_id: u64,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// Token forms and htmx requests must echo on every change (CSRF protection).
    /// Not shown by the API except to the session's own sign-in (see `SessionView`).
    pub csrf_token: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub user_agent: String,
}

impl Session {
    pub fn view(&self, current: bool) -> SessionView {
        SessionView {
            id: self.id.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_seen_at: self.last_seen_at,
            source: self.source.clone(),
            user_agent: self.user_agent.clone(),
            current,
        }
    }
}

/// A session as the API and console show it: no CSRF token.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    pub id: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub source: String,
    pub user_agent: String,
    /// Whether this is the session making the request.
    pub current: bool,
}

/// How a request proved who it is.
#[derive(Clone, Debug)]
pub enum Credential {
    Session(Session),
    Token(ApiToken),
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: User,
    pub credential: Credential,
}

/// What a route requires of its caller. Every route declares one (see `http::routes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone, signed in or not.
    Public,
    /// A remote agent: its `bca_…` token, checked by the agent routes' own extractor
    /// (`http::api::agents::Caller`); users and API tokens are not agents.
    Agent,
    /// Any signed-in user (changes need a write-scoped token).
    User,
    /// An instance administrator (tokens need the admin scope).
    Admin,
    /// At least this role on the project named by the route's `{slug}` (administrators
    /// hold every role).
    Project(Role),
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Public => "public",
            Need::Agent => "agent",
            Need::User => "user",
            Need::Admin => "admin",
            Need::Project(Role::Viewer) => "project:viewer",
            Need::Project(Role::Developer) => "project:developer",
            Need::Project(Role::Maintainer) => "project:maintainer",
        })
    }
}

impl Principal {
    /// Whether this caller satisfies `need` for a request that `mutates` (or only reads);
    /// `Err` says why not.
    pub fn check(&self, need: Need, mutates: bool) -> Result<(), String> {
        let scope = match &self.credential {
            Credential::Session(_) => Scope::Admin,
            Credential::Token(t) => t.scope,
        };
        if mutates && scope < Scope::Write {
            return Err("this token has the read scope; changes need write".into());
        }
        match need {
            // The project role itself is looked up by the route guard.
            Need::Public | Need::Agent | Need::User | Need::Project(_) => Ok(()),
            Need::Admin if !self.user.admin => {
                Err("only instance administrators may do this".into())
            }
            Need::Admin if scope < Scope::Admin => Err("this token lacks the admin scope".into()),
            Need::Admin => Ok(()),
        }
    }

    /// The public id of the session making the request, when it is a session.
    pub fn session_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session(s) => Some(&s.id),
            Credential::Token(_) => None,
        }
    }

    /// The name audit entries record for this caller.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::Session(_) => format!("user:{}", self.user.name),
            Credential::Token(t) => format!("user:{} (token {})", self.user.name, t.prefix),
        }
    }
}

/// Checks a user name: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name \"{name}\": use 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        ))
    }
}

/// Minimum password length; long passphrases beat composition rules.
pub const MIN_PASSWORD_LEN: usize = 10;

pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!(
            "the password must have at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    if password.len() > 1024 {
        return Err("the password must have at most 1024 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, admin: bool) -> User {
        User {
            id,
            name: format!("u{id}"),
            admin,
            password_hash: String::new(),
            created_at: Timestamp::UNIX_EPOCH,
            disabled: false,
        }
    }

    fn token(scope: Scope) -> Credential {
        Credential::Token(ApiToken {
            id: 1,
            user_id: 1,
            name: "t".into(),
            scope,
            prefix: "bct_0000".into(),
            secret_hash: String::new(),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        })
    }

    #[test]
    fn project_role_is_the_strongest_direct_or_team_binding() {
        let alice = user(1, false);
        let team = Team {
            id: 7,
            name: "ops".into(),
            members: vec![1, 2],
            created_at: Timestamp::UNIX_EPOCH,
        };
        let bind = |subject, role| RoleBinding {
            project: "api".into(),
            subject,
            role,
        };
        assert_eq!(project_role(&alice, std::slice::from_ref(&team), &[]), None);
        let bindings = [
            bind(Subject::User(1), Role::Viewer),
            bind(Subject::Team(7), Role::Maintainer),
            bind(Subject::User(3), Role::Maintainer),
        ];
        assert_eq!(
            project_role(&alice, std::slice::from_ref(&team), &bindings),
            Some(Role::Maintainer)
        );
        assert_eq!(project_role(&alice, &[], &bindings), Some(Role::Viewer));
        assert_eq!(project_role(&user(2, false), &[team], &bindings[..1]), None);
    }

    #[test]
    fn scopes_and_admin_gate_what_a_principal_may_do() {
        let p = |admin, credential| Principal {
            user: user(1, admin),
            credential,
        };
        let read = p(true, token(Scope::Read));
        assert_eq!(read.check(Need::User, false), Ok(()));
        assert!(read.check(Need::User, true).is_err());
        let write = p(true, token(Scope::Write));
        assert_eq!(write.check(Need::User, true), Ok(()));
        assert!(write.check(Need::Admin, true).is_err());
        assert_eq!(
            p(true, token(Scope::Admin)).check(Need::Admin, true),
            Ok(())
        );
        assert!(
            p(false, token(Scope::Admin))
                .check(Need::Admin, false)
                .is_err()
        );
    }

    #[test]
    fn names_and_passwords_are_validated() {
        assert!(validate_name("user", "alice.b-2").is_ok());
        for bad in ["", "Alice", "-x", "a b", &"a".repeat(65)] {
            assert!(validate_name("user", bad).is_err(), "{bad}");
        }
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough pass").is_ok());
    }
}
