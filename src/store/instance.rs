//! Stored instance identity and start history.

use super::Store;
use super::codec;
use super::tables::{META, STARTS};
use crate::core::error::{Error, Result};
use crate::core::events::Event;
use crate::core::instance::{Instance, InstanceInfo, Start};
use redb::{ReadableDatabase, ReadableTable};

/// How many starts `instance_info` returns.
const RECENT_STARTS: usize = 10;

impl Store {
    /// Records that this process started; returns its start sequence number.
    pub async fn record_start(&self, version: &str, pid: u32) -> Result<u64> {
        let version = version.to_string();
        self.write(move |tx| {
            let mut starts = tx.open_table(STARTS)?;
            let seq = starts.last()?.map_or(1, |(k, _)| k.value() + 1);
            let start = Start {
                seq,
                started_at: jiff::Timestamp::now(),
                version: version.clone(),
                pid,
                stopped_at: None,
            };
            starts.insert(seq, codec::encode(&start).as_slice())?;
            tx.publish(Event::InstanceStarted { seq, version });
            Ok(seq)
        })
        .await
    }

    /// Marks start `seq` as stopped gracefully.
    pub async fn record_stop(&self, seq: u64) -> Result<()> {
        self.write(move |tx| {
            let mut starts = tx.open_table(STARTS)?;
            let mut start: Start = match starts.get(seq)? {
                Some(bytes) => codec::decode(STARTS, bytes.value())?,
                None => {
                    return Err(Error::NotFound {
                        what: format!("start {seq}"),
                    });
                }
            };
            start.stopped_at = Some(jiff::Timestamp::now());
            starts.insert(seq, codec::encode(&start).as_slice())?;
            Ok(())
        })
        .await
    }

    pub async fn instance_info(&self) -> Result<InstanceInfo> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let instance: Instance = match meta.get("instance")? {
                Some(bytes) => codec::decode(META, bytes.value())?,
                None => {
                    return Err(Error::NotFound {
                        what: "instance record".into(),
                    });
                }
            };
            let starts = tx.open_table(STARTS)?;
            let starts_total = starts.last()?.map_or(0, |(k, _)| k.value());
            let recent_starts = starts
                .iter()?
                .rev()
                .take(RECENT_STARTS)
                .map(|entry| {
                    let (_, value) = entry?;
                    codec::decode(STARTS, value.value())
                })
                .collect::<Result<Vec<Start>>>()?;
            Ok(InstanceInfo {
                instance,
                starts_total,
                recent_starts,
            })
        })
        .await
    }
}
