//! Stored sessions and API tokens (by SHA-256 digest, never the secret). Every change
//! appends its audit entry in the same transaction.

use super::auth::{TOUCH_INTERVAL_SECS, all, get_user, next_id};
use super::tables::{API_TOKEN_DIGESTS, API_TOKENS, SESSIONS};
use super::{Store, WriteTx, codec};
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::identity::{ApiToken, Session, User};
use jiff::Timestamp;
use redb::{ReadableDatabase, ReadableTable};

impl Store {
    pub async fn create_session(
        &self,
        key_digest: String,
        session: Session,
        audit: Record,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(SESSIONS)?
                .insert(key_digest.as_str(), codec::encode(&session).as_slice())?;
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// The live session with this key digest and its (enabled) user; refreshes
    /// `last_seen_at` now and then. An expired session is deleted.
    pub async fn session(&self, key_digest: &str) -> Result<Option<(Session, User)>> {
        let key = key_digest.to_string();
        let found = self
            .read({
                let key = key.clone();
                move |db| {
                    let tx = db.begin_read()?;
                    let session: Option<Session> =
                        match tx.open_table(SESSIONS)?.get(key.as_str())? {
                            Some(v) => Some(codec::decode(SESSIONS, v.value())?),
                            None => None,
                        };
                    let Some(session) = session else {
                        return Ok(None);
                    };
                    let user = get_user(&tx, session.user_id)?;
                    Ok(user.map(|u| (session, u)))
                }
            })
            .await?;
        let Some((mut session, user)) = found else {
            return Ok(None);
        };
        let now = Timestamp::now();
        if session.expires_at <= now || user.disabled {
            self.write(move |tx| {
                tx.open_table(SESSIONS)?.remove(key.as_str())?;
                Ok(())
            })
            .await?;
            return Ok(None);
        }
        if now.as_second() - session.last_seen_at.as_second() > TOUCH_INTERVAL_SECS {
            session.last_seen_at = now;
            let stored = session.clone();
            self.write(move |tx| {
                let mut sessions = tx.open_table(SESSIONS)?;
                if sessions.get(key.as_str())?.is_some() {
                    sessions.insert(key.as_str(), codec::encode(&stored).as_slice())?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(Some((session, user)))
    }

    /// A user's live sessions, newest first.
    pub async fn list_sessions(&self, user_id: u64) -> Result<Vec<Session>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SESSIONS)?;
            let now = Timestamp::now();
            let mut out = Vec::new();
            for item in t.iter()? {
                let s: Session = codec::decode(SESSIONS, item?.1.value())?;
                if s.user_id == user_id && s.expires_at > now {
                    out.push(s);
                }
            }
            out.sort_by_key(|s| std::cmp::Reverse(s.created_at));
            Ok(out)
        })
        .await
    }

    /// Deletes `user_id`'s sessions whose public id passes `which`; returns how many.
    pub async fn delete_sessions(
        &self,
        user_id: u64,
        which: impl Fn(&str) -> bool + Send + 'static,
        audit: Record,
    ) -> Result<usize> {
        self.delete_sessions_audited(user_id, which, move |n| {
            audit.detail(format!("{n} session(s)"))
        })
        .await
    }

    /// Like `delete_sessions`, with the audit record made from how many were removed
    /// (in the same transaction).
    pub async fn delete_sessions_audited(
        &self,
        user_id: u64,
        which: impl Fn(&str) -> bool + Send + 'static,
        audit: impl FnOnce(usize) -> Record + Send + 'static,
    ) -> Result<usize> {
        self.write(move |tx| {
            let n = delete_sessions_where(tx, |s| s.user_id == user_id && which(&s.id))?;
            tx.audit(audit(n))?;
            Ok(n)
        })
        .await
    }

    pub async fn create_token(&self, mut token: ApiToken, audit: Record) -> Result<ApiToken> {
        self.write(move |tx| {
            token.id = next_id(tx, API_TOKENS)?;
            tx.open_table(API_TOKENS)?
                .insert(token.id, codec::encode(&token).as_slice())?;
            tx.open_table(API_TOKEN_DIGESTS)?
                .insert(token.secret_hash.as_str(), token.id)?;
            tx.audit(audit.detail(format!(
                "token {} ({}) scope {}",
                token.id, token.name, token.scope
            )))?;
            Ok(token)
        })
        .await
    }

    /// The active token with this secret digest and its (enabled) user; refreshes
    /// `last_used_at` now and then.
    pub async fn token(&self, secret_digest: &str) -> Result<Option<(ApiToken, User)>> {
        let digest = secret_digest.to_string();
        let found = self
            .read(move |db| {
                let tx = db.begin_read()?;
                let id = tx
                    .open_table(API_TOKEN_DIGESTS)?
                    .get(digest.as_str())?
                    .map(|v| v.value());
                let Some(id) = id else { return Ok(None) };
                let token: ApiToken = match tx.open_table(API_TOKENS)?.get(id)? {
                    Some(v) => codec::decode(API_TOKENS, v.value())?,
                    None => return Ok(None),
                };
                Ok(get_user(&tx, token.user_id)?.map(|u| (token, u)))
            })
            .await?;
        let now = Timestamp::now();
        let Some((mut token, user)) = found.filter(|(t, u)| t.is_active(now) && !u.disabled) else {
            return Ok(None);
        };
        if token
            .last_used_at
            .is_none_or(|t| now.as_second() - t.as_second() > TOUCH_INTERVAL_SECS)
        {
            token.last_used_at = Some(now);
            let id = token.id;
            self.write(move |tx| {
                let mut tokens = tx.open_table(API_TOKENS)?;
                let current: Option<ApiToken> = match tokens.get(id)? {
                    Some(v) => Some(codec::decode(API_TOKENS, v.value())?),
                    None => None,
                };
                if let Some(mut current) = current {
                    current.last_used_at = Some(now);
                    tokens.insert(id, codec::encode(&current).as_slice())?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(Some((token, user)))
    }

    /// Tokens of one user (or of everyone with `None`), newest first.
    pub async fn list_tokens(&self, user_id: Option<u64>) -> Result<Vec<ApiToken>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let mut tokens: Vec<ApiToken> = all(&tx, API_TOKENS)?;
            tokens.retain(|t| user_id.is_none_or(|id| t.user_id == id));
            tokens.reverse();
            Ok(tokens)
        })
        .await
    }

    /// Revokes token `id`. `owner` limits it to that user's tokens (admins pass `None`).
    pub async fn revoke_token(
        &self,
        id: u64,
        owner: Option<u64>,
        audit: Record,
    ) -> Result<ApiToken> {
        self.write(move |tx| {
            let mut tokens = tx.open_table(API_TOKENS)?;
            let token: Option<ApiToken> = match tokens.get(id)? {
                Some(v) => Some(codec::decode(API_TOKENS, v.value())?),
                None => None,
            };
            let mut token = token
                .filter(|t| owner.is_none_or(|o| o == t.user_id))
                .ok_or_else(|| Error::NotFound {
                    what: format!("token {id}"),
                })?;
            if token.revoked_at.is_none() {
                token.revoked_at = Some(Timestamp::now());
                tokens.insert(id, codec::encode(&token).as_slice())?;
            }
            drop(tokens);
            tx.audit(audit)?;
            Ok(token)
        })
        .await
    }
}

pub(super) fn delete_sessions_where(
    tx: &WriteTx,
    which: impl Fn(&Session) -> bool,
) -> Result<usize> {
    let mut sessions = tx.open_table(SESSIONS)?;
    let mut doomed = Vec::new();
    for item in sessions.iter()? {
        let (k, v) = item?;
        let s: Session = codec::decode(SESSIONS, v.value())?;
        if which(&s) {
            doomed.push(k.value().to_string());
        }
    }
    for key in &doomed {
        sessions.remove(key.as_str())?;
    }
    Ok(doomed.len())
}
