//! Account operations shared by the API, the console and the CLI: set-up, sign-in,
//! passwords, users and tokens. Password hashing runs on the blocking pool.

use super::throttle::LoginThrottle;
use super::{ApiToken, Scope, Session, User, secret, validate_name, validate_password};
use crate::core::error::{Error, Result};
use crate::identity::audit::{Context, Outcome, Record};
use crate::store::Store;
use jiff::Timestamp;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The one message for a wrong password and an unknown user alike.
pub const WRONG_CREDENTIALS: &str = "wrong user name or password";

async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .map_err(|e| Error::Store(format!("hashing task failed: {e}")))
}

async fn verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || secret::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

pub async fn create_user(
    store: &Store,
    name: &str,
    password: &str,
    admin: bool,
    ctx: &Context,
) -> Result<User> {
    validate_name("user", name).map_err(Error::Invalid)?;
    validate_password(password).map_err(Error::Invalid)?;
    let hash = hash(password.to_string()).await?;
    store
        .create_user(
            name.to_string(),
            hash,
            admin,
            Record::new(ctx, "user.create", format!("user:{name}")),
        )
        .await
}

/// Creates the first administrator with the one-time set-up token printed at start-up.
pub async fn setup(
    store: &Store,
    token_digest: &Mutex<Option<String>>,
    token: &str,
    name: &str,
    password: &str,
    ctx: &Context,
) -> Result<User> {
    let expected = token_digest.lock().expect("setup lock").clone();
    let Some(expected) = expected else {
        return Err(Error::Conflict("set-up is done: sign in instead".into()));
    };
    if !secret::constant_time_eq(&secret::digest(token), &expected) {
        store
            .audit(Record::new(ctx, "setup", format!("user:{name}")).outcome(Outcome::Failure))
            .await?;
        return Err(Error::Forbidden(
            "wrong set-up token; it is in the server log of this start".into(),
        ));
    }
    validate_name("user", name).map_err(Error::Invalid)?;
    validate_password(password).map_err(Error::Invalid)?;
    let hash = hash(password.to_string()).await?;
    let user = store
        .create_first_admin(
            name.to_string(),
            hash,
            Record::new(ctx, "setup", format!("user:{name}")),
        )
        .await?;
    *token_digest.lock().expect("setup lock") = None;
    Ok(user)
}

/// A new signed-in session: the cookie value (shown to the browser only) and the record.
pub struct SignIn {
    pub cookie: String,
    pub session: Session,
    pub user: User,
}

