//! Records that no longer decode. A queue, recovery or listing that meets one sets it
//! aside here (with the reason) and carries on, so one bad record never stops the run
//! queue, the deploy queue or start-up. The record itself stays where it was, for
//! `db check` and for a later version that can read it; `db check` lists what is here.

use super::tables::QUARANTINE;
use super::{Store, WriteTx, codec};
use crate::core::error::Result;
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use serde::{Deserialize, Serialize};

/// A record set aside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub table: String,
    pub key: String,
    pub reason: String,
    pub at: jiff::Timestamp,
}

/// Sets record `key` of `table` aside (taken out of whatever queue or set met it by the
/// caller) and logs it.
pub(super) fn set_aside(
    tx: &WriteTx,
    table: impl TableHandle,
    key: impl std::fmt::Display,
    reason: &str,
) -> Result<()> {
    let (table, key) = (table.name().to_string(), key.to_string());
    tracing::error!(
        table,
        key,
        reason,
        "a record does not decode: set aside (see `betcycle db check`)"
    );
    let entry = Quarantined {
        table: table.clone(),
        key: key.clone(),
        reason: reason.to_string(),
        at: jiff::Timestamp::now(),
    };
    tx.open_table(QUARANTINE)?.insert(
        (table.as_str(), key.as_str()),
        codec::encode(&entry).as_slice(),
    )?;
    Ok(())
}

/// Decodes a record met while listing; one that does not decode is logged and left out,
/// so a page of records still shows the others.
pub(super) fn decode_listed<T: serde::de::DeserializeOwned>(
    table: impl TableHandle + Copy,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Option<T> {
    match codec::decode(table, bytes) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::error!(table = table.name(), %key, error = %e, "a record does not decode: left out of the list");
            None
        }
    }
}

impl Store {
    /// Every record set aside, by table and key.
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let mut out = Vec::new();
            for item in tx.open_table(QUARANTINE)?.iter()? {
                let (_, v) = item?;
                out.push(codec::decode(QUARANTINE, v.value())?);
            }
            Ok(out)
        })
        .await
    }
}
