//! The stored audit chain. Entries are appended inside the transaction of the change
//! they describe, so a change without its audit entry cannot be committed.

use super::tables::{AUDIT, META};
use super::{Store, WriteTx, codec};
use crate::core::error::{Error, Result};
use crate::identity::audit::{self, Broken, Entry, Filter, GENESIS, Record};
use crate::identity::secret;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

/// Most entries one listing returns.
const MAX_LIMIT: usize = 500;

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

impl WriteTx {
    /// Appends `record` to the audit chain as part of this transaction.
    pub(crate) fn audit(&self, record: Record) -> Result<u64> {
        let mut meta = self.open_table(META)?;
        let head: Option<Head> = match meta.get("audit_head")? {
            Some(v) => Some(codec::decode(META, v.value())?),
            None => None,
        };
        let (seq, prev_hash) = head.map_or((1, GENESIS.to_string()), |h| (h.seq + 1, h.hash));
        let entry = Entry {
            seq,
            at: jiff::Timestamp::now(),
            actor: record.context.actor,
            action: record.action.to_string(),
            target: record.target,
            source: record.context.source,
            request_id: record.context.request_id,
            outcome: record.outcome,
            detail: record.detail,
            prev_hash,
        };
        let body = codec::encode(&entry);
        let hash = secret::digest_bytes(&body);
        let mut value = Vec::with_capacity(hash.len() + 1 + body.len());
        value.extend_from_slice(hash.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(&body);
        self.open_table(AUDIT)?.insert(seq, value.as_slice())?;
        meta.insert("audit_head", codec::encode(&Head { seq, hash }).as_slice())?;
        Ok(seq)
    }
}

fn split(value: &[u8]) -> Result<(&str, &[u8])> {
    let corrupt = || Error::Corrupt {
        table: "audit-1".into(),
        reason: "entry is not <hash>\\n<body>".into(),
    };
    let newline = value.iter().position(|b| *b == b'\n').ok_or_else(corrupt)?;
    let hash = std::str::from_utf8(&value[..newline]).map_err(|_| corrupt())?;
    Ok((hash, &value[newline + 1..]))
}

impl Store {
    /// Records something that changed nothing (a failed sign-in, a denied request) in its
    /// own transaction.
    pub async fn audit(&self, record: Record) -> Result<()> {
        self.write(move |tx| tx.audit(record).map(|_| ())).await
    }

    /// Entries matching `filter`, newest first.
    pub async fn audit_entries(&self, filter: Filter) -> Result<Vec<Entry>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(AUDIT)?;
            let limit = filter.limit.unwrap_or(100).min(MAX_LIMIT);
            let range = table.range(..filter.before.unwrap_or(u64::MAX))?;
            let mut out = Vec::new();
            for item in range.rev() {
                let (_, value) = item?;
                let (_, body) = split(value.value())?;
                let entry: Entry = codec::decode(AUDIT, body)?;
                if filter.matches(&entry) {
                    out.push(entry);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Walks the whole chain. `Ok(Err(broken))` names the first bad entry.
    pub async fn verify_audit(&self) -> Result<Result<u64, Broken>> {
        self.read(|db| verify_audit_in(&db.begin_read()?)).await
    }
}

/// Walks the chain as `tx` sees it (shared with `db check`, which reads a file directly).
pub(super) fn verify_audit_in(tx: &redb::ReadTransaction) -> Result<Result<u64, Broken>> {
    let head: Option<Head> = match tx.open_table(META)?.get("audit_head")? {
        Some(v) => Some(codec::decode(META, v.value())?),
        None => None,
    };
    let table = tx.open_table(AUDIT)?;
    let mut raw = Vec::new();
    for item in table.iter()? {
        let (seq, value) = item?;
        raw.push((seq.value(), value.value().to_vec()));
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (seq, value) in &raw {
        match split(value) {
            Ok((hash, body)) => entries.push((*seq, hash, body)),
            Err(_) => {
                return Ok(Err(Broken {
                    seq: *seq,
                    problem: "is unreadable: not <hash>\\n<body>".into(),
                }));
            }
        }
    }
    Ok(audit::verify(
        entries,
        head.as_ref().map(|h| (h.seq, h.hash.as_str())),
    ))
}
