//! The record shapes most tables share, read one way: a record by id, a project's
//! record by its number through a `(project, number) → id` index, and a project's
//! records newest first through such an index. Store files use these instead of writing
//! the same transaction again.

use super::{codec, quarantine};
use crate::core::error::Result;
use redb::{ReadTransaction, TableDefinition};
use serde::de::DeserializeOwned;

/// A table of JSON records by id.
pub(super) type Records = TableDefinition<'static, u64, &'static [u8]>;
/// A per-project index: (project slug, number) → record id.
pub(super) type Numbers = TableDefinition<'static, (&'static str, u64), u64>;
/// A per-project index by a property: (project slug, value, number) → record id.
pub(super) type NumbersBy = TableDefinition<'static, (&'static str, &'static str, u64), u64>;

/// Record `id` of `table`.
pub(super) fn by_id<T: DeserializeOwned>(
    tx: &ReadTransaction,
    table: Records,
    id: u64,
) -> Result<Option<T>> {
    match tx.open_table(table)?.get(id)? {
        Some(v) => Ok(Some(codec::decode(table, v.value())?)),
        None => Ok(None),
    }
}

/// The record `project` numbers `number` in `index`.
pub(super) fn by_number<T: DeserializeOwned>(
    tx: &ReadTransaction,
    index: Numbers,
    table: Records,
    project: &str,
    number: u64,
) -> Result<Option<T>> {
    let id = tx
        .open_table(index)?
        .get((project, number))?
        .map(|v| v.value());
    match id {
        Some(id) => by_id(tx, table, id),
        None => Ok(None),
    }
}

/// `project`'s records in `index`, newest first, at most `limit`; a record that does not
/// decode is left out (and logged), never fails the list.
pub(super) fn newest<T: DeserializeOwned>(
    tx: &ReadTransaction,
    index: Numbers,
    table: Records,
    project: &str,
    limit: usize,
) -> Result<Vec<T>> {
    let (index, records) = (tx.open_table(index)?, tx.open_table(table)?);
    let mut out = Vec::new();
    for item in index.range((project, 0)..=(project, u64::MAX))?.rev() {
        if out.len() >= limit {
            break;
        }
        let id = item?.1.value();
        if let Some(v) = records.get(id)?
            && let Some(record) = quarantine::decode_listed(table, id, v.value())
        {
            out.push(record);
        }
    }
    Ok(out)
}

/// `newest` through an index by a property: the records whose (project, value) is `key`,
/// newest first, at most `limit` of those `keep` keeps (an index entry is a hint; the
/// record decides).
pub(super) fn newest_by<T: DeserializeOwned>(
    tx: &ReadTransaction,
    index: NumbersBy,
    table: Records,
    key: (&str, &str),
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>> {
    let (index, records) = (tx.open_table(index)?, tx.open_table(table)?);
    let (project, value) = key;
    let mut out = Vec::new();
    for item in index
        .range((project, value, 0)..=(project, value, u64::MAX))?
        .rev()
    {
        if out.len() >= limit {
            break;
        }
        let id = item?.1.value();
        if let Some(v) = records.get(id)?
            && let Some(record) = quarantine::decode_listed(table, id, v.value())
            && keep(&record)
        {
            out.push(record);
        }
    }
    Ok(out)
}
