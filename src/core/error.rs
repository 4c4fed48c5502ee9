//! The domain error. Variants say what went wrong in terms a caller can act on; the HTTP
//! layer maps each to a status and a stable `code`, and logs internal causes instead of
//! showing them.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A named thing does not exist (`what` is e.g. "project \"api\"").
    #[error("{what} not found")]
    NotFound { what: String },
    /// The caller sent something invalid; the message says what and where.
    #[error("{0}")]
    Invalid(String),
    /// Wrong user name or password, or an unusable credential. Deliberately vague.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not do this; the message says why.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts; try again after the given number of seconds.
    #[error("too many failed attempts; try again in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    /// The request clashes with what exists (a name already taken).
    #[error("{0}")]
    Conflict(String),
    /// Something BetCycle depends on failed for now (a repository that cannot be
    /// fetched): the request was fine and may be repeated later.
    #[error("{0}")]
    Unavailable(String),
    /// The database was written by a newer BetCycle.
    #[error(
        "the database {path} has schema version {found}, but this BetCycle supports at most {supported}; \
         run a newer BetCycle or restore a backup"
    )]
    StoreTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// Another process holds the database open.
    #[error("the database {path} is already open in another BetCycle process")]
    StoreLocked { path: PathBuf },
    /// The database failed; the detail is for the log, not for clients.
    #[error("store error: {0}")]
    Store(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt { table: String, reason: String },
    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
