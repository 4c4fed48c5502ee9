//! The audit log: an append-only record of every change and every sign-in, each entry
//! carrying the SHA-256 of the one before, so altering or removing an entry breaks the
//! chain at that entry. `betcycle audit verify` walks the chain.
//!
//! The hash covers the exact bytes of the stored entry body (which include the previous
//! hash), so adding fields in later versions never invalidates old entries.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// The attempt failed (wrong password, invalid input).
    Failure,
    /// The caller lacked the permission.
    Denied,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        })
    }
}

/// Who did it, from where, in which request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Context {
    /// `user:alice`, `user:alice (token bct_1a2b)`, `anonymous`, `cli:root`, `system`.
    pub actor: String,
    /// Client address, or `cli` / `system`.
    pub source: String,
    #[serde(default)]
    pub request_id: String,
}

impl Context {
    /// BetCycle itself acting (a schedule, a poll, a superseded run).
    pub fn system(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            source: "system".into(),
            request_id: String::new(),
        }
    }

    pub fn cli() -> Self {
        // SAFETY: getuid cannot fail and has no preconditions.
        let user =
            std::env::var("USER").unwrap_or_else(|_| format!("uid-{}", unsafe { libc::getuid() }));
        Self {
            actor: format!("cli:{user}"),
            source: "cli".into(),
            request_id: String::new(),
        }
    }
}

/// What happened, as the caller describes it; the store adds sequence, time and hashes.
#[derive(Clone, Debug)]
pub struct Record {
    pub context: Context,
    /// Dotted verb: `user.create`, `session.create`, `token.revoke`, …
    pub action: &'static str,
    /// What it was done to: `user:alice`, `team:ops`, `token:3`.
    pub target: String,
    pub outcome: Outcome,
    /// Extra facts, never secrets.
    pub detail: String,
}

impl Record {
    pub fn new(context: &Context, action: &'static str, target: impl Into<String>) -> Self {
        Self {
            context: context.clone(),
            action,
            target: target.into(),
            outcome: Outcome::Success,
            detail: String::new(),
        }
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// One stored entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    #[serde(default)]
    pub request_id: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub detail: String,
    pub prev_hash: String,
}

/// Filters for listing entries; empty fields match everything.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Only entries with a sequence number below this (for paging backwards).
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        (self.actor.is_empty() || e.actor.contains(&self.actor))
            && (self.action.is_empty() || e.action.starts_with(&self.action))
            && (self.target.is_empty() || e.target.contains(&self.target))
            && self.outcome.is_none_or(|o| o == e.outcome)
    }
}

/// Where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq} {problem}")]
pub struct Broken {
    pub seq: u64,
    pub problem: String,
}

/// Checks a chain given as `(seq, stored hash, body bytes)` in sequence order, and the
/// head the store recorded. Returns how many entries were verified.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = (u64, &'a str, &'a [u8])>,
    head: Option<(u64, &str)>,
) -> Result<u64, Broken> {
    let mut prev_hash = GENESIS.to_string();
    let mut expected_seq = 1;
    for (seq, stored_hash, body) in entries {
        if seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                problem: format!("is missing (the next stored entry is {seq})"),
            });
        }
        let entry: Entry = serde_json::from_slice(body).map_err(|e| Broken {
            seq,
            problem: format!("is unreadable: {e}"),
        })?;
        if entry.seq != seq || entry.prev_hash != prev_hash {
            return Err(Broken {
                seq,
                problem:
                    "does not follow the entry before it (altered, or an earlier entry was removed)"
                        .into(),
            });
        }
        if crate::identity::secret::digest_bytes(body) != stored_hash {
            return Err(Broken {
                seq,
                problem: "was altered: its content no longer matches its hash".into(),
            });
        }
        prev_hash = stored_hash.to_string();
        expected_seq += 1;
    }
    let count = expected_seq - 1;
    match head {
        Some((head_seq, head_hash)) if head_seq != count || head_hash != prev_hash => Err(Broken {
            seq: count + 1,
            problem: format!(
                "is missing: the log recorded {head_seq} entries but only {count} are present"
            ),
        }),
        None if count > 0 => Err(Broken {
            seq: count,
            problem: "is not covered by the recorded head of the log".into(),
        }),
        _ => Ok(count),
    }
}
