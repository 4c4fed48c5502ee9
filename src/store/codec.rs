//! Record encoding: JSON. Self-describing, so records written by an older BetCycle decode
//! in a newer one (`#[serde(default)]` on added fields) and unknown fields from a newer one
//! are ignored. A record that does not decode is reported with its table, never a panic.

use crate::core::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise: they hold no maps with non-string keys")
}

pub fn decode<T: DeserializeOwned>(table: impl redb::TableHandle, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        table: table.name().to_string(),
        reason: e.to_string(),
    })
}
