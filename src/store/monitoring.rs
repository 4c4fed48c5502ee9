//! Stored alerts, their history, silences, notification channels, the outbox and probes. An
//! alert's change, its history entry and its notifications commit together.

use super::auth::next_id;
use super::tables::{
    ALERT_HISTORY, ALERT_RULES, ALERTS, CHANNELS, OUTBOX, OUTBOX_PENDING, PROBE_RESULTS,
    PROBE_STATES, PROBE_SUMMARIES, PROBES, SILENCES,
};
use super::{Store, codec, quarantine};
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::monitoring::probes::{Period, Probe, ProbeResult, ProbeState, ProbeSummary};
use crate::monitoring::rules::Rule;
use crate::monitoring::{Alert, AlertEvent, Channel, Delivery, Notification, Silence};
use jiff::Timestamp;
use redb::{ReadableDatabase, ReadableTable};

impl Store {
    pub async fn create_channel(&self, channel: Channel, audit: Record) -> Result<()> {
        self.write(move |tx| {
            let mut table = tx.open_table(CHANNELS)?;
            if table.get(channel.name.as_str())?.is_some() {
                return Err(Error::Conflict(format!(
                    "channel \"{}\" already exists",
                    channel.name
                )));
            }
            table.insert(channel.name.as_str(), codec::encode(&channel).as_slice())?;
            drop(table);
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    pub async fn delete_channel(&self, name: &str, audit: Record) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            if tx.open_table(CHANNELS)?.remove(name.as_str())?.is_none() {
                return Err(Error::NotFound {
                    what: format!("channel \"{name}\""),
                });
            }
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    pub async fn channels(&self) -> Result<Vec<Channel>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(CHANNELS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(CHANNELS, k.value(), v.value()));
            }
            Ok(out)
        })
        .await
    }

    pub async fn alerts(&self) -> Result<Vec<Alert>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(ALERTS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(ALERTS, k.value(), v.value()));
            }
            Ok(out)
        })
        .await
    }

    /// Stores `alert` in its new state with a history entry and, when `send` and no
    /// silence covers it, one pending notification per channel.
    pub async fn transition_alert(&self, mut alert: Alert, send: bool) -> Result<AlertEvent> {
        self.write(move |tx| {
            let now = Timestamp::now();
            let silenced_by = silence_over(tx, &alert, now)?;
            let notify = send && silenced_by.is_none();
            if notify {
                alert.notified_at = Some(now);
            }
            let event = AlertEvent {
                id: next_id(tx, ALERT_HISTORY)?,
                key: alert.key.clone(),
                state: alert.state,
                at: now,
                summary: alert.summary.clone(),
                silenced_by,
            };
            tx.open_table(ALERT_HISTORY)?
                .insert(event.id, codec::encode(&event).as_slice())?;
            tx.open_table(ALERTS)?
                .insert(alert.key.as_str(), codec::encode(&alert).as_slice())?;
            if notify {
                notify_channels_in(tx, &alert, now)?;
            }
            Ok(event)
        })
        .await
    }

    /// Sends a firing alert's notification again (its rule's renotify interval passed),
    /// unless a silence covers it now. Whether it was sent.
    pub async fn renotify_alert(&self, mut alert: Alert) -> Result<bool> {
        self.write(move |tx| {
            let now = Timestamp::now();
            if silence_over(tx, &alert, now)?.is_some() {
                return Ok(false);
            }
            alert.notified_at = Some(now);
            tx.open_table(ALERTS)?
                .insert(alert.key.as_str(), codec::encode(&alert).as_slice())?;
            notify_channels_in(tx, &alert, now)?;
            Ok(true)
        })
        .await
    }

    /// The stored rules: built-in rules' changed settings and the metric rules.
    pub async fn alert_rules(&self) -> Result<Vec<Rule>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(ALERT_RULES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(ALERT_RULES, k.value(), v.value()));
            }
            Ok(out)
        })
        .await
    }

    pub async fn put_alert_rule(&self, rule: Rule, audit: Record) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(ALERT_RULES)?
                .insert(rule.name.as_str(), codec::encode(&rule).as_slice())?;
            tx.audit(audit)?;
            tx.publish(crate::core::events::Event::AlertRulesChanged);
            Ok(())
        })
        .await
    }

    /// Removes a stored rule; whether there was one.
    pub async fn delete_alert_rule(&self, name: &str, audit: Record) -> Result<bool> {
        let name = name.to_string();
        self.write(move |tx| {
            let removed = tx.open_table(ALERT_RULES)?.remove(name.as_str())?.is_some();
            if removed {
                tx.audit(audit)?;
                tx.publish(crate::core::events::Event::AlertRulesChanged);
            }
            Ok(removed)
        })
        .await
    }

    /// The newest `limit` history entries, newest first.
    pub async fn alert_history(&self, limit: usize) -> Result<Vec<AlertEvent>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(ALERT_HISTORY)?;
            let mut out = Vec::new();
            for item in table.iter()?.rev().take(limit) {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(
                    ALERT_HISTORY,
                    k.value(),
                    v.value(),
                ));
            }
            Ok(out)
        })
        .await
    }

    pub async fn create_silence(&self, mut silence: Silence, audit: Record) -> Result<Silence> {
        self.write(move |tx| {
            silence.id = next_id(tx, SILENCES)?;
            tx.open_table(SILENCES)?
                .insert(silence.id, codec::encode(&silence).as_slice())?;
            tx.audit(audit)?;
            Ok(silence)
        })
        .await
    }

    pub async fn delete_silence(&self, id: u64, audit: Record) -> Result<()> {
        self.write(move |tx| {
            if tx.open_table(SILENCES)?.remove(id)?.is_none() {
                return Err(Error::NotFound {
                    what: format!("silence {id}"),
                });
            }
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    pub async fn silences(&self) -> Result<Vec<Silence>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SILENCES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(SILENCES, k.value(), v.value()));
            }
            Ok(out)
        })
        .await
    }

    /// Adds a notification (a channel's test) to the outbox; returns it with its id.
    pub async fn add_notification(&self, mut n: Notification) -> Result<Notification> {
        self.write(move |tx| {
            n.id = next_id(tx, OUTBOX)?;
            put_notification_in(tx, &n)?;
            Ok(n)
        })
        .await
    }

    pub async fn put_notification(&self, n: Notification) -> Result<()> {
        self.write(move |tx| put_notification_in(tx, &n)).await
    }

    /// The newest `limit` notifications, newest first, or only the pending ones due by
    /// `due` (oldest first).
    pub async fn notifications(
        &self,
        due: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(OUTBOX)?;
            let mut out = Vec::new();
            let decode = |k: u64, v: &[u8]| quarantine::decode_listed::<Notification>(OUTBOX, k, v);
            match due {
                Some(now) => {
                    for item in tx.open_table(OUTBOX_PENDING)?.iter()? {
                        let id = item?.0.value();
                        let Some(v) = table.get(id)? else { continue };
                        if let Some(n) = decode(id, v.value()).filter(|n| n.next_at <= now) {
                            out.push(n);
                            if out.len() >= limit {
                                break;
                            }
                        }
                    }
                }
                None => {
                    for item in table.iter()?.rev().take(limit) {
                        let (k, v) = item?;
                        out.extend(decode(k.value(), v.value()));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

impl Store {
    pub async fn create_probe(&self, probe: Probe, audit: Record) -> Result<()> {
        self.write(move |tx| {
            let mut table = tx.open_table(PROBES)?;
            if table.get(probe.name.as_str())?.is_some() {
                return Err(Error::Conflict(format!(
                    "probe \"{}\" already exists",
                    probe.name
                )));
            }
            table.insert(probe.name.as_str(), codec::encode(&probe).as_slice())?;
            drop(table);
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// Removes a probe with its state, results and summaries.
    pub async fn delete_probe(&self, name: &str, audit: Record) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            if !remove_probe_in(tx, &name)? {
                return Err(Error::NotFound {
                    what: format!("probe \"{name}\""),
                });
            }
            tx.audit(audit)?;
            Ok(())
        })
        .await
    }

    /// Stores a probe BetCycle keeps itself (a service's), replacing the one of that
    /// name but keeping when it was made.
    pub async fn put_managed_probe(&self, mut probe: Probe) -> Result<()> {
        self.write(move |tx| {
            let mut table = tx.open_table(PROBES)?;
            if let Some(old) = table.get(probe.name.as_str())?
                && let Ok(old) = codec::decode::<Probe>(PROBES, old.value())
            {
                probe.created_at = old.created_at;
            }
            table.insert(probe.name.as_str(), codec::encode(&probe).as_slice())?;
            Ok(())
        })
        .await
    }

    /// Removes a probe BetCycle keeps itself, if it is there.
    pub async fn remove_managed_probe(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| remove_probe_in(tx, &name).map(drop))
            .await
    }

    pub async fn probes(&self) -> Result<Vec<Probe>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(PROBES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(PROBES, k.value(), v.value()));
            }
            Ok(out)
        })
        .await
    }

    pub async fn probe_states(&self) -> Result<Vec<ProbeState>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(PROBE_STATES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.extend(quarantine::decode_listed(
                    PROBE_STATES,
                    k.value(),
                    v.value(),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Stores a batch of results with each probe's state after it, and adds them to
    /// their hourly and daily summaries, in one write.
    pub async fn record_probes(&self, batch: Vec<(ProbeResult, ProbeState)>) -> Result<()> {
        self.write(move |tx| {
            let mut results = tx.open_table(PROBE_RESULTS)?;
            let mut states = tx.open_table(PROBE_STATES)?;
            let mut summaries = tx.open_table(PROBE_SUMMARIES)?;
            for (result, state) in batch {
                let key = (state.name.as_str(), result.at.as_millisecond());
                results.insert(key, codec::encode(&result).as_slice())?;
                states.insert(state.name.as_str(), codec::encode(&state).as_slice())?;
                add_to_summaries(&mut summaries, &state.name, &result)?;
            }
            Ok(())
        })
        .await
    }

    /// Probe `name`'s summaries per `period` from the one holding `since`, oldest first.
    pub async fn probe_summaries(
        &self,
        name: &str,
        period: Period,
        since: Timestamp,
    ) -> Result<Vec<ProbeSummary>> {
        let name = name.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(PROBE_SUMMARIES)?;
            let from = (name.as_str(), period.as_str(), period.start_of(since));
            let to = (name.as_str(), period.as_str(), i64::MAX);
            let mut out = Vec::new();
            for item in table.range(from..=to)? {
                let (k, v) = item?;
                let (_, _, start) = k.value();
                out.extend(quarantine::decode_listed::<ProbeSummary>(
                    PROBE_SUMMARIES,
                    format!("{name}@{}@{start}", period.as_str()),
                    v.value(),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Probe `name`'s results since `since`, oldest first, the newest `limit` of them.
    pub async fn probe_results(
        &self,
        name: &str,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<ProbeResult>> {
        let name = name.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(PROBE_RESULTS)?;
            let range = (name.as_str(), since.as_millisecond())..=(name.as_str(), i64::MAX);
            let mut out = Vec::new();
            for item in table.range(range)?.rev().take(limit) {
                let (k, v) = item?;
                let (_, at) = k.value();
                out.extend(quarantine::decode_listed::<ProbeResult>(
                    PROBE_RESULTS,
                    format!("{name}@{at}"),
                    v.value(),
                ));
            }
            out.reverse();
            Ok(out)
        })
        .await
    }

    /// Removes the probe results and summaries older than their retention at `now`.
    pub async fn prune_probe_results(&self, now: Timestamp) -> Result<()> {
        let before = (now - crate::monitoring::probes::RETENTION).as_millisecond();
        let kept_from = |period: Period| (now - period.retention()).as_second();
        let (hours, days) = (kept_from(Period::Hour), kept_from(Period::Day));
        self.write(move |tx| {
            tx.open_table(PROBE_RESULTS)?
                .retain(|(_, at), _| at >= before)?;
            tx.open_table(PROBE_SUMMARIES)?
                .retain(|(_, period, start), _| {
                    start
                        >= if period == Period::Hour.as_str() {
                            hours
                        } else {
                            days
                        }
                })?;
            Ok(())
        })
        .await
    }
}

/// Removes probe `name` with its state, results and summaries; whether it was there.
fn remove_probe_in(tx: &super::WriteTx, name: &str) -> Result<bool> {
    if tx.open_table(PROBES)?.remove(name)?.is_none() {
        return Ok(false);
    }
    tx.open_table(PROBE_STATES)?.remove(name)?;
    tx.open_table(PROBE_RESULTS)?
        .retain_in((name, i64::MIN)..=(name, i64::MAX), |_, _| false)?;
    tx.open_table(PROBE_SUMMARIES)?
        .retain_in((name, "", i64::MIN)..=(name, "~", i64::MAX), |_, _| false)?;
    Ok(true)
}

/// Adds `result` to probe `name`'s hourly and daily summaries.
pub(super) fn add_to_summaries(
    table: &mut redb::Table<(&str, &str, i64), &[u8]>,
    name: &str,
    result: &ProbeResult,
) -> Result<()> {
    for period in Period::ALL {
        let start = period.start_of(result.at);
        let key = (name, period.as_str(), start);
        let mut summary: ProbeSummary = match table.get(key)? {
            // A summary that does not decode starts again rather than stop the probes.
            Some(v) => codec::decode(PROBE_SUMMARIES, v.value()).unwrap_or_default(),
            None => ProbeSummary::default(),
        };
        summary.start = Timestamp::from_second(start).unwrap_or(result.at);
        summary.add(result);
        table.insert(key, codec::encode(&summary).as_slice())?;
    }
    Ok(())
}

/// Writes `n` and keeps the pending index in step with its status.
fn put_notification_in(tx: &super::WriteTx, n: &Notification) -> Result<()> {
    tx.open_table(OUTBOX)?
        .insert(n.id, codec::encode(n).as_slice())?;
    let mut pending = tx.open_table(OUTBOX_PENDING)?;
    if n.status == Delivery::Pending {
        pending.insert(n.id, ())?;
    } else {
        pending.remove(n.id)?;
    }
    Ok(())
}

/// The silence that covers `alert` at `now`, described with who made it.
fn silence_over(tx: &super::WriteTx, alert: &Alert, now: Timestamp) -> Result<Option<String>> {
    for item in tx.open_table(SILENCES)?.iter()? {
        let (k, v) = item?;
        let silence: Option<Silence> = quarantine::decode_listed(SILENCES, k.value(), v.value());
        if let Some(s) = silence.filter(|s| s.covers(alert, now)) {
            return Ok(Some(format!(
                "silence {} by {} ({})",
                s.id, s.created_by, s.reason
            )));
        }
    }
    Ok(None)
}

/// One pending notification of `alert` per channel.
fn notify_channels_in(tx: &super::WriteTx, alert: &Alert, now: Timestamp) -> Result<()> {
    let mut channels = Vec::new();
    for item in tx.open_table(CHANNELS)?.iter()? {
        let (k, v) = item?;
        let channel: Option<Channel> = quarantine::decode_listed(CHANNELS, k.value(), v.value());
        channels.extend(channel);
    }
    for channel in channels.into_iter().filter(|c| c.takes(alert)) {
        let n = Notification {
            id: next_id(tx, OUTBOX)?,
            ..Notification::pending(&channel.name, alert, now)
        };
        put_notification_in(tx, &n)?;
    }
    Ok(())
}