/// Checks a name and password and opens a session. Unknown names cost the same time and
/// get the same answer as wrong passwords; both count towards throttling.
pub async fn sign_in(
    store: &Store,
    throttle: &LoginThrottle,
    name: &str,
    password: &str,
    lifetime: Duration,
    user_agent: &str,
    ctx: &Context,
) -> Result<SignIn> {
    let attempt = super::throttle::Attempt::new(name, &ctx.source);
    if let Err(wait) = throttle.check(&attempt, Instant::now()) {
        store
            .audit(
                Record::new(ctx, "session.create", format!("user:{name}"))
                    .outcome(Outcome::Denied)
                    .detail("throttled"),
            )
            .await?;
        return Err(Error::Throttled {
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let user = store.user_by_name(name).await?;
    let hash = user.as_ref().map_or_else(
        || secret::dummy_hash().to_string(),
        |u| u.password_hash.clone(),
    );
    let valid = verify(password.to_string(), hash).await;
    let user = match user {
        Some(user) if valid && !user.disabled => user,
        _ => {
            throttle.record_failure(&attempt, Instant::now());
            store
                .audit(
                    Record::new(ctx, "session.create", format!("user:{name}"))
                        .outcome(Outcome::Failure),
                )
                .await?;
            return Err(Error::Unauthorized(WRONG_CREDENTIALS.into()));
        }
    };
    throttle.record_success(&attempt);

    let cookie = secret::random_hex(32);
    let digest = secret::digest(&cookie);
    let now = Timestamp::now();
    let lifetime =
        jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::from_hours(24));
    let session = Session {
        id: digest[..16].to_string(),
        user_id: user.id,
        created_at: now,
        expires_at: now.checked_add(lifetime).unwrap_or(now),
        last_seen_at: now,
        csrf_token: secret::random_hex(32),
        source: ctx.source.clone(),
        user_agent: user_agent.chars().take(200).collect(),
    };
    let ctx = Context {
        actor: format!("user:{}", user.name),
        ..ctx.clone()
    };
    store
        .create_session(
            digest,
            session.clone(),
            Record::new(&ctx, "session.create", format!("user:{}", user.name)),
        )
        .await?;
    Ok(SignIn {
        cookie,
        session,
        user,
    })
}

/// Signs out one of `principal`'s sessions. Returns how many were removed (0 or 1).
pub async fn revoke_session(
    store: &Store,
    principal: &super::Principal,
    id: &str,
    ctx: &Context,
) -> Result<usize> {
    let target = id.to_string();
    let record = Record::new(ctx, "session.delete", format!("session:{id}"));
    store
        .delete_sessions_audited(
            principal.user.id,
            move |sid| sid == target,
            // Another user's session id (or none at all) revokes nothing: not a success.
            move |n| match n {
                0 => record
                    .outcome(crate::identity::audit::Outcome::Failure)
                    .detail("no session of this user has that id"),
                n => record.detail(format!("{n} session(s)")),
            },
        )
        .await
}

/// Signs out every session of `principal` except the one making the request. Returns
/// how many were removed.
pub async fn revoke_other_sessions(
    store: &Store,
    principal: &super::Principal,
    ctx: &Context,
) -> Result<usize> {
    let keep = principal.session_id().map(str::to_string);
    store
        .delete_sessions(
            principal.user.id,
            move |id| keep.as_deref() != Some(id),
            Record::new(
                ctx,
                "session.delete_others",
                format!("user:{}", principal.user.name),
            ),
        )
        .await
}

/// Changes the caller's own password after checking the current one.
pub async fn change_password(
    store: &Store,
    user: &User,
    current: &str,
    new: &str,
    ctx: &Context,
) -> Result<()> {
    if !verify(current.to_string(), user.password_hash.clone()).await {
        store
            .audit(
                Record::new(ctx, "user.password", format!("user:{}", user.name))
                    .outcome(Outcome::Failure),
            )
            .await?;
        return Err(Error::Forbidden("the current password is wrong".into()));
    }
    set_password(store, &user.name, new, ctx).await
}

/// Sets a password (an administrator's reset, or the CLI). Ends the user's sessions.
pub async fn set_password(store: &Store, name: &str, password: &str, ctx: &Context) -> Result<()> {
    validate_password(password).map_err(Error::Invalid)?;
    let hash = hash(password.to_string()).await?;
    store
        .set_password(
            name,
            hash,
            Record::new(ctx, "user.password", format!("user:{name}")),
        )
        .await
}

/// Creates an API token for `user`; returns the secret (shown once) and the record.
pub async fn create_token(
    store: &Store,
    user: &User,
    name: &str,
    scope: Scope,
    expires_in: Option<Duration>,
    ctx: &Context,
) -> Result<(String, ApiToken)> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Error::Invalid(
            "a token needs a name of 1 to 100 characters".into(),
        ));
    }
    if scope == Scope::Admin && !user.admin {
        return Err(Error::Forbidden(
            "only administrators may create admin-scoped tokens".into(),
        ));
    }
    let secret = secret::new_token();
    let now = Timestamp::now();
    let expires_at = match expires_in {
        Some(d) => Some(
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
                .ok_or_else(|| Error::Invalid("the expiry is too far in the future".into()))?,
        ),
        None => None,
    };
    let token = ApiToken {
        id: 0,
        user_id: user.id,
        name: name.to_string(),
        scope,
        prefix: secret[..secret::TOKEN_PREFIX.len() + 6].to_string(),
        secret_hash: secret::digest(&secret),
        created_at: now,
        expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    let token = store
        .create_token(
            token,
            Record::new(ctx, "token.create", format!("user:{}", user.name)),
        )
        .await?;
    Ok((secret, token))
}

/// A token's `expires_in` (`30d`, `12h`; empty or absent: never).
pub fn parse_expiry(value: Option<&str>) -> Result<Option<std::time::Duration>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => crate::core::config::parse_duration(v)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("invalid expires_in \"{v}\": {e}"))),
    }
}
